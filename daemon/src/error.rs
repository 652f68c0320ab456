//! The one mapping from domain errors to gRPC statuses, used by every RPC:
//! a restricted set of codes, and a message naming what is wrong. Each
//! domain error is a typed enum beside the code that raises it; the code
//! it answers with is chosen here and nowhere else (`Status::from`, or `?`
//! in a handler that returns `Result<_, Status>`).

use tonic::Status;

use crate::identity::join::JoinRefusal;
use crate::identity::tls::NoPeerIdentity;
use crate::node::NodeError;
use crate::route::NotAChild;
use crate::store::StoreError;
use crate::sync::server::LinkRefused;

impl From<NodeError> for Status {
    fn from(error: NodeError) -> Status {
        match error {
            NodeError::UnknownKind { .. } | NodeError::Invalid { .. } => {
                Status::invalid_argument(error.to_string())
            }
            NodeError::NotFound(_) => Status::not_found(error.to_string()),
            NodeError::Denied(_) => Status::permission_denied(error.to_string()),
            NodeError::Signing(_) => {
                tracing::error!(%error, "cannot sign a write");
                Status::internal(error.to_string())
            }
            NodeError::Store(store) => store.into(),
        }
    }
}

impl From<StoreError> for Status {
    fn from(error: StoreError) -> Status {
        match &error {
            StoreError::AlreadyExists { .. } | StoreError::DuplicateKey { .. } => {
                Status::already_exists(error.to_string())
            }
            StoreError::NotFound { .. } => Status::not_found(error.to_string()),
            StoreError::VersionConflict { .. } => Status::failed_precondition(error.to_string()),
            // a standby took over: this process stops; the client retries
            // against the active daemon
            StoreError::Fenced { .. } | StoreError::LeaseLost { .. } => {
                Status::unavailable(error.to_string())
            }
            // the disk is full: nothing was stored; the client retries once
            // the operator has made room
            StoreError::Full { .. } => {
                tracing::warn!(%error, "write refused: the store is full");
                Status::resource_exhausted(error.to_string())
            }
            StoreError::Db(_)
            | StoreError::BadUrl { .. }
            | StoreError::Migrate(_)
            | StoreError::Corrupt { .. }
            | StoreError::WrongNode { .. }
            | StoreError::InUse { .. }
            | StoreError::Unusable { .. }
            | StoreError::Shared { .. } => {
                tracing::error!(%error, "store failure serving an RPC");
                Status::internal(error.to_string())
            }
        }
    }
}

impl From<NotAChild> for Status {
    fn from(error: NotAChild) -> Status {
        Status::permission_denied(error.to_string())
    }
}

impl From<NoPeerIdentity> for Status {
    fn from(error: NoPeerIdentity) -> Status {
        Status::unauthenticated(error.to_string())
    }
}

impl From<LinkRefused> for Status {
    fn from(error: LinkRefused) -> Status {
        match error {
            LinkRefused::NoIdentity(e) => e.into(),
            LinkRefused::NotAChild(e) => e.into(),
            LinkRefused::Revoked(_) | LinkRefused::HelloMismatch { .. } => {
                Status::permission_denied(error.to_string())
            }
            LinkRefused::BadHello(_) => Status::invalid_argument(error.to_string()),
            LinkRefused::Unavailable(_) => Status::unavailable(error.to_string()),
            LinkRefused::Closed => Status::cancelled(error.to_string()),
        }
    }
}

impl From<JoinRefusal> for Status {
    fn from(error: JoinRefusal) -> Status {
        match error {
            JoinRefusal::BadRequest { .. } => Status::invalid_argument(error.to_string()),
            JoinRefusal::NotAChild(e) => e.into(),
            JoinRefusal::UnknownToken { .. }
            | JoinRefusal::WrongCode { .. }
            | JoinRefusal::TokenUsed { .. }
            | JoinRefusal::TokenExpired { .. }
            | JoinRefusal::TokenRace => Status::permission_denied(error.to_string()),
            JoinRefusal::CityRefused { .. } => Status::failed_precondition(error.to_string()),
            JoinRefusal::CityUnreachable { .. } | JoinRefusal::ShuttingDown => {
                Status::unavailable(error.to_string())
            }
            JoinRefusal::Corrupt(_) => {
                tracing::error!(%error, "cannot answer a join");
                Status::internal(error.to_string())
            }
            JoinRefusal::Node(e) => e.into(),
        }
    }
}

/// [`Status::from`] for a node error, for `map_err`.
pub fn status_of(error: NodeError) -> Status {
    error.into()
}

/// [`Status::from`] for a store error, for `map_err`.
pub fn store_status(error: StoreError) -> Status {
    error.into()
}
