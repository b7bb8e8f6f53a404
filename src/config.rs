//! Layered configuration: compiled-in defaults, an optional file, then
//! `GUESTGATE__SECTION__KEY` environment variables.
//!
//! Everything is validated before the proxy binds a port, and each problem is
//! reported as one line naming the setting, so a bad deployment fails fast.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cors::CorsSettings;
use crate::otel::{ExportConfig, TelemetrySettings};
use crate::rules::{GuestMessagesSettings, RuleSettings, RuleTable};
use crate::telemetry::LogSettings;
use crate::tls::TlsSettings;
use crate::upstream::{BaseUrl, NamedUpstreamSettings, UpstreamSettings, parse_base_url};
use crate::websocket::{MessageRules, WebSocketRuleSettings, WebSocketSettings};

/// The defaults shipped with the binary, so a container needs no file.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Environment variable prefix; `__` separates the prefix and nesting levels.
pub const ENV_PREFIX: &str = "GUESTGATE";

/// All settings, as read from the layered sources.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The client-facing listener.
    pub server: ServerSettings,
    /// Where requests go.
    pub upstream: UpstreamSettings,
    /// Further upstreams rules can send to, by name.
    #[serde(default)]
    pub upstreams: BTreeMap<String, NamedUpstreamSettings>,
    /// The user report's route: a shorthand for the first rule.
    pub guest_messages: GuestMessagesSettings,
    /// Intercepted routes and their body edits, in match order.
    #[serde(default)]
    pub rules: Vec<RuleSettings>,
    /// Limits of inspected WebSockets.
    pub websocket: WebSocketSettings,
    /// WebSocket message rules, by upgrade path.
    #[serde(default)]
    pub websocket_rules: Vec<WebSocketRuleSettings>,
    /// Health and metrics listener.
    pub admin: AdminSettings,
    /// Logging.
    pub log: LogSettings,
    /// Cross-origin access for browser widgets.
    pub cors: CorsSettings,
    /// OpenTelemetry trace export (off unless an endpoint is set).
    #[serde(default)]
    pub telemetry: TelemetrySettings,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Address to listen on.
    pub listen: String,
    /// Largest decoded body on the intercepted route.
    pub max_body_bytes: usize,
    /// Largest request head.
    pub max_header_bytes: usize,
    /// Time allowed to send a request head.
    pub header_read_timeout_ms: u64,
    /// Time allowed to send a body on the intercepted route.
    pub body_read_timeout_ms: u64,
    /// Concurrent client connections.
    pub max_connections: usize,
    /// Idle timeout for HTTP/2 keep-alive pings.
    pub idle_timeout_secs: u64,
    /// Grace period for in-flight requests on shutdown.
    pub shutdown_timeout_secs: u64,
    /// An upgraded (WebSocket) connection idle this long in both directions is closed.
    pub upgrade_idle_timeout_secs: u64,
    /// Protocols a client may upgrade to through the proxy (`Upgrade` tokens);
    /// any other upgrade request goes upstream as a plain request, so no
    /// tunnel (h2c above all) can carry requests past the sanitizer.
    #[serde(deserialize_with = "crate::de::string_list")]
    pub upgrade_protocols: Vec<String>,
    /// Serve HTTPS (HTTP/2 via ALPN) instead of plain HTTP/1.1 and h2c.
    #[serde(default)]
    pub tls: Option<TlsSettings>,
}

/// `[admin]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    /// Address of the admin listener; empty disables it.
    pub listen: String,
    /// How often `/readyz`'s cached upstream connect check runs.
    pub readiness_interval_secs: u64,
    /// How often the `--config` file is checked for changes (0: only SIGHUP reloads).
    pub config_watch_interval_secs: u64,
}

/// Start-up configuration problems, one line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// One entry per problem, each naming the setting.
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.problems.join("\n"))
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    fn one(problem: impl Into<String>) -> Self {
        Self {
            problems: vec![problem.into()],
        }
    }
}

