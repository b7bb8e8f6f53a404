//! The routes whose bodies are edited.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::sanitize::ToPolicy;
use crate::upstream::RetrySettings;

/// `[guest_messages]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GuestMessagesSettings {
    /// Route template of the intercepted route.
    pub path: String,
    /// Top-level fields removed from the body.
    #[serde(deserialize_with = "crate::de::string_list")]
    pub strip: Vec<String>,
    /// The target written into every message; required.
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
