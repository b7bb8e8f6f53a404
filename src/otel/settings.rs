//! `[telemetry.otlp]` and the standard `OTEL_*` variables, resolved once into
//! the [`ExportConfig`] the exporter runs with.
//!
//! Precedence, per setting: a guestgate setting (file or
//! `GUESTGATE__TELEMETRY__OTLP__*`) wins; an `OTEL_*` variable fills what it
//! leaves unset; the built-in default comes last. The `OTEL_*` variables are
//! often injected fleet-wide (an operator, a Helm chart), so the deployment's
//! own file has the last word, as the OpenTelemetry specification has
//! explicit configuration win over the environment.

use http::Uri;
use serde::{Deserialize, Serialize};

/// `OTEL_EXPORTER_OTLP_ENDPOINT`: the collector's base URL (`/v1/traces` is
/// appended for http/protobuf).
pub const ENV_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`: the traces URL, used as it is.
pub const ENV_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
/// `OTEL_EXPORTER_OTLP_PROTOCOL`
pub const ENV_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
/// `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, which wins over [`ENV_PROTOCOL`].
pub const ENV_TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
/// `OTEL_SERVICE_NAME`
pub const ENV_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
/// `OTEL_TRACES_SAMPLER_ARG`: the ratio of the parent-based ratio sampler.
pub const ENV_SAMPLER_ARG: &str = "OTEL_TRACES_SAMPLER_ARG";

/// The service name when neither `service_name` nor `OTEL_SERVICE_NAME` is set.
pub const DEFAULT_SERVICE_NAME: &str = "guestgate";

/// `[telemetry]`
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySettings {
    /// OpenTelemetry trace export.
    pub otlp: OtlpSettings,
}

/// `[telemetry.otlp]`: unset values fall back to the `OTEL_*` variables.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpSettings {
    /// The collector's base URL; export is on when this (or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`) is set. An empty string turns export
    /// off whatever the environment says.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Wire protocol.
    #[serde(default)]
    pub protocol: Option<OtlpProtocol>,
    /// The `service.name` resource attribute.
    #[serde(default)]
    pub service_name: Option<String>,
    /// Share of new traces (no sampled parent) that are recorded, 0 to 1.
    #[serde(default)]
    pub sample_ratio: Option<f64>,
    /// Finished spans waiting for export; more are dropped and counted.
    #[serde(default = "default_queue_size")]
    pub max_queue_size: usize,
}

impl Default for OtlpSettings {
    fn default() -> Self {
        Self {
            endpoint: None,
            protocol: None,
            service_name: None,
            sample_ratio: None,
            max_queue_size: default_queue_size(),
        }
    }
}

fn default_queue_size() -> usize {
    2048
}

/// OTLP transports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum OtlpProtocol {
    /// Protobuf over HTTP POST to `…/v1/traces` (collector port 4318).
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// gRPC (collector port 4317).
    #[serde(rename = "grpc")]
    Grpc,
}

impl OtlpProtocol {
    /// The name used in settings and `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub fn as_str(self) -> &'static str {
        match self {
            OtlpProtocol::HttpProtobuf => "http/protobuf",
            OtlpProtocol::Grpc => "grpc",
        }
    }

    fn parse(value: &str) -> Option<Self> {
        match value.trim() {
            "http/protobuf" => Some(OtlpProtocol::HttpProtobuf),
            "grpc" => Some(OtlpProtocol::Grpc),
            _ => None,
        }
    }
}

/// What the exporter runs with, every source applied and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportConfig {
    /// Where spans are sent: the full `…/v1/traces` URL for http/protobuf,
    /// the collector's address for gRPC. Never has user info or a query.
    pub endpoint: Uri,
    /// Wire protocol.
    pub protocol: OtlpProtocol,
    /// `service.name`.
    pub service_name: String,
    /// Ratio of the parent-based ratio sampler.
    pub sample_ratio: f64,
    /// Bound of the span queue.
    pub max_queue_size: usize,
}

impl ExportConfig {
    /// One line for `guestgate check`.
    pub fn describe(&self) -> String {
        format!(
            "{} to {} as service {:?}, sample ratio {} (parent-based), queue {} spans",
            self.protocol.as_str(),
            self.endpoint,
            self.service_name,
            self.sample_ratio,
            self.max_queue_size
        )
    }
}

