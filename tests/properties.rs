//! Property tests (proptest) of the two pure parts of the security boundary.
//!
//! Sanitizer (the `[guest_messages]` edits; `edit_properties.rs` covers
//! pointer edits in general): for any JSON object and either `to` policy, the output has no
//! stripped top-level field, the configured `to` (or the client's, under
//! `if_missing`), and every other field byte for byte in its original order;
//! and sanitizing is idempotent.
//!
//! Router: every spelling of the guest messages route (escapes in either hex
//! case, letter case, dot segments, repeated slashes, `;parameters`) matches
//! it and forwards the template's spelling; an encoded `/`, `\` or `;` never
//! matches; the canonical form is a fixed point; and an upstream that drops
//! `;parameters` before resolving dot segments routes the canonical form the
//! same way guestgate matched it.

use guestgate::edit::{Changes, Edits, Op};
use guestgate::routing::{CanonicalPath, PathError, RouteTemplate};
use guestgate::sanitize::{ToPolicy, sanitize_bytes, shorthand_edits};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Map, Number, Value, json};

const ROUTE: &str = "/api/v2/conversations/messaging/guest/conversations/{conversationId}/messages";

/// Fields a policy may strip besides `id` (never `to`).
const STRIP_POOL: [&str; 3] = ["clientId", "token", "meta"];

// ---------------------------------------------------------------- JSON values

fn parsed_number(text: String) -> Value {
    Value::Number(
        text.parse::<Number>()
            .expect("the generator spells JSON numbers"),
    )
}

/// Numbers of any size and precision; with `arbitrary_precision` they are
/// carried as their decimal text and must come out digit for digit.
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        (prop::num::f64::NORMAL | prop::num::f64::SUBNORMAL | prop::num::f64::ZERO)
            .prop_map(|f| json!(f)),
        // Far beyond u64/f64: "123456789012345678901234567890".
        "-?[1-9][0-9]{19,60}".prop_map(parsed_number),
        "-?(0|[1-9][0-9]{0,40})\\.[0-9]{1,40}".prop_map(parsed_number),
        "-?[1-9][0-9]{0,20}(\\.[0-9]{1,20})?e[+-][1-9][0-9]{0,3}".prop_map(parsed_number),
        Just(parsed_number("-0.0".to_owned())),
    ]
}

fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),                   // any scalar value, controls included
        "\\PC{0,20}",                      // printable unicode
        "[a-z ]{0,12}[é✓😀\u{2028}]{1,3}", // multi-byte and line separators
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        string().prop_map(Value::String),
    ]
}

/// Keys, often ones the sanitizer cares about (nested ones must be kept).
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("id".to_owned()),
        Just("to".to_owned()),
        Just("Id".to_owned()),
        Just("from".to_owned()),
        prop::sample::select(STRIP_POOL.to_vec()).prop_map(str::to_owned),
        "[a-zA-Z_]{1,12}",
        string(),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

/// Puts `key` at `at` among `pairs` (replacing an earlier entry).
fn place(pairs: &mut Vec<(String, Value)>, key: &str, value: Value, at: Index) {
    pairs.retain(|(k, _)| k != key);
    let at = at.index(pairs.len() + 1);
    pairs.insert(at, (key.to_owned(), value));
}

/// A message body: arbitrary fields, and optionally `id`, `to` and a field of
/// the strip pool at arbitrary positions.
fn object() -> impl Strategy<Value = Map<String, Value>> {
    (
        prop::collection::vec((key(), value()), 0..10),
        prop::option::of((value(), any::<Index>())),
        prop::option::of((value(), any::<Index>())),
        prop::option::of((
            prop::sample::select(STRIP_POOL.to_vec()),
            value(),
            any::<Index>(),
        )),
    )
        .prop_map(|(pairs, id, to, extra)| {
            let mut pairs: Vec<(String, Value)> = pairs;
            // Duplicate generated keys: the first position wins, like a map.
            let mut seen = std::collections::HashSet::new();
            pairs.retain(|(k, _)| seen.insert(k.clone()));
            if let Some((v, at)) = id {
                place(&mut pairs, "id", v, at);
            }
            if let Some((v, at)) = to {
                place(&mut pairs, "to", v, at);
            }
            if let Some((k, v, at)) = extra {
                place(&mut pairs, k, v, at);
            }
            pairs.into_iter().collect()
        })
}

