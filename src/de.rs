//! Deserializers shared by the settings types: lists that come either as
//! TOML arrays or, from an environment variable, as comma-separated text.

use serde::{Deserialize, Deserializer};

/// Accepts a TOML list or, from an environment variable, a comma-separated string.
pub(crate) fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
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

/// Accepts a TOML list of numbers or a comma-separated string of them.
pub(crate) fn status_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u16>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum List {
        Numbers(Vec<u16>),
        Strings(Vec<String>),
        One(String),
    }
    let strings = match List::deserialize(d)? {
        List::Numbers(v) => return Ok(v),
        List::Strings(v) => v,
        List::One(s) => s.split(',').map(str::to_owned).collect(),
    };
    strings
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|_| serde::de::Error::custom(format!("{s:?} is not a status code")))
        })
        .collect()
}