/// Settings checked and converted into the types the proxy runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// The raw settings, for display and less-used values.
    pub settings: Settings,
    /// Parsed `server.listen`.
    pub listen: SocketAddr,
    /// Parsed `admin.listen`; `None` when disabled.
    pub admin_listen: Option<SocketAddr>,
    /// `[upstream]` first, then `[upstreams.NAME]` in name order; rules
    /// refer to them by index.
    pub upstreams: Vec<UpstreamTarget>,
    /// The rules in match order (`[guest_messages]` first).
    pub rules: RuleTable,
    /// WebSocket message rules, by upgrade path.
    pub websocket: MessageRules,
    /// Body and upgrade limits of the request path.
    pub limits: RequestLimits,
    /// Parsed `[cors]` origins; empty when CORS is off.
    pub cors_origins: Vec<crate::cors::OriginPattern>,
    /// Loaded `[server.tls]` certificate and key.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// `[telemetry.otlp]` with the `OTEL_*` variables applied; `None`: no export.
    pub otlp: Option<ExportConfig>,
}

/// The `[server]` values the request path reads, converted once.
#[derive(Debug, Clone)]
pub struct RequestLimits {
    /// `server.max_body_bytes`
    pub max_body_bytes: usize,
    /// `server.body_read_timeout_ms`
    pub body_read_timeout: Duration,
    /// `server.upgrade_protocols`
    pub upgrade_protocols: Vec<String>,
    /// `server.upgrade_idle_timeout_secs`
    pub upgrade_idle_timeout: Duration,
}

/// One upstream, checked and ready to build a client for.
#[derive(Debug, Clone)]
pub struct UpstreamTarget {
    /// `default` for `[upstream]`, else the `[upstreams]` key.
    pub name: String,
    /// Its settings, `[upstream]` filling what a named one leaves out.
    pub settings: UpstreamSettings,
    /// Parsed `base_url`.
    pub base: BaseUrl,
    /// TLS settings for an `https` upstream (roots plus `ca_file`).
    pub tls: Arc<rustls::ClientConfig>,
}

