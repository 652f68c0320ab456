//! The tables of a config file and the keys of each, learnt from the serde
//! structs in `raw` themselves (never a list kept by hand): a [`RawConfig`]
//! is deserialized from a [`Probe`] that makes up every field a struct
//! names, so every nested table is visited and recorded with its keys.
//! `read` uses them to point a key written under the wrong table to the
//! table it belongs in.

use std::cell::RefCell;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};

use super::raw::RawConfig;

/// Every table of a config file with its keys: (dotted path, `""` for the
/// top level; keys).
pub(super) type Schema = Vec<(String, &'static [&'static str])>;

/// The tables the serde structs of `raw` declare, with their keys, learnt
/// by deserializing a [`RawConfig`] from a [`Probe`].
pub(super) fn schema() -> Schema {
    let tables = RefCell::new(Vec::new());
    // The probe answers every field; should a struct ever want what it
    // cannot make up, the tables seen so far are still right.
    let _ = RawConfig::deserialize(Probe {
        path: String::new(),
        tables: &tables,
    });
    tables.into_inner()
}

/// A `Deserializer` that makes up a value of whatever is asked for: for a
/// struct, every one of its fields (so nested tables are visited too,
/// and recorded with their keys); for a leaf, an empty or zero value.
struct Probe<'a> {
    path: String,
    tables: &'a RefCell<Schema>,
}

macro_rules! probe_with {
    ($($method:ident => $visit:ident($value:expr)),* $(,)?) => {
        $(fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
            visitor.$visit($value)
        })*
    };
}

impl<'de> de::Deserializer<'de> for Probe<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("the probe makes up typed values only"))
    }

    probe_with! {
        deserialize_bool => visit_bool(false),
        deserialize_i8 => visit_i64(0),
        deserialize_i16 => visit_i64(0),
        deserialize_i32 => visit_i64(0),
        deserialize_i64 => visit_i64(0),
        deserialize_u8 => visit_u64(0),
        deserialize_u16 => visit_u64(0),
        deserialize_u32 => visit_u64(0),
        deserialize_u64 => visit_u64(0),
        deserialize_f32 => visit_f64(0.0),
        deserialize_f64 => visit_f64(0.0),
        deserialize_str => visit_str(""),
        deserialize_string => visit_str(""),
        deserialize_bytes => visit_bytes(&[]),
        deserialize_byte_buf => visit_bytes(&[]),
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_unit()
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_unit()
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_seq(de::value::SeqDeserializer::new(std::iter::empty::<u64>()))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.tables.borrow_mut().push((self.path.clone(), fields));
        visitor.visit_map(ProbeFields {
            fields: fields.iter(),
            current: None,
            path: self.path,
            tables: self.tables,
        })
    }

    serde::forward_to_deserialize_any! {
        i128 u128 char unit_struct tuple tuple_struct map enum identifier
    }
}

/// A made-up table holding every field of a struct.
struct ProbeFields<'a> {
    fields: std::slice::Iter<'static, &'static str>,
    current: Option<&'static str>,
    path: String,
    tables: &'a RefCell<Schema>,
}

impl<'de> MapAccess<'de> for ProbeFields<'_> {
    type Error = de::value::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        let Some(field) = self.fields.next() else {
            return Ok(None);
        };
        self.current = Some(field);
        let key: de::value::StrDeserializer<'_, Self::Error> = field.into_deserializer();
        seed.deserialize(key).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        let field = self.current.take().unwrap_or_default();
        let path = if self.path.is_empty() {
            field.to_owned()
        } else {
            format!("{}.{field}", self.path)
        };
        seed.deserialize(Probe {
            path,
            tables: self.tables,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_is_every_table_of_the_structs_with_its_keys() {
        let schema = schema();
        let tables: Vec<&str> = schema.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            tables,
            [
                "",
                "node",
                "storage",
                "listen",
                "parent",
                "tls",
                "trust",
                "deployment",
                "sync"
            ]
        );
        let trust = schema.iter().find(|(t, _)| t == "trust").unwrap().1;
        assert_eq!(trust, ["root", "key", "cert", "root_key", "chain"]);
    }
}
