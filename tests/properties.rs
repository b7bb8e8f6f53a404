//! Property tests: for any JSON object the sanitized output has no client
//! `id`, has the configured `to`, and keeps every other field equal and in
//! order; and every spelling of the guest messages route matches it.

use guestgate::config::ToPolicy;
use guestgate::routing::{CanonicalPath, RouteTemplate};
use guestgate::sanitize::{Policy, sanitize_bytes};
use proptest::prelude::*;
use serde_json::{Map, Number, Value, json};

const ROUTE: &str = "/api/v2/conversations/messaging/guest/conversations/{conversationId}/messages";

/// Numbers of any size and spelling that JSON allows.
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        (-1e300f64..1e300).prop_map(|f| json!(f)),
        "-?[1-9][0-9]{20,60}(\\.[0-9]{1,30})?"
            .prop_map(|s| Value::Number(s.parse::<Number>().expect("a JSON number"))),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        any::<String>().prop_map(Value::String),
        "\\PC{0,20}".prop_map(Value::String),
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

/// Keys, often ones the sanitizer cares about.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("id".to_owned()),
        Just("to".to_owned()),
        Just("from".to_owned()),
        Just("Id".to_owned()),
        "[a-zA-Z_]{1,12}",
        any::<String>(),
    ]
}

fn object() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::vec((key(), value()), 0..12).prop_map(|pairs| pairs.into_iter().collect())
}

fn policy() -> impl Strategy<Value = Policy> {
    (
        prop_oneof![Just(ToPolicy::Override), Just(ToPolicy::IfMissing)],
        prop::collection::vec("[a-z]{1,6}", 0..3),
        value(),
    )
        .prop_map(|(to_policy, extra, to)| {
            let mut strip = vec!["id".to_owned()];
            strip.extend(extra.into_iter().filter(|k| k != "to"));
            Policy::new(strip, json!({ "id": "queue-1", "extra": to }), to_policy)
        })
}

fn strips(policy: &Policy, key: &str) -> bool {
    // The policy's strip list is not public; the generator always strips
    // `id`, and re-sanitizing tells whether a key was in the list.
    let probe = serde_json::to_vec(&json!({ key: 1 })).unwrap();
    let (out, _) = sanitize_bytes(&probe, policy).unwrap();
    let out: Map<String, Value> = serde_json::from_slice(&out).unwrap();
    key != "to" && !out.contains_key(key)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn sanitized_output_has_no_id_the_configured_to_and_everything_else(
        input in object(),
        policy in policy(),
    ) {
        let bytes = serde_json::to_vec(&input).unwrap();
        let (out, changes) = sanitize_bytes(&bytes, &policy).unwrap();
        let output: Map<String, Value> = serde_json::from_slice(&out).unwrap();

        prop_assert!(!output.contains_key("id"));
        let expected_to = match (input.get("to"), policy_is_override(&policy)) {
            (Some(client), false) => client.clone(),
            _ => policy.to().clone(),
        };
        prop_assert_eq!(output.get("to"), Some(&expected_to));

        // Every other field is kept, equal, and in its original order.
        let kept: Vec<(&String, &Value)> = input
            .iter()
            .filter(|(k, _)| *k != "to" && !strips(&policy, k))
            .collect();
        let out_others: Vec<(&String, &Value)> =
            output.iter().filter(|(k, _)| *k != "to").collect();
        prop_assert_eq!(kept, out_others);

        let stripped: Vec<&String> = input.keys().filter(|k| *k != "to" && strips(&policy, k)).collect();
        prop_assert_eq!(changes.stripped.len(), stripped.len());

        // Sanitizing is idempotent: the output is already canonical.
        let (again, _) = sanitize_bytes(&out, &policy).unwrap();
        prop_assert_eq!(again, out);
    }

    #[test]
    fn non_objects_are_refused(value in value().prop_filter("not an object", |v| !v.is_object())) {
        let bytes = serde_json::to_vec(&value).unwrap();
        let policy = Policy::new(vec!["id".into()], json!({"id": "q"}), ToPolicy::Override);
        prop_assert!(sanitize_bytes(&bytes, &policy).is_err());
    }

    #[test]
    fn every_spelling_of_the_route_matches_it(
        id in "[A-Za-z0-9_~-][A-Za-z0-9._~-]{0,35}",
        spelling in prop::collection::vec(0u8..8, 9),
        flips in prop::collection::vec(any::<bool>(), 80),
        escapes in prop::collection::vec(any::<bool>(), 80),
    ) {
        prop_assume!(id != "." && id != "..");
        let template = RouteTemplate::parse(ROUTE).unwrap();
        let literal = ROUTE.replace("{conversationId}", &id);
        let segments: Vec<&str> = literal[1..].split('/').collect();
        let mut raw = String::new();
        let mut k = 0;
        for (i, segment) in segments.iter().enumerate() {
            let is_id = i == 6;
            let mut text = String::new();
            for ch in segment.chars() {
                k = (k + 1) % flips.len();
                // Letter case of literal segments does not matter.
                let ch = if !is_id && flips[k] { ch.to_ascii_uppercase() } else { ch };
                // Percent-encoding an unreserved character, in either hex case, does not matter.
                if escapes[k] {
                    let hex = format!("%{:02X}", ch as u32);
                    text.push_str(&if flips[(k + 1) % flips.len()] { hex.to_ascii_lowercase() } else { hex });
                } else {
                    text.push(ch);
                }
            }
            raw.push('/');
            match spelling[i] {
                1 => raw.push('/'),                      // repeated slash
                2 => raw.push_str("./"),                 // dot segment
                3 => raw.push_str("detour/../"),         // dot-dot segment
                _ => {}
            }
            raw.push_str(&text);
            if spelling[i] == 4 {
                raw.push_str(";jsessionid=x");           // ;parameters
            }
        }
        if spelling[8] % 2 == 1 {
            raw.push('/');                               // trailing slash
        }
        let canonical = CanonicalPath::parse(&raw).unwrap();
        prop_assert_eq!(template.matches(&canonical), Some(literal.clone()), "{}", raw);
        // The canonical form is a fixed point.
        let again = CanonicalPath::parse(&canonical.as_path()).unwrap();
        prop_assert_eq!(again.as_path(), canonical.as_path());
    }

    #[test]
    fn an_encoded_slash_is_never_the_route(
        id in "[A-Za-z0-9-]{1,12}",
        at in 1usize..8,
        lower in any::<bool>(),
    ) {
        let literal = ROUTE.replace("{conversationId}", &id);
        let mut segments: Vec<String> = literal[1..].split('/').map(str::to_owned).collect();
        let escape = if lower { "%2f" } else { "%2F" };
        let joined = format!("{}{escape}{}", segments[at - 1], segments[at]);
        segments.splice(at - 1..=at, [joined]);
        let raw = format!("/{}", segments.join("/"));
        prop_assert!(CanonicalPath::parse(&raw).is_err(), "{}", raw);
    }
}

fn policy_is_override(policy: &Policy) -> bool {
    // Probe: a body with another `to` keeps it only under if_missing.
    let probe = br#"{"to":{"id":"client-choice"}}"#;
    let (out, _) = sanitize_bytes(probe, policy).unwrap();
    let out: Map<String, Value> = serde_json::from_slice(&out).unwrap();
    out["to"] == *policy.to()
}
