//! `[[rules]]` through the real binary: every request goes over a socket to
//! `guestgate` started with a configuration file, and the assertions are on
//! what a recording upstream really received (or that it received nothing).

mod common;

use common::{Binary, RecordingUpstream, check, post, raw};
use serde_json::{Value, json};

const WEBCHAT: &str = "/api/v2/webchat/guest/conversations";
const SEND: &str = "/api/v2/webchat/guest/conversations/c-1/members/m-1/messages";

/// Two Web Chat v2 rules and an inbound rule with a wildcard; no
/// `guest_messages.to`, so the report's route is not intercepted.
const RULES: &str = r#"
[[rules]]
name = "webchat-create"
path = "/api/v2/webchat/guest/conversations"
remove = ["/memberAuthToken", "/routingTarget/priority"]
require = ["/memberInfo/displayName"]
[rules.set]
"/routingTarget/targetType" = "QUEUE"
"/routingTarget/targetAddress" = "Support"
[rules.set_if_missing]
"/memberInfo/customFields" = {}
[rules.set_by_origin."https://shop.example.com"]
"/routingTarget/targetAddress" = "Shop"

[[rules]]
name = "webchat-send"
methods = ["post", "PUT"]
path = "/api/v2/webchat/guest/conversations/{conversationId}/members/{memberId}/messages"
[rules.allow]
"/bodyType" = ["standard"]

[[rules]]
name = "inbound"
path = "/api/v2/conversations/messages/{integrationId}/inbound/open/message"
remove = ["/content/*/id", "/channel/from/x~1y"]
[rules.set]
"/channel/to/id" = "integration"
"/content/0/kind" = "first"
"#;

fn body(response: &common::RawResponse) -> Value {
    response.json()
}

fn received(upstream: &RecordingUpstream) -> Value {
    serde_json::from_slice(&upstream.requests().last().expect("forwarded").body).unwrap()
}

#[tokio::test]
async fn nested_edits_apply_in_order_and_only_there() {
    let upstream = RecordingUpstream::start().await;
    let proxy = Binary::start(RULES, &upstream, &[]).await;
    let create = json!({
        "organizationId": "org",
        "deploymentId": "dep",
        "memberAuthToken": "secret-jwt",
        "routingTarget": {"targetType": "USER", "targetAddress": "ceo", "priority": 100, "language": "fr"},
        "memberInfo": {"displayName": "Ann", "customFields": {"tier": "gold"}}
    });
    let response = raw(
        proxy.addr,
        &post(
            WEBCHAT,
            "Content-Type: application/json\r\n",
            create.to_string().as_bytes(),
        ),
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.body_str());
    assert_eq!(
        received(&upstream),
        json!({
            "organizationId": "org",
            "deploymentId": "dep",
            "routingTarget": {"targetType": "QUEUE", "targetAddress": "Support", "language": "fr"},
            "memberInfo": {"displayName": "Ann", "customFields": {"tier": "gold"}}
        }),
        "removed, overridden in place, client's customFields kept"
    );
    // Missing parents are created, set_if_missing fills in.
    let bare = json!({"memberInfo": {"displayName": "Bo"}});
    raw(proxy.addr, &post(WEBCHAT, "", bare.to_string().as_bytes())).await;
    assert_eq!(
        received(&upstream),
        json!({
            "memberInfo": {"displayName": "Bo", "customFields": {}},
            "routingTarget": {"targetType": "QUEUE", "targetAddress": "Support"}
        })
    );
    // The upstream's answer is relayed unchanged.
    assert_eq!(
        body(&response),
        json!({"id": "server-generated", "ok": true})
    );
}

