//! Layered configuration: compiled-in defaults, an optional file, then
//! `GUESTGATE__SECTION__KEY` environment variables.
//!
//! Everything is validated before the proxy binds a port, and each problem is
//! reported as one line naming the setting, so a bad deployment fails fast.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::Uri;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::routing::RouteTemplate;

/// The defaults shipped with the binary, so a container needs no file.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Environment variable prefix; `__` separates the prefix and nesting levels.
pub const ENV_PREFIX: &str = "GUESTGATE";

/// How the configured `to` meets a client-sent one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToPolicy {
    /// A guest never chooses its own target.
    Override,
    /// Keep the client's `to` when it sends one.
    IfMissing,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable, for terminals.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// All settings, as read from the layered sources.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The client-facing listener.
    pub server: ServerSettings,
    /// Where requests go.
    pub upstream: UpstreamSettings,
    /// The intercepted route and its sanitizing.
    pub guest_messages: GuestMessagesSettings,
    /// Health and metrics listener.
    pub admin: AdminSettings,
    /// Logging.
    pub log: LogSettings,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
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
}

/// `[upstream]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSettings {
    /// Base URL every request is forwarded to.
    pub base_url: String,
    /// TCP (and TLS) connect timeout.
    pub connect_timeout_ms: u64,
    /// Time allowed until the upstream's response head.
    pub response_timeout_ms: u64,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout_secs: u64,
    /// Idle pooled connections kept per upstream host.
    pub pool_max_idle_per_host: usize,
}

/// `[guest_messages]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestMessagesSettings {
    /// Route template of the intercepted route.
    pub path: String,
    /// Top-level fields removed from the body.
    #[serde(deserialize_with = "string_list")]
    pub strip: Vec<String>,
    /// The target written into every message; required.
    #[serde(default)]
    pub to: Option<serde_json::Map<String, Value>>,
    /// How the configured `to` meets a client-sent one.
    pub to_policy: ToPolicy,
    /// Forward unchanged, only log and count what would change.
    pub report_only: bool,
}

/// `[admin]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    /// Address of the admin listener; empty disables it.
    pub listen: String,
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// Output format.
    pub format: LogFormat,
    /// Default filter directive when `RUST_LOG` is unset.
    pub level: String,
}

/// Accepts a TOML list or, from an environment variable, a comma-separated string.
fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum List {
        Many(Vec<String>),
        One(String),
    }
    Ok(match List::deserialize(d)? {
        List::Many(v) => v,
        List::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    })
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

/// The upstream base URL, split for request building.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    /// `http` or `https`.
    pub scheme: http::uri::Scheme,
    /// Host and optional port.
    pub authority: http::uri::Authority,
    /// Path prefix without a trailing slash (often empty).
    pub path_prefix: String,
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
    /// Parsed `upstream.base_url`.
    pub upstream: BaseUrl,
    /// Parsed `guest_messages.path`.
    pub route: RouteTemplate,
    /// The sanitizing policy.
    pub policy: crate::sanitize::Policy,
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
        let env_source = config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .source(env);
        let settings: Settings = builder
            .add_source(env_source)
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(|e| ConfigError::one(describe(&e)))?;
        Self::from_settings(settings)
    }

    /// Validates settings, collecting every problem rather than the first.
    pub fn from_settings(settings: Settings) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let listen = parse_addr("server.listen", &settings.server.listen, &mut problems);
        let admin_listen = if settings.admin.listen.trim().is_empty() {
            None
        } else {
            parse_addr("admin.listen", &settings.admin.listen, &mut problems)
        };
        let upstream = parse_base_url(&settings.upstream.base_url)
            .map_err(|e| problems.push(format!("upstream.base_url: {e}")))
            .ok();
        let route = RouteTemplate::parse(&settings.guest_messages.path)
            .map_err(|e| problems.push(format!("guest_messages.path: {e}")))
            .ok();
        let to = match &settings.guest_messages.to {
            None => {
                problems.push(
                    "guest_messages.to: required, e.g. GUESTGATE__GUEST_MESSAGES__TO__ID=<queue-id>"
                        .into(),
                );
                None
            }
            Some(map) if map.is_empty() => {
                problems.push("guest_messages.to: must have at least one field, e.g. id".into());
                None
            }
            Some(map) => Some(Value::Object(map.clone())),
        };
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
            (
                "upstream.connect_timeout_ms",
                settings.upstream.connect_timeout_ms,
            ),
            (
                "upstream.response_timeout_ms",
                settings.upstream.response_timeout_ms,
            ),
        ] {
            if value == 0 {
                problems.push(format!("{name}: must be greater than 0"));
            }
        }
        if settings.server.max_header_bytes < 8192 {
            problems.push("server.max_header_bytes: must be at least 8192".into());
        }
        if settings.guest_messages.strip.iter().any(|k| k == "to") {
            problems.push(
                "guest_messages.strip: must not contain \"to\", which is set by guest_messages.to"
                    .into(),
            );
        }
        match (listen, upstream, route, to) {
            (Some(listen), Some(upstream), Some(route), Some(to)) if problems.is_empty() => {
                let policy = crate::sanitize::Policy::new(
                    settings.guest_messages.strip.clone(),
                    to,
                    settings.guest_messages.to_policy,
                );
                Ok(Self {
                    settings,
                    listen,
                    admin_listen,
                    upstream,
                    route,
                    policy,
                })
            }
            _ => Err(ConfigError { problems }),
        }
    }

    /// `server.header_read_timeout_ms` as a duration.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.settings.server.header_read_timeout_ms)
    }

    /// `server.body_read_timeout_ms` as a duration.
    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_millis(self.settings.server.body_read_timeout_ms)
    }

    /// `server.shutdown_timeout_secs` as a duration.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.settings.server.shutdown_timeout_secs)
    }
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

fn parse_base_url(value: &str) -> Result<BaseUrl, String> {
    let uri: Uri = value
        .trim()
        .parse()
        .map_err(|e| format!("{value:?} is not a URL ({e})"))?;
    let scheme = uri
        .scheme()
        .filter(|s| **s == http::uri::Scheme::HTTP || **s == http::uri::Scheme::HTTPS)
        .cloned()
        .ok_or_else(|| format!("{value:?} must start with http:// or https://"))?;
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("{value:?} has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!("{value:?} must not contain user info"));
    }
    if uri.query().is_some() {
        return Err(format!("{value:?} must not have a query string"));
    }
    Ok(BaseUrl {
        scheme,
        authority,
        path_prefix: uri.path().trim_end_matches('/').to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(config.upstream.path_prefix, "/prefix");
        assert_eq!(config.policy.to(), &serde_json::json!({"id": "12345"}));
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
            config.policy.to(),
            &serde_json::json!({"id": "from-file", "type": "queue"})
        );
        let missing = Config::load_with_env(Some(&dir.join("nope.toml")), env(&[])).unwrap_err();
        assert!(missing.problems[0].starts_with("--config: "));
    }
}