impl Config {
    /// Loads from the compiled-in defaults, `file`, and the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(file, None)
    }

    /// Like [`Config::load`], with an explicit environment instead of the
    /// process one (tests use this, and so can embedders).
    pub fn load_with_env(
        file: Option<&Path>,
        env: Option<HashMap<String, String>>,
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(file) = file {
            if !file.is_file() {
                return Err(ConfigError::one(format!(
                    "--config: file {} does not exist",
                    file.display()
                )));
            }
            builder = builder.add_source(config::File::from(file).required(true));
        }
        // The standard OTEL_* variables come from the same environment.
        let otel_env: Option<HashMap<String, String>> = env.as_ref().map(|env| {
            env.iter()
                .filter(|(k, _)| k.starts_with("OTEL_"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        });
        let env_source = config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .source(env);
        let settings: Settings = builder
            .add_source(env_source)
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(|e| ConfigError::one(describe(&e)))?;
        Self::from_settings_with_env(settings, &|name| match &otel_env {
            Some(env) => env.get(name).cloned(),
            None => std::env::var(name).ok(),
        })
    }

    /// Validates settings, collecting every problem rather than the first;
    /// the `OTEL_*` variables come from the process environment.
    pub fn from_settings(settings: Settings) -> Result<Self, ConfigError> {
        Self::from_settings_with_env(settings, &|name| std::env::var(name).ok())
    }

    /// Like [`Config::from_settings`], reading the `OTEL_*` variables with `env`.
    pub fn from_settings_with_env(
        settings: Settings,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let listen = parse_addr("server.listen", &settings.server.listen, &mut problems);
        let admin_listen = if settings.admin.listen.trim().is_empty() {
            None
        } else {
            parse_addr("admin.listen", &settings.admin.listen, &mut problems)
        };
        let upstreams = check_upstreams(&settings, &mut problems);
        let names: Vec<String> = std::iter::once("default".to_owned())
            .chain(settings.upstreams.keys().cloned())
            .collect();
        let rules = crate::rules::compile(
            &settings.guest_messages,
            &settings.rules,
            &names,
            !settings.websocket_rules.is_empty(),
            &mut problems,
        );
        let websocket = crate::websocket::compile(
            &settings.websocket,
            &settings.websocket_rules,
            &names,
            &mut problems,
        );
        if !settings.websocket_rules.is_empty()
            && !settings
                .server
                .upgrade_protocols
                .iter()
                .any(|p| p.eq_ignore_ascii_case("websocket"))
        {
            problems.push(
                "websocket_rules: server.upgrade_protocols must list websocket for them to apply"
                    .into(),
            );
        }
        for (name, value) in [
            (
                "server.max_body_bytes",
                settings.server.max_body_bytes as u64,
            ),
            (
                "server.max_connections",
                settings.server.max_connections as u64,
            ),
            (
                "server.header_read_timeout_ms",
                settings.server.header_read_timeout_ms,
            ),
            (
                "server.body_read_timeout_ms",
                settings.server.body_read_timeout_ms,
            ),
        ] {
            if value == 0 {
                problems.push(format!("{name}: must be greater than 0"));
            }
        }
        if settings.server.max_header_bytes < 8192 {
            problems.push("server.max_header_bytes: must be at least 8192".into());
        }
        if settings.server.idle_timeout_secs == 0 {
            problems.push("server.idle_timeout_secs: must be greater than 0".into());
        }
        if settings.server.upgrade_idle_timeout_secs == 0 {
            problems.push("server.upgrade_idle_timeout_secs: must be greater than 0".into());
        }
        for protocol in &settings.server.upgrade_protocols {
            if protocol.eq_ignore_ascii_case("h2c") {
                problems.push(
                    "server.upgrade_protocols: h2c would tunnel requests past the sanitizer".into(),
                );
            } else if HeaderName::from_bytes(protocol.as_bytes()).is_err() {
                problems.push(format!(
                    "server.upgrade_protocols: {protocol:?} is not a protocol name"
                ));
            }
        }
        if settings.admin.readiness_interval_secs == 0 {
            problems.push("admin.readiness_interval_secs: must be greater than 0".into());
        }
        let cors_origins = crate::cors::check_settings(&settings.cors, &mut problems);
        let tls = settings.server.tls.as_ref().and_then(|tls| {
            crate::tls::server_config(tls)
                .map_err(|e| problems.push(e.to_string()))
                .ok()
        });
        let otlp = crate::otel::resolve(&settings.telemetry.otlp, env, &mut problems);
        match listen {
            Some(listen) if problems.is_empty() => Ok(Self {
                limits: RequestLimits {
                    max_body_bytes: settings.server.max_body_bytes,
                    body_read_timeout: Duration::from_millis(settings.server.body_read_timeout_ms),
                    upgrade_protocols: settings.server.upgrade_protocols.clone(),
                    upgrade_idle_timeout: Duration::from_secs(
                        settings.server.upgrade_idle_timeout_secs,
                    ),
                },
                settings,
                listen,
                admin_listen,
                upstreams,
                rules,
                websocket,
                cors_origins,
                tls,
                otlp,
            }),
            _ => Err(ConfigError { problems }),
        }
    }

    /// `server.header_read_timeout_ms` as a duration.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.settings.server.header_read_timeout_ms)
    }

    /// The effective settings as TOML, with secrets masked, for `guestgate check`.
    pub fn effective_toml(&self) -> String {
        let mut settings = self.settings.clone();
        let base = |target: &UpstreamTarget| {
            let b = &target.base;
            format!("{}://{}{}", b.scheme, b.authority, b.path_prefix)
        };
        settings.upstream.base_url = base(&self.upstreams[0]);
        for target in &self.upstreams[1..] {
            if let Some(named) = settings.upstreams.get_mut(&target.name) {
                named.base_url = base(target);
            }
        }
        let mut value = serde_json::to_value(&settings).unwrap_or(Value::Null);
        mask_secrets(&mut value);
        let names: Vec<String> = self.upstreams.iter().map(|u| u.name.clone()).collect();
        let mut out = String::from("# Rules, in match order (the first that matches applies):\n");
        for line in self.rules.describe(&names).lines() {
            out.push_str("#   ");
            out.push_str(line);
            out.push('\n');
        }
        if self.rules.rules().is_empty() {
            out.push_str("#   (none: every request passes through)\n");
        }
        for line in self.websocket.describe(&names).lines() {
            out.push_str("#   ");
            out.push_str(line);
            out.push('\n');
        }
        match &self.otlp {
            Some(export) => out.push_str(&format!("# Trace export: {}\n", export.describe())),
            None => out.push_str("# Trace export: off\n"),
        }
        out.push('\n');
        if let Some(table) = to_toml(value) {
            out.push_str(&toml::to_string_pretty(&table).unwrap_or_default());
        }
        out
    }

    /// `server.shutdown_timeout_secs` as a duration.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.settings.server.shutdown_timeout_secs)
    }
}

