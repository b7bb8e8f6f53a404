//! Any body through any small set of configured edits: `apply` never panics,
//! what it accepts serializes to one strict JSON object, an unmodified body
//! is untouched, and edits that `Edits::is_idempotent` accepts change
//! nothing the second time.
//!
//! Input: the body, a NUL byte, then a script read three bytes per edit
//! (operation, pointer, value), each an index into the pools below.
#![no_main]

use guestgate_core::edit::{Edits, apply};
use guestgate_core::pointer::Pointer;
use guestgate_core::sanitize::parse_object;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

/// Pointers as configuration might spell them: escapes, indices (and
/// digit keys that are not indices), wildcards, missing parents.
const POINTERS: [&str; 20] = [
    "/id",
    "/to",
    "/to/id",
    "/a",
    "/a/b",
    "/a~1b",
    "/m~0n",
    "/*",
    "/a/*",
    "/*/id",
    "/content/*/id",
    "/content/0",
    "/content/1/body",
    "/l/0",
    "/l/*/x",
    "/x/y/z",
    "/0",
    "/*/*",
    "/a/01",
    "/memberInfo/displayName",
];

const MAX_EDITS: usize = 8;

fn values() -> [Value; 9] {
    [
        Value::Null,
        json!(1),
        json!("v"),
        json!({"id": "queue-1"}),
        json!([]),
        json!({}),
        json!({"b": [1]}),
        json!(1.0),
        json!(true),
    ]
}

fn edits(script: &[u8]) -> Edits {
    let values = values();
    let pick = |b: u8| values[usize::from(b) % values.len()].clone();
    let mut edits = Edits::default();
    for step in script.chunks_exact(3).take(MAX_EDITS) {
        let pointer = Pointer::parse(POINTERS[usize::from(step[1]) % POINTERS.len()])
            .expect("the pool holds valid pointers");
        match step[0] % 5 {
            0 => edits.remove.push(pointer),
            1 => edits.set_if_missing.push((pointer, pick(step[2]))),
            2 => edits.set.push((pointer, pick(step[2]))),
            3 => edits
                .allow
                .push((pointer, vec![pick(step[2]), pick(step[2].wrapping_add(1))])),
            _ => edits.require.push(pointer),
        }
    }
    edits
}

fuzz_target!(|data: &[u8]| {
    let (body, script) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let Ok(mut map) = parse_object(body) else {
        return;
    };
    let input = serde_json::to_vec(&map).expect("a JSON map always serializes");
    let edits = edits(script);
    let Ok(changes) = apply(&mut map, &edits) else {
        return;
    };

    // The edited body is one strict JSON object: no duplicate key, nothing
    // the vendor could read two ways.
    let out = serde_json::to_vec(&map).expect("a JSON map always serializes");
    let reparsed = parse_object(&out).expect("the output is one strict JSON object");
    assert_eq!(
        serde_json::to_vec(&reparsed).expect("a JSON map always serializes"),
        out,
        "the output reads back as itself"
    );
    if !changes.modified() {
        assert_eq!(out, input, "an unmodified body is untouched");
    }

    // Applying again never panics; idempotent edits change nothing.
    let again = apply(&mut map, &edits);
    if edits.is_idempotent() {
        let again = again.expect("the output is accepted again");
        assert!(!again.modified(), "nothing left to change: {again:?}");
        let twice = serde_json::to_vec(&map).expect("a JSON map always serializes");
        assert_eq!(twice, out, "editing is idempotent");
    }
});
