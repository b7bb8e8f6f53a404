//! Any string as a request path: canonicalizing never panics, the canonical
//! form is a fixed point, and matching the route depends only on it.
#![no_main]

use guestgate::routing::{CanonicalPath, RouteTemplate};
use libfuzzer_sys::fuzz_target;

const ROUTE: &str = "/api/v2/conversations/messaging/guest/conversations/{conversationId}/messages";

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let template = RouteTemplate::parse(ROUTE).expect("the default route parses");
    let Ok(path) = CanonicalPath::parse(raw) else {
        return;
    };
    let canonical = path.as_path();
    let again = CanonicalPath::parse(&canonical).expect("the canonical form parses");
    assert_eq!(again.as_path(), canonical, "canonical form is a fixed point");
    let matched = template.matches(&path);
    assert_eq!(template.matches(&again), matched);
    if let Some(forwarded) = matched {
        let forwarded_path = CanonicalPath::parse(&forwarded).expect("forwarded path parses");
        assert_eq!(
            template.matches(&forwarded_path).as_deref(),
            Some(forwarded.as_str()),
            "the forwarded path is the route"
        );
    }
});
