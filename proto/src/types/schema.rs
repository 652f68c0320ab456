//! The record schemas at run time: which kinds are canonical, which fields
//! hold personal data, and masking driven by those annotations.
//!
//! The daemon relays payloads as opaque bytes and only some nodes may see
//! them unmasked. Rather than a hand-written list of personal fields per kind
//! (which drifts the day someone adds a field), the `.proto` files mark them
//! with `(tiersync.v1.personal)` and mark record kinds with
//! `(tiersync.v1.canonical)`; this module reads those options from the
//! compiled-in [`crate::FILE_DESCRIPTOR_SET`] with prost-reflect and works on
//! any kind the build knows without generated code for it.

use std::collections::{BTreeMap, HashSet};
use std::sync::OnceLock;

use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DynamicMessage, ExtensionDescriptor, FieldDescriptor, Kind, MessageDescriptor,
    Value,
};

use super::resident_id::{self, ResidentId};

const PERSONAL: &str = "tiersync.v1.personal";
const CANONICAL: &str = "tiersync.v1.canonical";
const NATURAL_KEY: &str = "tiersync.v1.natural_key";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("unknown record kind `{kind}`; known kinds: {}", .known.join(", "))]
    UnknownKind { kind: String, known: Vec<String> },
    #[error("payload is not a valid `{kind}`: {reason}")]
    Decode { kind: String, reason: String },
    #[error("`{kind}` has no field `{field}`; its fields are: {}", .fields.join(", "))]
    NoSuchField {
        kind: String,
        field: String,
        fields: Vec<String>,
    },
    #[error("JSON is not a valid `{kind}`: {reason}")]
    Json { kind: String, reason: String },
    #[error("field `{field}` of `{kind}` is {found}, not a string")]
    NotAString {
        kind: String,
        field: String,
        found: String,
    },
}

/// The compiled-in schemas, with the canonical kinds and personal fields
/// read from their options once, at load.
#[derive(Debug)]
pub struct Schemas {
    pool: DescriptorPool,
    /// Canonical kinds by full name, sorted.
    kinds: BTreeMap<String, MessageDescriptor>,
    /// Full names of every field marked personal, in any message.
    personal: HashSet<String>,
    /// Natural-key names by canonical kind, in declaration order.
    natural_keys: BTreeMap<String, Vec<String>>,
}

impl Schemas {
    /// Decodes [`crate::FILE_DESCRIPTOR_SET`]. It is generated and checked by
    /// the codegen test, so a failure here is a build defect and panics.
    /// Prefer [`Schemas::global`], which does this once per process.
    pub fn load() -> Schemas {
        let pool = DescriptorPool::decode(crate::FILE_DESCRIPTOR_SET)
            .expect("the compiled-in descriptor set decodes");
        let personal_ext = extension(&pool, PERSONAL);
        let canonical_ext = extension(&pool, CANONICAL);
        let natural_key_ext = extension(&pool, NATURAL_KEY);

        let kinds: BTreeMap<String, MessageDescriptor> = pool
            .all_messages()
            .filter(|m| option_is_set(&m.options(), &canonical_ext))
            .map(|m| (m.full_name().to_owned(), m))
            .collect();
        let personal = pool
            .all_messages()
            .flat_map(|m| m.fields().collect::<Vec<_>>())
            .filter(|f| option_is_set(&f.options(), &personal_ext))
            .map(|f| f.full_name().to_owned())
            .collect();
        let natural_keys = kinds
            .iter()
            .map(|(kind, m)| {
                let options = m.options();
                let names = if options.has_extension(&natural_key_ext) {
                    match &*options.get_extension(&natural_key_ext) {
                        Value::List(items) => items
                            .iter()
                            .filter_map(|v| v.as_str().map(str::to_owned))
                            .collect(),
                        _ => Vec::new(),
                    }
                } else {
                    Vec::new()
                };
                (kind.clone(), names)
            })
            .collect();
        Schemas {
            pool,
            kinds,
            personal,
            natural_keys,
        }
    }

