//! The manual against the code: every setting the configuration accepts is in
//! `docs/configuration.md` with its built-in default (and nothing documented is
//! unknown to the code), every metric a live `/metrics` scrape exposes is in
//! `docs/metrics.md`, every problem type the code can answer with is in the
//! security model's table, and every relative link and anchor in `README.md`
//! and `docs/` resolves. Each check is a function over the document's text, and
//! its negative case shows it fails when documentation is missing.

mod common;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer, Visitor};
use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(path)).unwrap()
}

// ------------------------------------------------------------------ schema

/// A deserializer that feeds every type one sample of each field, recording
/// the dotted path of each setting it reaches: the schema as the code's own
/// `Deserialize` implementations define it (a map key is `<name>`, a list
/// element `[]`; free-form JSON values and lists end a path).
struct Schema<'a> {
    path: String,
    out: &'a RefCell<BTreeSet<String>>,
}

impl<'a> Schema<'a> {
    fn at(&self, segment: &str) -> Schema<'a> {
        let path = if self.path.is_empty() {
            segment.to_owned()
        } else if segment == "[]" {
            format!("{}[]", self.path)
        } else {
            format!("{}.{segment}", self.path)
        };
        Schema {
            path,
            out: self.out,
        }
    }

    fn leaf(&self) {
        self.out.borrow_mut().insert(self.path.clone());
    }

    /// Free-form values (JSON, untagged lists): the setting is the path
    /// without the trailing map keys and list elements it went through.
    fn free_form(&self) {
        let mut path = self.path.as_str();
        loop {
            if let Some(p) = path.strip_suffix(".<name>") {
                path = p;
            } else if let Some(p) = path.strip_suffix("[]") {
                path = p;
            } else {
                break;
            }
        }
        self.out.borrow_mut().insert(path.to_owned());
    }
}

#[derive(Debug)]
struct SchemaError(String);

impl std::fmt::Display for SchemaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SchemaError {}

impl de::Error for SchemaError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        SchemaError(msg.to_string())
    }
}

macro_rules! scalar {
    ($($method:ident => $visit:ident($value:expr)),* $(,)?) => {
        $(fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, SchemaError> {
            self.leaf();
            visitor.$visit($value)
        })*
    };
}

