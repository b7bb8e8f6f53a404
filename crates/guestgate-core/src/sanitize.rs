//! The sanitizer: strict parsing of an intercepted body, then a rule's edits
//! ([`crate::edit`]), then re-serialization; pure functions over bytes and
//! JSON values, testable without a server.
//!
//! The vendor answers an opaque 500 when a guest message carries a client-chosen
//! `id` or lacks a `to` target, so a rule removes the one and sets the other.
//! Parsing is strict (duplicate keys, trailing data and non-objects are refused)
//! and the output is always re-serialized, so the upstream never sees a body
//! that could be read two ways.

use std::fmt;

use bytes::Bytes;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::map::Entry;
use serde_json::{Map, Number, Value};

use crate::edit::{self, Changes, EditError, Edits};
use crate::pointer::{Pointer, PointerError};

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
    /// A body on a route whose requests carry none.
    #[error("body must be empty on this route")]
    NotEmpty,
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

/// Why an intercepted body is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SanitizeError {
    /// Not one strict JSON object.
    #[error(transparent)]
    Body(#[from] BodyError),
    /// The rule's edits or checks failed on it.
    #[error(transparent)]
    Edit(#[from] EditError),
}

/// Parse, edit and re-serialize: the one transformation the proxy applies
/// to an intercepted body.
pub fn sanitize_bytes(body: &[u8], edits: &Edits) -> Result<(Bytes, Changes), SanitizeError> {
    let mut map = parse_object(body)?;
    let changes = edit::apply(&mut map, edits)?;
    // Room for the body and what a rule usually adds, so it is written
    // without growing.
    let mut out = Vec::with_capacity(body.len() + body.len() / 2 + 64);
    serde_json::to_writer(&mut out, &map).expect("a JSON map always serializes");
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
            match out.entry(key) {
                Entry::Occupied(seen) => {
                    return Err(de::Error::custom(format_args!("{DUPLICATE}{}", seen.key())));
                }
                Entry::Vacant(slot) => {
                    slot.insert(value);
                }
            }
        }
        Ok(Value::Object(out))
    }
}

/// How the configured `to` meets a client-sent one (`[guest_messages]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ToPolicy {
    /// A guest never chooses its own target.
    Override,
    /// Keep the client's `to` when it sends one.
    IfMissing,
}

