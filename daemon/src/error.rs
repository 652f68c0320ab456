//! The one mapping from domain errors to gRPC statuses, used by every RPC:
//! a restricted set of codes, and a message naming what is wrong.

use tonic::Status;

use crate::node::NodeError;
use crate::store::StoreError;

/// The one mapping from domain errors to gRPC statuses.
pub fn status_of(error: NodeError) -> Status {
    match &error {
        NodeError::UnknownKind { .. } | NodeError::Invalid { .. } => {
            Status::invalid_argument(error.to_string())
        }
        NodeError::NotFound(_) => Status::not_found(error.to_string()),
        NodeError::Store(store) => match store {
            StoreError::AlreadyExists { .. } | StoreError::DuplicateKey { .. } => {
                Status::already_exists(error.to_string())
            }
            StoreError::NotFound { .. } => Status::not_found(error.to_string()),
            StoreError::VersionConflict { .. } => Status::failed_precondition(error.to_string()),
            // a standby took over: this process stops; the client retries
            // against the active daemon
            StoreError::Fenced { .. } => Status::unavailable(error.to_string()),
            StoreError::Db(_)
            | StoreError::BadUrl { .. }
            | StoreError::Migrate(_)
            | StoreError::Corrupt { .. }
            | StoreError::WrongNode { .. }
            | StoreError::Shared { .. } => {
                tracing::error!(%error, "store failure serving the local API");
                Status::internal(error.to_string())
            }
        },
    }
}

pub fn store_status(error: StoreError) -> Status {
    status_of(NodeError::Store(error))
}
