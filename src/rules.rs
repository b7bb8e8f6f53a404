//! The route table: which requests are intercepted and what is done to
//! their bodies. Built once per configuration from `[[rules]]` (and the
//! `[guest_messages]` shorthand, placed first) and looked up once per
//! request: the first rule whose method and path match applies.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::Arc;

use http::{HeaderMap, Method};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::edit::Edits;
use crate::pointer::Pointer;
use crate::routing::{CanonicalPath, RouteTemplate};
use crate::sanitize::{ToPolicy, shorthand_edits};
use crate::upstream::RetrySettings;

/// `[guest_messages]`: the user report's route, a shorthand for one rule
/// named `guest_messages`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GuestMessagesSettings {
    /// Route template of the intercepted route.
    pub path: String,
    /// Top-level fields removed from the body.
    #[serde(deserialize_with = "crate::de::string_list")]
    pub strip: Vec<String>,
    /// The target written into every message; required unless `[[rules]]` exist.
    #[serde(default)]
    pub to: Option<serde_json::Map<String, Value>>,
    /// How the configured `to` meets a client-sent one.
    pub to_policy: ToPolicy,
    /// Forward unchanged, only log and count what would change.
    pub report_only: bool,
    /// Per-site targets: an Origin (`https://shop.example.com`) or host name
    /// (`shop.example.com`) mapped to the `to` used for its requests.
    #[serde(default)]
    pub to_by_origin: BTreeMap<String, serde_json::Map<String, Value>>,
    /// Opt-in retries of the intercepted route.
    pub retry: RetrySettings,
}

/// What a rule's requests carry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyKind {
    /// One JSON object, edited and re-serialized.
    #[default]
    Json,
    /// No body at all (e.g. a typing notice): anything sent is refused.
    Empty,
}

/// `[[rules]]`: one intercepted route and the edits made to its bodies.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSettings {
    /// Unique, `[a-z0-9_-]`; in logs, metrics and problem details.
    pub name: String,
    /// Methods the rule applies to (any letter case matches).
    #[serde(
        default = "default_methods",
        deserialize_with = "crate::de::string_list"
    )]
    pub methods: Vec<String>,
    /// Route template, matched on the canonical path.
    pub path: String,
    /// A name from `[upstreams]`; `[upstream]` when absent.
    #[serde(default)]
    pub upstream: Option<String>,
    /// JSON Pointers removed from the body.
    #[serde(default, deserialize_with = "crate::de::string_list")]
    pub remove: Vec<String>,
    /// JSON Pointers that must be present after the edits.
    #[serde(default, deserialize_with = "crate::de::string_list")]
    pub require: Vec<String>,
    /// Forward unchanged, only log and count what would change.
    #[serde(default)]
    pub report_only: bool,
    /// Values always written (override), by JSON Pointer.
    #[serde(default)]
    pub set: BTreeMap<String, Value>,
    /// Values written only where the body has none, by JSON Pointer.
    #[serde(default)]
    pub set_if_missing: BTreeMap<String, Value>,
    /// The values a field may have when present, by JSON Pointer.
    #[serde(default)]
    pub allow: BTreeMap<String, Vec<Value>>,
    /// Per-site overrides of `set`, by Origin or host name.
    #[serde(default)]
    pub set_by_origin: BTreeMap<String, BTreeMap<String, Value>>,
    /// `json` (default) or `empty`.
    #[serde(default)]
    pub body: BodyKind,
    /// Opt-in retries; off by default.
    #[serde(default)]
    pub retry: RetrySettings,
}

fn default_methods() -> Vec<String> {
    vec!["POST".into()]
}

/// The name of the rule `[guest_messages]` stands for.
pub const GUEST_MESSAGES: &str = "guest_messages";

/// One compiled rule: what the hot path reads.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The rule's name (shared with metric labels).
    pub name: Arc<str>,
    methods: Vec<String>,
    route: RouteTemplate,
    /// Index into the configuration's upstreams (0 is `[upstream]`).
    pub upstream: usize,
    edits: Edits,
    /// Edits for requests from a configured origin, keyed by lower-case
    /// origin or host.
    edits_by_origin: HashMap<String, Edits>,
    /// Forward unchanged, only log and count.
    pub report_only: bool,
    /// What the requests carry.
    pub body: BodyKind,
    /// Retry settings of this rule.
    pub retry: RetrySettings,
    /// The `[guest_messages]` shorthand also counts its edits in the
    /// metrics it had before rules existed.
    pub shorthand: bool,
}

/// A rule's place in its table, for what is kept per rule beside it (its
/// metric series).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleIndex(pub usize);