/// JSON to TOML for display; nulls (unset options) are left out.
fn to_toml(value: Value) -> Option<toml::Value> {
    Some(match value {
        Value::Null => return None,
        Value::Bool(b) => toml::Value::Boolean(b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => toml::Value::Integer(i),
            (None, Some(f)) if n.to_string().parse::<f64>().is_ok() => toml::Value::Float(f),
            _ => toml::Value::String(n.to_string()),
        },
        Value::String(s) => toml::Value::String(s),
        Value::Array(items) => toml::Value::Array(items.into_iter().filter_map(to_toml).collect()),
        Value::Object(map) => toml::Value::Table(
            map.into_iter()
                .filter_map(|(k, v)| Some((k, to_toml(v)?)))
                .collect(),
        ),
    })
}

/// Replaces the values of keys that name a secret, at any depth.
fn mask_secrets(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                let key = key.to_ascii_lowercase();
                if [
                    "secret",
                    "token",
                    "password",
                    "authorization",
                    "cookie",
                    "api_key",
                ]
                .iter()
                .any(|s| key.contains(s))
                {
                    *value = Value::String("********".into());
                } else {
                    mask_secrets(value);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(mask_secrets),
        _ => {}
    }
}

/// `[upstream]` and `[upstreams.NAME]`, each checked; a named one takes
/// what it leaves out from `[upstream]`.
fn check_upstreams(settings: &Settings, problems: &mut Vec<String>) -> Vec<UpstreamTarget> {
    let named = settings
        .upstreams
        .iter()
        .map(|(name, named)| (name.as_str(), named.over(&settings.upstream)));
    let all = std::iter::once(("default", settings.upstream.clone())).chain(named);
    let mut targets = Vec::new();
    for (i, (name, upstream)) in all.enumerate() {
        let at = if i == 0 {
            "upstream".to_owned()
        } else {
            format!("upstreams.{name}")
        };
        if i > 0 && (name == "default" || !crate::rules::valid_name(name)) {
            problems.push(format!(
                "{at}: the name must be 1 to 64 of a-z, 0-9, _ and -, and not \"default\""
            ));
        }
        for (key, value) in [
            ("connect_timeout_ms", upstream.connect_timeout_ms),
            ("response_timeout_ms", upstream.response_timeout_ms),
        ] {
            if value == 0 {
                problems.push(format!("{at}.{key}: must be greater than 0"));
            }
        }
        let base = parse_base_url(&upstream.base_url)
            .map_err(|e| problems.push(format!("{at}.base_url: {e}")))
            .ok();
        let tls = crate::tls::upstream_client_config(upstream.ca_file.as_deref())
            .map_err(|e| problems.push(format!("{at}.{e}")))
            .ok();
        if let (Some(base), Some(tls)) = (base, tls) {
            targets.push(UpstreamTarget {
                name: name.to_owned(),
                settings: upstream,
                base,
                tls: Arc::new(tls),
            });
        }
    }
    targets
}

/// Turns the `config` crate's messages into "setting: problem" lines.
fn describe(e: &config::ConfigError) -> String {
    let msg = e.to_string();
    if let Some((what, key)) = msg.rsplit_once(" for key `") {
        let (key, source) = key.split_once('`').unwrap_or((key, ""));
        return format!("{key}: {what}{source}");
    }
    msg
}