/// Applies the precedence to `settings` and the variables `env` returns;
/// `None` when export is off. Each problem is one line naming the setting
/// or the variable it came from.
pub fn resolve(
    settings: &OtlpSettings,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<String>,
) -> Option<ExportConfig> {
    // An empty variable counts as unset, as the specification says.
    let var = |name: &'static str| {
        env(name)
            .filter(|v| !v.trim().is_empty())
            .map(|v| (name, v))
    };
    let before = problems.len();
    let protocol = match settings.protocol {
        Some(protocol) => protocol,
        None => match var(ENV_TRACES_PROTOCOL).or_else(|| var(ENV_PROTOCOL)) {
            Some((name, value)) => OtlpProtocol::parse(&value).unwrap_or_else(|| {
                problems.push(format!(
                    "{name}: {value:?} is not supported; use \"http/protobuf\" or \"grpc\""
                ));
                OtlpProtocol::HttpProtobuf
            }),
            None => OtlpProtocol::HttpProtobuf,
        },
    };
    let service_name = match &settings.service_name {
        Some(name) => {
            if name.trim().is_empty() {
                problems.push("telemetry.otlp.service_name: must not be empty".into());
            }
            name.clone()
        }
        None => var(ENV_SERVICE_NAME)
            .map(|(_, v)| v)
            .unwrap_or_else(|| DEFAULT_SERVICE_NAME.into()),
    };
    let sample_ratio = match settings.sample_ratio {
        Some(ratio) => check_ratio("telemetry.otlp.sample_ratio", ratio, problems),
        None => match var(ENV_SAMPLER_ARG) {
            Some((name, value)) => match value.trim().parse::<f64>() {
                Ok(ratio) => check_ratio(name, ratio, problems),
                Err(_) => {
                    problems.push(format!("{name}: {value:?} is not a number from 0 to 1"));
                    1.0
                }
            },
            None => 1.0,
        },
    };
    if settings.max_queue_size == 0 {
        problems.push("telemetry.otlp.max_queue_size: must be greater than 0".into());
    }
    let endpoint = match &settings.endpoint {
        Some(endpoint) if endpoint.trim().is_empty() => None,
        Some(endpoint) => Some(("telemetry.otlp.endpoint", endpoint.clone(), true)),
        None => var(ENV_TRACES_ENDPOINT)
            .map(|(name, v)| (name, v, false))
            .or_else(|| var(ENV_ENDPOINT).map(|(name, v)| (name, v, true))),
    };
    let (name, value, base) = endpoint?;
    let endpoint = match parse_endpoint(&value) {
        Ok(uri) if base && protocol == OtlpProtocol::HttpProtobuf => traces_url(&uri),
        Ok(uri) => uri,
        Err(problem) => {
            problems.push(format!("{name}: {problem}"));
            return None;
        }
    };
    (problems.len() == before).then_some(ExportConfig {
        endpoint,
        protocol,
        service_name,
        sample_ratio,
        max_queue_size: settings.max_queue_size,
    })
}

fn check_ratio(name: &str, ratio: f64, problems: &mut Vec<String>) -> f64 {
    if !(0.0..=1.0).contains(&ratio) {
        problems.push(format!("{name}: {ratio} is not from 0 to 1"));
    }
    ratio
}

/// An `http://` or `https://` URL with a host; no user info (credentials
/// would end up in logs; `OTEL_EXPORTER_OTLP_HEADERS` carries them), no query.
fn parse_endpoint(value: &str) -> Result<Uri, String> {
    let uri: Uri = value
        .trim()
        .parse()
        .map_err(|e| format!("{value:?} is not a URL ({e})"))?;
    let scheme_ok = uri
        .scheme()
        .is_some_and(|s| *s == http::uri::Scheme::HTTP || *s == http::uri::Scheme::HTTPS);
    if !scheme_ok {
        return Err(format!("{value:?} must start with http:// or https://"));
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("{value:?} has no host"));
    };
    if authority.as_str().contains('@') {
        return Err(
            "must not contain user info (send credentials with OTEL_EXPORTER_OTLP_HEADERS)".into(),
        );
    }
    if authority.host().is_empty() {
        return Err(format!("{value:?} has no host"));
    }
    if uri.query().is_some() {
        return Err(format!("{value:?} must not have a query string"));
    }
    Ok(uri)
}

