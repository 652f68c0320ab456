//! Validated domain types. Each constructor is the one place its rule is
//! checked, and each error names the value and what is wrong with it.

mod division;

pub use division::{DivisionCode, DivisionError, Tier};