impl<'de> Deserializer<'de> for Schema<'_> {
    type Error = SchemaError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, SchemaError> {
        self.free_form();
        // Reads as a string, a one-item list and a status code alike.
        visitor.visit_str("200")
    }

    scalar! {
        deserialize_bool => visit_bool(false),
        deserialize_i8 => visit_i8(1), deserialize_i16 => visit_i16(1),
        deserialize_i32 => visit_i32(1), deserialize_i64 => visit_i64(1),
        deserialize_u8 => visit_u8(1), deserialize_u16 => visit_u16(200),
        deserialize_u32 => visit_u32(1), deserialize_u64 => visit_u64(1),
        deserialize_f32 => visit_f32(1.0), deserialize_f64 => visit_f64(1.0),
        deserialize_char => visit_char('x'),
        deserialize_str => visit_str("x"), deserialize_string => visit_str("x"),
        deserialize_bytes => visit_bytes(b"x"), deserialize_byte_buf => visit_bytes(b"x"),
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, SchemaError> {
        self.leaf();
        visitor.visit_unit()
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, SchemaError> {
        visitor.visit_some(self)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, SchemaError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, SchemaError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, SchemaError> {
        visitor.visit_seq(One(Some(self.at("[]"))))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _: usize,
        visitor: V,
    ) -> Result<V::Value, SchemaError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        visitor: V,
    ) -> Result<V::Value, SchemaError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, SchemaError> {
        visitor.visit_map(Fields {
            keys: vec!["<name>"],
            schema: self,
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, SchemaError> {
        visitor.visit_map(Fields {
            keys: fields.to_vec(),
            schema: self,
        })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, SchemaError> {
        self.leaf();
        visitor.visit_enum(variants[0].into_deserializer())
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, SchemaError> {
        visitor.visit_str("x")
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, SchemaError> {
        visitor.visit_unit()
    }
}

/// A list of one element.
struct One<'a>(Option<Schema<'a>>);

impl<'de> de::SeqAccess<'de> for One<'_> {
    type Error = SchemaError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, SchemaError> {
        self.0.take().map(|s| seed.deserialize(s)).transpose()
    }
}

/// A struct's fields, or a map with the one key `<name>`.
struct Fields<'a> {
    keys: Vec<&'static str>,
    schema: Schema<'a>,
}

impl<'de> de::MapAccess<'de> for Fields<'_> {
    type Error = SchemaError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, SchemaError> {
        match self.keys.first() {
            Some(key) => seed
                .deserialize(de::value::StrDeserializer::<SchemaError>::new(key))
                .map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, SchemaError> {
        let key = self.keys.remove(0);
        seed.deserialize(self.schema.at(key))
    }
}

/// Every setting the code accepts.
fn settings_schema() -> BTreeSet<String> {
    let out = RefCell::new(BTreeSet::new());
    let schema = Schema {
        path: String::new(),
        out: &out,
    };
    <guestgate::config::Settings as serde::Deserialize>::deserialize(schema)
        .expect("the schema walk reaches every setting");
    out.into_inner()
}

/// Flattens serialized settings into dotted paths.
fn flatten(prefix: &str, value: &Value, out: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&path, v, out);
            }
        }
        _ => {
            out.insert(prefix.to_owned(), value.clone());
        }
    }
}

/// The built-in default of every setting that has one.
fn defaults() -> BTreeMap<String, Value> {
    let env = std::collections::HashMap::from([(
        "GUESTGATE__GUEST_MESSAGES__TO__ID".to_owned(),
        "x".to_owned(),
    )]);
    let config = guestgate::Config::load_with_env(None, Some(env)).unwrap();
    let mut settings = serde_json::to_value(&config.settings).unwrap();
    // guest_messages.to has no default: it was set above only to load.
    settings["guest_messages"]["to"] = Value::Null;
    let mut out = BTreeMap::new();
    flatten("", &settings, &mut out);
    // Defaults of a rule and of a named upstream, from their smallest form.
    let rule: guestgate::rules::RuleSettings =
        serde_json::from_value(serde_json::json!({"name": "r", "path": "/p"})).unwrap();
    let mut rule = serde_json::to_value(rule).unwrap();
    rule["name"] = Value::Null;
    rule["path"] = Value::Null;
    flatten("rules[]", &rule, &mut out);
    let upstream: guestgate::upstream::NamedUpstreamSettings =
        serde_json::from_value(serde_json::json!({"base_url": "http://x"})).unwrap();
    let mut upstream = serde_json::to_value(upstream).unwrap();
    upstream["base_url"] = Value::Null;
    flatten("upstreams.<name>", &upstream, &mut out);
    let ws: guestgate::websocket::WebSocketRuleSettings =
        serde_json::from_value(serde_json::json!({"name": "r", "path": "/p"})).unwrap();
    let mut ws = serde_json::to_value(ws).unwrap();
    ws["name"] = Value::Null;
    ws["path"] = Value::Null;
    flatten("websocket_rules[]", &ws, &mut out);
    out
}

/// How the reference writes a default: strings bare, lists as `["a", "b"]`.
fn render(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(|v| v.to_string()).collect();
            format!("[{}]", items.join(", "))
        }
        other => other.to_string(),
    }
}

/// The rows of the reference's table: setting → default cell.
fn documented_settings(doc: &str) -> BTreeMap<String, String> {
    doc.lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let setting = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            Some((setting.to_owned(), cells.get(3)?.to_string()))
        })
        .collect()
}

/// What is wrong with `doc` as the configuration reference of `schema`
/// with `defaults`.
fn configuration_problems(
    doc: &str,
    schema: &BTreeSet<String>,
    defaults: &BTreeMap<String, Value>,
) -> Vec<String> {
    let documented = documented_settings(doc);
    let mut problems = Vec::new();
    for setting in schema {
        let Some(cell) = documented.get(setting) else {
            problems.push(format!("{setting}: not in docs/configuration.md"));
            continue;
        };
        match defaults.get(setting) {
            Some(value) if !value.is_null() => {
                let want = format!("`{}`", render(value));
                if !cell.starts_with(&want) {
                    problems.push(format!(
                        "{setting}: documented default {cell:?}, built-in {want}"
                    ));
                }
            }
            _ => {
                // No built-in value: unset, required, or taken from another setting.
                let inherited = cell
                    .strip_prefix('`')
                    .and_then(|c| c.split('`').next())
                    .is_some_and(|s| schema.contains(s));
                let words = ["unset", "none", "required"];
                if !inherited && !words.iter().any(|w| cell.starts_with(w)) {
                    problems.push(format!(
                        "{setting}: documented default {cell:?}, but it has none built in"
                    ));
                }
            }
        }
    }
    for setting in documented.keys() {
        if !schema.contains(setting) {
            problems.push(format!("{setting}: documented but not a setting"));
        }
    }
    problems
}

