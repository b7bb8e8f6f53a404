//! Any bytes through the `[guest_messages]` edits, under both `to` policies: it never panics,
//! and whatever it accepts comes out as one strict JSON object with no stripped
//! top-level field, the right `to`, every other field kept in order, and it
//! sanitizes again to the same bytes.
#![no_main]

use guestgate_core::edit::Op;
use guestgate_core::sanitize::{ToPolicy, parse_object, sanitize_bytes, shorthand_edits};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};

const STRIP: [&str; 2] = ["id", "clientId"];

fn check(data: &[u8], to_policy: ToPolicy) {
    let to = json!({"id": "queue-1"});
    let strip: Vec<String> = STRIP.iter().map(|s| (*s).to_owned()).collect();
    let policy = shorthand_edits(&strip, to.clone(), to_policy).expect("valid edits");
    let Ok((out, changes)) = sanitize_bytes(data, &policy) else {
        return;
    };
    // What was accepted parses (strictly) as the same object the sanitizer saw.
    let input = parse_object(data).expect("sanitize accepted it, so parse_object does");

    // The output is one JSON object, for the strict parser and for serde_json.
    let output = parse_object(&out).expect("the output is one strict JSON object");
    let loose: Value = serde_json::from_slice(&out).expect("the output is JSON");
    assert!(loose.is_object(), "the output is an object");

    for key in STRIP {
        assert!(!output.contains_key(key), "stripped field {key:?} is gone");
    }
    let expected_to = match (to_policy, input.get("to")) {
        (ToPolicy::IfMissing, Some(client)) => client,
        _ => &to,
    };
    assert_eq!(output.get("to"), Some(expected_to), "the right `to`");

    // Every other field is kept, equal, and in order; `to` keeps its place
    // when the client sent one and is appended otherwise.
    let mut expected: Map<String, Value> = input
        .iter()
        .filter(|(k, _)| !STRIP.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    expected.insert("to".to_owned(), expected_to.clone());
    assert_eq!(
        serde_json::to_vec(&expected).unwrap(),
        out.to_vec(),
        "only the stripped fields and `to` changed"
    );
    let stripped: Vec<&str> = STRIP
        .iter()
        .copied()
        .filter(|k| input.contains_key(*k))
        .collect();
    let removed: Vec<&str> = changes
        .edits
        .iter()
        .filter(|c| c.op == Op::Removed)
        .map(|c| &c.pointer[1..])
        .collect();
    assert_eq!(removed, stripped, "changes name the stripped fields");

    // Sanitizing is idempotent: the output is already what would be forwarded.
    let (again, changes_again) = sanitize_bytes(&out, &policy).expect("the output is accepted");
    assert_eq!(again, out, "sanitizing is idempotent");
    assert!(!changes_again.modified(), "nothing left to change");
}

fuzz_target!(|data: &[u8]| {
    check(data, ToPolicy::Override);
    check(data, ToPolicy::IfMissing);
});
