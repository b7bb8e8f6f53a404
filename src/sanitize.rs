//! The guest message sanitizer: a pure function over a JSON object.
//!
//! The vendor answers an opaque 500 when a guest message carries a client-chosen
//! `id` or lacks a `to` target, so the proxy removes the one and sets the other.
//! Parsing is strict (duplicate keys, trailing data and non-objects are refused)
//! and the output is always re-serialized, so the upstream never sees a body
//! that could be read two ways.

use std::fmt;

use bytes::Bytes;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use serde::{Deserialize, Serialize};

/// How the configured `to` meets a client-sent one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ToPolicy {
    /// A guest never chooses its own target.
    Override,
    /// Keep the client's `to` when it sends one.
    IfMissing,
}

/// What to remove and what to set on every intercepted message.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    strip: Vec<String>,
    to: Value,
    to_policy: ToPolicy,
}

impl Policy {
    /// `to` is the value written under the `to` key (usually an object such as
    /// `{"id": "queue-uuid"}`).
    pub fn new(strip: Vec<String>, to: Value, to_policy: ToPolicy) -> Self {
        Self {
            strip,
            to,
            to_policy,
        }
    }

    /// The same policy with another `to`, for per-origin targets.
    pub fn with_to(&self, to: Value) -> Self {
        Self { to, ..self.clone() }
    }

    /// The configured target, for logs and the `check` command.
    pub fn to(&self) -> &Value {
        &self.to
    }
}

/// What happened to the `to` field, so operators can count overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToChange {
    /// The body had no `to`; the configured one was added.
    Injected,
    /// The body had a different `to`; it was replaced.
    Overridden,
    /// The body's `to` was kept (already equal, or policy `if_missing`).
    Kept,
}

impl ToChange {
    /// A stable label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ToChange::Injected => "injected",
            ToChange::Overridden => "overridden",
            ToChange::Kept => "kept",
        }
    }
}

/// The edits made to one body: field names only, never values, so it is safe to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Top-level fields removed, in the order of the strip list.
    pub stripped: Vec<String>,
    /// What happened to `to`.
    pub to: ToChange,
}

impl Changes {
    /// True when the forwarded body differs in content from the client's.
    pub fn modified(&self) -> bool {
        !self.stripped.is_empty() || self.to != ToChange::Kept
    }
}

/// Why a body cannot be sanitized; every variant becomes a 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Not parseable as one JSON value (syntax, invalid UTF-8, trailing data,
    /// nesting deeper than 128 levels).
    #[error("body is not valid JSON: {0}")]
    Syntax(String),
    /// The same key twice in one object: readers disagree on which one wins.
    #[error("body has a duplicate key {0:?}")]
    DuplicateKey(String),
    /// Valid JSON, but not an object.
    #[error("body must be a JSON object, got {0}")]
    NotObject(&'static str),
}

/// Removes the configured fields and sets `to`. Every other field keeps its
/// position and exact value.
pub fn sanitize(body: &mut Map<String, Value>, policy: &Policy) -> Changes {
    let stripped = policy
        .strip
        .iter()
        .filter(|key| body.shift_remove(key.as_str()).is_some())
        .cloned()
        .collect();
    let to = match (body.get_mut("to"), policy.to_policy) {
        (None, _) => {
            body.insert("to".to_owned(), policy.to.clone());
            ToChange::Injected
        }
        (Some(existing), ToPolicy::Override) if *existing != policy.to => {
            *existing = policy.to.clone();
            ToChange::Overridden
        }
        (Some(_), _) => ToChange::Kept,
    };
    Changes { stripped, to }
}

/// Strictly parses one JSON object (a leading UTF-8 byte order mark is
/// ignored, as RFC 8259 section 8.1 allows).
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, BodyError> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = de
        .deserialize_any(StrictVisitor)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| classify(&e))?;
    match value {
        Value::Object(map) => Ok(map),
        other => Err(BodyError::NotObject(kind(&other))),
    }
}