#[test]
fn every_setting_is_documented_with_its_default() {
    let schema = settings_schema();
    assert!(schema.contains("server.tls.cert_file"), "{schema:?}");
    assert!(schema.contains("rules[].set_by_origin"), "{schema:?}");
    assert!(schema.contains("upstreams.<name>.base_url"), "{schema:?}");
    let problems = configuration_problems(&read("docs/configuration.md"), &schema, &defaults());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_configuration_check_fails_on_a_missing_a_wrong_and_an_unknown_setting() {
    let schema = settings_schema();
    let defaults = defaults();
    let doc = read("docs/configuration.md");
    let altered: String = doc
        .lines()
        .filter(|l| !l.starts_with("| `server.max_body_bytes` |"))
        .map(|l| {
            if l.starts_with("| `log.level` |") {
                l.replace("`info`", "`debug`")
            } else {
                l.to_owned()
            }
        })
        .chain(["| `server.max_bodies` | x | `1` | a typo |".to_owned()])
        .collect::<Vec<_>>()
        .join("\n");
    let problems = configuration_problems(&altered, &schema, &defaults);
    assert_eq!(
        problems,
        [
            "log.level: documented default \"`debug`\", built-in `info`",
            "server.max_body_bytes: not in docs/configuration.md",
            "server.max_bodies: documented but not a setting",
        ],
        "{problems:#?}"
    );
}

// ------------------------------------------------------------------ metrics

/// Metric names in an exposition (counters with their `_total` suffix).
fn exported_metrics(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let (name, kind) = l.split_once(' ')?;
            Some(if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_owned()
            })
        })
        .collect()
}

fn metric_problems(doc: &str, exported: &BTreeSet<String>) -> Vec<String> {
    let documented: BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|name| name.starts_with("guestgate_"))
        .map(str::to_owned)
        .collect();
    let mut problems: Vec<String> = exported
        .difference(&documented)
        .map(|m| format!("{m}: exported but not in docs/metrics.md"))
        .collect();
    problems.extend(
        documented
            .difference(exported)
            .map(|m| format!("{m}: documented but not exported")),
    );
    problems
}

/// A proxy from a file (so it can reload) with the `[guest_messages]` rule
/// and a report_only rule, after traffic that touches every metric family
/// (prometheus-client exposes a family once it has a series).
async fn busy_proxy(
    dir: &Path,
    upstream: &common::RecordingUpstream,
    upgrades: std::net::SocketAddr,
) -> guestgate::Running {
    let file = dir.join("guestgate.toml");
    std::fs::write(
        &file,
        format!(
            "[guest_messages]\nto = {{ id = \"q\" }}\n[upstreams.ws]\nbase_url = \"http://{}\"\n\
             [[rules]]\nname = \"watch\"\npath = \"/watch\"\nreport_only = true\nremove = [\"/id\"]\n\
             [rules.retry]\nattempts = 2\nbackoff_ms = 1\nstatuses = [200]\n\
             [[websocket_rules]]\nname = \"ws\"\npath = \"/ws\"\nupstream = \"ws\"\n",
            upgrades
        ),
    )
    .unwrap();
    let env = std::collections::HashMap::from([
        ("GUESTGATE__SERVER__LISTEN".into(), "127.0.0.1:0".into()),
        ("GUESTGATE__ADMIN__LISTEN".into(), "127.0.0.1:0".into()),
        (
            "GUESTGATE__UPSTREAM__BASE_URL".into(),
            format!("http://{}", upstream.addr),
        ),
    ]);
    let source = guestgate::gateway::ConfigSource {
        file: Some(file),
        env: Some(env),
    };
    let proxy = guestgate::start_with_source(source.load().unwrap(), source)
        .await
        .unwrap();
    let post = |path: &str, body: &[u8]| common::post(path, "", body);
    common::raw(proxy.addr, &post(common::ROUTE, b"{\"id\":1}")).await;
    common::raw(proxy.addr, &post(common::ROUTE, b"[]")).await;
    common::raw(proxy.addr, &post("/watch", b"{\"id\":1}")).await;
    // An inspected WebSocket: a text frame that is not JSON (masked with a
    // zero key, so the payload is as written) closes it with 1008.
    let mut ws = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    ws.write_all(&common::websocket_upgrade("/ws"))
        .await
        .unwrap();
    let head = common::read_response(&mut ws).await;
    assert_eq!(head.status, 101, "{}", head.head);
    ws.write_all(&[0x81, 0x83, 0, 0, 0, 0, b'n', b'o', b'!'])
        .await
        .unwrap();
    let mut close = [0u8; 2];
    ws.read_exact(&mut close).await.unwrap();
    assert_eq!(close[0], 0x88, "a close frame");
    proxy.reload().unwrap();
    proxy
}