/// A base URL with the OTLP/HTTP traces path appended (unless it is there).
fn traces_url(base: &Uri) -> Uri {
    let path = base.path().trim_end_matches('/');
    if path.ends_with("/v1/traces") {
        return base.clone();
    }
    let mut parts = base.clone().into_parts();
    parts.path_and_query = format!("{path}/v1/traces").parse().ok();
    Uri::from_parts(parts).unwrap_or_else(|_| base.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn resolve_with(
        settings: &OtlpSettings,
        vars: &[(&str, &str)],
    ) -> (Option<ExportConfig>, Vec<String>) {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut problems = Vec::new();
        let config = resolve(settings, &|name| vars.get(name).cloned(), &mut problems);
        (config, problems)
    }

    #[test]
    fn off_without_an_endpoint() {
        let (config, problems) = resolve_with(&OtlpSettings::default(), &[]);
        assert_eq!(config, None);
        assert!(problems.is_empty());
    }

    #[test]
    fn the_standard_variables_are_honoured() {
        let (config, problems) = resolve_with(
            &OtlpSettings::default(),
            &[
                (ENV_ENDPOINT, "http://collector:4318"),
                (ENV_SERVICE_NAME, "edge-gateway"),
                (ENV_SAMPLER_ARG, "0.25"),
            ],
        );
        assert!(problems.is_empty(), "{problems:?}");
        let config = config.unwrap();
        assert_eq!(config.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(config.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(config.service_name, "edge-gateway");
        assert_eq!(config.sample_ratio, 0.25);
    }

    #[test]
    fn guestgate_settings_win_over_the_variables() {
        let settings = OtlpSettings {
            endpoint: Some("http://mine:4317".into()),
            protocol: Some(OtlpProtocol::Grpc),
            service_name: Some("mine".into()),
            sample_ratio: Some(0.5),
            ..OtlpSettings::default()
        };
        let (config, problems) = resolve_with(
            &settings,
            &[
                (ENV_ENDPOINT, "http://theirs:4318"),
                (ENV_PROTOCOL, "http/protobuf"),
                (ENV_SERVICE_NAME, "theirs"),
                (ENV_SAMPLER_ARG, "0.1"),
            ],
        );
        assert!(problems.is_empty(), "{problems:?}");
        let config = config.unwrap();
        assert_eq!(config.endpoint, "http://mine:4317/");
        assert_eq!(config.protocol, OtlpProtocol::Grpc);
        assert_eq!(config.service_name, "mine");
        assert_eq!(config.sample_ratio, 0.5);
        // An empty endpoint turns export off whatever the environment says.
        let off = OtlpSettings {
            endpoint: Some(String::new()),
            ..OtlpSettings::default()
        };
        let (config, _) = resolve_with(&off, &[(ENV_ENDPOINT, "http://theirs:4318")]);
        assert_eq!(config, None);
    }

    #[test]
    fn endpoints_per_protocol() {
        let at = |endpoint: &str, vars: &[(&str, &str)]| {
            let settings = OtlpSettings {
                endpoint: (!endpoint.is_empty()).then(|| endpoint.to_owned()),
                ..OtlpSettings::default()
            };
            resolve_with(&settings, vars)
                .0
                .unwrap()
                .endpoint
                .to_string()
        };
        assert_eq!(at("http://c:4318/", &[]), "http://c:4318/v1/traces");
        assert_eq!(
            at("http://c:4318/v1/traces", &[]),
            "http://c:4318/v1/traces"
        );
        assert_eq!(at("https://c/otlp", &[]), "https://c/otlp/v1/traces");
        assert_eq!(
            at("http://c:4317", &[(ENV_PROTOCOL, "grpc")]),
            "http://c:4317/"
        );
        assert_eq!(
            at("", &[(ENV_TRACES_ENDPOINT, "http://c:4318/custom")]),
            "http://c:4318/custom"
        );
    }

    #[test]
    fn bad_values_name_their_setting_or_variable() {
        let settings = OtlpSettings {
            endpoint: Some("ftp://c".into()),
            sample_ratio: Some(1.5),
            max_queue_size: 0,
            ..OtlpSettings::default()
        };
        let (config, problems) = resolve_with(&settings, &[]);
        assert_eq!(config, None);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].starts_with("telemetry.otlp.sample_ratio: "));
        assert!(problems[1].starts_with("telemetry.otlp.max_queue_size: "));
        assert!(problems[2].starts_with("telemetry.otlp.endpoint: "));
        let (_, problems) = resolve_with(
            &OtlpSettings::default(),
            &[
                (ENV_ENDPOINT, "http://user:secret@c:4318"),
                (ENV_PROTOCOL, "http/json"),
                (ENV_SAMPLER_ARG, "half"),
            ],
        );
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].starts_with("OTEL_EXPORTER_OTLP_PROTOCOL: "));
        assert!(problems[1].starts_with("OTEL_TRACES_SAMPLER_ARG: "));
        assert!(problems[2].starts_with("OTEL_EXPORTER_OTLP_ENDPOINT: "));
        assert!(!problems[2].contains("secret"), "{problems:?}");
    }
}