/// The edits `[guest_messages]` stands for: each `strip` key removed at the
/// top level, then `to` set (`override`) or set where missing (`if_missing`).
/// On error, the strip key that is no pointer.
pub fn shorthand_edits(
    strip: &[String],
    to: Value,
    to_policy: ToPolicy,
) -> Result<Edits, (String, PointerError)> {
    let remove = strip
        .iter()
        .map(|key| {
            Pointer::parse(&format!("/{}", key.replace('~', "~0").replace('/', "~1")))
                .map_err(|e| (key.clone(), e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let target = vec![(Pointer::parse("/to").expect("a valid pointer"), to)];
    let (set, set_if_missing) = match to_policy {
        ToPolicy::Override => (target, Vec::new()),
        ToPolicy::IfMissing => (Vec::new(), target),
    };
    Ok(Edits {
        remove,
        set_if_missing,
        set,
        allow: Vec::new(),
        require: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edit::Op;
    use crate::pointer::Pointer;
    use serde_json::json;

    /// The `[guest_messages]` defaults: remove `id`, set `to`.
    fn edits(override_to: bool) -> Edits {
        let to = vec![(Pointer::parse("/to").unwrap(), json!({"id": "queue-1"}))];
        let (set, set_if_missing) = if override_to {
            (to, Vec::new())
        } else {
            (Vec::new(), to)
        };
        Edits {
            remove: vec![Pointer::parse("/id").unwrap()],
            set_if_missing,
            set,
            allow: Vec::new(),
            require: Vec::new(),
        }
    }

    fn run(body: &str, override_to: bool) -> (String, Changes) {
        let (out, changes) = sanitize_bytes(body.as_bytes(), &edits(override_to)).unwrap();
        (String::from_utf8(out.to_vec()).unwrap(), changes)
    }

    fn ops(changes: &Changes) -> Vec<(Op, &str)> {
        changes.edits.iter().map(|c| (c.op, &*c.pointer)).collect()
    }

    #[test]
    fn strips_id_injects_to_keeps_from_id() {
        let (out, changes) = run(
            r#"{"id":"client","from":{"id":"guest"},"text":"Hello"}"#,
            true,
        );
        assert_eq!(
            out,
            r#"{"from":{"id":"guest"},"text":"Hello","to":{"id":"queue-1"}}"#
        );
        assert_eq!(ops(&changes), [(Op::Removed, "/id"), (Op::Injected, "/to")]);
        assert!(changes.modified());
    }

    #[test]
    fn override_replaces_client_to_in_place() {
        let (out, changes) = run(r#"{"to":{"id":"evil"},"text":"x"}"#, true);
        assert_eq!(out, r#"{"to":{"id":"queue-1"},"text":"x"}"#);
        assert_eq!(ops(&changes), [(Op::Overridden, "/to")]);
    }

    #[test]
    fn if_missing_keeps_client_to() {
        let (out, changes) = run(r#"{"to":{"id":"mine"},"text":"x"}"#, false);
        assert_eq!(out, r#"{"to":{"id":"mine"},"text":"x"}"#);
        assert_eq!(ops(&changes), [(Op::Kept, "/to")]);
        assert!(!changes.modified());
    }

    #[test]
    fn equal_to_counts_as_kept() {
        let (_, changes) = run(r#"{"to":{"id":"queue-1"}}"#, true);
        assert_eq!(ops(&changes), [(Op::Kept, "/to")]);
    }

    #[test]
    fn keeps_order_big_numbers_and_unicode() {
        // Every digit is kept; only the exponent marker is written as `e+`.
        let body = r#"{"z":1,"a":123456789012345678901234567890.000000000000000000001,"m":"h\u00e9 ✓ 😀","n":-0.0,"e":1E400}"#;
        let (out, _) = run(body, true);
        assert_eq!(
            out,
            r#"{"z":1,"a":123456789012345678901234567890.000000000000000000001,"m":"hé ✓ 😀","n":-0.0,"e":1e+400,"to":{"id":"queue-1"}}"#
        );
    }

    #[test]
    fn escaped_key_names_are_the_same_key() {
        let (out, changes) = run(r#"{"\u0069d":"sneaky","text":"x"}"#, true);
        assert_eq!(out, r#"{"text":"x","to":{"id":"queue-1"}}"#);
        assert_eq!(ops(&changes)[0], (Op::Removed, "/id"));
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        let e = edits(true);
        for body in [
            r#"{"id":"a","id":"b"}"#,
            r#"{"text":"x","\u0074ext":"y"}"#,
            r#"{"from":{"id":"a","id":"b"}}"#,
            r#"{"list":[{"k":1,"k":2}]}"#,
        ] {
            assert!(
                matches!(
                    sanitize_bytes(body.as_bytes(), &e),
                    Err(SanitizeError::Body(BodyError::DuplicateKey(_)))
                ),
                "{body}"
            );
        }
    }

    #[test]
    fn refuses_non_objects_trailing_data_and_bad_utf8() {
        let e = edits(true);
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
            assert!(sanitize_bytes(body, &e).is_err(), "{body:?}");
        }
    }

    #[test]
    fn bom_is_ignored_and_not_forwarded() {
        let (out, _) = sanitize_bytes(b"\xEF\xBB\xBF{\"a\":1}", &edits(true)).unwrap();
        assert_eq!(&out[..], br#"{"a":1,"to":{"id":"queue-1"}}"#);
    }

    #[test]
    fn deep_nesting_is_refused_without_overflow() {
        let body = format!("{{\"a\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(
            sanitize_bytes(body.as_bytes(), &edits(true)),
            Err(SanitizeError::Body(BodyError::Syntax(_)))
        ));
    }

    #[test]
    fn whitespace_around_the_object_is_fine() {
        let (out, _) = run(" \n{\"a\" : 1}\r\n ", true);
        assert_eq!(out, r#"{"a":1,"to":{"id":"queue-1"}}"#);
    }
}
