//! Any bytes through the sanitizer: it never panics, and whatever it accepts
//! comes out as one canonical object with no stripped field and the
//! configured `to`, which sanitizes again to the same bytes.
#![no_main]

use guestgate::config::ToPolicy;
use guestgate::sanitize::{Policy, sanitize_bytes};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};

fuzz_target!(|data: &[u8]| {
    let policy = Policy::new(
        vec!["id".into(), "clientId".into()],
        json!({"id": "queue-1"}),
        ToPolicy::Override,
    );
    let Ok((out, _changes)) = sanitize_bytes(data, &policy) else {
        return;
    };
    let object: Map<String, Value> =
        serde_json::from_slice(&out).expect("the output is one JSON object");
    assert!(!object.contains_key("id"));
    assert!(!object.contains_key("clientId"));
    assert_eq!(object.get("to"), Some(policy.to()));
    let (again, _) = sanitize_bytes(&out, &policy).expect("the output is accepted again");
    assert_eq!(again, out, "sanitizing is idempotent");
});
