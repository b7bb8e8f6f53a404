//! JSON Pointers (RFC 6901) naming body fields in the edit configuration, with
//! one extension: a segment that is exactly `*` matches every element of an
//! array or every member of an object.
//!
//! Because `*` is always the wildcard, there is no way to name an object key
//! that is literally `*`. Pointers are stricter than the RFC where its
//! generality only invites configuration mistakes: the empty pointer (the
//! whole body), empty segments (the empty key) and `-` (past the end of an
//! array) are refused when the configuration is loaded.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde_json::{Map, Value};

/// A parsed pointer that remembers the text it was configured as, so errors
/// and change records can name it without allocating.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Pointer {
    text: Arc<str>,
    tokens: Vec<Token>,
}

/// One segment of a pointer, unescaped.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Token {
    /// An object key; on an array, the element at `index` when the segment is
    /// an RFC 6901 array index (`0`, or digits without a leading zero).
    Name { key: String, index: Option<usize> },
    /// `*`: every element or member.
    Wildcard,
}

/// Why configured text is not a usable pointer. The message is a short
/// sentence meant to follow the setting's name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PointerError {
    /// Empty, or not starting with `/`.
    #[error("must start with '/' and name a field, not the whole body")]
    NotRooted,
    /// A `~` not followed by `0` or `1`.
    #[error("{0:?} is not an escape (only ~0 for '~' and ~1 for '/' are)")]
    BadEscape(String),
    /// `//` or a trailing `/`: it names the empty key, which is almost always a typo.
    #[error("empty segment: a doubled or trailing '/' names the empty key")]
    EmptySegment,
    /// `-`, which RFC 6901 reserves for the position after an array's last element.
    #[error("`-` (append) is not supported")]
    Append,
}

impl Pointer {
    /// Parses configuration text such as `/memberInfo/displayName`,
    /// `/content/*/id` or `/a~1b` (the key `a/b`).
    pub fn parse(text: &str) -> Result<Pointer, PointerError> {
        let rest = text.strip_prefix('/').ok_or(PointerError::NotRooted)?;
        let tokens = rest.split('/').map(token).collect::<Result<_, _>>()?;
        Ok(Pointer {
            text: Arc::from(text),
            tokens,
        })
    }

    /// The pointer exactly as configured.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True when some segment is `*`, so the pointer may match any number of
    /// locations, including none.
    pub fn has_wildcard(&self) -> bool {
        self.tokens.contains(&Token::Wildcard)
    }

    /// The value this pointer names in `object`; `None` for a pointer with a
    /// wildcard, which names no single value.
    pub fn get<'a>(&self, object: &'a Map<String, Value>) -> Option<&'a Value> {
        let mut tokens = self.tokens.iter();
        let Some(Token::Name { key, .. }) = tokens.next() else {
            return None;
        };
        let mut at = object.get(key)?;
        for token in tokens {
            let Token::Name { key, index } = token else {
                return None;
            };
            at = match at {
                Value::Object(map) => map.get(key)?,
                Value::Array(items) => items.get((*index)?)?,
                _ => return None,
            };
        }
        Some(at)
    }

    /// The configured text, shared, for errors and change records.
    pub(crate) fn text(&self) -> &Arc<str> {
        &self.text
    }

    pub(crate) fn tokens(&self) -> &[Token] {
        &self.tokens
    }

    /// True when the last segment can name an array element by index.
    pub(crate) fn ends_in_index(&self) -> bool {
        matches!(self.tokens.last(), Some(Token::Name { index: Some(_), .. }))
    }

    /// True when some location could be named by both pointers or be inside
    /// a location the other names: segment by segment over the shorter one,
    /// each pair is equal or one of them is `*`.
    pub(crate) fn overlaps(&self, other: &Pointer) -> bool {
        self.tokens
            .iter()
            .zip(&other.tokens)
            .all(|pair| match pair {
                (Token::Wildcard, _) | (_, Token::Wildcard) => true,
                (a, b) => a == b,
            })
    }

    /// True when the pointers overlap, or when, before they first name
    /// different keys, one has `*` where the other names a key: a write
    /// through the second can then create a member the first's wildcard
    /// enumerates (`/*/a` and `/x/b` on a body without `x`).
    pub(crate) fn crosses(&self, other: &Pointer) -> bool {
        for pair in self.tokens.iter().zip(&other.tokens) {
            match pair {
                (Token::Wildcard, Token::Wildcard) => {}
                (Token::Wildcard, _) | (_, Token::Wildcard) => return true,
                (a, b) if a == b => {}
                _ => return false,
            }
        }
        true
    }
}

