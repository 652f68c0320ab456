//! Record ids: the UUIDv7 minted where a fact is first collected and carried
//! by every copy of it in the tree.
//!
//! Version 7 puts the Unix time in milliseconds in the leading 48 bits, so
//! ids sort by creation time and inserts land at the end of B-tree indexes.
//! Ids arrive as raw bytes from peers and adapters; [`RecordId::from_bytes`]
//! is where a truncated or foreign (say, random v4) id is turned away.

use std::fmt;
use std::str::FromStr;

use uuid::{Uuid, Variant};

/// Bytes shown, in hex, of a value of the wrong length, so a megabyte of
/// garbage does not become a megabyte of log line.
const SHOW_BYTES: usize = 32;
/// Characters shown of a string that is not a UUID at all.
const SHOW_CHARS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordIdError {
    #[error("record id `{hex}` has {len} bytes; it needs 16")]
    BadLength { hex: String, len: usize },
    #[error("record id `{hex}` is a version {version} UUID; it must be version 7")]
    WrongVersion { hex: String, version: usize },
    #[error(
        "record id `{hex}` has the {variant} variant bits; a UUIDv7 has the RFC 9562 ones (10)"
    )]
    WrongVariant { hex: String, variant: String },
    #[error("record id `{input}` is not a UUID: {reason}")]
    NotUuid { input: String, reason: String },
}

/// A record id: always a UUIDv7 (RFC 9562 variant). Orders by creation time
/// (the millisecond timestamp leads the bytes), then by the rest of the
/// bytes. `Display` and `FromStr` use the hyphenated form.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordId(Uuid);

impl RecordId {
    /// A fresh id for the current time. Ids minted by one process are in
    /// increasing order even within a millisecond (the uuid crate keeps a
    /// counter for that).
    #[allow(clippy::new_without_default)] // a different value on every call is no default
    pub fn new() -> Self {
        RecordId(Uuid::now_v7())
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, RecordIdError> {
        let array: [u8; 16] = bytes.try_into().map_err(|_| RecordIdError::BadLength {
            hex: shown_hex(bytes),
            len: bytes.len(),
        })?;
        Self::from_uuid(Uuid::from_bytes(array))
    }

    /// Checks that `uuid` is a version 7 UUID with the RFC 9562 variant.
    pub fn from_uuid(uuid: Uuid) -> Result<Self, RecordIdError> {
        let version = uuid.get_version_num();
        if version != 7 {
            return Err(RecordIdError::WrongVersion {
                hex: uuid.hyphenated().to_string(),
                version,
            });
        }
        let variant = uuid.get_variant();
        if variant != Variant::RFC4122 {
            return Err(RecordIdError::WrongVariant {
                hex: uuid.hyphenated().to_string(),
                variant: format!("{variant:?}"),
            });
        }
        Ok(RecordId(uuid))
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }

    /// When the id was minted: milliseconds since the Unix epoch.
    pub fn unix_millis(&self) -> u64 {
        let b = self.0.as_bytes();
        u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]])
    }
}

fn shown_hex(bytes: &[u8]) -> String {
    if bytes.len() <= SHOW_BYTES {
        hex::encode(bytes)
    } else {
        format!("{}…", hex::encode(&bytes[..SHOW_BYTES]))
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecordId({})", self.0.hyphenated())
    }
}

impl FromStr for RecordId {
    type Err = RecordIdError;

    /// Accepts the hyphenated form (and the other spellings `uuid` parses:
    /// simple, braced, `urn:uuid:`), then checks it is a UUIDv7.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let uuid = Uuid::parse_str(s).map_err(|e| RecordIdError::NotUuid {
            input: if s.chars().count() <= SHOW_CHARS {
                s.to_owned()
            } else {
                format!("{}…", s.chars().take(SHOW_CHARS).collect::<String>())
            },
            reason: e.to_string(),
        })?;
        Self::from_uuid(uuid)
    }
}

impl From<RecordId> for Uuid {
    fn from(id: RecordId) -> Uuid {
        id.0
    }
}