/// Parse, sanitize and re-serialize: the one transformation the proxy applies.
pub fn sanitize_bytes(body: &[u8], policy: &Policy) -> Result<(Bytes, Changes), BodyError> {
    let mut map = parse_object(body)?;
    let changes = sanitize(&mut map, policy);
    let out = serde_json::to_vec(&map).expect("a JSON map always serializes");
    Ok((Bytes::from(out), changes))
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

const DUPLICATE: &str = "guestgate: duplicate key ";

fn classify(e: &serde_json::Error) -> BodyError {
    let msg = e.to_string();
    match msg.strip_prefix(DUPLICATE) {
        Some(rest) => {
            let key = rest.split(" at line ").next().unwrap_or(rest);
            BodyError::DuplicateKey(key.to_owned())
        }
        None => BodyError::Syntax(msg),
    }
}

/// The key serde_json uses to hand an arbitrary-precision number to a visitor.
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

/// Builds a `serde_json::Value` like serde_json's own visitor, but refuses
/// duplicate keys at any depth.
struct StrictVisitor;

impl<'de> de::Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictValue(Value);

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(StrictValue(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.is_empty() && key == NUMBER_TOKEN {
                let digits: String = map.next_value()?;
                return digits
                    .parse::<Number>()
                    .map(Value::Number)
                    .map_err(de::Error::custom);
            }
            let StrictValue(value) = map.next_value()?;
            if out.contains_key(&key) {
                return Err(de::Error::custom(format_args!("{DUPLICATE}{key}")));
            }
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(to_policy: ToPolicy) -> Policy {
        Policy::new(vec!["id".into()], json!({"id": "queue-1"}), to_policy)
    }

    fn run(body: &str, to_policy: ToPolicy) -> (String, Changes) {
        let (out, changes) = sanitize_bytes(body.as_bytes(), &policy(to_policy)).unwrap();
        (String::from_utf8(out.to_vec()).unwrap(), changes)
    }

    #[test]
    fn strips_id_injects_to_keeps_from_id() {
        let (out, changes) = run(
            r#"{"id":"client","from":{"id":"guest"},"text":"Hello"}"#,
            ToPolicy::Override,
        );
        assert_eq!(
            out,
            r#"{"from":{"id":"guest"},"text":"Hello","to":{"id":"queue-1"}}"#
        );
        assert_eq!(changes.stripped, vec!["id".to_owned()]);
        assert_eq!(changes.to, ToChange::Injected);
        assert!(changes.modified());
    }

    #[test]
    fn override_replaces_client_to_in_place() {
        let (out, changes) = run(r#"{"to":{"id":"evil"},"text":"x"}"#, ToPolicy::Override);
        assert_eq!(out, r#"{"to":{"id":"queue-1"},"text":"x"}"#);
        assert_eq!(changes.to, ToChange::Overridden);
    }

    #[test]
    fn if_missing_keeps_client_to() {
        let (out, changes) = run(r#"{"to":{"id":"mine"},"text":"x"}"#, ToPolicy::IfMissing);
        assert_eq!(out, r#"{"to":{"id":"mine"},"text":"x"}"#);
        assert_eq!(changes.to, ToChange::Kept);
        assert!(!changes.modified());
    }

    #[test]
    fn equal_to_counts_as_kept() {
        let (_, changes) = run(r#"{"to":{"id":"queue-1"}}"#, ToPolicy::Override);
        assert_eq!(changes.to, ToChange::Kept);
    }

    #[test]
    fn keeps_order_big_numbers_and_unicode() {
        // Every digit is kept; only the exponent marker is written as `e+`.
        let body = r#"{"z":1,"a":123456789012345678901234567890.000000000000000000001,"m":"h\u00e9 ✓ 😀","n":-0.0,"e":1E400}"#;
        let (out, _) = run(body, ToPolicy::Override);
        assert_eq!(
            out,
            r#"{"z":1,"a":123456789012345678901234567890.000000000000000000001,"m":"hé ✓ 😀","n":-0.0,"e":1e+400,"to":{"id":"queue-1"}}"#
        );
    }

    #[test]
    fn escaped_key_names_are_the_same_key() {
        let (out, changes) = run(r#"{"\u0069d":"sneaky","text":"x"}"#, ToPolicy::Override);
        assert_eq!(out, r#"{"text":"x","to":{"id":"queue-1"}}"#);
        assert_eq!(changes.stripped, vec!["id".to_owned()]);
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        let p = policy(ToPolicy::Override);
        for body in [
            r#"{"id":"a","id":"b"}"#,
            r#"{"text":"x","\u0074ext":"y"}"#,
            r#"{"from":{"id":"a","id":"b"}}"#,
            r#"{"list":[{"k":1,"k":2}]}"#,
        ] {
            assert!(
                matches!(
                    sanitize_bytes(body.as_bytes(), &p),
                    Err(BodyError::DuplicateKey(_))
                ),
                "{body}"
            );
        }
    }

    #[test]
    fn refuses_non_objects_trailing_data_and_bad_utf8() {
        let p = policy(ToPolicy::Override);
        let cases: [&[u8]; 8] = [
            b"[1,2]",
            b"\"text\"",
            b"null",
            b"",
            b"{} {}",
            b"{\"a\":1}x",
            b"{\"a\":\"\xff\"}",
            b"{\"a\":\"\\ud800\"}",
        ];
        for body in cases {
            assert!(sanitize_bytes(body, &p).is_err(), "{body:?}");
        }
    }

    #[test]
    fn bom_is_ignored_and_not_forwarded() {
        let (out, _) =
            sanitize_bytes(b"\xEF\xBB\xBF{\"a\":1}", &policy(ToPolicy::Override)).unwrap();
        assert_eq!(&out[..], br#"{"a":1,"to":{"id":"queue-1"}}"#);
    }

    #[test]
    fn deep_nesting_is_refused_without_overflow() {
        let body = format!("{{\"a\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(
            sanitize_bytes(body.as_bytes(), &policy(ToPolicy::Override)),
            Err(BodyError::Syntax(_))
        ));
    }

    #[test]
    fn whitespace_around_the_object_is_fine() {
        let (out, _) = run(" \n{\"a\" : 1}\r\n ", ToPolicy::Override);
        assert_eq!(out, r#"{"a":1,"to":{"id":"queue-1"}}"#);
    }
}