// ------------------------------------------------------------------ policies

/// `[guest_messages]` settings and the edits they stand for.
#[derive(Debug, Clone)]
struct Setup {
    strip: Vec<String>,
    to: Value,
    to_policy: ToPolicy,
}

impl Setup {
    fn policy(&self) -> Edits {
        shorthand_edits(&self.strip, self.to.clone(), self.to_policy).unwrap()
    }
}

/// The top-level fields a change list says were removed, in order.
fn stripped(changes: &Changes) -> Vec<String> {
    changes
        .edits
        .iter()
        .filter(|c| c.op == Op::Removed)
        .map(|c| c.pointer[1..].to_owned())
        .collect()
}

/// What a change list says happened to `to`.
fn to_op(changes: &Changes) -> Option<Op> {
    changes
        .edits
        .iter()
        .find(|c| &*c.pointer == "/to")
        .map(|c| c.op)
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        prop_oneof![Just(ToPolicy::Override), Just(ToPolicy::IfMissing)],
        prop::sample::subsequence(STRIP_POOL.to_vec(), 0..=STRIP_POOL.len()),
        prop_oneof![
            3 => "[a-z0-9-]{1,36}".prop_map(|id| json!({ "id": id })),
            1 => value(),
        ],
    )
        .prop_map(|(to_policy, extra, to)| {
            let mut strip = vec!["id".to_owned()];
            strip.extend(extra.into_iter().map(str::to_owned));
            Setup {
                strip,
                to,
                to_policy,
            }
        })
}

/// What docs/security.md promises: stripped fields gone, `to` set (in place when the
/// client sent one, appended otherwise), everything else as it was.
fn expected(input: &Map<String, Value>, setup: &Setup) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in input {
        if setup.strip.contains(k) {
            continue;
        }
        let v = match (k.as_str(), setup.to_policy) {
            ("to", ToPolicy::Override) => setup.to.clone(),
            _ => v.clone(),
        };
        out.insert(k.clone(), v);
    }
    if !input.contains_key("to") {
        out.insert("to".to_owned(), setup.to.clone());
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn sanitized_output_has_no_stripped_field_the_right_to_and_everything_else(
        input in object(),
        setup in setup(),
    ) {
        let policy = setup.policy();
        let bytes = serde_json::to_vec(&input).unwrap();
        let (out, changes) = sanitize_bytes(&bytes, &policy).unwrap();
        let output: Map<String, Value> = serde_json::from_slice(&out).unwrap();

        // No stripped field at the top level.
        for key in &setup.strip {
            prop_assert!(!output.contains_key(key), "{} still there", key);
        }
        // `to`: the configured one, or the client's under if_missing.
        let expected_to = match (setup.to_policy, input.get("to")) {
            (ToPolicy::IfMissing, Some(client)) => client,
            _ => &setup.to,
        };
        prop_assert_eq!(output.get("to"), Some(expected_to));

        // Every other field kept, in its original order...
        let kept: Vec<&String> = input
            .keys()
            .filter(|k| *k != "to" && !setup.strip.contains(k))
            .collect();
        let others: Vec<&String> = output.keys().filter(|k| *k != "to").collect();
        prop_assert_eq!(kept, others);
        // ...and byte for byte: key order at every depth, every digit of
        // every number, every character of every string.
        let want = serde_json::to_vec(&expected(&input, &setup)).unwrap();
        prop_assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&want));

        // The changes name what happened.
        let stripped: Vec<String> = setup
            .strip
            .iter()
            .filter(|k| input.contains_key(*k))
            .cloned()
            .collect();
        prop_assert_eq!(self::stripped(&changes), stripped);
        let to_change = match (input.get("to"), setup.to_policy) {
            (None, _) => Op::Injected,
            (Some(client), ToPolicy::Override) if *client != setup.to => Op::Overridden,
            _ => Op::Kept,
        };
        prop_assert_eq!(to_op(&changes), Some(to_change));

        // Idempotent: the output is already what would be forwarded.
        let (again, changes_again) = sanitize_bytes(&out, &policy).unwrap();
        prop_assert_eq!(again, out);
        prop_assert!(!changes_again.modified());
    }

    #[test]
    fn whitespace_and_layout_do_not_change_the_output(
        input in object(),
        setup in setup(),
    ) {
        let policy = setup.policy();
        let compact = sanitize_bytes(&serde_json::to_vec(&input).unwrap(), &policy).unwrap();
        let pretty = format!("\u{feff} \r\n{}\n\t", serde_json::to_string_pretty(&input).unwrap());
        let pretty = sanitize_bytes(pretty.as_bytes(), &policy).unwrap();
        prop_assert_eq!(compact, pretty);
    }

    #[test]
    fn non_objects_are_refused(value in value().prop_filter("not an object", |v| !v.is_object())) {
        let bytes = serde_json::to_vec(&value).unwrap();
        let policy = shorthand_edits(&["id".into()], json!({"id": "q"}), ToPolicy::Override).unwrap();
        prop_assert!(sanitize_bytes(&bytes, &policy).is_err());
    }
}