impl TryFrom<&[u8]> for RecordId {
    type Error = RecordIdError;
    fn try_from(bytes: &[u8]) -> Result<Self, Self::Error> {
        Self::from_bytes(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A UUIDv7 for 2024-01-01T00:00:00Z (1704067200000 ms).
    const V7: &str = "018cc251-f400-7abc-8def-0123456789ab";

    #[test]
    fn round_trips() {
        let id: RecordId = V7.parse().unwrap();
        assert_eq!(id.to_string(), V7);
        assert_eq!(format!("{id:?}"), format!("RecordId({V7})"));
        assert_eq!(id.unix_millis(), 1_704_067_200_000);
        assert_eq!(RecordId::from_bytes(id.as_bytes()).unwrap(), id);
        assert_eq!(RecordId::from_bytes(&id.as_bytes()[..]).unwrap(), id);
        let simple: RecordId = "018cc251f4007abc8def0123456789ab".parse().unwrap();
        assert_eq!(simple, id);
    }

    #[test]
    fn new_ids_are_v7_and_in_time_order() {
        let ids: Vec<RecordId> = (0..1000).map(|_| RecordId::new()).collect();
        for pair in ids.windows(2) {
            assert!(pair[0] < pair[1], "{} !< {}", pair[0], pair[1]);
        }
        for id in &ids {
            assert_eq!(id.as_uuid().get_version_num(), 7);
            assert_eq!(RecordId::from_bytes(id.as_bytes()).unwrap(), *id);
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(now.abs_diff(ids[0].unix_millis()) < 60_000);
    }

    #[test]
    fn ordering_follows_the_timestamp() {
        let earlier: RecordId = "018cc251-f400-7fff-bfff-ffffffffffff".parse().unwrap();
        let later: RecordId = "018cc251-f401-7000-8000-000000000000".parse().unwrap();
        assert!(earlier < later);
        assert!(earlier.unix_millis() < later.unix_millis());
    }

    #[test]
    fn errors_name_the_value() {
        let check = |result: Result<RecordId, RecordIdError>, expected: &str| {
            assert_eq!(result.unwrap_err().to_string(), expected)
        };
        check(
            RecordId::from_bytes(&[]),
            "record id `` has 0 bytes; it needs 16",
        );
        check(
            RecordId::from_bytes(&[0x01, 0x8c, 0xc2]),
            "record id `018cc2` has 3 bytes; it needs 16",
        );
        check(
            RecordId::from_bytes(&[0xab; 40]),
            &format!("record id `{}…` has 40 bytes; it needs 16", "ab".repeat(32)),
        );
        check(
            RecordId::from_bytes(&[0; 16]),
            "record id `00000000-0000-0000-0000-000000000000` is a version 0 UUID; it must be version 7",
        );
        check(
            "6ba7b810-9dad-41d1-80b4-00c04fd430c8".parse(),
            "record id `6ba7b810-9dad-41d1-80b4-00c04fd430c8` is a version 4 UUID; it must be version 7",
        );
        check(
            "018cc251-f400-7abc-cdef-0123456789ab".parse(),
            "record id `018cc251-f400-7abc-cdef-0123456789ab` has the Microsoft variant bits; a UUIDv7 has the RFC 9562 ones (10)",
        );
        // The reason is the uuid crate's own wording, which may change.
        let err = "not-a-uuid".parse::<RecordId>().unwrap_err().to_string();
        assert!(
            err.starts_with("record id `not-a-uuid` is not a UUID: invalid character"),
            "{err}"
        );
    }

    proptest! {
        #[test]
        fn from_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(id) = RecordId::from_bytes(&bytes) {
                prop_assert_eq!(&id.as_bytes()[..], &bytes[..]);
                prop_assert_eq!(id.to_string().parse::<RecordId>().unwrap(), id);
            }
        }

        #[test]
        fn from_str_never_panics(input in "\\PC{0,80}") {
            let _ = input.parse::<RecordId>();
        }

        #[test]
        fn every_v7_shaped_value_is_accepted(mut bytes in any::<[u8; 16]>()) {
            bytes[6] = (bytes[6] & 0x0f) | 0x70;
            bytes[8] = (bytes[8] & 0x3f) | 0x80;
            let id = RecordId::from_bytes(&bytes).unwrap();
            prop_assert_eq!(id.as_bytes(), &bytes);
            prop_assert_eq!(id.to_string().parse::<RecordId>().unwrap(), id);
        }
    }
}
