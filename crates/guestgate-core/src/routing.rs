//! Path canonicalization and route matching.
//!
//! The guest messages route must be recognised however a client spells it, or
//! a client could dodge the sanitizer with `//`, `%2e%2e`, `;x` or `MESSAGES`
//! while the upstream still routes the request to the same handler. Every
//! request path is therefore reduced to one canonical form (RFC 3986 section 6
//! normalization plus a few rules of our own, documented in docs/security.md), the
//! route is matched on that form, and the upstream receives exactly that form.

use std::fmt::Write;

/// Why a request target is refused (400) instead of guessed at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// `%` not followed by two hex digits.
    #[error("invalid percent-encoding in path")]
    InvalidPercentEncoding,
    /// `%2F`, `%5C` or `%3B`: some servers decode them into separators
    /// (or parameter delimiters), some do not.
    #[error("encoded '/', '\\' or ';' in path")]
    EncodedSeparator,
    /// `%23` or `%3F`: an upstream that decodes before splitting would
    /// read a fragment or a query where we saw a path.
    #[error("encoded '#' or '?' in path")]
    EncodedDelimiter,
    /// `%00`–`%1F` or `%7F`: control characters end or split a path in
    /// some parsers.
    #[error("encoded control character in path")]
    EncodedControl,
    /// `%25` followed by two hex digits: an upstream that decodes twice
    /// would see a different path than the one matched.
    #[error("double percent-encoding in path")]
    DoubleEncoding,
    /// A raw `\`, which some servers treat as `/`.
    #[error("backslash in path")]
    Backslash,
    /// A control character or a byte that is not allowed in a URI path.
    #[error("invalid character in path")]
    InvalidCharacter,
    /// Absolute-form (`http://host/p`), authority-form or asterisk-form target.
    #[error("request target must be a path (origin-form)")]
    NotOriginForm,
}

/// Which kind of route a request took, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// An intercepted route: its body was edited.
    Intercepted,
    /// Everything else.
    PassThrough,
}

impl RouteKind {
    /// A stable label.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Intercepted => "intercepted",
            RouteKind::PassThrough => "pass_through",
        }
    }
}

/// Where one segment lies in [`CanonicalPath`]'s text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    /// First byte, after the `/`.
    start: usize,
    /// End of the part before the first `;`.
    bare_end: usize,
}

/// A path in canonical form: percent-encoded unreserved characters decoded,
/// other escapes upper-cased, dot segments resolved, empty segments removed.
/// Built in one buffer: the forwarded path is that buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalPath {
    text: String,
    segments: Vec<Segment>,
}

impl CanonicalPath {
    /// Canonicalizes a raw origin-form path (without the query).
    pub fn parse(raw: &str) -> Result<Self, PathError> {
        match Self::parse_plain(raw) {
            Some(path) => Ok(path),
            None => Self::parse_any(raw),
        }
    }

    /// The usual path, already canonical: plain segments only (no escapes,
    /// `;`, empty or dot segments). One pass over its bytes; `None` for any
    /// other path, which [`CanonicalPath::parse_any`] then reads.
    fn parse_plain(raw: &str) -> Option<Self> {
        let bytes = raw.as_bytes();
        if bytes.first() != Some(&b'/') {
            return None;
        }
        let mut segments: Vec<Segment> = Vec::with_capacity(8);
        let mut start = 1;
        for (end, &byte) in bytes.iter().enumerate().skip(1) {
            match PATH_BYTE[usize::from(byte)] {
                PathByte::Plain => {}
                PathByte::Slash => {
                    segments.push(plain_segment(bytes, start, end)?);
                    start = end + 1;
                }
                PathByte::Other => return None,
            }
        }
        segments.push(plain_segment(bytes, start, bytes.len())?);
        Some(Self {
            text: raw.to_owned(),
            segments,
        })
    }

