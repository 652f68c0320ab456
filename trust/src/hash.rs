//! SM3 (GB/T 32905) digests: the one hash function of this crate.
//!
//! [`Digest`] is a 32-byte SM3 output with a lowercase hex `Display`, so error messages and logs
//! can name a root or a key fingerprint. [`sm3()`] hashes one buffer; [`Sm3Hasher`] hashes in
//! parts (the hash tree uses it to avoid copying `0x00 || leaf`).

use std::fmt;

use sm3::Digest as _;

/// Length in bytes of an SM3 digest.
pub const DIGEST_LEN: usize = 32;

/// A 32-byte SM3 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Digest(pub [u8; DIGEST_LEN]);

/// Errors reading a [`Digest`] from bytes or hex.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    /// The input had the wrong length.
    #[error("an SM3 digest is {DIGEST_LEN} bytes, got {got}")]
    Length {
        /// Number of bytes given.
        got: usize,
    },
    /// The input was not hex.
    #[error("SM3 digest `{input}` is not hex: {reason}")]
    Hex {
        /// The input as given.
        input: String,
        /// What the hex decoder said.
        reason: String,
    },
}

// === impl Digest ===

impl Digest {
    /// The digest bytes.
    pub fn as_bytes(&self) -> &[u8; DIGEST_LEN] {
        &self.0
    }

    /// Reads a digest from exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, DigestError> {
        <[u8; DIGEST_LEN]>::try_from(bytes)
            .map(Self)
            .map_err(|_| DigestError::Length { got: bytes.len() })
    }

    /// Reads a digest from 64 hex digits.
    pub fn from_hex(input: &str) -> Result<Self, DigestError> {
        let bytes = hex::decode(input).map_err(|error| DigestError::Hex {
            input: input.to_owned(),
            reason: error.to_string(),
        })?;
        Self::from_slice(&bytes)
    }

    /// Lowercase hex, 64 digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

impl AsRef<[u8]> for Digest {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// SM3 of one buffer.
pub fn sm3(data: &[u8]) -> Digest {
    Digest(sm3::Sm3::digest(data).into())
}

/// SM3 over several parts, fed in order.
#[derive(Clone, Default)]
pub struct Sm3Hasher(sm3::Sm3);

// === impl Sm3Hasher ===

impl Sm3Hasher {
    /// A fresh hasher.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds `data`.
    pub fn update(&mut self, data: &[u8]) -> &mut Self {
        self.0.update(data);
        self
    }

    /// The digest of everything fed so far.
    pub fn finalize(self) -> Digest {
        Digest(self.0.finalize().into())
    }
}

impl fmt::Debug for Sm3Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sm3Hasher")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GB/T 32905-2016 appendix A examples.
    #[test]
    fn standard_vectors() {
        let check = |input: &[u8], expected: &str| assert_eq!(sm3(input).to_hex(), expected);
        check(
            b"abc",
            "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0",
        );
        check(
            &b"abcd".repeat(16),
            "debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732",
        );
    }

    #[test]
    fn parts_equal_whole() {
        let mut hasher = Sm3Hasher::new();
        hasher.update(b"ab").update(b"c");
        assert_eq!(hasher.finalize(), sm3(b"abc"));
    }

    #[test]
    fn hex_round_trip_and_errors() {
        let digest = sm3(b"abc");
        assert_eq!(Digest::from_hex(&digest.to_hex()), Ok(digest));
        assert_eq!(
            Digest::from_slice(&[0; 31]).unwrap_err().to_string(),
            "an SM3 digest is 32 bytes, got 31"
        );
        assert!(
            Digest::from_hex("zz")
                .unwrap_err()
                .to_string()
                .starts_with("SM3 digest `zz` is not hex")
        );
    }
}