    /// The schemas loaded once for the whole process.
    pub fn global() -> &'static Schemas {
        static SCHEMAS: OnceLock<Schemas> = OnceLock::new();
        SCHEMAS.get_or_init(Schemas::load)
    }

    /// Every message and service this build knows, for gRPC reflection and
    /// the like.
    pub fn pool(&self) -> &DescriptorPool {
        &self.pool
    }

    /// True if `kind` (a full message name such as `civil.v1.Resident`) is a
    /// message marked `(tiersync.v1.canonical) = true`.
    pub fn is_canonical(&self, kind: &str) -> bool {
        self.kinds.contains_key(kind)
    }

    /// The canonical kinds, sorted.
    pub fn canonical_kinds(&self) -> Vec<String> {
        self.kinds.keys().cloned().collect()
    }

    /// The natural keys records of `kind` carry, by name, as the schema
    /// declares them (`(tiersync.v1.natural_key)`): the names a lookup may
    /// use. Empty for a kind with none, or one this build does not know.
    pub fn natural_keys(&self, kind: &str) -> &[String] {
        self.natural_keys.get(kind).map_or(&[], Vec::as_slice)
    }

    /// True if the field with this full name (`<kind>.<field>`, e.g.
    /// `civil.v1.Resident.id_number`) is marked personal.
    pub fn is_personal_field(&self, full_name: &str) -> bool {
        self.personal.contains(full_name)
    }

    /// Checks that `payload` decodes as `kind`, which must be canonical (a
    /// message that is not, such as `tiersync.v1.Record`, is an unknown kind
    /// to every method here).
    /// Fields this build does not know are accepted (a newer node may have
    /// added them).
    pub fn validate_payload(&self, kind: &str, payload: &[u8]) -> Result<(), SchemaError> {
        self.decode(kind, payload).map(|_| ())
    }

    /// Names of the fields of `kind` marked `(tiersync.v1.personal) = true`,
    /// in declaration order.
    pub fn personal_fields(&self, kind: &str) -> Result<Vec<String>, SchemaError> {
        Ok(self
            .descriptor(kind)?
            .fields()
            .filter(|f| self.is_personal(f))
            .map(|f| f.name().to_owned())
            .collect())
    }

    /// `payload` with every personal field masked, for any node other than
    /// the record's owner:
    ///
    /// - a string that is a valid resident id number becomes
    ///   [`ResidentId::masked`] (and one already in that shape stays as it
    ///   is, so masking twice changes nothing);
    /// - any other non-empty string keeps its first character and has every
    ///   further character (not byte: names are Chinese) replaced by `*`,
    ///   so `张三丰` becomes `张**`; repeated strings likewise, each one;
    /// - personal fields of any other type (bytes, numbers, messages, maps)
    ///   are cleared.
    ///
    /// Fields that are not personal are left as they are, except that
    /// messages nested in them are masked by the same rules, and fields this
    /// build does not know are dropped, since nothing says they are not
    /// personal.
    ///
    /// Not covered: `tiersync.v1.Amendment.payload` is bytes holding an
    /// encoded `target_kind` message, and is not marked personal, so a
    /// resident amendment's payload passes through as it is. Mask it with
    /// `mask(target_kind, payload)` before showing it.
    pub fn mask(&self, kind: &str, payload: &[u8]) -> Result<Vec<u8>, SchemaError> {
        self.mask_except(kind, payload, &HashSet::new())
    }

    /// As [`Schemas::mask`], except that the personal fields named in
    /// `clear` (full names, `<kind>.<field>`: what a department's grant
    /// allows it to read in clear) are left as they are.
    pub fn mask_except(
        &self,
        kind: &str,
        payload: &[u8],
        clear: &HashSet<String>,
    ) -> Result<Vec<u8>, SchemaError> {
        let mut message = self.decode(kind, payload)?;
        self.mask_message(&mut message, clear);
        Ok(message.encode_to_vec())
    }

    /// Encodes a `kind` payload from its protobuf JSON mapping (what the CLI
    /// and HTTP adapters accept).
    pub fn payload_from_json(&self, kind: &str, json: &str) -> Result<Vec<u8>, SchemaError> {
        let desc = self.descriptor(kind)?.clone();
        let mut de = serde_json::Deserializer::from_str(json);
        // The path of the field that failed, not only its line and column.
        let mut track = serde_path_to_error::Track::new();
        let message = DynamicMessage::deserialize(
            desc,
            serde_path_to_error::Deserializer::new(&mut de, &mut track),
        )
        .map_err(|e| SchemaError::Json {
            kind: kind.to_owned(),
            reason: match track.path().to_string().as_str() {
                "." | "?" => e.to_string(),
                path => format!("field `{path}`: {e}"),
            },
        })?;
        de.end().map_err(|e| SchemaError::Json {
            kind: kind.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(message.encode_to_vec())
    }

    /// Decodes a `kind` payload to its protobuf JSON mapping.
    pub fn payload_to_json(
        &self,
        kind: &str,
        payload: &[u8],
    ) -> Result<serde_json::Value, SchemaError> {
        let message = self.decode(kind, payload)?;
        serde_json::to_value(&message).map_err(|e| SchemaError::Json {
            kind: kind.to_owned(),
            reason: e.to_string(),
        })
    }

    /// Reads the singular string field `field` of a `kind` payload: `None`
    /// if it is empty (proto3 does not tell empty from absent).
    pub fn field_str(
        &self,
        kind: &str,
        payload: &[u8],
        field: &str,
    ) -> Result<Option<String>, SchemaError> {
        let desc = self.descriptor(kind)?;
        let Some(field_desc) = desc.get_field_by_name(field) else {
            return Err(SchemaError::NoSuchField {
                kind: kind.to_owned(),
                field: field.to_owned(),
                fields: desc.fields().map(|f| f.name().to_owned()).collect(),
            });
        };
        if field_desc.is_list() || field_desc.is_map() || field_desc.kind() != Kind::String {
            return Err(SchemaError::NotAString {
                kind: kind.to_owned(),
                field: field.to_owned(),
                found: describe_type(&field_desc),
            });
        }
        let message = self.decode(kind, payload)?;
        Ok(match message.get_field(&field_desc).as_str() {
            Some("") | None => None,
            Some(s) => Some(s.to_owned()),
        })
    }

    fn descriptor(&self, kind: &str) -> Result<&MessageDescriptor, SchemaError> {
        self.kinds
            .get(kind)
            .ok_or_else(|| SchemaError::UnknownKind {
                kind: kind.to_owned(),
                known: self.canonical_kinds(),
            })
    }

    fn decode(&self, kind: &str, payload: &[u8]) -> Result<DynamicMessage, SchemaError> {
        let desc = self.descriptor(kind)?.clone();
        DynamicMessage::decode(desc, payload).map_err(|e| SchemaError::Decode {
            kind: kind.to_owned(),
            reason: e.to_string(),
        })
    }

    fn is_personal(&self, field: &FieldDescriptor) -> bool {
        self.personal.contains(field.full_name())
    }

    fn mask_message(&self, message: &mut DynamicMessage, clear: &HashSet<String>) {
        // Dropped: an unknown field may be a personal one added by a newer
        // schema.
        message.take_unknown_fields().for_each(drop);
        let fields: Vec<FieldDescriptor> = prost_reflect::ReflectMessage::descriptor(&*message)
            .fields()
            .collect();
        for field in fields {
            if !message.has_field(&field) {
                continue;
            }
            if self.is_personal(&field) {
                if clear.contains(field.full_name()) {
                    continue;
                }
                if !mask_personal_strings(message.get_field_mut(&field)) {
                    message.clear_field(&field);
                }
                continue;
            }
            match message.get_field_mut(&field) {
                Value::Message(nested) => self.mask_message(nested, clear),
                Value::List(items) => {
                    for item in items {
                        if let Value::Message(nested) = item {
                            self.mask_message(nested, clear);
                        }
                    }
                }
                Value::Map(entries) => {
                    for value in entries.values_mut() {
                        if let Value::Message(nested) = value {
                            self.mask_message(nested, clear);
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

/// Masks a personal string or list of strings in place; false if `value`
/// is of any other type, which the caller then clears.
fn mask_personal_strings(value: &mut Value) -> bool {
    match value {
        Value::String(s) => {
            *s = mask_personal_str(s);
            true
        }
        Value::List(items) if items.iter().all(|v| matches!(v, Value::String(_))) => {
            for item in items {
                if let Value::String(s) = item {
                    *s = mask_personal_str(s);
                }
            }
            true
        }
        _ => false,
    }
}

fn mask_personal_str(s: &str) -> String {
    if let Ok(id) = ResidentId::parse(s) {
        return id.masked();
    }
    if resident_id::looks_masked(s) {
        return s.to_owned();
    }
    let mut chars = s.chars();
    match chars.next() {
        None => String::new(),
        Some(first) => std::iter::once(first).chain(chars.map(|_| '*')).collect(),
    }
}

fn extension(pool: &DescriptorPool, name: &str) -> ExtensionDescriptor {
    pool.get_extension_by_name(name)
        .unwrap_or_else(|| panic!("the descriptor set defines `{name}`"))
}

fn option_is_set(options: &DynamicMessage, ext: &ExtensionDescriptor) -> bool {
    options.has_extension(ext) && options.get_extension(ext).as_bool() == Some(true)
}

/// The protobuf spelling of a field's type, for error messages.
fn describe_type(field: &FieldDescriptor) -> String {
    if field.is_map() {
        return "a map".to_owned();
    }
    let base = match field.kind() {
        Kind::Double => "double".to_owned(),
        Kind::Float => "float".to_owned(),
        Kind::Int32 => "int32".to_owned(),
        Kind::Int64 => "int64".to_owned(),
        Kind::Uint32 => "uint32".to_owned(),
        Kind::Uint64 => "uint64".to_owned(),
        Kind::Sint32 => "sint32".to_owned(),
        Kind::Sint64 => "sint64".to_owned(),
        Kind::Fixed32 => "fixed32".to_owned(),
        Kind::Fixed64 => "fixed64".to_owned(),
        Kind::Sfixed32 => "sfixed32".to_owned(),
        Kind::Sfixed64 => "sfixed64".to_owned(),
        Kind::Bool => "bool".to_owned(),
        Kind::String => "string".to_owned(),
        Kind::Bytes => "bytes".to_owned(),
        Kind::Message(m) => m.full_name().to_owned(),
        Kind::Enum(e) => e.full_name().to_owned(),
    };
    if field.is_list() {
        format!("repeated {base}")
    } else {
        base
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::civil::v1::{Category, Household, Resident};
    use crate::pb::service::v1::Application;
    use crate::wire;
    use proptest::prelude::*;

    fn schemas() -> &'static Schemas {
        Schemas::global()
    }

    #[test]
    fn json_errors_name_the_field() {
        let check = |json: &str, expected: &str| {
            let e = schemas()
                .payload_from_json("civil.v1.Resident", json)
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(expected),
                "`{e}` does not start with `{expected}`"
            );
        };
        check(
            r#"{"name": 5}"#,
            "JSON is not a valid `civil.v1.Resident`: field `name`: invalid type: integer `5`",
        );
        check(
            r#"{"name": "a", "categories": ["CATEGORY_ELDERLY", "NOPE"]}"#,
            "JSON is not a valid `civil.v1.Resident`: field `categories[1]`: unrecognized enum value 'NOPE'",
        );
        // a syntax error has no field to name: its line and column say where
        check(
            r#"{"name": "a","#,
            "JSON is not a valid `civil.v1.Resident`: EOF while parsing",
        );
    }

    fn resident() -> Resident {
        Resident {
            name: "张三丰".into(),
            id_number: "51110219800102123x".into(),
            household_id: vec![1; 16],
            address_code: "511102004001".into(),
            address: "四川省乐山市市中区春华路1号".into(),
            categories: vec![Category::Elderly as i32, Category::Veteran as i32],
            phone: "13800138000".into(),
            notes: "腿脚不便".into(),
        }
    }

    #[test]
    fn natural_keys_come_from_the_options() {
        let s = schemas();
        assert_eq!(s.natural_keys("civil.v1.Resident"), ["id_digest"]);
        assert_eq!(s.natural_keys("civil.v1.Household"), ["head_id_digest"]);
        assert_eq!(s.natural_keys("service.v1.Application"), ["case_number"]);
        assert_eq!(s.natural_keys("tiersync.v1.Grant"), ["department"]);
        assert!(s.natural_keys("gov.v1.Notice").is_empty());
        assert!(s.natural_keys("civil.v1.Nope").is_empty());
    }

    #[test]
    fn fields_a_grant_names_stay_in_clear() {
        let s = schemas();
        let clear: HashSet<String> = ["civil.v1.Resident.id_number".to_owned()].into();
        let masked = s
            .mask_except("civil.v1.Resident", &resident().encode_to_vec(), &clear)
            .unwrap();
        let r = Resident::decode(&masked[..]).unwrap();
        assert_eq!(r.id_number, "51110219800102123x");
        assert_eq!(r.name, "张**");
        assert_eq!(r.phone, "1**********");
        assert!(s.is_personal_field("civil.v1.Resident.id_number"));
        assert!(!s.is_personal_field("civil.v1.Resident.notes"));
    }

    #[test]
    fn canonical_kinds_come_from_the_options() {
        let s = schemas();
        assert!(s.is_canonical("civil.v1.Resident"));
        assert!(!s.is_canonical("tiersync.v1.Record"));
        assert!(!s.is_canonical("tiersync.v1.LinkFrame"));
        assert!(!s.is_canonical("civil.v1.Nope"));
        assert_eq!(
            s.canonical_kinds(),
            [
                "civil.v1.Household",
                "civil.v1.Resident",
                "gov.v1.Notice",
                "service.v1.Application",
                "tiersync.v1.Amendment",
                "tiersync.v1.AmendmentResult",
                "tiersync.v1.CertificateIssued",
                "tiersync.v1.CertificateRequest",
                "tiersync.v1.Department",
                "tiersync.v1.Grant",
                "tiersync.v1.JoinToken",
                "tiersync.v1.NodeKey",
                "tiersync.v1.TrustList",
            ]
        );
        assert!(std::ptr::eq(Schemas::global(), Schemas::global()));
    }

    #[test]
    fn personal_fields_come_from_the_options() {
        let check = |kind: &str, expected: &[&str]| {
            assert_eq!(schemas().personal_fields(kind).unwrap(), expected, "{kind}")
        };
        check(
            "civil.v1.Resident",
            &["name", "id_number", "address", "phone"],
        );
        check(
            "civil.v1.Household",
            &["head_name", "address", "head_id_number"],
        );
        check("service.v1.Application", &["applicant_name"]);
        check("gov.v1.Notice", &[]);
        check("tiersync.v1.Amendment", &[]);
    }

    /// The masking rules cover strings and bytes precisely; anything else
    /// marked personal would just be cleared, so flag it for a look.
    #[test]
    fn every_personal_field_is_a_string_or_bytes() {
        let s = schemas();
        for message in s.pool().all_messages() {
            for field in message.fields().filter(|f| s.is_personal(f)) {
                assert!(
                    matches!(field.kind(), Kind::String | Kind::Bytes),
                    "{} is {}",
                    field.full_name(),
                    describe_type(&field)
                );
            }
        }
    }

    #[test]
    fn errors_name_the_kind_and_the_problem() {
        let check = |result: Result<(), SchemaError>, expected: &str| {
            assert_eq!(result.unwrap_err().to_string(), expected)
        };
        let known = "civil.v1.Household, civil.v1.Resident, gov.v1.Notice, \
                     service.v1.Application, tiersync.v1.Amendment, tiersync.v1.AmendmentResult, \
                     tiersync.v1.CertificateIssued, tiersync.v1.CertificateRequest, tiersync.v1.Department, tiersync.v1.Grant, tiersync.v1.JoinToken, \
                     tiersync.v1.NodeKey, tiersync.v1.TrustList";
        let s = schemas();
        check(
            s.validate_payload("civil.v1.Pet", b""),
            &format!("unknown record kind `civil.v1.Pet`; known kinds: {known}"),
        );
        check(
            s.validate_payload("tiersync.v1.Record", b""),
            &format!("unknown record kind `tiersync.v1.Record`; known kinds: {known}"),
        );
        check(
            s.personal_fields("").map(drop),
            &format!("unknown record kind ``; known kinds: {known}"),
        );
        check(
            s.mask("Resident", b"").map(drop),
            &format!("unknown record kind `Resident`; known kinds: {known}"),
        );
        // Field 1 (name) says 5 bytes follow; there is one.
        check(
            s.validate_payload("civil.v1.Resident", &[0x0a, 0x05, b'a']),
            "payload is not a valid `civil.v1.Resident`: failed to decode Protobuf message: buffer underflow",
        );
        // Field 1 (name) holds bytes that are not UTF-8.
        check(
            s.validate_payload("civil.v1.Resident", &[0x0a, 0x02, 0xff, 0xfe]),
            "payload is not a valid `civil.v1.Resident`: failed to decode Protobuf message: invalid string value: data is not UTF-8 encoded",
        );
        // Field 4 (members, uint32) sent as a string.
        check(
            s.validate_payload("civil.v1.Household", &[0x22, 0x01, b'x']),
            "payload is not a valid `civil.v1.Household`: failed to decode Protobuf message: invalid wire type: LengthDelimited (expected Varint)",
        );
        check(
            s.field_str("civil.v1.Household", b"", "head").map(drop),
            "`civil.v1.Household` has no field `head`; its fields are: head_name, address_code, address, members, head_id_number",
        );
        check(
            s.field_str("civil.v1.Household", b"", "members").map(drop),
            "field `members` of `civil.v1.Household` is uint32, not a string",
        );
        check(
            s.field_str("civil.v1.Resident", b"", "categories")
                .map(drop),
            "field `categories` of `civil.v1.Resident` is repeated civil.v1.Category, not a string",
        );
        check(
            s.field_str("civil.v1.Resident", b"", "household_id")
                .map(drop),
            "field `household_id` of `civil.v1.Resident` is bytes, not a string",
        );
        check(
            s.field_str("civil.v1.Resident", &[0x0a, 0x05], "name")
                .map(drop),
            "payload is not a valid `civil.v1.Resident`: failed to decode Protobuf message: buffer underflow",
        );
    }

    #[test]
    fn valid_payloads_pass() {
        let s = schemas();
        s.validate_payload("civil.v1.Resident", &resident().encode_to_vec())
            .unwrap();
        s.validate_payload("civil.v1.Resident", b"").unwrap();
        // An unknown field (number 99) from a newer schema is accepted.
        s.validate_payload("gov.v1.Notice", &[0x9a, 0x06, 0x01, b'x'])
            .unwrap();
    }

    #[test]
    fn mask_resident() {
        let original = resident();
        let masked = schemas()
            .mask("civil.v1.Resident", &original.encode_to_vec())
            .unwrap();
        let masked = Resident::decode(masked.as_slice()).unwrap();
        assert_eq!(
            masked,
            Resident {
                name: "张**".into(),
                id_number: "511102********123X".into(),
                address: "四*************".into(),
                phone: "1**********".into(),
                ..original
            }
        );
    }

    #[test]
    fn mask_other_kinds() {
        let s = schemas();
        let household = Household {
            head_name: "李四".into(),
            address_code: "511102004001".into(),
            address: "春华路1号".into(),
            members: 4,
            head_id_number: String::new(),
        };
        let masked = s
            .mask("civil.v1.Household", &household.encode_to_vec())
            .unwrap();
        assert_eq!(
            Household::decode(masked.as_slice()).unwrap(),
            Household {
                head_name: "李*".into(),
                address: "春****".into(),
                ..household
            }
        );

        let application = Application {
            service: "elderly-allowance".into(),
            applicant_id: vec![7; 16],
            applicant_name: "王".into(),
            status: 1,
            submitted_at_ms: 1_704_067_200_000,
            details: "每月".into(),
            case_number: "SC-2026-0001".into(),
        };
        let masked = s
            .mask("service.v1.Application", &application.encode_to_vec())
            .unwrap();
        // One character: nothing after the first to hide.
        assert_eq!(Application::decode(masked.as_slice()).unwrap(), application);
    }

    #[test]
    fn mask_rules_for_strings() {
        let check = |input: &str, expected: &str| {
            assert_eq!(mask_personal_str(input), expected, "input {input}")
        };
        check("", "");
        check("张", "张");
        check("张三丰", "张**");
        check("Ab", "A*");
        // A valid number, with a lowercase x normalised.
        check("51110219800102123x", "511102********123X");
        check("511102198001011234", "511102********1234");
        // Already masked: left alone.
        check("511102********1234", "511102********1234");
        // 18 digits with a wrong check character is just a string.
        check("511102198001011233", "5*****************");
    }

    #[test]
    fn mask_drops_unknown_fields() {
        let mut bytes = resident().encode_to_vec();
        // Field 99, a string the schema does not know: maybe personal.
        bytes.extend([0x9a, 0x06, 0x03, b'Q', b'7', b'Q']);
        let masked = schemas().mask("civil.v1.Resident", &bytes).unwrap();
        let reparsed = DynamicMessage::decode(
            schemas().descriptor("civil.v1.Resident").unwrap().clone(),
            masked.as_slice(),
        )
        .unwrap();
        assert_eq!(reparsed.unknown_fields().count(), 0);
        assert!(!masked.windows(3).any(|w| w == b"Q7Q"));
    }

    #[test]
    fn mask_clears_personal_bytes_and_recurses_into_messages() {
        // None of today's schemas has a personal bytes field or a nested
        // message, so build a tiny schema that does and point the same
        // masking code at it.
        use prost_types::{
            DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet,
            field_descriptor_proto::{Label, Type},
        };
        let field = |name: &str, number: i32, ty: Type, type_name: Option<&str>, label: Label| {
            FieldDescriptorProto {
                name: Some(name.into()),
                number: Some(number),
                r#type: Some(ty as i32),
                type_name: type_name.map(Into::into),
                label: Some(label as i32),
                ..Default::default()
            }
        };
        let file = FileDescriptorProto {
            name: Some("test/v1/t.proto".into()),
            package: Some("test.v1".into()),
            syntax: Some("proto3".into()),
            message_type: vec![
                DescriptorProto {
                    name: Some("Inner".into()),
                    field: vec![
                        field("secret", 1, Type::String, None, Label::Optional),
                        field("open", 2, Type::String, None, Label::Optional),
                    ],
                    ..Default::default()
                },
                DescriptorProto {
                    name: Some("Outer".into()),
                    field: vec![
                        field("blob", 1, Type::Bytes, None, Label::Optional),
                        field(
                            "inner",
                            2,
                            Type::Message,
                            Some(".test.v1.Inner"),
                            Label::Optional,
                        ),
                        field(
                            "many",
                            3,
                            Type::Message,
                            Some(".test.v1.Inner"),
                            Label::Repeated,
                        ),
                        field("aliases", 4, Type::String, None, Label::Repeated),
                    ],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let mut set = FileDescriptorSet::decode(crate::FILE_DESCRIPTOR_SET).unwrap();
        set.file.push(file);
        let pool = DescriptorPool::from_file_descriptor_set(set).unwrap();
        let outer = pool.get_message_by_name("test.v1.Outer").unwrap();
        let schemas = Schemas {
            kinds: BTreeMap::from([("test.v1.Outer".to_owned(), outer.clone())]),
            personal: [
                "test.v1.Inner.secret",
                "test.v1.Outer.blob",
                "test.v1.Outer.aliases",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            natural_keys: BTreeMap::new(),
            pool,
        };

        let inner_desc = schemas.pool.get_message_by_name("test.v1.Inner").unwrap();
        // Only non-empty strings are set, as a decoded message has them.
        let inner = |secret: &str, open: &str| {
            let mut m = DynamicMessage::new(inner_desc.clone());
            for (name, value) in [("secret", secret), ("open", open)] {
                if !value.is_empty() {
                    m.set_field_by_name(name, Value::String(value.into()));
                }
            }
            Value::Message(m)
        };
        let mut message = DynamicMessage::new(outer.clone());
        message.set_field_by_name("blob", Value::Bytes(vec![1, 2, 3].into()));
        message.set_field_by_name("inner", inner("张三丰", "公开"));
        message.set_field_by_name(
            "many",
            Value::List(vec![inner("李四", "x"), inner("", "y")]),
        );
        message.set_field_by_name(
            "aliases",
            Value::List(vec![
                Value::String("老张".into()),
                Value::String("张师傅".into()),
            ]),
        );

        let masked = schemas
            .mask("test.v1.Outer", &message.encode_to_vec())
            .unwrap();
        let masked = DynamicMessage::decode(outer, masked.as_slice()).unwrap();
        assert!(!masked.has_field_by_name("blob"));
        assert_eq!(
            masked.get_field_by_name("inner").unwrap().as_ref(),
            &inner("张**", "公开")
        );
        assert_eq!(
            masked.get_field_by_name("many").unwrap().as_ref(),
            &Value::List(vec![inner("李*", "x"), inner("", "y")])
        );
        assert_eq!(
            masked.get_field_by_name("aliases").unwrap().as_ref(),
            &Value::List(vec![
                Value::String("老*".into()),
                Value::String("张**".into())
            ])
        );
    }

    #[test]
    fn field_str_reads_one_string() {
        let s = schemas();
        let bytes = resident().encode_to_vec();
        let read = |field: &str| s.field_str("civil.v1.Resident", &bytes, field).unwrap();
        assert_eq!(read("address_code").as_deref(), Some("511102004001"));
        assert_eq!(read("id_number").as_deref(), Some("51110219800102123x"));
        assert_eq!(s.field_str("civil.v1.Resident", b"", "name").unwrap(), None);
    }

    fn arb_resident() -> impl Strategy<Value = Resident> {
        (
            "\\PC{0,8}",
            prop_oneof![
                crate::types::resident_id::tests::valid_number(),
                "[0-9]{17}[0-9xX]",
                "\\PC{0,20}",
            ],
            prop::collection::vec(any::<u8>(), 0..20),
            "[0-9]{0,12}",
            "\\PC{0,30}",
            prop::collection::vec(0i32..8, 0..4),
            "[0-9+ -]{0,15}",
            "\\PC{0,20}",
        )
            .prop_map(
                |(
                    name,
                    id_number,
                    household_id,
                    address_code,
                    address,
                    categories,
                    phone,
                    notes,
                )| {
                    Resident {
                        name,
                        id_number,
                        household_id,
                        address_code,
                        address,
                        categories,
                        phone,
                        notes,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn masking_keeps_shape_hides_personal_and_is_idempotent(original in arb_resident()) {
            let s = schemas();
            let once = s.mask("civil.v1.Resident", &original.encode_to_vec()).unwrap();
            let masked = Resident::decode(once.as_slice()).unwrap();
            // Not personal: untouched.
            prop_assert_eq!(&masked.household_id, &original.household_id);
            prop_assert_eq!(&masked.address_code, &original.address_code);
            prop_assert_eq!(&masked.categories, &original.categories);
            prop_assert_eq!(&masked.notes, &original.notes);
            // Personal: same number of characters, at most the first (or,
            // for an id number, the region and last four) kept.
            for (m, o) in [
                (&masked.name, &original.name),
                (&masked.id_number, &original.id_number),
                (&masked.address, &original.address),
                (&masked.phone, &original.phone),
            ] {
                prop_assert_eq!(m.chars().count(), o.chars().count());
                prop_assert_eq!(m.chars().next(), o.chars().next());
                let stars = m.chars().filter(|&c| c == '*').count();
                let hidden = o.chars().count().saturating_sub(1);
                prop_assert!(stars >= hidden.min(8), "{} -> {}", o, m);
            }
            let twice = s.mask("civil.v1.Resident", &once).unwrap();
            prop_assert_eq!(twice, once);
        }

        #[test]
        fn schema_functions_never_panic(
            bytes in prop_oneof![
                prop::collection::vec(any::<u8>(), 0..200),
                // A valid payload with one byte changed gets further in.
                (arb_resident(), any::<prop::sample::Index>(), any::<u8>()).prop_map(
                    |(resident, at, byte)| {
                        let mut bytes = resident.encode_to_vec();
                        if !bytes.is_empty() {
                            let at = at.index(bytes.len());
                            bytes[at] = byte;
                        }
                        bytes
                    }
                ),
            ],
            kind in prop::sample::select(vec![
                "civil.v1.Resident", "civil.v1.Household", "gov.v1.Notice",
                "service.v1.Application", "tiersync.v1.Amendment", "nope.v1.Nope",
            ]),
        ) {
            let s = schemas();
            let valid = s.validate_payload(kind, &bytes).is_ok();
            let masked = s.mask(kind, &bytes);
            prop_assert_eq!(masked.is_ok(), valid);
            if let Ok(masked) = masked {
                prop_assert!(s.validate_payload(kind, &masked).is_ok());
            }
            let _ = s.field_str(kind, &bytes, "name");
        }

        // The decoders below face bytes straight off the network. Fuzzing
        // them needs a nightly toolchain; arbitrary input stands in.
        #[test]
        fn record_decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = wire::Record::decode(bytes.as_slice());
        }

        #[test]
        fn link_frame_decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = wire::LinkFrame::decode(bytes.as_slice());
        }
    }
}