// -------------------------------------------------------------------- paths

/// One way to spell a character of the route: as is, upper-cased (literals
/// only), or percent-encoded with upper- or lower-case hex.
#[derive(Debug, Clone, Copy)]
enum Spell {
    Plain,
    Upper,
    Escaped { lower_hex: bool },
}

fn spell() -> impl Strategy<Value = Spell> {
    prop_oneof![
        3 => Just(Spell::Plain),
        1 => Just(Spell::Upper),
        1 => any::<bool>().prop_map(|lower_hex| Spell::Escaped { lower_hex }),
    ]
}

/// Something put before a segment that an upstream resolves away: repeated
/// slashes, `.` and `..` segments (also escaped, also with `;parameters`),
/// and empty segments with parameters.
const DETOURS: [&str; 10] = [
    "",
    "/",
    "//",
    "./",
    "%2e/",
    "detour/../",
    "detour/%2E%2e/",
    ".;p=1/",
    "detour/..;jsessionid=2/",
    ";x/",
];

/// A conversation id: unreserved characters, not a dot segment.
fn conversation_id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_~-][A-Za-z0-9._~-]{0,35}|\\.[A-Za-z0-9_~-]{1,5}"
}

/// The route with `id`, spelled as `spells`/`detours`/`params` say; returns
/// the raw path as tokens (so an escape is never split) and the canonical
/// route it must forward to.
fn spelled_route(
    id: &str,
    spells: &[Spell],
    detours: &[Index],
    params: &[bool],
    trailing: bool,
) -> (Vec<String>, String) {
    let literal = ROUTE.replace("{conversationId}", id);
    let mut tokens = Vec::new();
    let mut k = 0;
    for (i, segment) in literal[1..].split('/').enumerate() {
        let is_id = i == 6;
        tokens.push("/".to_owned());
        tokens.push(DETOURS[detours[i].index(DETOURS.len())].to_owned());
        for ch in segment.chars() {
            k += 1;
            tokens.push(match spells[k % spells.len()] {
                Spell::Plain => ch.to_string(),
                // Letter case of literal segments does not matter; a
                // conversation id is forwarded as sent.
                Spell::Upper if !is_id => ch.to_ascii_uppercase().to_string(),
                Spell::Upper => ch.to_string(),
                Spell::Escaped { lower_hex: false } => format!("%{:02X}", ch as u32),
                Spell::Escaped { lower_hex: true } => format!("%{:02x}", ch as u32),
            });
        }
        if params[i % params.len()] {
            tokens.push(";jsessionid=x".to_owned());
        }
    }
    if trailing {
        tokens.push("/".to_owned());
    }
    (tokens, literal)
}

