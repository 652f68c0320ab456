//! Canonical record schemas, the replication link and local API protocols,
//! and the validated domain types every other crate builds on.
//!
//! The Rust bindings in `gen/` are generated from `proto/` by the `codegen`
//! test (protox, so no build needs `protoc`) and committed. Wire structs stay
//! at the edge: code past a decoder works with the types in [`types`], whose
//! constructors are the one place that validates.

#![allow(clippy::doc_lazy_continuation)]

pub mod types;

/// Generated bindings, one module per protobuf package.
pub mod pb {
    pub mod tiersync {
        pub mod v1 {
            #![allow(clippy::all, missing_docs)]
            include!("gen/tiersync.v1.rs");
        }
        /// The adapter API: department systems' door (adapter.proto).
        pub mod adapter {
            pub mod v1 {
                #![allow(clippy::all, missing_docs)]
                include!("gen/tiersync.adapter.v1.rs");
            }
        }
    }
    pub mod civil {
        pub mod v1 {
            #![allow(clippy::all, missing_docs)]
            include!("gen/civil.v1.rs");
        }
    }
    pub mod service {
        pub mod v1 {
            #![allow(clippy::all, missing_docs)]
            include!("gen/service.v1.rs");
        }
    }
    pub mod gov {
        pub mod v1 {
            #![allow(clippy::all, missing_docs)]
            include!("gen/gov.v1.rs");
        }
    }
}

pub use pb::tiersync::v1 as wire;

/// The encoded `FileDescriptorSet` of every schema, for gRPC reflection and
/// schema-driven masking.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("gen/descriptor.bin");