#[tokio::test]
async fn every_exported_metric_is_documented() {
    let upstream = common::RecordingUpstream::start().await;
    // A WebSocket upstream that reads until its peer closes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upgrades = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await {
                    while let Some(Ok(_)) = futures_util::StreamExt::next(&mut ws).await {}
                }
            });
        }
    });
    let dir = std::env::temp_dir().join(format!("guestgate-docs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let proxy = busy_proxy(&dir, &upstream, upgrades).await;
    let exported = exported_metrics(&proxy.metrics());
    let _ = std::fs::remove_dir_all(&dir);
    for family in [
        "guestgate_requests_total",
        "guestgate_edits_total",
        "guestgate_rejected_total",
        "guestgate_report_only_would_change_total",
        "guestgate_config_reloads_total",
        "guestgate_upstream_retries_total",
        "guestgate_websocket_messages_total",
        "guestgate_websocket_closes_total",
    ] {
        assert!(exported.contains(family), "{family} in {exported:?}");
    }
    let problems = metric_problems(&read("docs/metrics.md"), &exported);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let mut more = exported.clone();
    more.insert("guestgate_new_thing_total".into());
    assert_eq!(
        metric_problems(&read("docs/metrics.md"), &more),
        ["guestgate_new_thing_total: exported but not in docs/metrics.md"]
    );
    proxy.shutdown().await;
}

// ------------------------------------------------------------------ problem types

/// Every `.rs` file under `dir`, modules in folders included.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// The problem type suffixes the code can answer with: the string literals
/// of every `fn reason` in `src/` and `crates/`.
fn problem_types_in_code() -> BTreeSet<String> {
    let mut types = BTreeSet::new();
    let root = Path::new(ROOT);
    for file in [root.join("src"), root.join("crates")]
        .iter()
        .flat_map(|d| sources(d))
    {
        let text = std::fs::read_to_string(file).unwrap();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("fn reason(") {
            let body = &rest[at..];
            let end = body.find("\n    }\n").unwrap_or(body.len());
            for literal in body[..end].split('"').skip(1).step_by(2) {
                types.insert(literal.to_owned());
            }
            rest = &body[end..];
        }
    }
    types
}

fn problem_type_problems(doc: &str, types: &BTreeSet<String>) -> Vec<String> {
    let table: String = doc
        .lines()
        .filter(|l| l.starts_with("| 4") || l.starts_with("| 5"))
        .collect();
    types
        .iter()
        .filter(|t| !table.contains(&format!("`{t}`")))
        .map(|t| format!("{t}: not in the security model's problem table"))
        .collect()
}

#[test]
fn every_problem_type_is_in_the_security_model() {
    let types = problem_types_in_code();
    for t in [
        "invalid-body",
        "field-not-allowed",
        "field-required",
        "invalid-path",
    ] {
        assert!(types.contains(t), "{types:?}");
    }
    let doc = read("docs/security.md");
    let problems = problem_type_problems(&doc, &types);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let without = doc.replace("`field-required`", "`field-needed`");
    assert_eq!(
        problem_type_problems(&without, &types),
        ["field-required: not in the security model's problem table"]
    );
}

// ------------------------------------------------------------------ links

/// GitHub's anchor for a heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == ' ' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut fenced = false;
    markdown
        .lines()
        .filter(|l| {
            if l.starts_with("```") {
                fenced = !fenced;
            }
            !fenced && l.starts_with('#')
        })
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect()
}

/// Relative link targets in a markdown text, outside code.
fn links(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        }
        if fenced {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            let target = &after[..end];
            if !target.contains("://") && !target.starts_with("mailto:") {
                out.push(target.to_owned());
            }
            rest = &after[end..];
        }
    }
    out
}

fn link_problems(files: &[PathBuf]) -> Vec<String> {
    let mut problems = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).unwrap();
        for target in links(&text) {
            let (path, fragment) = match target.split_once('#') {
                Some((p, f)) => (p, Some(f)),
                None => (target.as_str(), None),
            };
            let resolved = if path.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap().join(path)
            };
            let name = file.strip_prefix(ROOT).unwrap_or(file).display();
            if !resolved.exists() {
                problems.push(format!("{name}: {target}: no such file"));
                continue;
            }
            if let Some(fragment) = fragment {
                let is_md = resolved.extension().is_some_and(|e| e == "md");
                let text = std::fs::read_to_string(&resolved).unwrap_or_default();
                if is_md && !anchors(&text).contains(fragment) {
                    problems.push(format!("{name}: {target}: no such heading"));
                }
            }
        }
    }
    problems
}

fn manual() -> Vec<PathBuf> {
    let mut files = vec![Path::new(ROOT).join("README.md")];
    for entry in std::fs::read_dir(Path::new(ROOT).join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    files.sort();
    files
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let files = manual();
    assert!(files.len() > 5, "{files:?}");
    let problems = link_problems(&files);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let dir = std::env::temp_dir().join(format!("guestgate-links-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.md");
    std::fs::write(
        &bad,
        "# Title\n[a](missing.md) [b](#title) [c](#nope) [d](https://x.example/y)\n",
    )
    .unwrap();
    let problems = link_problems(&[bad]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].ends_with("missing.md: no such file"),
        "{problems:?}"
    );
    assert!(
        problems[1].ends_with("#nope: no such heading"),
        "{problems:?}"
    );
}