/// A path made of valid pieces, often dot segments and parameters.
fn path_like() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec![
            "/", "/", "/", ".", "..", ";", "=", "a", "B", "v", "m", "x1", "%2e", "%2E", "%41",
            "%7e", "%c3%a9", "%20", "~", "-", "@", ":",
        ]),
        0..30,
    )
    .prop_map(|pieces| format!("/{}", pieces.concat()))
}

/// The canonical path as an upstream that removes `;parameters` from every
/// segment and then resolves dot segments reads it.
fn without_parameters(canonical: &str) -> CanonicalPath {
    let stripped: Vec<&str> = canonical
        .split('/')
        .map(|s| s.split(';').next().unwrap_or(s))
        .collect();
    CanonicalPath::parse(&stripped.join("/")).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_spelling_of_the_route_matches_it(
        id in conversation_id(),
        spells in prop::collection::vec(spell(), 1..40),
        detours in prop::collection::vec(any::<Index>(), 8),
        params in prop::collection::vec(prop::bool::weighted(0.2), 8),
        trailing in any::<bool>(),
    ) {
        let template = RouteTemplate::parse(ROUTE).unwrap();
        let (tokens, canonical) = spelled_route(&id, &spells, &detours, &params, trailing);
        let raw = tokens.concat();
        let path = CanonicalPath::parse(&raw).unwrap();
        prop_assert_eq!(template.matches(&path), Some(canonical.clone()), "{}", raw);
        // What is forwarded is itself the route, in canonical form.
        let forwarded = CanonicalPath::parse(&canonical).unwrap();
        prop_assert_eq!(forwarded.as_path(), canonical.as_str());
        prop_assert_eq!(template.matches(&forwarded), Some(canonical));
        // The canonical form is a fixed point.
        let again = CanonicalPath::parse(path.as_path()).unwrap();
        prop_assert_eq!(again, path);
    }

    #[test]
    fn an_encoded_separator_is_never_the_route(
        id in conversation_id(),
        spells in prop::collection::vec(spell(), 1..40),
        detours in prop::collection::vec(any::<Index>(), 8),
        at in any::<Index>(),
        escape in prop::sample::select(vec!["%2F", "%2f", "%5C", "%5c", "%3B", "%3b"]),
    ) {
        let (mut tokens, _) = spelled_route(&id, &spells, &detours, &[false], false);
        // Anywhere after the leading '/', even inside a segment.
        let at = 1 + at.index(tokens.len());
        tokens.insert(at, escape.to_owned());
        let raw = tokens.concat();
        prop_assert_eq!(CanonicalPath::parse(&raw), Err(PathError::EncodedSeparator), "{}", raw);
    }

    #[test]
    fn canonical_form_is_a_fixed_point_and_parameters_never_hide_a_route(raw in path_like()) {
        let path = CanonicalPath::parse(&raw).unwrap();
        let canonical = path.as_path();
        let again = CanonicalPath::parse(canonical).unwrap();
        prop_assert_eq!(&again, &path, "{}", raw);
        prop_assert_eq!(again.as_path(), canonical);
        for route in [ROUTE, "/v/{id}/m", "/a/{x}"] {
            let template = RouteTemplate::parse(route).unwrap();
            let matched = template.matches(&path);
            prop_assert_eq!(template.matches(&again), matched.clone());
            prop_assert_eq!(
                template.matches(&without_parameters(canonical)),
                matched,
                "{} -> {} for {}", raw, canonical, route
            );
        }
    }
}
