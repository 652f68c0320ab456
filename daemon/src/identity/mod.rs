//! Who a node is and whom it trusts: mutual TLS 1.3 and node certificates
//! ([`tls`], [`pki`]), SM2 origin signatures, this node's signing identity,
//! the keyring of origin keys and the city's trust list ([`origin`]), and
//! onboarding by join token ([`join`]).

pub mod department;
pub mod join;
pub mod joining;
pub mod keyring;
pub mod origin;
pub mod pki;
pub mod tls;
pub mod transport;
