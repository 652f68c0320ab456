//! Validated domain types. Each constructor is the one place its rule is
//! checked, and each error names the value and what is wrong with it.

mod division;
mod hlc;
mod record_id;
mod resident_id;
mod schema;

pub use division::{DivisionCode, DivisionError, Tier};
pub use hlc::{Hlc, HlcError, HlcTimestamp};
pub use record_id::{RecordId, RecordIdError};
pub use resident_id::{DigestKey, DigestKeyError, ResidentId, ResidentIdError};
pub use schema::{SchemaError, Schemas};
