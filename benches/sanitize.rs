//! Micro-benchmark of the guest message sanitizer alone (issue 5).
//!
//! `sanitize_bytes` is what the proxy runs per intercepted request (strict
//! parse + strip `id` + set `to` + re-serialize); it is measured on a typical
//! ~200-byte guest message and on a 16 KiB one. `parse_object` and
//! `sanitize` (on an already parsed map) split the cost.
//!
//! Run with `cargo bench --bench sanitize` (bench/run.sh does, and puts the
//! numbers in its results file). `BENCH_QUICK=1` shortens the measurement.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use guestgate::edit::{Edits, apply};
use guestgate::sanitize::{ToPolicy, shorthand_edits};
use guestgate::sanitize::{parse_object, sanitize_bytes};
use serde_json::json;

/// The same ~200-byte message the load test sends (bench/lib/message.json).
const SMALL: &str = include_str!("../bench/lib/message.json");

/// A 16 KiB message: a long text with escapes and non-ASCII characters plus
/// a metadata array of small objects, built deterministically.
fn large_message() -> Vec<u8> {
    let mut text = String::new();
    let sentence = "Bonjour, j'ai commandé la veste \"Alpine\" (réf. 48213) — \
                    pouvez-vous changer l'adresse de livraison ? Merci ✓\n";
    while text.len() < 8 * 1024 {
        text.push_str(sentence);
    }
    let mut meta = Vec::new();
    let mut i = 0u64;
    loop {
        meta.push(json!({
            "key": format!("field-{i}"),
            "value": i * 7919 % 104729,
            "ratio": (i as f64) / 7.0,
            "tags": ["web", "guest", i.to_string()],
        }));
        i += 1;
        let candidate = json!({
            "id": "c2f1a8e4-5b7d-4e0a-9f3c-6d2b1a0e9f87",
            "body": text,
            "bodyType": "standard",
            "metadata": meta,
        });
        let bytes = serde_json::to_vec(&candidate).unwrap();
        if bytes.len() >= 16 * 1024 - 64 {
            assert!(bytes.len() <= 16 * 1024 + 256);
            return bytes;
        }
    }
}

/// The `[guest_messages]` defaults: remove `id`, set `to`.
fn policy() -> Edits {
    shorthand_edits(
        &["id".to_owned()],
        json!({"id": "bench-queue-0001"}),
        ToPolicy::Override,
    )
    .expect("valid edits")
}

fn benches(c: &mut Criterion) {
    let policy = policy();
    let large = large_message();
    let inputs: [(&str, &[u8]); 2] = [("200B", SMALL.as_bytes()), ("16KiB", &large)];

    // Sanity: the bench measures the real transformation.
    for (_, body) in inputs {
        let (out, changes) = sanitize_bytes(body, &policy).expect("valid message");
        assert!(changes.modified());
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert!(v.get("id").is_none());
        assert_eq!(v["to"], json!({"id": "bench-queue-0001"}));
    }

    let mut g = c.benchmark_group("sanitize_bytes");
    for (name, body) in inputs {
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| sanitize_bytes(black_box(body), black_box(&policy)).unwrap())
        });
    }
    g.finish();

    let mut g = c.benchmark_group("parse_object");
    for (name, body) in inputs {
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(name, |b| b.iter(|| parse_object(black_box(body)).unwrap()));
    }
    g.finish();

    let mut g = c.benchmark_group("sanitize_map");
    let map = parse_object(SMALL.as_bytes()).unwrap();
    g.bench_function("200B", |b| {
        b.iter_batched(
            || map.clone(),
            |mut m| {
                let changes = apply(&mut m, black_box(&policy));
                (m, changes)
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();

    let mut g = c.benchmark_group("serialize");
    for (name, body) in inputs {
        let mut m = parse_object(body).unwrap();
        apply(&mut m, &policy).expect("valid edits");
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| serde_json::to_vec(black_box(&m)).unwrap())
        });
    }
    g.finish();
}

fn config() -> Criterion {
    let quick = std::env::var_os("BENCH_QUICK").is_some_and(|v| v == "1");
    let (warm, measure, samples) = if quick {
        (Duration::from_millis(300), Duration::from_secs(1), 20)
    } else {
        (Duration::from_secs(1), Duration::from_secs(3), 50)
    };
    Criterion::default()
        .warm_up_time(warm)
        .measurement_time(measure)
        .sample_size(samples)
}

criterion_group! {
    name = sanitizer;
    config = config();
    targets = benches
}
criterion_main!(sanitizer);