impl Rule {
    /// The edit pointers of every edit set (the per-origin ones included), as configured.
    pub fn pointers(&self) -> Vec<&str> {
        std::iter::once(&self.edits)
            .chain(self.edits_by_origin.values())
            .flat_map(|edits| {
                let writes = edits.set_if_missing.iter().chain(&edits.set);
                edits.remove.iter().chain(writes.map(|(p, _)| p))
            })
            .map(Pointer::as_str)
            .collect()
    }

    /// The route template the rule matches (it names the rule's trace spans).
    pub fn route(&self) -> &RouteTemplate {
        &self.route
    }

    /// The edits for a request: its Origin, then its Host, looked up in the
    /// per-origin overrides; the rule's own edits otherwise.
    pub fn edits_for(&self, headers: &HeaderMap) -> &Edits {
        if self.edits_by_origin.is_empty() {
            return &self.edits;
        }
        let lookup = |value: &str| self.edits_by_origin.get(&origin_key(value));
        let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
        let origin = header(http::header::ORIGIN);
        let host = header(http::header::HOST);
        origin
            .and_then(lookup)
            .or_else(|| {
                origin
                    .and_then(|o| o.split_once("://"))
                    .and_then(|(_, h)| lookup(h))
            })
            .or_else(|| host.and_then(lookup))
            .or_else(|| {
                host.and_then(|h| h.rsplit_once(':'))
                    .and_then(|(h, _)| lookup(h))
            })
            .unwrap_or(&self.edits)
    }

    fn matches_method(&self, method: &Method) -> bool {
        self.methods
            .iter()
            .any(|m| m.eq_ignore_ascii_case(method.as_str()))
    }

    /// One line for `guestgate check`.
    fn describe(&self, upstreams: &[String]) -> String {
        let mut line = format!(
            "{} {} {} -> {}",
            self.name,
            self.methods.join(","),
            self.route,
            upstreams.get(self.upstream).map_or("?", String::as_str)
        );
        let edits = &self.edits;
        for (label, count) in [
            ("remove", edits.remove.len()),
            ("set_if_missing", edits.set_if_missing.len()),
            ("set", edits.set.len()),
            ("allow", edits.allow.len()),
            ("require", edits.require.len()),
            ("origins", self.edits_by_origin.len()),
        ] {
            if count > 0 {
                let _ = write!(line, " {label}={count}");
            }
        }
        if self.body == BodyKind::Empty {
            line.push_str(" body=empty");
        }
        if self.report_only {
            line.push_str(" report_only");
        }
        line
    }
}