impl fmt::Display for Pointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Pointer {
    type Err = PointerError;

    fn from_str(text: &str) -> Result<Pointer, PointerError> {
        Pointer::parse(text)
    }
}

fn token(raw: &str) -> Result<Token, PointerError> {
    match raw {
        "" => return Err(PointerError::EmptySegment),
        "-" => return Err(PointerError::Append),
        "*" => return Ok(Token::Wildcard),
        _ => {}
    }
    let mut key = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '~' {
            key.push(c);
            continue;
        }
        match chars.next() {
            Some('0') => key.push('~'),
            Some('1') => key.push('/'),
            Some(other) => return Err(PointerError::BadEscape(format!("~{other}"))),
            None => return Err(PointerError::BadEscape("~".to_owned())),
        }
    }
    let index = index(raw);
    Ok(Token::Name { key, index })
}

/// RFC 6901 array index: `0`, or digits without a leading zero. One too large
/// for `usize` is past the end of any array, so it saturates.
fn index(raw: &str) -> Option<usize> {
    let digits = raw.bytes().all(|b| b.is_ascii_digit());
    if !digits || raw.is_empty() || (raw.len() > 1 && raw.starts_with('0')) {
        return None;
    }
    Some(raw.parse().unwrap_or(usize::MAX))
}

/// Writes one path segment escaped per RFC 6901 (`~` as `~0`, `/` as `~1`).
pub(crate) fn push_escaped(out: &mut String, key: &str) {
    out.push('/');
    for c in key.chars() {
        match c {
            '~' => out.push_str("~0"),
            '/' => out.push_str("~1"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(key: &str) -> Token {
        Token::Name {
            key: key.to_owned(),
            index: None,
        }
    }

    fn at(key: &str, i: usize) -> Token {
        Token::Name {
            key: key.to_owned(),
            index: Some(i),
        }
    }

    #[test]
    fn get_names_one_value_or_none() {
        let body = serde_json::json!({"a": {"b": [1, {"c": 2}]}, "01": 3});
        let body = body.as_object().unwrap();
        let get = |text: &str| Pointer::parse(text).unwrap().get(body).cloned();
        assert_eq!(get("/a/b/1/c"), Some(serde_json::json!(2)));
        assert_eq!(get("/a/b/0"), Some(serde_json::json!(1)));
        assert_eq!(get("/01"), Some(serde_json::json!(3)));
        assert_eq!(get("/a/b/01"), None, "not an index");
        assert_eq!(get("/a/b/2"), None);
        assert_eq!(get("/a/x"), None);
        assert_eq!(get("/a/b/0/c"), None, "inside a number");
        assert_eq!(get("/a/*"), None, "a wildcard names no single value");
    }

    fn tokens(text: &str) -> Vec<Token> {
        Pointer::parse(text).unwrap().tokens().to_vec()
    }

    #[test]
    fn splits_on_slash() {
        assert_eq!(
            tokens("/memberInfo/displayName"),
            [name("memberInfo"), name("displayName")]
        );
        assert_eq!(tokens("/to"), [name("to")]);
    }

    #[test]
    fn unescapes_tilde_one_and_tilde_zero() {
        assert_eq!(tokens("/a~1b"), [name("a/b")]);
        assert_eq!(tokens("/m~0n"), [name("m~n")]);
        // ~01 is `~` then `1`, not `/`: escapes are read left to right once.
        assert_eq!(tokens("/~01"), [name("~1")]);
        assert_eq!(tokens("/~1~0"), [name("/~")]);
    }

    #[test]
    fn other_tilde_sequences_are_refused_by_name() {
        assert_eq!(
            Pointer::parse("/a~2b"),
            Err(PointerError::BadEscape("~2".into()))
        );
        assert_eq!(
            Pointer::parse("/a~"),
            Err(PointerError::BadEscape("~".into()))
        );
        assert_eq!(
            Pointer::parse("/~x/b"),
            Err(PointerError::BadEscape("~x".into()))
        );
        let message = Pointer::parse("/a~2").unwrap_err().to_string();
        assert!(message.contains("\"~2\""), "{message}");
    }

    #[test]
    fn the_whole_body_and_relative_text_are_refused() {
        for text in ["", "a", "a/b", " /a", "*"] {
            assert_eq!(Pointer::parse(text), Err(PointerError::NotRooted), "{text}");
        }
        assert_eq!(
            PointerError::NotRooted.to_string(),
            "must start with '/' and name a field, not the whole body"
        );
    }

    #[test]
    fn empty_segments_are_refused() {
        for text in ["/", "/a//b", "/a/", "//a"] {
            assert_eq!(
                Pointer::parse(text),
                Err(PointerError::EmptySegment),
                "{text}"
            );
        }
    }

    #[test]
    fn append_is_refused() {
        assert_eq!(Pointer::parse("/list/-"), Err(PointerError::Append));
        assert_eq!(
            PointerError::Append.to_string(),
            "`-` (append) is not supported"
        );
        // Only the exact segment: `-x` and an escaped form are plain keys.
        assert_eq!(tokens("/-x"), [name("-x")]);
    }

    #[test]
    fn star_is_a_wildcard_only_as_a_whole_segment() {
        let p = Pointer::parse("/content/*/id").unwrap();
        assert_eq!(p.tokens(), [name("content"), Token::Wildcard, name("id")]);
        assert!(p.has_wildcard());
        assert_eq!(tokens("/a*"), [name("a*")]);
        assert_eq!(tokens("/**"), [name("**")]);
        assert!(!Pointer::parse("/a*").unwrap().has_wildcard());
    }

    #[test]
    fn indices_follow_rfc_6901() {
        assert_eq!(tokens("/0"), [at("0", 0)]);
        assert_eq!(tokens("/a/10"), [name("a"), at("10", 10)]);
        for text in ["/01", "/1.0", "/-1", "/+1", "/1e2", "/ 1", "/x"] {
            assert!(
                matches!(tokens(text)[..], [Token::Name { index: None, .. }]),
                "{text}"
            );
        }
        assert_eq!(
            tokens("/99999999999999999999999999"),
            [at("99999999999999999999999999", usize::MAX)]
        );
    }

    #[test]
    fn keeps_the_configured_text() {
        let p = Pointer::parse("/a~1b/*/0").unwrap();
        assert_eq!(p.as_str(), "/a~1b/*/0");
        assert_eq!(p.to_string(), "/a~1b/*/0");
        assert_eq!(&**p.text(), "/a~1b/*/0");
        assert_eq!("/a~1b/*/0".parse::<Pointer>(), Ok(p));
    }

    #[test]
    fn overlap_and_crossing_are_segment_wise() {
        let p = |t: &str| Pointer::parse(t).unwrap();
        assert!(p("/a").overlaps(&p("/a/b")));
        assert!(p("/a/b").overlaps(&p("/a")));
        assert!(p("/*/b").overlaps(&p("/a/*/c")));
        assert!(!p("/a/b").overlaps(&p("/a/c")));
        assert!(!p("/0").overlaps(&p("/00")));
        assert!(p("/a").crosses(&p("/a/b")));
        assert!(p("/*/a").crosses(&p("/x/b")));
        assert!(p("/x/*/a").crosses(&p("/x/y/b")));
        assert!(!p("/*/a").crosses(&p("/*/b")));
        assert!(!p("/x/a/*").crosses(&p("/x/b/c")));
        assert!(p("/a/0").ends_in_index());
        assert!(!p("/a/01").ends_in_index());
        assert!(!p("/a/*").ends_in_index());
    }

    #[test]
    fn escaping_round_trips() {
        let mut out = String::new();
        push_escaped(&mut out, "a/b");
        push_escaped(&mut out, "m~n");
        assert_eq!(out, "/a~1b/m~0n");
        assert_eq!(tokens(&out), [name("a/b"), name("m~n")]);
    }
}