    /// Any path, segment by segment.
    fn parse_any(raw: &str) -> Result<Self, PathError> {
        if !raw.starts_with('/') {
            return Err(PathError::NotOriginForm);
        }
        let mut text = String::with_capacity(raw.len() + 1);
        let mut segments: Vec<Segment> = Vec::with_capacity(8);
        let mut trailing_slash = false;
        for raw_segment in raw[1..].split('/') {
            let slash = text.len();
            text.push('/');
            let start = text.len();
            let bare_end = if raw_segment.bytes().all(|b| PLAIN[usize::from(b)]) {
                // Already canonical, and without `;`: the usual segment.
                text.push_str(raw_segment);
                text.len()
            } else {
                normalize_segment_into(&mut text, raw_segment)?;
                text[start..].find(';').map_or(text.len(), |i| start + i)
            };
            trailing_slash = false;
            // Servers that drop `;parameters` before resolving dot segments
            // (Tomcat, Jetty, Spring) read `..;x` as `..` and `;x` as an
            // empty segment, so they are resolved here the same way.
            match &text[start..bare_end] {
                "" | "." => {
                    text.truncate(slash);
                    trailing_slash = true;
                }
                ".." => {
                    text.truncate(slash);
                    if let Some(previous) = segments.pop() {
                        text.truncate(previous.start - 1);
                    }
                    trailing_slash = true;
                }
                _ => segments.push(Segment { start, bare_end }),
            }
        }
        if segments.is_empty() || trailing_slash {
            text.push('/');
        }
        Ok(Self { text, segments })
    }

    /// The canonical path as forwarded for a pass-through request.
    pub fn as_path(&self) -> &str {
        &self.text
    }

    fn bare(&self, segment: &Segment) -> &str {
        &self.text[segment.start..segment.bare_end]
    }
}

/// A segment of a plain path, unless it is empty or a dot segment.
fn plain_segment(bytes: &[u8], start: usize, end: usize) -> Option<Segment> {
    match &bytes[start..end] {
        b"" | b"." | b".." => None,
        _ => Some(Segment {
            start,
            bare_end: end,
        }),
    }
}

/// What a byte is to [`CanonicalPath::parse_plain`].
#[derive(Clone, Copy)]
enum PathByte {
    /// Its own canonical form, not `;` ([`PLAIN`]).
    Plain,
    /// `/`.
    Slash,
    /// Anything else: the path takes the full reading.
    Other,
}

/// One lookup per byte of a plain path.
static PATH_BYTE: [PathByte; 256] = {
    let mut table = [PathByte::Other; 256];
    let mut b = 0;
    while b < 256 {
        if PLAIN[b] {
            table[b] = PathByte::Plain;
        }
        b += 1;
    }
    table[b'/' as usize] = PathByte::Slash;
    table
};

/// RFC 3986 unreserved characters: decoding them never changes meaning.
const fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// The bytes a segment can consist of to be its own canonical form with no
/// `;parameters`: pchar minus `%` and `;`. One lookup per byte.
static PLAIN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = is_pchar(b as u8) && b as u8 != b';';
        b += 1;
    }
    table
};

/// Characters allowed raw in a path segment (pchar minus `%`).
const fn is_pchar(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn normalize_segment(raw: &str) -> Result<String, PathError> {
    let mut out = String::with_capacity(raw.len());
    normalize_segment_into(&mut out, raw)?;
    Ok(out)
}

/// Appends the canonical spelling of one raw segment to `out`.
fn normalize_segment_into(out: &mut String, raw: &str) -> Result<(), PathError> {
    let start = out.len();
    append_canonical(out, raw)?;
    // `%25` then two hex digits, however they were spelled (`%2532`,
    // `%25%32%46`): decoded once more it is another character.
    let canonical = &out.as_bytes()[start..];
    let double = canonical
        .windows(5)
        .any(|w| w.starts_with(b"%25") && w[3].is_ascii_hexdigit() && w[4].is_ascii_hexdigit());
    if double {
        return Err(PathError::DoubleEncoding);
    }
    Ok(())
}

fn append_canonical(out: &mut String, raw: &str) -> Result<(), PathError> {
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::InvalidPercentEncoding);
                };
                let decoded = hi << 4 | lo;
                match decoded {
                    b'/' | b'\\' | b';' => return Err(PathError::EncodedSeparator),
                    b'#' | b'?' => return Err(PathError::EncodedDelimiter),
                    0x00..=0x1F | 0x7F => return Err(PathError::EncodedControl),
                    _ => {}
                }
                if is_unreserved(decoded) {
                    out.push(decoded as char);
                } else {
                    let _ = write!(out, "%{decoded:02X}");
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            _ if is_pchar(b) => {
                // A run of plain characters is copied at once.
                let run = bytes[i..]
                    .iter()
                    .position(|&b| b == b'%' || !is_pchar(b))
                    .map_or(bytes.len(), |n| i + n);
                out.push_str(&raw[i..run]);
                i = run;
            }
            _ => return Err(PathError::InvalidCharacter),
        }
    }
    Ok(())
}

