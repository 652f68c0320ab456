//! Reading a config file's text into a [`RawConfig`] without stopping at the
//! first mistake: every unknown key (with the known key it most resembles)
//! and every value of the wrong type is collected with its key path and its
//! line, and whatever else the file says is still read, so semantic
//! validation can report its own problems in the same pass.
//!
//! The keys and their types come from the serde structs in `raw` alone. The
//! file is walked by a small serde `Deserializer` over toml's spanned
//! document: a struct asking for a table names its fields
//! (`deserialize_struct`), so the walker knows which keys belong and reports
//! the others instead of handing them over; a key that belongs to another
//! table is pointed there, from the tables `schema` learns of the same
//! structs. A value of the wrong type ends a pass (serde cannot
//! go on past a failed field); it is reported, taken out of the document,
//! and the document read again, until a pass goes through. A file has a
//! few dozen keys, so this costs nothing.

use std::cell::RefCell;
use std::fmt;
use std::ops::Range;

use serde::Deserialize;
use serde::de::{
    self, DeserializeSeed, Expected, IntoDeserializer, MapAccess, SeqAccess, Unexpected, Visitor,
};
use toml::Spanned;
use toml::de::{DeArray, DeString, DeTable, DeValue};

use super::raw::RawConfig;
use super::schema::{Schema, schema};

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Step {
    Key(String),
    Index(usize),
}

/// A key path as the reports write it: `parent.addresses[1]`; a key that
/// is not a bare TOML key is quoted.
pub(super) fn render(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                let bare = !key.is_empty()
                    && key
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                if bare {
                    out.push_str(key);
                } else {
                    out.push_str(&format!("{key:?}"));
                }
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// A problem found while reading: the key path, where in the text, what.
#[derive(Debug, Clone)]
pub(super) struct Found {
    pub path: Vec<Step>,
    pub span: Range<usize>,
    pub problem: String,
}

/// What reading a document gave.
#[derive(Debug)]
pub(super) struct Reading {
    /// Everything the file says that fits the structs; `None` only if a
    /// value of the wrong type could not be taken out (a wrong type at the
    /// top of the document, which a parsed TOML file never has).
    pub raw: Option<RawConfig>,
    /// Unknown keys and values of the wrong type, in the order of the file.
    pub found: Vec<Found>,
    /// The key paths taken out for having the wrong type: checks of what
    /// they would have said are moot.
    pub dropped: Vec<Vec<Step>>,
}

/// A config file's text, parsed.
pub(super) struct Document<'t> {
    text: &'t str,
    root: Spanned<DeValue<'t>>,
}

