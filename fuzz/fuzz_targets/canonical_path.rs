//! Any string as a request path: canonicalizing never panics, the canonical
//! form is a fixed point, matching depends only on it, an encoded `/`, `\`
//! or `;` is always refused, and what is forwarded is read the same way by an
//! upstream that drops `;parameters` before resolving dot segments (as
//! Tomcat, Jetty and Spring do).
#![no_main]

use guestgate_core::routing::{CanonicalPath, RouteTemplate};
use libfuzzer_sys::fuzz_target;

const ROUTES: [&str; 2] = [
    "/api/v2/conversations/messaging/guest/conversations/{conversationId}/messages",
    "/v/{id}/m",
];

/// The canonical path as an upstream that removes `;parameters` from every
/// segment and then resolves dot segments would route it.
fn without_parameters(canonical: &str) -> CanonicalPath {
    let stripped: Vec<&str> = canonical
        .split('/')
        .map(|s| s.split(';').next().unwrap_or(s))
        .collect();
    CanonicalPath::parse(&stripped.join("/")).expect("a canonical path without parameters parses")
}

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = CanonicalPath::parse(raw);
    let lower = raw.to_ascii_lowercase();
    if ["%2f", "%5c", "%3b"].iter().any(|e| lower.contains(e)) {
        assert!(
            parsed.is_err(),
            "an encoded separator is refused: {parsed:?}"
        );
    }
    let Ok(path) = parsed else {
        return;
    };
    let canonical = path.as_path();
    assert!(canonical.starts_with('/'), "origin-form");
    assert!(!canonical.contains("//"), "no empty segment");
    let again = CanonicalPath::parse(canonical).expect("the canonical form parses");
    assert_eq!(again, path, "canonical form is a fixed point");
    assert_eq!(
        again.as_path(),
        canonical,
        "canonical form is a fixed point"
    );

    for route in ROUTES {
        let template = RouteTemplate::parse(route).expect("the route parses");
        let matched = template.matches(&path);
        assert_eq!(template.matches(&again), matched, "matching is stable");
        assert_eq!(
            template.matches(&without_parameters(canonical)),
            matched,
            "an upstream that drops ;parameters routes {canonical:?} the same way"
        );
        if let Some(forwarded) = matched {
            let forwarded_path =
                CanonicalPath::parse(&forwarded).expect("the forwarded path parses");
            assert_eq!(
                forwarded_path.as_path(),
                forwarded,
                "forwarded path is canonical"
            );
            assert_eq!(
                template.matches(&forwarded_path).as_deref(),
                Some(forwarded.as_str()),
                "the forwarded path is the route"
            );
        }
    }
});