/// One segment of a route template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TemplateSegment {
    /// Matched ASCII case-insensitively.
    Literal(String),
    /// `{name}`: any one non-empty segment.
    Param(String),
}

/// A configured route such as
/// `/api/v2/conversations/messaging/guest/conversations/{conversationId}/messages`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTemplate {
    segments: Vec<TemplateSegment>,
}

/// Why a configured route template is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(String);

impl RouteTemplate {
    /// Parses a template; literals must already be in canonical form.
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        let Some(rest) = template.strip_prefix('/') else {
            return Err(TemplateError("must start with '/'".into()));
        };
        let segments = rest
            .split('/')
            .map(|s| {
                if s.starts_with('{') && s.ends_with('}') && s.len() > 2 {
                    return Ok(TemplateSegment::Param(s[1..s.len() - 1].to_owned()));
                }
                let canonical = normalize_segment(s).ok();
                if s.is_empty()
                    || s == "."
                    || s == ".."
                    || s.contains(['{', '}', ';'])
                    || canonical.as_deref() != Some(s)
                {
                    return Err(TemplateError(format!(
                        "segment {s:?} is not a plain path segment or a {{parameter}}"
                    )));
                }
                Ok(TemplateSegment::Literal(s.to_owned()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { segments })
    }

    /// If `path` is this route (ignoring letter case of literals, `;parameters`
    /// and a trailing slash), the exact path to forward: the template's own
    /// spelling with the captured parameters. Nothing is allocated for a
    /// path that does not match.
    pub fn matches<'a, 'b>(&'a self, path: &'b CanonicalPath) -> Option<String> {
        if path.segments.len() != self.segments.len() {
            return None;
        }
        let pairs = || self.segments.iter().zip(&path.segments);
        // Last segment first: paths under one API share their first
        // segments and differ at the end, where a mismatch is found soonest.
        let matched = pairs().rev().all(|(template, segment)| {
            let bare = path.bare(segment);
            match template {
                // Most requests spell a literal as configured: one compare.
                TemplateSegment::Literal(literal) => {
                    literal == bare || literal.eq_ignore_ascii_case(bare)
                }
                TemplateSegment::Param(_) => !bare.is_empty(),
            }
        });
        if !matched {
            return None;
        }
        let spelled = |(template, segment): (&'a TemplateSegment, &'b Segment)| match template {
            TemplateSegment::Literal(literal) => literal.as_str(),
            TemplateSegment::Param(_) => path.bare(segment),
        };
        // Sized once: a path longer than a guess would grow and copy it.
        let mut out = String::with_capacity(pairs().map(|pair| 1 + spelled(pair).len()).sum());
        for pair in pairs() {
            out.push('/');
            out.push_str(spelled(pair));
        }
        Some(out)
    }

    /// Whether every path `other` matches is matched by this template too.
    pub fn covers(&self, other: &RouteTemplate) -> bool {
        self.segments.len() == other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|(mine, theirs)| match (mine, theirs) {
                    (TemplateSegment::Param(_), _) => true,
                    (TemplateSegment::Literal(a), TemplateSegment::Literal(b)) => {
                        a.eq_ignore_ascii_case(b)
                    }
                    (TemplateSegment::Literal(_), TemplateSegment::Param(_)) => false,
                })
    }
}

impl std::fmt::Display for RouteTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.segments.iter().try_for_each(|segment| match segment {
            TemplateSegment::Literal(literal) => write!(f, "/{literal}"),
            TemplateSegment::Param(name) => write!(f, "/{{{name}}}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: &str =
        "/api/v2/conversations/messaging/guest/conversations/{conversationId}/messages";
    const CANON: &str = "/api/v2/conversations/messaging/guest/conversations/c-1/messages";

    #[test]
    fn the_plain_path_reading_agrees_with_the_full_one() {
        for raw in [
            "/",
            "/a",
            "/a/",
            "//a",
            "/a//b",
            "/./a",
            "/a/.",
            "/a/..",
            "/a/.b/..c/...",
            "/a;b/c",
            "/a/%41",
            "/A/b-c_d~e!$&'()*+,=:@/f",
            "/a/b c",
            "/a\\b",
            "",
            "a/b",
            CANON,
        ] {
            let plain = CanonicalPath::parse_plain(raw);
            let any = CanonicalPath::parse_any(raw);
            if let Some(plain) = &plain {
                assert_eq!(Ok(plain), any.as_ref(), "{raw}");
                assert_eq!(plain.as_path(), raw);
            }
            assert_eq!(CanonicalPath::parse(raw), any, "{raw}");
        }
        assert!(CanonicalPath::parse_plain(CANON).is_some());
        assert!(CanonicalPath::parse_plain("/a/.b/..c/...").is_some());
    }

    fn route_of(raw: &str) -> Result<Option<String>, PathError> {
        let template = RouteTemplate::parse(ROUTE).unwrap();
        CanonicalPath::parse(raw).map(|p| template.matches(&p))
    }

    #[test]
    fn every_spelling_of_the_route_matches_and_forwards_canonically() {
        for raw in [
            CANON,
            "/api/v2/conversations/messaging/guest/conversations/c-1/messages/",
            "//api///v2/conversations/messaging/guest/conversations/c-1/messages",
            "/api/v2/./conversations/messaging/guest/x/../conversations/c-1/messages",
            "/api/v2/conversations/messaging/guest/conversations/c-1/%6d%65ssages",
            "/api/v2/conversations/messaging/guest/conversations/c-1/%6D%65ssages",
            "/API/V2/Conversations/MESSAGING/guest/conversations/c-1/Messages",
            "/api/v2/conversations;x=1/messaging/guest/conversations/c-1/messages;jsessionid=2",
            "/api/v2/conversations/messaging/guest/conversations/c-1/messages/.",
            "/api/v2/conversations/messaging/guest/conversations/c-1/messages/x/..",
            "/api/v2/conversations/messaging/guest/conversations/c-1/%2e/messages",
            "/api/v2/conversations/messaging/guest/conversations/c-1/%2E%2E/c-1/messages",
            "/../api/v2/conversations/messaging/guest/conversations/c-1/messages",
            "/api/v2/conversations/messaging/guest/conversations/%63-1/messages",
            "/api/v2/conversations/messaging/guest/conversations/c-1/messages/x/..;/",
            "/api/v2/conversations/messaging/guest/conversations/c-1/messages/x/%2e%2e;y=1",
            "/api/v2/conversations/messaging/guest/conversations/c-1/messages/.;x",
            "/api/v2/conversations/messaging/guest/conversations/c-1/;x/messages",
        ] {
            assert_eq!(route_of(raw), Ok(Some(CANON.to_owned())), "{raw}");
        }
    }

    #[test]
    fn the_forwarded_path_is_built_in_one_allocation() {
        let id = "c0ffee00-1111-4222-8333-444455556666";
        for raw in [CANON.to_owned(), CANON.replace("c-1", id)] {
            let path = route_of(&raw).unwrap().unwrap();
            assert_eq!(path, raw);
            assert_eq!(path.capacity(), path.len(), "{raw}");
        }
    }

    #[test]
    fn other_paths_do_not_match() {
        for raw in [
            "/api/v2/conversations/messaging/guest/conversations/c-1",
            "/api/v2/conversations/messaging/guest/conversations//messages",
            "/api/v2/conversations/messaging/guest/conversations/c-1/messages/m-1",
            "/api/v2/webchat/guest/conversations/c-1/messages",
            "/",
        ] {
            assert_eq!(route_of(raw), Ok(None), "{raw}");
        }
    }

    #[test]
    fn ambiguous_spellings_are_refused() {
        assert_eq!(route_of("/a%2Fb"), Err(PathError::EncodedSeparator));
        assert_eq!(route_of("/a%2fb"), Err(PathError::EncodedSeparator));
        assert_eq!(route_of("/a%5cb"), Err(PathError::EncodedSeparator));
        assert_eq!(
            route_of("/api/v2/messages%3Bx"),
            Err(PathError::EncodedSeparator)
        );
        assert_eq!(route_of("/a%3bb"), Err(PathError::EncodedSeparator));
        assert_eq!(route_of("/a\\b"), Err(PathError::Backslash));
        for (raw, error) in [
            ("/a%23b", PathError::EncodedDelimiter),
            ("/a%3fb", PathError::EncodedDelimiter),
            ("/a%3Fb", PathError::EncodedDelimiter),
            ("/a%00b", PathError::EncodedControl),
            ("/a%0Ab", PathError::EncodedControl),
            ("/a%1fb", PathError::EncodedControl),
            ("/a%7Fb", PathError::EncodedControl),
            ("/a%252Fb", PathError::DoubleEncoding),
            ("/a%252fb", PathError::DoubleEncoding),
            ("/a%2541", PathError::DoubleEncoding),
            ("/a%25%32%46b", PathError::DoubleEncoding),
            ("/a%25%32f", PathError::DoubleEncoding),
        ] {
            assert_eq!(route_of(raw), Err(error), "{raw}");
        }
        // A percent sign that is not followed by two hex digits is just one.
        assert!(route_of("/a%25zz").is_ok());
        assert!(route_of("/a%25").is_ok());
        assert!(route_of("/a%25%20").is_ok());
        assert_eq!(route_of("/a%zz"), Err(PathError::InvalidPercentEncoding));
        assert_eq!(route_of("/a%4"), Err(PathError::InvalidPercentEncoding));
        assert_eq!(route_of("/a b"), Err(PathError::InvalidCharacter));
        assert_eq!(route_of("*"), Err(PathError::NotOriginForm));
        assert_eq!(route_of("http://x/a"), Err(PathError::NotOriginForm));
    }

    #[test]
    fn pass_through_paths_keep_their_shape_in_canonical_form() {
        let canon = |raw: &str| CanonicalPath::parse(raw).unwrap().as_path().to_owned();
        assert_eq!(canon("/"), "/");
        assert_eq!(canon("//"), "/");
        assert_eq!(canon("/a/b/"), "/a/b/");
        assert_eq!(canon("/a/./b/../c"), "/a/c");
        assert_eq!(canon("/a/%7e%41%2c%c3%a9"), "/a/~A%2C%C3%A9");
        assert_eq!(canon("/a/..;x/b/.;y"), "/b/");
        assert_eq!(canon("/a;p=1/b"), "/a;p=1/b");
        assert_eq!(canon("/a/.."), "/");
    }

    #[test]
    fn canonical_form_is_a_fixed_point() {
        for raw in ["/a//b/./c/../%41%2e%3a/", "/x;y/%C3%A9", "/.."] {
            let once = CanonicalPath::parse(raw).unwrap().as_path().to_owned();
            let twice = CanonicalPath::parse(&once).unwrap().as_path().to_owned();
            assert_eq!(once, twice);
        }
    }

    #[test]
    fn templates_are_validated() {
        assert!(RouteTemplate::parse(ROUTE).is_ok());
        assert!(RouteTemplate::parse("no-slash").is_err());
        assert!(RouteTemplate::parse("/a//b").is_err());
        assert!(RouteTemplate::parse("/a/%41").is_err());
        assert!(RouteTemplate::parse("/a/{}").is_err());
    }

    #[test]
    fn coverage_of_one_template_by_another() {
        let t = |s| RouteTemplate::parse(s).unwrap();
        assert!(t("/a/{x}/c").covers(&t("/a/b/c")));
        assert!(t("/a/{x}/c").covers(&t("/A/{y}/c")));
        assert!(t("/a/b/c").covers(&t("/a/B/c")));
        assert!(!t("/a/b/c").covers(&t("/a/{x}/c")));
        assert!(!t("/a/{x}").covers(&t("/a/b/c")));
        assert!(!t("/a/b").covers(&t("/a/c")));
        assert_eq!(t("/a/{id}/Messages").to_string(), "/a/{id}/Messages");
    }
}