fn origin_key(value: &str) -> String {
    value.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// The rules in match order.
#[derive(Debug, Clone, Default)]
pub struct RuleTable {
    rules: Vec<Arc<Rule>>,
}

impl RuleTable {
    /// The first rule for this method and path, with the exact path to
    /// forward (the template's spelling with the captured parameters).
    pub fn lookup(
        &self,
        method: &Method,
        path: &CanonicalPath,
    ) -> Option<(RuleIndex, &Arc<Rule>, String)> {
        self.rules
            .iter()
            .enumerate()
            .filter(|(_, rule)| rule.matches_method(method))
            .find_map(|(i, rule)| Some((RuleIndex(i), rule, rule.route.matches(path)?)))
    }

    /// The rules in match order.
    pub fn rules(&self) -> &[Arc<Rule>] {
        &self.rules
    }

    /// One line per rule, in match order, for `guestgate check`.
    pub fn describe(&self, upstreams: &[String]) -> String {
        self.rules
            .iter()
            .enumerate()
            .map(|(i, rule)| format!("{}. {}\n", i + 1, rule.describe(upstreams)))
            .collect()
    }
}

/// Compiles the shorthand and `[[rules]]` into the table, adding one line
/// per problem, each naming the setting (`rules[2].set."/a/b": …`).
/// `upstreams` are the configured upstream names, `[upstream]` first;
/// `other_rules` says whether WebSocket rules exist (then, as with
/// `[[rules]]`, `guest_messages.to` may be left out).
pub fn compile(
    guest: &GuestMessagesSettings,
    rules: &[RuleSettings],
    upstreams: &[String],
    other_rules: bool,
    problems: &mut Vec<String>,
) -> RuleTable {
    let mut table = RuleTable::default();
    let mut labels: Vec<String> = Vec::new();
    if let Some(rule) = shorthand(guest, other_rules || !rules.is_empty(), problems) {
        table.rules.push(Arc::new(rule));
        labels.push("guest_messages".into());
    }
    for (i, settings) in rules.iter().enumerate() {
        let at = format!("rules[{i}]");
        if let Some(rule) = compile_rule(settings, &at, upstreams, problems) {
            if let Some(j) = table.rules.iter().position(|r| r.name == rule.name) {
                problems.push(format!(
                    "{at}.name: {:?} is already the name of {}",
                    rule.name, labels[j]
                ));
                continue;
            }
            if let Some(j) = table.rules.iter().position(|r| covers(r, &rule)) {
                problems.push(format!(
                    "{at}: can never match: {} ({:?}) comes first and matches every request it would",
                    labels[j], table.rules[j].name
                ));
                continue;
            }
            table.rules.push(Arc::new(rule));
            labels.push(at);
        }
    }
    table
}

/// Whether `earlier` matches every request `later` would.
fn covers(earlier: &Rule, later: &Rule) -> bool {
    later
        .methods
        .iter()
        .all(|m| earlier.methods.iter().any(|e| e.eq_ignore_ascii_case(m)))
        && earlier.route.covers(&later.route)
}

/// The rule `[guest_messages]` stands for; `None` without `to` when
/// `[[rules]]` exist (a file may configure only rules).
fn shorthand(
    guest: &GuestMessagesSettings,
    has_rules: bool,
    problems: &mut Vec<String>,
) -> Option<Rule> {
    let to = match &guest.to {
        None if has_rules => {
            if !guest.to_by_origin.is_empty() {
                problems.push("guest_messages.to_by_origin: needs guest_messages.to".into());
            }
            return None;
        }
        None => {
            problems.push(
                "guest_messages.to: required, e.g. GUESTGATE__GUEST_MESSAGES__TO__ID=<queue-id>"
                    .into(),
            );
            return None;
        }
        Some(map) if map.is_empty() => {
            problems.push("guest_messages.to: must have at least one field, e.g. id".into());
            return None;
        }
        Some(map) => Value::Object(map.clone()),
    };
    let route = RouteTemplate::parse(&guest.path)
        .map_err(|e| problems.push(format!("guest_messages.path: {e}")))
        .ok();
    if guest.strip.iter().any(|k| k == "to") {
        problems.push(
            "guest_messages.strip: must not contain \"to\", which is set by guest_messages.to"
                .into(),
        );
    }
    guest.retry.check("guest_messages.retry", problems);
    let edits_with = |to: Value, problems: &mut Vec<String>| {
        shorthand_edits(&guest.strip, to, guest.to_policy)
            .map_err(|(key, e)| problems.push(format!("guest_messages.strip: {key:?}: {e}")))
            .ok()
    };
    let edits = edits_with(to, problems);
    let mut edits_by_origin = HashMap::new();
    for (key, to) in &guest.to_by_origin {
        if to.is_empty() {
            problems.push(format!(
                "guest_messages.to_by_origin.{key}: must have at least one field, e.g. id"
            ));
            continue;
        }
        if let Some(edits) = edits_with(Value::Object(to.clone()), &mut Vec::new()) {
            edits_by_origin.insert(origin_key(key), edits);
        }
    }
    Some(Rule {
        name: Arc::from(GUEST_MESSAGES),
        methods: default_methods(),
        route: route?,
        upstream: 0,
        edits: edits?,
        edits_by_origin,
        report_only: guest.report_only,
        body: BodyKind::Json,
        retry: guest.retry.clone(),
        shorthand: true,
    })
}

/// Rule and upstream names: `[a-z0-9_-]`, 1 to 64 characters.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// The edit settings a rule has, HTTP or WebSocket.
pub struct EditSettings<'a> {
    /// `remove`
    pub remove: &'a [String],
    /// `require`
    pub require: &'a [String],
    /// `set`
    pub set: &'a BTreeMap<String, Value>,
    /// `set_if_missing`
    pub set_if_missing: &'a BTreeMap<String, Value>,
    /// `allow`
    pub allow: &'a BTreeMap<String, Vec<Value>>,
}

/// Checks a rule's name (`{at}.name`).
pub fn check_name(at: &str, name: &str, problems: &mut Vec<String>) {
    if !valid_name(name) {
        problems.push(format!(
            "{at}.name: {name:?} must be 1 to 64 of a-z, 0-9, _ and -"
        ));
    }
}

/// The index of a rule's upstream among `upstreams` (`[upstream]` first).
pub fn upstream_index(
    at: &str,
    name: Option<&str>,
    upstreams: &[String],
    problems: &mut Vec<String>,
) -> Option<usize> {
    let Some(name) = name else {
        return Some(0);
    };
    let found = upstreams.iter().skip(1).position(|u| u == name);
    if found.is_none() {
        problems.push(format!(
            "{at}.upstream: {name:?} is not defined; add [upstreams.{name}] with a base_url"
        ));
    }
    found.map(|i| i + 1)
}

/// Parses one configured pointer (`{at}.{field}."/a/b": …` on error).
pub fn pointer(at: &str, field: &str, text: &str, problems: &mut Vec<String>) -> Option<Pointer> {
    Pointer::parse(text)
        .map_err(|e| problems.push(format!("{at}.{field}.{text:?}: {e}")))
        .ok()
}