fn parse_addr(name: &str, value: &str, problems: &mut Vec<String>) -> Option<SocketAddr> {
    value
        .trim()
        .parse()
        .map_err(|_| {
            problems.push(format!(
                "{name}: {value:?} is not an address like 127.0.0.1:8080 or [::1]:8080"
            ))
        })
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sanitize::ToPolicy;

    fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn env_overrides_defaults_with_the_documented_names() {
        let config = Config::load_with_env(
            None,
            env(&[
                ("GUESTGATE__SERVER__LISTEN", "127.0.0.1:9000"),
                (
                    "GUESTGATE__UPSTREAM__BASE_URL",
                    "http://127.0.0.1:7000/prefix/",
                ),
                ("GUESTGATE__GUEST_MESSAGES__TO__ID", "12345"),
                ("GUESTGATE__GUEST_MESSAGES__TO_POLICY", "if_missing"),
                ("GUESTGATE__GUEST_MESSAGES__STRIP", "id, clientId"),
            ]),
        )
        .unwrap();
        assert_eq!(config.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(config.upstreams[0].base.path_prefix, "/prefix");
        assert_eq!(config.rules.rules()[0].name.as_ref(), "guest_messages");
        assert_eq!(
            config.settings.guest_messages.to_policy,
            ToPolicy::IfMissing
        );
        assert_eq!(config.settings.guest_messages.strip, ["id", "clientId"]);
        assert_eq!(config.settings.server.max_body_bytes, 65536);
    }

    #[test]
    fn missing_to_names_the_setting() {
        let err = Config::load_with_env(None, env(&[])).unwrap_err();
        assert_eq!(err.problems.len(), 1);
        assert!(
            err.problems[0].starts_with("guest_messages.to: required"),
            "{err}"
        );
    }

    #[test]
    fn every_problem_is_one_line_naming_its_setting() {
        let err = Config::load_with_env(
            None,
            env(&[
                ("GUESTGATE__SERVER__LISTEN", "nope"),
                ("GUESTGATE__UPSTREAM__BASE_URL", "ftp://x"),
                ("GUESTGATE__GUEST_MESSAGES__TO__ID", "q"),
                ("GUESTGATE__GUEST_MESSAGES__PATH", "/a//b"),
            ]),
        )
        .unwrap_err();
        let lines: Vec<_> = err.to_string().lines().map(str::to_owned).collect();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[0].starts_with("server.listen: "));
        assert!(lines[1].starts_with("upstream.base_url: "));
        assert!(lines[2].starts_with("guest_messages.path: "));
    }

    #[test]
    fn type_errors_and_unknown_keys_name_the_setting() {
        let err = Config::load_with_env(
            None,
            env(&[
                ("GUESTGATE__GUEST_MESSAGES__TO__ID", "q"),
                ("GUESTGATE__SERVER__MAX_BODY_BYTES", "lots"),
            ]),
        )
        .unwrap_err();
        assert!(
            err.problems[0].starts_with("server.max_body_bytes: "),
            "{err}"
        );
        let err = Config::load_with_env(
            None,
            env(&[
                ("GUESTGATE__GUEST_MESSAGES__TO__ID", "q"),
                ("GUESTGATE__SERVER__LISTN", "x"),
            ]),
        )
        .unwrap_err();
        assert!(
            err.problems[0].starts_with("server: unknown field `listn`"),
            "{err}"
        );
    }

    #[test]
    fn a_file_layers_between_defaults_and_env() {
        let dir = std::env::temp_dir().join(format!("guestgate-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("g.toml");
        std::fs::write(
            &file,
            "[server]\nlisten = \"127.0.0.1:1111\"\n[guest_messages]\nto = { id = \"from-file\", type = \"queue\" }\n",
        )
        .unwrap();
        let config = Config::load_with_env(
            Some(&file),
            env(&[("GUESTGATE__SERVER__LISTEN", "127.0.0.1:2222")]),
        )
        .unwrap();
        assert_eq!(config.listen.port(), 2222);
        assert_eq!(
            config.settings.guest_messages.to,
            serde_json::json!({"id": "from-file", "type": "queue"})
                .as_object()
                .cloned()
        );
        let missing = Config::load_with_env(Some(&dir.join("nope.toml")), env(&[])).unwrap_err();
        assert!(missing.problems[0].starts_with("--config: "));
    }
}