impl<'t> Document<'t> {
    /// Parses `text`; the error holds every TOML syntax error in it as
    /// `line L, column C: what`.
    pub fn parse(text: &'t str) -> Result<Document<'t>, Vec<String>> {
        let (table, errors) = DeTable::parse_recoverable(text);
        if !errors.is_empty() {
            return Err(errors
                .iter()
                .map(|e| match e.span() {
                    Some(span) => {
                        let (line, column) = position(text, span.start);
                        format!("line {line}, column {column}: {}", e.message().trim_end())
                    }
                    None => e.message().trim_end().to_owned(),
                })
                .collect());
        }
        let span = table.span();
        Ok(Document {
            text,
            root: Spanned::new(span, DeValue::Table(table.into_inner())),
        })
    }

    /// The line (from 1) of byte `offset` of the text.
    pub fn line_at(&self, offset: usize) -> usize {
        position(self.text, offset).0
    }

    /// The line where the file sets `key` (a dotted path such as
    /// `tls.cert`), if it does.
    pub fn line_of(&self, key: &str) -> Option<usize> {
        let mut table = match self.root.get_ref() {
            DeValue::Table(t) => t,
            _ => return None,
        };
        let mut steps = key.split('.').peekable();
        while let Some(step) = steps.next() {
            let (k, v) = table.iter().find(|(k, _)| k.get_ref().as_ref() == step)?;
            if steps.peek().is_none() {
                return Some(self.line_at(k.span().start));
            }
            table = match v.get_ref() {
                DeValue::Table(t) => t,
                _ => return None,
            };
        }
        None
    }

    /// Reads the document into a [`RawConfig`], collecting every unknown
    /// key and every value of the wrong type on the way.
    pub fn read(&self) -> Reading {
        let schema = schema();
        let mut root = self.root.clone();
        let mut found = Vec::new();
        let mut dropped = Vec::new();
        loop {
            let unknown = RefCell::new(Vec::new());
            let walker = Walker {
                value: &root,
                path: Vec::new(),
                unknown: &unknown,
                schema: &schema,
            };
            let (raw, wrong) = match RawConfig::deserialize(walker) {
                Ok(raw) => (Some(raw), None),
                Err(error) => (None, Some(error)),
            };
            let mut unknown = unknown.into_inner();
            let Some(error) = wrong else {
                found.append(&mut unknown);
                found.sort_by_key(|f| f.span.start);
                return Reading {
                    raw,
                    found,
                    dropped,
                };
            };
            let (path, span) = error.at.unwrap_or_else(|| (Vec::new(), root.span()));
            let taken = take_out(&mut root, &path);
            found.push(Found {
                path: path.clone(),
                span,
                problem: error.problem,
            });
            dropped.push(path);
            if !taken {
                found.append(&mut unknown);
                found.sort_by_key(|f| f.span.start);
                return Reading {
                    raw: None,
                    found,
                    dropped,
                };
            }
        }
    }
}

/// Line and column (both from 1) of byte `offset` of `text`.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

/// Removes the value at `path` (a table's entry, or an array's element);
/// false if there is nothing there to remove.
fn take_out(root: &mut Spanned<DeValue<'_>>, path: &[Step]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut at = root.get_mut();
    for step in parents {
        at = match (step, at) {
            (Step::Key(key), DeValue::Table(table)) => {
                match table.iter_mut().find(|(k, _)| k.get_ref().as_ref() == key) {
                    Some((_, v)) => v.get_mut(),
                    None => return false,
                }
            }
            (Step::Index(i), DeValue::Array(items)) => match items.get_mut(*i) {
                Some(v) => v.get_mut(),
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, at) {
        (Step::Key(key), DeValue::Table(table)) => {
            let found = table
                .iter()
                .find(|(k, _)| k.get_ref().as_ref() == key)
                .map(|(k, _)| k.clone());
            found.is_some_and(|k| table.remove(&k).is_some())
        }
        (Step::Index(i), DeValue::Array(items)) if *i < items.len() => {
            let mut kept = DeArray::new();
            for (j, item) in items.iter().enumerate() {
                if j != *i {
                    kept.push(item.clone());
                }
            }
            *items = kept;
            true
        }
        _ => false,
    }
}

/// Why a pass stopped, and where: set by the innermost table entry or array
/// element whose value failed.
#[derive(Debug)]
struct Error {
    problem: String,
    at: Option<(Vec<Step>, Range<usize>)>,
}

impl Error {
    fn new(problem: String) -> Error {
        Error { problem, at: None }
    }

    fn at(mut self, path: Vec<Step>, span: Range<usize>) -> Error {
        if self.at.is_none() {
            self.at = Some((path, span));
        }
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.problem)
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Error {
        Error::new(msg.to_string())
    }

    fn invalid_type(unexpected: Unexpected<'_>, expected: &dyn Expected) -> Error {
        Error::new(format!(
            "expected {}, found {}",
            expected_words(expected),
            found_words(&unexpected)
        ))
    }

    fn invalid_value(unexpected: Unexpected<'_>, expected: &dyn Expected) -> Error {
        Self::invalid_type(unexpected, expected)
    }

    fn invalid_length(len: usize, expected: &dyn Expected) -> Error {
        Error::new(format!(
            "expected {}, found {len} item(s)",
            expected_words(expected)
        ))
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Error {
        Error::new(unknown_key(field, expected, &Vec::new()))
    }
}

/// What a value should have been, in the words of a TOML file rather than
/// of Rust types.
fn expected_words(expected: &dyn Expected) -> String {
    let expected = expected.to_string();
    match expected.as_str() {
        "u8" => "an integer from 0 to 255".into(),
        "u16" => "an integer from 0 to 65535".into(),
        "u32" => "an integer from 0 to 4294967295".into(),
        "u64" | "usize" => "an integer, 0 or more".into(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "an integer".into(),
        "a string" | "path string" | "a borrowed string" => "a string".into(),
        "a boolean" => "`true` or `false`".into(),
        "a sequence" => "an array".into(),
        "f32" | "f64" => "a number".into(),
        other if other.starts_with("struct ") || other == "a map" => "a table".into(),
        _ => expected,
    }
}

/// What a value was, with the value itself where it is short.
fn found_words(unexpected: &Unexpected<'_>) -> String {
    match unexpected {
        Unexpected::Str(s) => format!("a string ({s:?})"),
        Unexpected::Signed(n) => format!("the integer {n}"),
        Unexpected::Unsigned(n) => format!("the integer {n}"),
        Unexpected::Float(x) => format!("the number {x}"),
        Unexpected::Bool(b) => format!("the boolean `{b}`"),
        Unexpected::Seq => "an array".into(),
        Unexpected::Map => "a table".into(),
        Unexpected::Other(what) => (*what).to_owned(),
        other => other.to_string(),
    }
}

/// The report for a key the struct does not have: the known key it most
/// resembles; or else the other tables that have it (a key put under the
/// wrong table); or else the keys it has.
fn unknown_key(key: &str, fields: &[&str], schema: &Schema) -> String {
    let elsewhere: Vec<String> = schema
        .iter()
        .filter(|(_, keys)| keys.contains(&key))
        .map(|(table, _)| {
            if table.is_empty() {
                "the top level".to_owned()
            } else {
                format!("[{table}]")
            }
        })
        .collect();
    match closest(key, fields) {
        Some(known) => format!("unknown key (did you mean `{known}`?)"),
        None if !elsewhere.is_empty() => format!(
            "unknown key here; `{key}` is a key of {}",
            elsewhere.join(" and of ")
        ),
        None if fields.is_empty() => "unknown key; nothing is set here".into(),
        None => format!(
            "unknown key; the keys here are {}",
            fields
                .iter()
                .map(|f| format!("`{f}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The field `key` was most likely meant to be: the nearest by edit
/// distance if it is near (a third of its length, at least 1), or else the
/// only field that `key` extends or abbreviates at a `_` (`cert_file` for
/// `cert`).
fn closest<'f>(key: &str, fields: &[&'f str]) -> Option<&'f str> {
    let lower = key.to_ascii_lowercase();
    let near = fields
        .iter()
        .map(|f| (edit_distance(&lower, f), *f))
        .filter(|(d, f)| *d <= (f.len().max(lower.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, f)| f);
    near.or_else(|| {
        let related: Vec<&'f str> = fields
            .iter()
            .copied()
            .filter(|f| {
                lower
                    .strip_prefix(*f)
                    .is_some_and(|rest| rest.starts_with('_'))
                    || f.strip_prefix(lower.as_str())
                        .is_some_and(|rest| rest.starts_with('_'))
            })
            .collect();
        match related.as_slice() {
            [only] => Some(*only),
            _ => None,
        }
    })
}

/// Edit distance by characters, a swap of two neighbours counting as one
/// edit (optimal string alignment), so `nmae` is one edit from `name`.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // d[i][j]: the distance between the first i of `a` and the first j of `b`.
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let substitute = d[i - 1][j - 1] + usize::from(a[i - 1] != b[j - 1]);
            let mut best = substitute.min(d[i - 1][j] + 1).min(d[i][j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// A value of the document in the words of [`found_words`].
fn value_words(value: &DeValue<'_>) -> String {
    match value {
        DeValue::String(s) => found_words(&Unexpected::Str(s)),
        DeValue::Integer(n) => format!("the integer {n}"),
        DeValue::Float(x) => format!("the number {x}"),
        DeValue::Boolean(b) => found_words(&Unexpected::Bool(*b)),
        DeValue::Datetime(_) => "a date-time".into(),
        DeValue::Array(_) => found_words(&Unexpected::Seq),
        DeValue::Table(_) => found_words(&Unexpected::Map),
    }
}

/// A serde `Deserializer` over one value of the document.
struct Walker<'a, 't> {
    value: &'a Spanned<DeValue<'t>>,
    /// Where `value` is.
    path: Vec<Step>,
    /// Unknown keys found in this pass.
    unknown: &'a RefCell<Vec<Found>>,
    /// Every table's keys, for a key put under the wrong table.
    schema: &'a Schema,
}

impl<'de> de::Deserializer<'de> for Walker<'_, '_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value.get_ref() {
            DeValue::String(s) => visitor.visit_str(s),
            DeValue::Integer(n) => {
                if let Ok(n) = i64::from_str_radix(n.as_str(), n.radix()) {
                    visitor.visit_i64(n)
                } else if let Ok(n) = u64::from_str_radix(n.as_str(), n.radix()) {
                    visitor.visit_u64(n)
                } else {
                    Err(Error::new(format!("the integer {n} is too large")))
                }
            }
            DeValue::Float(x) => match x.as_str().parse::<f64>() {
                Ok(x) => visitor.visit_f64(x),
                Err(_) => Err(Error::new(format!("the number {x} is out of range"))),
            },
            DeValue::Boolean(b) => visitor.visit_bool(*b),
            DeValue::Datetime(_) => Err(de::Error::invalid_type(
                Unexpected::Other("a date-time"),
                &visitor,
            )),
            DeValue::Array(items) => visitor.visit_seq(Items {
                items: items.iter().enumerate(),
                path: self.path,
                unknown: self.unknown,
                schema: self.schema,
            }),
            DeValue::Table(table) => visitor.visit_map(Entries::new(table, None, self)),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        // A key that is present has a value: TOML has no null.
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.value.get_ref() {
            DeValue::Table(table) => visitor.visit_map(Entries::new(table, Some(fields), self)),
            // Not through `deserialize_any`: a struct visitor would take an
            // array of the right length as its fields in order.
            other => Err(Error::new(format!(
                "expected a table, found {}",
                value_words(other)
            ))),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map enum
        identifier ignored_any
    }
}

type Entry<'a, 't> = (&'a Spanned<DeString<'t>>, &'a Spanned<DeValue<'t>>);

/// A table's entries for a struct (or a map): keys the struct does not
/// have are reported and skipped.
struct Entries<'a, 't> {
    entries: std::vec::IntoIter<Entry<'a, 't>>,
    fields: Option<&'static [&'static str]>,
    path: Vec<Step>,
    unknown: &'a RefCell<Vec<Found>>,
    schema: &'a Schema,
    pending: Option<Entry<'a, 't>>,
}

impl<'a, 't> Entries<'a, 't> {
    fn new(
        table: &'a DeTable<'t>,
        fields: Option<&'static [&'static str]>,
        walker: Walker<'a, 't>,
    ) -> Entries<'a, 't> {
        Entries {
            entries: table.iter().collect::<Vec<_>>().into_iter(),
            fields,
            path: walker.path,
            unknown: walker.unknown,
            schema: walker.schema,
            pending: None,
        }
    }

    fn path_to(&self, key: &str) -> Vec<Step> {
        let mut path = self.path.clone();
        path.push(Step::Key(key.to_owned()));
        path
    }
}

impl<'de> MapAccess<'de> for Entries<'_, '_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        while let Some((key, value)) = self.entries.next() {
            let name: &str = key.get_ref().as_ref();
            if let Some(fields) = self.fields
                && !fields.contains(&name)
            {
                let path = self.path_to(name);
                self.unknown.borrow_mut().push(Found {
                    path,
                    span: key.span(),
                    problem: unknown_key(name, fields, self.schema),
                });
                continue;
            }
            self.pending = Some((key, value));
            let key: de::value::StrDeserializer<'_, Error> = name.into_deserializer();
            return seed.deserialize(key).map(Some);
        }
        Ok(None)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let Some((key, value)) = self.pending.take() else {
            return Err(Error::new("a value was asked for before its key".into()));
        };
        let path = self.path_to(key.get_ref().as_ref());
        seed.deserialize(Walker {
            value,
            path: path.clone(),
            unknown: self.unknown,
            schema: self.schema,
        })
        .map_err(|e| e.at(path, value.span()))
    }
}

/// An array's elements.
struct Items<'a, 't> {
    items: std::iter::Enumerate<std::slice::Iter<'a, Spanned<DeValue<'t>>>>,
    path: Vec<Step>,
    unknown: &'a RefCell<Vec<Found>>,
    schema: &'a Schema,
}

impl<'de> SeqAccess<'de> for Items<'_, '_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        let Some((i, value)) = self.items.next() else {
            return Ok(None);
        };
        let mut path = self.path.clone();
        path.push(Step::Index(i));
        seed.deserialize(Walker {
            value,
            path: path.clone(),
            unknown: self.unknown,
            schema: self.schema,
        })
        .map(Some)
        .map_err(|e| e.at(path, value.span()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> (Option<RawConfig>, Vec<String>) {
        let doc = Document::parse(text).expect("valid TOML");
        let reading = doc.read();
        let found = reading
            .found
            .iter()
            .map(|f| {
                format!(
                    "{} (line {}): {}",
                    render(&f.path),
                    doc.line_at(f.span.start),
                    f.problem
                )
            })
            .collect();
        (reading.raw, found)
    }

    #[test]
    fn a_good_file_reads_with_nothing_found() {
        let (raw, found) = read(
            "version = 1\n[node]\ncode = \"5111\"\n[parent]\naddresses = [\"a:1\", \"b:2\"]\n[sync]\nwindow = 4\n",
        );
        assert_eq!(found, Vec::<String>::new());
        let raw = raw.expect("read");
        assert_eq!(raw.version, Some(1));
        assert_eq!(raw.node.and_then(|n| n.code).as_deref(), Some("5111"));
        assert_eq!(
            raw.parent.and_then(|p| p.addresses),
            Some(vec!["a:1".to_owned(), "b:2".to_owned()])
        );
        assert_eq!(raw.sync.window, Some(4));
    }

    #[test]
    fn every_unknown_key_and_wrong_type_is_found_and_the_rest_is_read() {
        let (raw, found) = read(
            r#"version = "1"
colour = "red"
[node]
code = "5111"
nmae = "乐山市"
[tls]
cert_fle = "a.pem"
ca = 7
[sync]
batch_records = "1000"
window = -2
heartbeat_secs = 5
[parent]
addresses = ["a:1", 2]
[tsl]
"#,
        );
        assert_eq!(
            found,
            vec![
                "version (line 1): expected an integer from 0 to 4294967295, found a string (\"1\")",
                "colour (line 2): unknown key; the keys here are `version`, `node`, `storage`, `listen`, `parent`, `tls`, `trust`, `deployment`, `sync`",
                "node.nmae (line 5): unknown key (did you mean `name`?)",
                "tls.cert_fle (line 7): unknown key (did you mean `cert`?)",
                "tls.ca (line 8): expected a string, found the integer 7",
                "sync.batch_records (line 10): expected an integer, 0 or more, found a string (\"1000\")",
                "sync.window (line 11): expected an integer, 0 or more, found the integer -2",
                "parent.addresses[1] (line 14): expected a string, found the integer 2",
                "tsl (line 15): unknown key (did you mean `tls`?)",
            ]
        );
        // What was right is still read, for the semantic checks.
        let raw = raw.expect("read");
        assert_eq!(raw.version, None);
        assert_eq!(raw.node.and_then(|n| n.code).as_deref(), Some("5111"));
        assert_eq!(raw.sync.heartbeat_secs, Some(5));
        assert_eq!(raw.sync.window, None);
        assert_eq!(
            raw.parent.and_then(|p| p.addresses),
            Some(vec!["a:1".to_owned()])
        );
    }

    #[test]
    fn a_section_that_is_not_a_table_is_a_type_error() {
        let (raw, found) = read("version = 1\ntls = \"certs/\"\nsync = [1]\n");
        assert_eq!(
            found,
            vec![
                "tls (line 2): expected a table, found a string (\"certs/\")",
                "sync (line 3): expected a table, found an array",
            ]
        );
        let raw = raw.expect("read");
        assert!(raw.tls.is_none());
        assert_eq!(raw.sync.window, None);
    }

    #[test]
    fn syntax_errors_are_all_reported_with_their_line_and_column() {
        let errors = Document::parse(
            "version = 1\n[node]\ncode = 5111x\nname = tru\n[sync]\nwindow = \"4\n",
        )
        .err()
        .expect("not TOML");
        assert_eq!(
            errors,
            vec![
                "line 3, column 8: string values must be quoted, expected literal string",
                "line 4, column 8: invalid boolean, expected `true`",
                "line 6, column 12: invalid basic string, expected `\"`",
            ]
        );
    }

    #[test]
    fn lines_of_keys_and_rendered_paths() {
        let doc =
            Document::parse("version = 1\n\n[tls]\nca = \"a\"\n\n[parent]\naddress = \"x:1\"\n")
                .unwrap();
        assert_eq!(doc.line_of("version"), Some(1));
        assert_eq!(doc.line_of("tls.ca"), Some(4));
        assert_eq!(doc.line_of("parent.address"), Some(7));
        assert_eq!(doc.line_of("parent"), Some(6));
        assert_eq!(doc.line_of("tls.cert"), None);
        assert_eq!(doc.line_of("version.x"), None);
        assert_eq!(
            render(&[
                Step::Key("parent".into()),
                Step::Key("addresses".into()),
                Step::Index(2)
            ]),
            "parent.addresses[2]"
        );
        assert_eq!(
            render(&[Step::Key("a b".into()), Step::Key("c".into())]),
            "\"a b\".c"
        );
    }

    #[test]
    fn a_key_under_the_wrong_table_is_pointed_to_the_right_one() {
        let (_, found) = read(
            "version = 1\n[tls]\nroot = \"pki/trust-root.pem\"\n[node]\npeer = \"0.0.0.0:7400\"\nbatch_records = 5\n",
        );
        assert_eq!(
            found,
            vec![
                "tls.root (line 3): unknown key here; `root` is a key of [trust]",
                "node.peer (line 5): unknown key here; `peer` is a key of [listen]",
                "node.batch_records (line 6): unknown key here; `batch_records` is a key of [sync]",
            ]
        );
    }

    #[test]
    fn suggestions() {
        let tls = ["ca", "cert", "key", "ca_key"];
        assert_eq!(closest("cert_fle", &tls), Some("cert"));
        assert_eq!(closest("cert_file", &tls), Some("cert"));
        assert_eq!(closest("CERT", &tls), Some("cert"));
        assert_eq!(closest("ca_keys", &tls), Some("ca_key"));
        assert_eq!(closest("colour", &tls), None);
        let sync = ["batch_records", "batch_bytes", "window"];
        assert_eq!(closest("batch_recrods", &sync), Some("batch_records"));
        // `batch` abbreviates two keys: no guess.
        assert_eq!(closest("batch", &sync), None);
        assert_eq!(closest("nmae", &["code", "tier", "name"]), Some("name"));
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("tsl", "tls"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