fn pointer_values(
    at: &str,
    field: &str,
    map: &BTreeMap<String, Value>,
    problems: &mut Vec<String>,
) -> Vec<(Pointer, Value)> {
    map.iter()
        .filter_map(|(p, v)| Some((pointer(at, field, p, problems)?, v.clone())))
        .collect()
}

/// Compiles a rule's edit settings, adding one line per problem.
pub fn compile_edits(at: &str, settings: EditSettings<'_>, problems: &mut Vec<String>) -> Edits {
    let list = |field: &str, texts: &[String], problems: &mut Vec<String>| -> Vec<Pointer> {
        texts
            .iter()
            .filter_map(|p| pointer(at, field, p, problems))
            .collect()
    };
    let remove = list("remove", settings.remove, problems);
    let require = list("require", settings.require, problems);
    let set = pointer_values(at, "set", settings.set, problems);
    let set_if_missing = pointer_values(at, "set_if_missing", settings.set_if_missing, problems);
    let mut allow = Vec::new();
    for (text, values) in settings.allow {
        if values.is_empty() {
            problems.push(format!("{at}.allow.{text:?}: must list at least one value"));
        }
        if let Some(p) = pointer(at, "allow", text, problems) {
            allow.push((p, values.clone()));
        }
    }
    for text in settings.remove {
        for (field, map) in [
            ("set", settings.set),
            ("set_if_missing", settings.set_if_missing),
        ] {
            if map.contains_key(text) {
                problems.push(format!(
                    "{at}.{field}.{text:?}: also in remove; a pointer takes one of remove, set and set_if_missing"
                ));
            }
        }
    }
    for text in settings.set.keys() {
        if settings.set_if_missing.contains_key(text) {
            problems.push(format!(
                "{at}.set_if_missing.{text:?}: also in set; a pointer takes one of remove, set and set_if_missing"
            ));
        }
    }
    Edits {
        remove,
        set_if_missing,
        set,
        allow,
        require,
    }
}

fn compile_rule(
    settings: &RuleSettings,
    at: &str,
    upstreams: &[String],
    problems: &mut Vec<String>,
) -> Option<Rule> {
    let before = problems.len();
    check_name(at, &settings.name, problems);
    if settings.methods.is_empty() {
        problems.push(format!("{at}.methods: must list at least one method"));
    }
    for method in &settings.methods {
        if Method::from_bytes(method.as_bytes()).is_err() {
            problems.push(format!("{at}.methods: {method:?} is not a method"));
        }
    }
    let route = RouteTemplate::parse(&settings.path)
        .map_err(|e| problems.push(format!("{at}.path: {e}")))
        .ok();
    let upstream = upstream_index(at, settings.upstream.as_deref(), upstreams, problems);
    let edits = compile_edits(
        at,
        EditSettings {
            remove: &settings.remove,
            require: &settings.require,
            set: &settings.set,
            set_if_missing: &settings.set_if_missing,
            allow: &settings.allow,
        },
        problems,
    );
    settings.retry.check(&format!("{at}.retry"), problems);
    let has_edits = !(settings.remove.is_empty()
        && settings.require.is_empty()
        && settings.set.is_empty()
        && settings.set_if_missing.is_empty()
        && settings.allow.is_empty()
        && settings.set_by_origin.is_empty());
    if settings.body == BodyKind::Empty && has_edits {
        problems.push(format!(
            "{at}.body: \"empty\" takes no remove, require, set, set_if_missing, allow or set_by_origin"
        ));
    }
    let mut edits_by_origin = HashMap::new();
    for (origin, overrides) in &settings.set_by_origin {
        let field = format!("set_by_origin.{origin:?}");
        if overrides.is_empty() {
            problems.push(format!("{at}.{field}: must set at least one pointer"));
        }
        let mut set: BTreeMap<String, Value> = settings.set.clone();
        set.extend(overrides.iter().map(|(k, v)| (k.clone(), v.clone())));
        for text in overrides.keys() {
            if settings.remove.contains(text) || settings.set_if_missing.contains_key(text) {
                problems.push(format!(
                    "{at}.{field}.{text:?}: also in remove or set_if_missing"
                ));
            }
        }
        let set = pointer_values(at, &field, &set, problems);
        edits_by_origin.insert(
            origin_key(origin),
            Edits {
                set,
                ..edits.clone()
            },
        );
    }
    if problems.len() > before {
        return None;
    }
    Some(Rule {
        name: Arc::from(settings.name.as_str()),
        methods: settings
            .methods
            .iter()
            .map(|m| m.to_ascii_uppercase())
            .collect(),
        route: route?,
        upstream: upstream?,
        edits,
        edits_by_origin,
        report_only: settings.report_only,
        body: settings.body,
        retry: settings.retry.clone(),
        shorthand: false,
    })
}