#[tokio::test]
async fn first_matching_rule_applies_and_other_requests_pass_through() {
    let upstream = RecordingUpstream::start().await;
    let proxy = Binary::start(RULES, &upstream, &[]).await;
    // `methods` in any letter case; PUT is listed too.
    let message = br#"{"body":"hi","bodyType":"notice"}"#;
    let refused = raw(proxy.addr, &post(SEND, "", message)).await;
    let problem = refused.assert_problem(400);
    assert_eq!(
        problem["type"],
        "tag:guestgate,2026:problem:field-not-allowed"
    );
    assert_eq!(problem["rule"], "webchat-send");
    assert!(problem["detail"].as_str().unwrap().contains("/bodyType"));
    assert!(
        !problem.to_string().contains("notice"),
        "no value in {problem}"
    );
    let put = format!(
        "PUT {SEND} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        message.len()
    );
    let refused = raw(proxy.addr, &[put.as_bytes(), message].concat()).await;
    refused.assert_problem(400);
    assert_eq!(
        upstream.count(),
        0,
        "nothing of a refused body is forwarded"
    );
    // An accepted PUT is edited and reaches the upstream as a PUT.
    let accepted = br#"{"body":"hi","id":"client-id"}"#;
    let put = format!(
        "PUT {SEND} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        accepted.len()
    );
    let answered = raw(proxy.addr, &[put.as_bytes(), accepted].concat()).await;
    assert_eq!(answered.status, 200, "{}", answered.body_str());
    let sent = upstream.requests().pop().unwrap();
    assert_eq!(sent.method, "PUT");
    assert_eq!(sent.body_str(), r#"{"body":"hi","id":"client-id"}"#);
    // A GET on a rule's path and a POST elsewhere pass through untouched.
    raw(
        proxy.addr,
        format!("GET {SEND} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    let odd = br#"{"id":"x", "bodyType" : "notice"}"#;
    raw(proxy.addr, &post("/api/v2/other", "", odd)).await;
    // The report's route is no rule here: guest_messages.to is not set.
    raw(proxy.addr, &post(common::ROUTE, "", odd)).await;
    let seen = &upstream.requests()[1..];
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].method, "GET");
    assert_eq!(&seen[1].body[..], odd, "pass-through bytes unchanged");
    assert_eq!(&seen[2].body[..], odd);
    let allowed = raw(
        proxy.addr,
        &post(SEND, "", br#"{"body":"hi","bodyType":"standard"}"#),
    )
    .await;
    assert_eq!(allowed.status, 200);
}

#[tokio::test]
async fn require_and_structure_errors_are_400s_naming_the_pointer() {
    let upstream = RecordingUpstream::start().await;
    let proxy = Binary::start(RULES, &upstream, &[]).await;
    let cases: [(&str, &[u8], &str, &str); 5] = [
        (
            WEBCHAT,
            br#"{"memberInfo":{}}"#,
            "field-required",
            "/memberInfo/displayName",
        ),
        (
            WEBCHAT,
            br#"{"memberInfo":"Ann"}"#,
            "invalid-body",
            r#""/memberInfo" is not an object"#,
        ),
        (
            WEBCHAT,
            br#"{"memberInfo":{"displayName":"A"},"routingTarget":"x"}"#,
            "invalid-body",
            "/routingTarget",
        ),
        (
            "/api/v2/conversations/messages/i-1/inbound/open/message",
            br#"{"content":[]}"#,
            "invalid-body",
            "/content/0",
        ),
        (WEBCHAT, br#"{"a":1,"a":2}"#, "invalid-body", "duplicate"),
    ];
    for (path, sent, kind, named) in cases {
        let response = raw(proxy.addr, &post(path, "", sent)).await;
        let problem = response.assert_problem(400);
        assert_eq!(
            problem["type"],
            format!("tag:guestgate,2026:problem:{kind}"),
            "{problem}"
        );
        assert!(
            problem["detail"].as_str().unwrap().contains(named),
            "{problem}"
        );
    }
    assert_eq!(upstream.count(), 0);
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains(
            r#"guestgate_rejected_total{rule="webchat-create",reason="field-required"} 1"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn wildcards_escapes_and_array_indices() {
    let upstream = RecordingUpstream::start().await;
    let proxy = Binary::start(RULES, &upstream, &[]).await;
    let sent = json!({
        "channel": {"from": {"id": "u", "x/y": 1, "to": "kept"}, "to": {"id": "other"}},
        "content": [{"id": 1, "text": "a"}, {"id": 2}, "not-an-object"],
        "text": "hello"
    });
    let path = "/api/v2/conversations/messages/i-1/inbound/open/message";
    let response = raw(proxy.addr, &post(path, "", sent.to_string().as_bytes())).await;
    assert_eq!(response.status, 200, "{}", response.body_str());
    assert_eq!(
        received(&upstream),
        json!({
            "channel": {"from": {"id": "u", "to": "kept"}, "to": {"id": "integration"}},
            "content": [{"text": "a", "kind": "first"}, {}, "not-an-object"],
            "text": "hello"
        })
    );
}

#[tokio::test]
async fn origins_choose_their_set_values() {
    let upstream = RecordingUpstream::start().await;
    let proxy = Binary::start(RULES, &upstream, &[]).await;
    let sent = br#"{"memberInfo":{"displayName":"A"}}"#;
    raw(
        proxy.addr,
        &post(WEBCHAT, "Origin: https://shop.example.com\r\n", sent),
    )
    .await;
    assert_eq!(
        received(&upstream)["routingTarget"]["targetAddress"],
        "Shop"
    );
    raw(
        proxy.addr,
        &post(WEBCHAT, "Origin: https://other.example\r\n", sent),
    )
    .await;
    assert_eq!(
        received(&upstream)["routingTarget"]["targetAddress"],
        "Support"
    );
}

#[tokio::test]
async fn a_rule_sends_to_its_own_upstream() {
    let default = RecordingUpstream::start().await;
    let api = RecordingUpstream::start().await;
    let config = format!(
        "[upstreams.api]\nbase_url = \"http://{}/prefix\"\n{}",
        api.addr,
        RULES.replacen(
            "name = \"webchat-send\"",
            "name = \"webchat-send\"\nupstream = \"api\"",
            1
        )
    );
    let proxy = Binary::start(&config, &default, &[]).await;
    let sent = br#"{"body":"hi"}"#;
    let response = raw(proxy.addr, &post(SEND, "", sent)).await;
    assert_eq!(response.status, 200);
    raw(proxy.addr, &post("/api/v2/other", "", sent)).await;
    let got = api.only();
    assert_eq!(got.uri, format!("/prefix{SEND}"));
    assert_eq!(got.body_str(), r#"{"body":"hi"}"#);
    assert_eq!(default.only().uri, "/api/v2/other");
}

#[tokio::test]
async fn report_only_and_retry_are_per_rule() {
    let flaky = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = flaky.clone();
    let upstream = RecordingUpstream::start_with(move |_| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        http::Response::builder()
            .status(if n == 0 { 503 } else { 200 })
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
            .unwrap()
    })
    .await;
    let config = format!("{RULES}\n[rules.retry]\nattempts = 2\nbackoff_ms = 1\n")
        .replacen(
            "name = \"webchat-send\"",
            "name = \"webchat-send\"\nreport_only = true",
            1,
        )
        .replacen(
            "name = \"inbound\"\npath = \"/api/v2/conversations",
            "name = \"inbound\"\npath = \"/api/v2/retried",
            1,
        );
    let proxy = Binary::start(&config, &upstream, &[]).await;
    // The last rule retries: after the 503 the second answer is relayed.
    let retried = "/api/v2/retried/messages/i-1/inbound/open/message";
    let response = raw(proxy.addr, &post(retried, "", br#"{"content":[{}]}"#)).await;
    assert_eq!(response.status, 200);
    assert_eq!(upstream.count(), 2);
    // report_only: forwarded as sent, counted for its rule.
    let notice = br#"{"body":"x","bodyType":"notice"}"#;
    let response = raw(proxy.addr, &post(SEND, "", notice)).await;
    assert_eq!(response.status, 200);
    assert_eq!(&upstream.requests()[2].body[..], notice);
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains(
            r#"guestgate_report_only_would_change_total{rule="webchat-send",action="rejected"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("guestgate_upstream_retries_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn metrics_and_logs_name_the_rule_and_pointers_never_values() {
    let upstream = RecordingUpstream::start().await;
    let proxy = Binary::start(RULES, &upstream, &[]).await;
    let sent = br#"{"memberAuthToken":"tok-SECRET","memberInfo":{"displayName":"Ann-SECRET"}}"#;
    raw(proxy.addr, &post(WEBCHAT, "", sent)).await;
    let metrics = proxy.metrics().await;
    for series in [
        r#"guestgate_requests_total{route="intercepted",rule="webchat-create",method="POST",status="2xx"} 1"#,
        r#"guestgate_edits_total{rule="webchat-create",op="removed",pointer="/memberAuthToken"} 1"#,
        r#"guestgate_edits_total{rule="webchat-create",op="injected",pointer="/routingTarget/targetType"} 1"#,
    ] {
        assert!(metrics.contains(series), "{series} in\n{metrics}");
    }
    // The log is written asynchronously; give it a moment.
    let mut edited = None;
    for _ in 0..40 {
        edited = proxy
            .log()
            .into_iter()
            .find(|l| l["message"] == "body edited");
        if edited.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let edited = edited.unwrap_or_else(|| panic!("no edit line in\n{}", proxy.log_text()));
    assert_eq!(edited["rule"], "webchat-create", "{edited}");
    assert!(
        edited["removed"]
            .as_str()
            .unwrap()
            .contains("/memberAuthToken")
    );
    assert!(!proxy.log_text().contains("SECRET"), "{}", proxy.log_text());
}

#[tokio::test]
async fn an_empty_body_rule_forwards_nothing_else() {
    let upstream = RecordingUpstream::start().await;
    let config = "[[rules]]\nname = \"typing\"\npath = \"/api/v2/webchat/guest/conversations/{c}/members/{m}/typing\"\nbody = \"empty\"\n";
    let proxy = Binary::start(config, &upstream, &[]).await;
    let path = "/api/v2/webchat/guest/conversations/c-1/members/m-1/typing";
    let ok = raw(proxy.addr, &post(path, "", b"")).await;
    assert_eq!(ok.status, 200);
    assert_eq!(upstream.only().body.len(), 0);
    let refused = raw(proxy.addr, &post(path, "", b"{\"x\":1}")).await;
    let problem = refused.assert_problem(400);
    assert_eq!(problem["type"], "tag:guestgate,2026:problem:invalid-body");
    assert_eq!(upstream.count(), 1);
}

#[tokio::test]
async fn guest_messages_keeps_working_beside_rules() {
    let upstream = RecordingUpstream::start().await;
    let proxy = Binary::start(
        RULES,
        &upstream,
        &[("GUESTGATE__GUEST_MESSAGES__TO__ID", "queue-env")],
    )
    .await;
    let response = raw(
        proxy.addr,
        &post(
            common::ROUTE,
            "",
            br#"{"id":"client","from":{"id":"g"},"text":"Hello"}"#,
        ),
    )
    .await;
    assert_eq!(response.status, 200);
    assert_eq!(
        upstream.only().body_str(),
        r#"{"from":{"id":"g"},"text":"Hello","to":{"id":"queue-env"}}"#
    );
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains(r#"guestgate_fields_stripped_total{field="id"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"guestgate_to_total{action="injected"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn encoded_delimiters_are_refused_on_every_path() {
    let upstream = RecordingUpstream::start().await;
    let proxy = Binary::start(RULES, &upstream, &[]).await;
    for path in [
        "/api/v2/webchat/guest/conversations%23x",
        "/api/v2/webchat/guest/conversations%3Fx=1",
        "/api/v2/webchat/guest/conversations/c-1/members/m%00/messages",
        "/api/v2/webchat/guest/conversations/c-1/members/m%1f/messages",
        "/api/v2/webchat/guest/conversations/c-1/members/m%7F/messages",
        "/api/v2/webchat/guest/conversations/c%252F1/members/m/messages",
        "/api/v2/webchat/guest%25%32%66conversations",
        "/api/v2/other%2Fpath",
        "/api/v2/other%5Cpath",
        "/api/v2/other%3Bpath",
    ] {
        let response = raw(proxy.addr, &post(path, "", b"{}")).await;
        let problem = response.assert_problem(400);
        assert_eq!(
            problem["type"], "tag:guestgate,2026:problem:invalid-path",
            "{path}: {problem}"
        );
    }
    assert_eq!(upstream.count(), 0);
}

#[test]
fn check_prints_the_rules_and_names_each_problem_by_rule() {
    let (ok, stdout, stderr) = check(RULES);
    assert!(ok, "{stderr}");
    for line in [
        "1. webchat-create POST /api/v2/webchat/guest/conversations -> default",
        "2. webchat-send POST,PUT /api/v2/webchat/guest/conversations/{conversationId}/members/{memberId}/messages -> default allow=1",
        "3. inbound POST",
    ] {
        assert!(stdout.contains(line), "{line:?} in\n{stdout}");
    }
    assert!(stdout.contains("[[rules]]"), "{stdout}");
    let bad = r#"
[upstreams.api]
base_url = "ftp://nope"

[[rules]]
name = "all"
path = "/a/{x}"

[[rules]]
name = "later"
path = "/a/b"

[[rules]]
name = "edits"
path = "/e"
remove = ["/a", "relative", "/b~2"]
[rules.set]
"/a" = 1
[rules.set_if_missing]
"/b" = 1
[rules.allow]
"/c" = []

[[rules]]
name = "All Caps"
path = "/c"
upstream = "missing"
[rules.set]
"/b" = 2
[rules.set_if_missing]
"/b" = 3
"#;
    let (ok, _, stderr) = check(bad);
    assert!(!ok);
    for problem in [
        "upstreams.api.base_url: ",
        r#"rules[2].remove."relative": "#,
        r#"rules[2].remove."/b~2": "#,
        r#"rules[2].set."/a": also in remove"#,
        r#"rules[2].allow."/c": must list at least one value"#,
        r#"rules[1]: can never match: rules[0] ("all") comes first"#,
        r#"rules[3].name: "All Caps""#,
        r#"rules[3].upstream: "missing" is not defined"#,
        r#"rules[3].set_if_missing."/b": also in set"#,
    ] {
        assert!(stderr.contains(problem), "{problem:?} in\n{stderr}");
    }
    // Without rules, guest_messages.to is still required.
    let (ok, _, stderr) = check("[server]\nlisten = \"127.0.0.1:0\"\n");
    assert!(!ok);
    assert!(stderr.contains("guest_messages.to: required"), "{stderr}");
}

/// Every preset in config/examples loads, and a request a client of that
/// API would send comes out edited as the preset says.
#[tokio::test]
async fn every_preset_loads_and_edits_what_its_clients_send() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/config/examples");
    let cases: [(&str, &str, Value, Value); 5] = [
        (
            "guest-messages.toml",
            "/api/v2/conversations/messaging/guest/conversations/c-1/messages",
            json!({"id": "client", "from": {"id": "g"}, "text": "Hello"}),
            json!({"from": {"id": "g"}, "text": "Hello", "to": {"id": "00000000-0000-0000-0000-000000000000"}}),
        ),
        (
            "webchat-v2.toml",
            WEBCHAT,
            json!({
                "organizationId": "other-org", "deploymentId": "other",
                "routingTarget": {"targetType": "USER", "targetAddress": "ceo", "priority": 9, "skills": ["vip"]},
                "memberInfo": {"displayName": "Ann"}
            }),
            json!({
                "organizationId": "00000000-0000-0000-0000-000000000000",
                "deploymentId": "00000000-0000-0000-0000-000000000001",
                "routingTarget": {"targetType": "QUEUE", "targetAddress": "Support"},
                "memberInfo": {"displayName": "Ann", "customFields": {}}
            }),
        ),
        (
            "webchat-v2.toml",
            SEND,
            json!({"body": "hi"}),
            json!({"body": "hi", "bodyType": "standard"}),
        ),
        (
            "open-messaging-inbound.toml",
            "/api/v2/conversations/messages/int-1/inbound/open/message",
            json!({
                "id": "x", "type": "Text", "text": "hi",
                "channel": {"from": {"id": "u-1"}, "to": {"id": "elsewhere"}, "time": "2026-12-01T00:00:00Z"},
                "content": [{"id": "c", "contentType": "Attachment"}]
            }),
            json!({
                "type": "Text", "text": "hi",
                "channel": {"from": {"id": "u-1", "idType": "Opaque"}, "time": "2026-12-01T00:00:00Z"},
                "content": [{"contentType": "Attachment"}]
            }),
        ),
        (
            "agentless.toml",
            "/api/v2/conversations/messages/agentless",
            json!({"fromAddress": "+1999", "toAddress": "+1555", "toAddressMessengerType": "whatsapp", "textBody": "hi", "useExistingActiveConversation": true}),
            json!({"fromAddress": "+15550100000", "toAddress": "+1555", "toAddressMessengerType": "sms", "textBody": "hi"}),
        ),
    ];
    for (file, path, sent, expected) in cases {
        let config = std::fs::read_to_string(format!("{dir}/{file}")).unwrap();
        let upstream = RecordingUpstream::start().await;
        let proxy = Binary::start(&config, &upstream, &[]).await;
        let response = raw(proxy.addr, &post(path, "", sent.to_string().as_bytes())).await;
        assert_eq!(
            response.status,
            200,
            "{file} {path}: {}",
            response.body_str()
        );
        let got: Value = serde_json::from_slice(&upstream.only().body).unwrap();
        assert_eq!(got, expected, "{file} {path}");
    }
    // The typing notice of the Web Chat v2 preset carries no body.
    let config = std::fs::read_to_string(format!("{dir}/webchat-v2.toml")).unwrap();
    let upstream = RecordingUpstream::start().await;
    let proxy = Binary::start(&config, &upstream, &[]).await;
    let typing = "/api/v2/webchat/guest/conversations/c-1/members/m-1/typing";
    assert_eq!(raw(proxy.addr, &post(typing, "", b"")).await.status, 200);
    raw(proxy.addr, &post(typing, "", b"{\"body\":\"smuggled\"}"))
        .await
        .assert_problem(400);
    assert_eq!(upstream.only().body.len(), 0);
}

#[tokio::test]
async fn encodings_and_size_limits_apply_on_every_rule() {
    use std::io::Write;
    let upstream = RecordingUpstream::start().await;
    let proxy = Binary::start(
        RULES,
        &upstream,
        &[("GUESTGATE__SERVER__MAX_BODY_BYTES", "1024")],
    )
    .await;
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(br#"{"body":"hi","bodyType":"standard","pad":"x"}"#)
        .unwrap();
    let response = raw(
        proxy.addr,
        &post(SEND, "Content-Encoding: gzip\r\n", &gzip.finish().unwrap()),
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.body_str());
    let got = upstream.only();
    assert_eq!(
        got.body_str(),
        r#"{"body":"hi","bodyType":"standard","pad":"x"}"#
    );
    assert_eq!(got.header("content-encoding"), None);
    let big = format!(r#"{{"body":"{}"}}"#, "x".repeat(2000));
    let response = raw(proxy.addr, &post(SEND, "", big.as_bytes())).await;
    let problem = response.assert_problem(413);
    assert_eq!(problem["rule"], "webchat-send");
    let response = raw(proxy.addr, &post(SEND, "Content-Encoding: zstd\r\n", b"{}")).await;
    response.assert_problem(415);
    assert_eq!(upstream.count(), 1);
}
