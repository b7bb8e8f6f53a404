//! Configured edits of a JSON request body: a pure function over an object.
//!
//! Vendors reject or misroute messages over fields the guest should not
//! control, so the proxy removes some fields, fills in or overrides others,
//! and refuses bodies whose fields are outside what the route allows. Every
//! field no pointer names is left exactly as the client sent it, in place.
//!
//! Order of application: every `remove`, then every `set_if_missing`, then
//! every `set`, each list in its configured order; `allow` and `require` are
//! checked on the result.
//!
//! Errors and change records carry the configured pointer text and key names
//! from the body, never values, so they are safe to log.
//!
//! Traversal is a loop over pointer segments (which come from configuration),
//! never recursion over the body, and allocates only the locations it visits.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::pointer::{Pointer, Token, push_escaped};

/// The edits configured for one route. Empty lists do nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Edits {
    /// Removed wherever they match; a missing field is not an error.
    pub remove: Vec<Pointer>,
    /// Written only where the final location is absent (`null` is present).
    pub set_if_missing: Vec<(Pointer, Value)>,
    /// Written wherever they point, replacing what is there.
    pub set: Vec<(Pointer, Value)>,
    /// Where present after the edits, the value must equal one of these.
    pub allow: Vec<(Pointer, Vec<Value>)>,
    /// Must be present after the edits.
    pub require: Vec<Pointer>,
}

impl Edits {
    /// True when there is nothing to do or check, so the body need not be parsed.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.set_if_missing.is_empty()
            && self.set.is_empty()
            && self.allow.is_empty()
            && self.require.is_empty()
    }

    /// True when, for every body these edits accept, applying them again to
    /// the output is guaranteed to change nothing (same body, and
    /// `modified() == false`).
    ///
    /// Three things break that, so configuration can warn about them:
    /// - a `remove` whose last segment is an array index: the next element
    ///   moves into its place and is removed the next time;
    /// - a `set` or `set_if_missing` whose pointer overlaps another edit's
    ///   (equal segments or `*` over the shorter length, e.g. `remove /a`
    ///   with `set /a/b`): each run removes and re-creates `a`;
    /// - two writes where one has `*` where the other names a key that it
    ///   may create (`set /*/a` before `set /x/b`): the next run's wildcard
    ///   also reaches the new `x`.
    ///
    /// The check is conservative: edits it refuses may still be idempotent
    /// on a given body.
    pub fn is_idempotent(&self) -> bool {
        if self.remove.iter().any(Pointer::ends_in_index) {
            return false;
        }
        let writes = self.set_if_missing.iter().chain(&self.set);
        let all: Vec<(&Pointer, bool)> = self
            .remove
            .iter()
            .map(|p| (p, false))
            .chain(writes.map(|(p, _)| (p, true)))
            .collect();
        all.iter().enumerate().all(|(i, &(p, p_writes))| {
            all[i + 1..]
                .iter()
                .all(|&(q, q_writes)| match (p_writes, q_writes) {
                    (true, true) => !p.crosses(q),
                    (true, false) | (false, true) => !p.overlaps(q),
                    (false, false) => true,
                })
        })
    }
}

/// What one configured pointer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// A `remove` removed at least one location.
    Removed,
    /// A `set` or `set_if_missing` created at least one location.
    Injected,
    /// A `set` replaced at least one different value (and created none).
    Overridden,
    /// A `set` or `set_if_missing` matched only locations it left as they
    /// were (equal already, or present under `set_if_missing`).
    Kept,
}

impl Op {
    /// A stable label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Removed => "removed",
            Op::Injected => "injected",
            Op::Overridden => "overridden",
            Op::Kept => "kept",
        }
    }
}

/// One pointer's effect on the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub op: Op,
    /// The pointer as configured.
    pub pointer: Arc<str>,
}

/// The effect of [`apply`], one entry per pointer that did something, in the
/// order the edits were applied. A `remove` that matched nothing and a
/// wildcard that matched nothing leave no entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub edits: Vec<Change>,
}

impl Changes {
    /// True when some edit changed the body. (It may still equal the
    /// client's, e.g. when a `set` writes back what a `remove` removed.)
    pub fn modified(&self) -> bool {
        self.edits.iter().any(|c| c.op != Op::Kept)
    }

    /// The configured pointers that had `op`, for logs (names, never values).
    pub fn pointers(&self, op: Op) -> Vec<&str> {
        let edits = self.edits.iter().filter(|c| c.op == op);
        edits.map(|c| &*c.pointer).collect()
    }

    fn record(&mut self, op: Op, pointer: &Pointer) {
        self.edits.push(Change {
            op,
            pointer: Arc::clone(pointer.text()),
        });
    }
}

/// Why a body was refused. `pointer` is the configured text; `at` is the
/// concrete location that failed, made of key names from the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    /// A location to write is under a value that cannot hold it: a scalar
    /// (`null` included), or an array when the segment is not an index.
    /// `*` over a scalar is the same error.
    #[error("{pointer:?}: {at:?} is not an object")]
    NotAnObject { pointer: Arc<str>, at: String },
    /// A location to write is past the end of an array (arrays are never
    /// extended or padded).
    #[error("{pointer:?}: {at:?} is past the end of the array")]
    NoSuchIndex { pointer: Arc<str>, at: String },
    /// A present value is not one of the allowed values.
    #[error("{pointer:?}: value not allowed")]
    NotAllowed { pointer: Arc<str> },
    /// A required location is absent.
    #[error("{pointer:?}: required field is missing")]
    Required { pointer: Arc<str> },
}

impl EditError {
    /// A stable label for the client-facing error and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            EditError::NotAnObject { .. } | EditError::NoSuchIndex { .. } => "invalid-body",
            EditError::NotAllowed { .. } => "field-not-allowed",
            EditError::Required { .. } => "field-required",
        }
    }
}

/// Applies `edits` to `body` and checks the result.
///
/// On error the body may be partly edited; the request is refused, so it is
/// meant to be discarded.
pub fn apply(body: &mut Map<String, Value>, edits: &Edits) -> Result<Changes, EditError> {
    // Work on the body as a Value so the root and nested objects are walked
    // alike; no pointer is empty, so the root stays an object.
    let mut root = Value::Object(std::mem::take(body));
    let result = apply_to(&mut root, edits);
    if let Value::Object(map) = root {
        *body = map;
    }
    result
}

fn apply_to(root: &mut Value, edits: &Edits) -> Result<Changes, EditError> {
    let mut changes = Changes::default();
    for pointer in &edits.remove {
        if remove(root, pointer) {
            changes.record(Op::Removed, pointer);
        }
    }
    for (pointer, value) in &edits.set_if_missing {
        if let Some(op) = write(root, pointer, value, Write::IfMissing)? {
            changes.record(op, pointer);
        }
    }
    for (pointer, value) in &edits.set {
        if let Some(op) = write(root, pointer, value, Write::Always)? {
            changes.record(op, pointer);
        }
    }
    for (pointer, allowed) in &edits.allow {
        let found = walk(root, pointer).found;
        if !found.iter().all(|(_, value)| allowed.contains(value)) {
            return Err(EditError::NotAllowed {
                pointer: Arc::clone(pointer.text()),
            });
        }
    }
    for pointer in &edits.require {
        if !walk(root, pointer).complete {
            return Err(EditError::Required {
                pointer: Arc::clone(pointer.text()),
            });
        }
    }
    Ok(changes)
}

/// One step from a value to a child.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// A concrete location: the steps from the root.
type Path = Vec<Step>;

fn resolve_mut<'a>(root: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    path.iter().try_fold(root, |node, step| match (node, step) {
        (Value::Object(map), Step::Key(key)) => map.get_mut(key),
        (Value::Array(items), Step::Index(i)) => items.get_mut(*i),
        _ => None,
    })
}

/// The location as RFC 6901 text, for error messages.
fn render(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Key(key) => push_escaped(&mut out, key),
            Step::Index(i) => {
                out.push('/');
                out.push_str(&i.to_string());
            }
        }
    }
    out
}

/// Where a pointer matches in a document, without changing it.
struct Walk<'a> {
    /// Every existing location, in document order.
    found: Vec<(Path, &'a Value)>,
    /// False when some segment found nothing to continue from: a missing
    /// name, or `*` over a scalar. `*` over an empty array or object is fine.
    complete: bool,
}

fn walk<'a>(root: &'a Value, pointer: &Pointer) -> Walk<'a> {
    let mut found: Vec<(Path, &Value)> = vec![(Vec::new(), root)];
    let mut complete = true;
    for token in pointer.tokens() {
        let mut next = Vec::new();
        for (path, node) in found {
            match (node, token) {
                (Value::Object(_) | Value::Array(_), Token::Wildcard) => {
                    push_children(&mut next, &path, node);
                }
                (Value::Object(map), Token::Name { key, .. }) => match map.get(key) {
                    Some(v) => next.push((extend(&path, Step::Key(key.clone())), v)),
                    None => complete = false,
                },
                (Value::Array(items), Token::Name { index: Some(i), .. }) => match items.get(*i) {
                    Some(v) => next.push((extend(&path, Step::Index(*i)), v)),
                    None => complete = false,
                },
                _ => complete = false,
            }
        }
        found = next;
    }
    Walk { found, complete }
}

/// Every member or element of a container, for `*`.
fn push_children<'a>(next: &mut Vec<(Path, &'a Value)>, path: &[Step], node: &'a Value) {
    match node {
        Value::Object(map) => {
            for (k, v) in map {
                next.push((extend(path, Step::Key(k.clone())), v));
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                next.push((extend(path, Step::Index(i)), v));
            }
        }
        _ => {}
    }
}

fn extend(path: &[Step], step: Step) -> Path {
    let mut path = path.to_vec();
    path.push(step);
    path
}

/// Removes every location `pointer` matches; true when there was one.
fn remove(root: &mut Value, pointer: &Pointer) -> bool {
    if pointer.has_wildcard() {
        remove_matches(root, pointer)
    } else {
        remove_one(root, pointer.tokens())
    }
}

/// [`remove`] for a pointer without wildcards, which names one location at
/// most: followed in place, with nothing allocated.
fn remove_one(root: &mut Value, tokens: &[Token]) -> bool {
    let Some((last, parents)) = tokens.split_last() else {
        return false;
    };
    let mut node = root;
    for token in parents {
        let child = match (node, token) {
            (Value::Object(map), Token::Name { key, .. }) => map.get_mut(key),
            (Value::Array(items), Token::Name { index: Some(i), .. }) => items.get_mut(*i),
            _ => None,
        };
        let Some(child) = child else {
            return false;
        };
        node = child;
    }
    match (node, last) {
        (Value::Object(map), Token::Name { key, .. }) => map.shift_remove(key).is_some(),
        (Value::Array(items), Token::Name { index: Some(i), .. }) if *i < items.len() => {
            items.remove(*i);
            true
        }
        _ => false,
    }
}

/// [`remove`] for any pointer: every match is found first, then removed.
fn remove_matches(root: &mut Value, pointer: &Pointer) -> bool {
    let paths: Vec<Path> = walk(root, pointer)
        .found
        .into_iter()
        .map(|(path, _)| path)
        .collect();
    // Last first: a removed array element then never shifts one still to be
    // removed, and removing from the end of an object or array is cheap.
    let mut removed = false;
    for path in paths.iter().rev() {
        let Some((last, parent)) = path.split_last() else {
            continue;
        };
        match (resolve_mut(root, parent), last) {
            (Some(Value::Object(map)), Step::Key(key)) => {
                removed |= map.shift_remove(key).is_some();
            }
            (Some(Value::Array(items)), Step::Index(i)) if *i < items.len() => {
                items.remove(*i);
                removed = true;
            }
            _ => {}
        }
    }
    removed
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Write {
    Always,
    IfMissing,
}

/// A place a write lands.
enum Target {
    /// An existing value.
    Existing(Path),
    /// A member `key` to add to the object at `parent`, holding the value
    /// wrapped in new objects named by `below`.
    Missing {
        parent: Path,
        key: String,
        below: Vec<String>,
    },
}

/// Writes `value` where `pointer` points and says what that did (`None`
/// when a wildcard matched nothing).
fn write(
    root: &mut Value,
    pointer: &Pointer,
    value: &Value,
    mode: Write,
) -> Result<Option<Op>, EditError> {
    if !pointer.has_wildcard() {
        if let Some(op) = write_one(root, pointer.tokens(), value, mode) {
            return Ok(Some(op));
        }
    }
    write_matches(root, pointer, value, mode)
}

/// [`write`] for a pointer without wildcards, which lands in one place:
/// followed in place, allocating only what it writes. `None`, with nothing
/// changed, when the write cannot land; [`write_matches`] then says why.
fn write_one(root: &mut Value, tokens: &[Token], value: &Value, mode: Write) -> Option<Op> {
    let mut node = root;
    for (depth, token) in tokens.iter().enumerate() {
        node = match (node, token) {
            (Value::Object(map), Token::Name { key, .. }) => {
                if !map.contains_key(key) {
                    // The missing member, holding the value in new objects
                    // named by the segments below it.
                    let mut nested = value.clone();
                    for below in tokens[depth + 1..].iter().rev() {
                        let Token::Name { key, .. } = below else {
                            return None;
                        };
                        nested = Value::Object(Map::from_iter([(key.clone(), nested)]));
                    }
                    map.insert(key.clone(), nested);
                    return Some(Op::Injected);
                }
                map.get_mut(key)?
            }
            (Value::Array(items), Token::Name { index: Some(i), .. }) => items.get_mut(*i)?,
            _ => return None,
        };
    }
    if mode == Write::IfMissing || node == value {
        Some(Op::Kept)
    } else {
        *node = value.clone();
        Some(Op::Overridden)
    }
}

/// [`write`] for any pointer: every place it lands is found first, so a
/// pointer that fails somewhere writes nowhere.
fn write_matches(
    root: &mut Value,
    pointer: &Pointer,
    value: &Value,
    mode: Write,
) -> Result<Option<Op>, EditError> {
    let targets = targets(root, pointer)?;
    let (mut injected, mut overridden, mut kept) = (false, false, false);
    for target in targets {
        match target {
            Target::Existing(path) => {
                let Some(slot) = resolve_mut(root, &path) else {
                    continue;
                };
                if mode == Write::IfMissing || slot == value {
                    kept = true;
                } else {
                    *slot = value.clone();
                    overridden = true;
                }
            }
            Target::Missing { parent, key, below } => {
                if let Some(Value::Object(map)) = resolve_mut(root, &parent) {
                    let nested = below.into_iter().rev().fold(value.clone(), |inner, k| {
                        Value::Object(Map::from_iter([(k, inner)]))
                    });
                    map.insert(key, nested);
                    injected = true;
                }
            }
        }
    }
    Ok(if injected {
        Some(Op::Injected)
    } else if overridden {
        Some(Op::Overridden)
    } else if kept {
        Some(Op::Kept)
    } else {
        None
    })
}

/// Every place a write through `pointer` lands, or why it cannot. Nothing is
/// changed, so a pointer that fails somewhere writes nowhere.
fn targets(root: &Value, pointer: &Pointer) -> Result<Vec<Target>, EditError> {
    let tokens = pointer.tokens();
    let mut targets = Vec::new();
    let mut frontier: Vec<(Path, &Value)> = vec![(Vec::new(), root)];
    for (depth, token) in tokens.iter().enumerate() {
        let mut next = Vec::new();
        for (path, node) in frontier {
            match (node, token) {
                (Value::Object(_) | Value::Array(_), Token::Wildcard) => {
                    push_children(&mut next, &path, node);
                }
                (Value::Object(map), Token::Name { key, .. }) => match map.get(key) {
                    Some(v) => next.push((extend(&path, Step::Key(key.clone())), v)),
                    // A wildcard further down would match nothing in a new
                    // object, so then nothing is created.
                    None => {
                        if let Some(below) = names(&tokens[depth + 1..]) {
                            targets.push(Target::Missing {
                                parent: path,
                                key: key.clone(),
                                below,
                            });
                        }
                    }
                },
                (
                    Value::Array(items),
                    Token::Name {
                        key,
                        index: Some(i),
                    },
                ) => match items.get(*i) {
                    Some(v) => next.push((extend(&path, Step::Index(*i)), v)),
                    // Named by the configured digits, which may not fit a usize.
                    None => {
                        return Err(EditError::NoSuchIndex {
                            pointer: Arc::clone(pointer.text()),
                            at: render(&extend(&path, Step::Key(key.clone()))),
                        });
                    }
                },
                _ => {
                    return Err(EditError::NotAnObject {
                        pointer: Arc::clone(pointer.text()),
                        at: render(&path),
                    });
                }
            }
        }
        frontier = next;
    }
    targets.extend(frontier.into_iter().map(|(path, _)| Target::Existing(path)));
    Ok(targets)
}

/// The keys of `tokens`, or `None` when one is a wildcard.
fn names(tokens: &[Token]) -> Option<Vec<String>> {
    tokens
        .iter()
        .map(|token| match token {
            Token::Name { key, .. } => Some(key.clone()),
            Token::Wildcard => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(text: &str) -> Pointer {
        Pointer::parse(text).unwrap()
    }

    #[test]
    fn pointers_without_wildcards_edit_as_the_general_walk_does() {
        let docs = [
            json!({}),
            json!({"a": 1, "b": {"c": [10, {"d": null}, 30]}, "e": "x"}),
            json!({"a": {"a": {"a": 1}}, "0": [], "b": [[1], {"1": 2}]}),
            json!({"a": [], "b": null, "c": {"0": {"1": true}}}),
        ];
        let pointers = [
            "/a", "/b", "/zz", "/a/a", "/a/a/a", "/a/zz/y", "/b/c", "/b/c/0", "/b/c/1/d", "/b/c/3",
            "/b/c/x", "/b/0", "/b/0/0", "/b/1/1", "/e/f", "/c/0/1", "/0/0", "/a/0",
        ];
        let values = [json!(7), json!(null), json!({"k": [1]}), json!(1)];
        for doc in &docs {
            for text in pointers {
                let pointer = p(text);
                let (mut one, mut all) = (doc.clone(), doc.clone());
                assert_eq!(
                    super::remove(&mut one, &pointer),
                    remove_matches(&mut all, &pointer),
                    "remove {text} from {doc}"
                );
                // As text: the key order must agree too.
                assert_eq!(one.to_string(), all.to_string(), "remove {text} from {doc}");
                for value in &values {
                    for mode in [Write::Always, Write::IfMissing] {
                        let (mut one, mut all) = (doc.clone(), doc.clone());
                        assert_eq!(
                            write(&mut one, &pointer, value, mode),
                            write_matches(&mut all, &pointer, value, mode),
                            "{mode:?} {text} = {value} in {doc}"
                        );
                        let (one, all) = (one.to_string(), all.to_string());
                        assert_eq!(one, all, "{mode:?} {text} = {value} in {doc}");
                    }
                }
            }
        }
    }

    /// Parses with key order kept, so outputs can be compared as text.
    fn body(text: &str) -> Map<String, Value> {
        serde_json::from_str(text).unwrap()
    }

    fn text(map: &Map<String, Value>) -> String {
        serde_json::to_string(map).unwrap()
    }

    fn remove(pointers: &[&str]) -> Edits {
        Edits {
            remove: pointers.iter().map(|t| p(t)).collect(),
            ..Edits::default()
        }
    }

    fn set(pairs: &[(&str, Value)]) -> Edits {
        Edits {
            set: pairs.iter().map(|(t, v)| (p(t), v.clone())).collect(),
            ..Edits::default()
        }
    }

    fn set_if_missing(pairs: &[(&str, Value)]) -> Edits {
        Edits {
            set_if_missing: pairs.iter().map(|(t, v)| (p(t), v.clone())).collect(),
            ..Edits::default()
        }
    }

    fn allow(pointer: &str, values: &[Value]) -> Edits {
        Edits {
            allow: vec![(p(pointer), values.to_vec())],
            ..Edits::default()
        }
    }

    fn require(pointers: &[&str]) -> Edits {
        Edits {
            require: pointers.iter().map(|t| p(t)).collect(),
            ..Edits::default()
        }
    }

    /// Applies, returns the output text and the ops with their pointers.
    fn run(input: &str, edits: &Edits) -> (String, Vec<(Op, String)>) {
        let mut map = body(input);
        let changes = apply(&mut map, edits).unwrap();
        let ops = changes
            .edits
            .iter()
            .map(|c| (c.op, c.pointer.to_string()))
            .collect();
        (text(&map), ops)
    }

    fn out(input: &str, edits: &Edits) -> String {
        run(input, edits).0
    }

    fn error(input: &str, edits: &Edits) -> EditError {
        apply(&mut body(input), edits).unwrap_err()
    }

    fn ops(list: &[(Op, &str)]) -> Vec<(Op, String)> {
        list.iter().map(|(op, t)| (*op, (*t).to_owned())).collect()
    }

    // ------------------------------------------------------------- remove

    #[test]
    fn remove_top_level_and_nested_keeping_order() {
        let (output, changes) = run(
            r#"{"z":1,"id":"c","a":{"y":2,"id":"x","b":3},"m":4}"#,
            &remove(&["/id", "/a/id"]),
        );
        assert_eq!(output, r#"{"z":1,"a":{"y":2,"b":3},"m":4}"#);
        assert_eq!(
            changes,
            ops(&[(Op::Removed, "/id"), (Op::Removed, "/a/id")])
        );
    }

    #[test]
    fn remove_of_nothing_is_not_an_error_and_records_nothing() {
        let input = r#"{"a":"s","l":[1],"n":null}"#;
        let edits = remove(&["/x", "/a/b", "/l/5", "/l/x", "/n/b", "/x/*", "/a/*"]);
        let (output, changes) = run(input, &edits);
        assert_eq!(output, input);
        assert!(changes.is_empty());
    }

    #[test]
    fn escapes_name_slash_and_tilde_keys() {
        let input = r#"{"a/b":1,"a":{"b":2},"m~n":3,"m":{"n":4}}"#;
        assert_eq!(
            out(input, &remove(&["/a~1b", "/m~0n"])),
            r#"{"a":{"b":2},"m":{"n":4}}"#
        );
        assert_eq!(
            out(input, &set(&[("/a~1b", json!(9)), ("/m~0n", json!(8))])),
            r#"{"a/b":9,"a":{"b":2},"m~n":8,"m":{"n":4}}"#
        );
    }

    #[test]
    fn remove_array_element_by_index_shifts_the_rest() {
        assert_eq!(
            out(r#"{"l":[0,1,2]}"#, &remove(&["/l/1"])),
            r#"{"l":[0,2]}"#
        );
        // Not an index on an array: nothing there.
        for pointer in ["/l/01", "/l/1.0", "/l/x", "/l/3"] {
            assert_eq!(
                out(r#"{"l":[0,1,2]}"#, &remove(&[pointer])),
                r#"{"l":[0,1,2]}"#,
                "{pointer}"
            );
        }
        // On an object, digits are an ordinary key.
        assert_eq!(
            out(r#"{"o":{"1":"a","01":"b"}}"#, &remove(&["/o/01"])),
            r#"{"o":{"1":"a"}}"#
        );
    }

    #[test]
    fn remove_wildcard_last_empties_arrays_and_objects() {
        assert_eq!(
            out(
                r#"{"l":[1,2,3],"o":{"a":1,"b":2},"k":1}"#,
                &remove(&["/l/*", "/o/*"])
            ),
            r#"{"l":[],"o":{},"k":1}"#
        );
        assert_eq!(out(r#"{"a":1,"b":2}"#, &remove(&["/*"])), "{}");
    }

    #[test]
    fn remove_through_a_wildcard_handles_each_element() {
        let input = r#"{"content":[{"id":1,"t":"a"},{"t":"b"},"s",{"id":3,"t":"c"}]}"#;
        assert_eq!(
            out(input, &remove(&["/content/*/id"])),
            r#"{"content":[{"t":"a"},{"t":"b"},"s",{"t":"c"}]}"#
        );
        // Index removal under a wildcard: each array shifts on its own.
        assert_eq!(
            out(r#"{"a":{"x":[1,2],"y":[3],"z":[]}}"#, &remove(&["/a/*/0"])),
            r#"{"a":{"x":[2],"y":[],"z":[]}}"#
        );
        // Nested wildcards over objects and arrays.
        assert_eq!(
            out(
                r#"{"a":[{"b":{"id":1,"k":1},"c":{"id":2}},{"d":[{"id":3}]}]}"#,
                &remove(&["/a/*/*/id"])
            ),
            r#"{"a":[{"b":{"k":1},"c":{}},{"d":[{"id":3}]}]}"#
        );
    }

    // ---------------------------------------------------------------- set

    #[test]
    fn set_replaces_in_place_and_appends_new_members() {
        let (output, changes) = run(
            r#"{"to":{"id":"evil"},"text":"x"}"#,
            &set(&[
                ("/to", json!({"id": "q"})),
                ("/bodyType", json!("standard")),
            ]),
        );
        assert_eq!(
            output,
            r#"{"to":{"id":"q"},"text":"x","bodyType":"standard"}"#
        );
        assert_eq!(
            changes,
            ops(&[(Op::Overridden, "/to"), (Op::Injected, "/bodyType")])
        );
    }

    #[test]
    fn set_creates_missing_parent_objects() {
        assert_eq!(
            out("{}", &set(&[("/a/b/c", json!(1))])),
            r#"{"a":{"b":{"c":1}}}"#
        );
        assert_eq!(
            out(r#"{"a":{"x":0}}"#, &set(&[("/a/b/c", json!(1))])),
            r#"{"a":{"x":0,"b":{"c":1}}}"#
        );
        // A missing parent is always an object, even for digit segments.
        assert_eq!(out("{}", &set(&[("/a/0", json!(1))])), r#"{"a":{"0":1}}"#);
    }

    #[test]
    fn set_under_a_scalar_is_not_an_object() {
        for (input, at) in [
            (r#"{"routingTarget":"queue"}"#, "/routingTarget"),
            (r#"{"routingTarget":null}"#, "/routingTarget"),
            (r#"{"routingTarget":3}"#, "/routingTarget"),
            (r#"{"routingTarget":true}"#, "/routingTarget"),
            (r#"{"routingTarget":[{"priority":1}]}"#, "/routingTarget"),
        ] {
            let e = error(input, &set(&[("/routingTarget/priority", json!(1))]));
            assert_eq!(
                e,
                EditError::NotAnObject {
                    pointer: "/routingTarget/priority".into(),
                    at: at.into()
                },
                "{input}"
            );
            assert_eq!(e.reason(), "invalid-body");
            assert_eq!(
                e.to_string(),
                r#""/routingTarget/priority": "/routingTarget" is not an object"#
            );
        }
    }

    #[test]
    fn error_locations_are_escaped_and_concrete() {
        let e = error(
            r#"{"l":[{"a/b":{"m~n":"s"}}]}"#,
            &set(&[("/l/*/a~1b/m~0n/x", json!(1))]),
        );
        assert_eq!(
            e,
            EditError::NotAnObject {
                pointer: "/l/*/a~1b/m~0n/x".into(),
                at: "/l/0/a~1b/m~0n".into()
            }
        );
        assert!(!e.to_string().contains("\"s\""));
    }

    #[test]
    fn set_by_index_replaces_but_never_extends() {
        assert_eq!(
            out(
                r#"{"l":[1,{"k":0}]}"#,
                &set(&[("/l/1/k", json!(2)), ("/l/0", json!(9))])
            ),
            r#"{"l":[9,{"k":2}]}"#
        );
        let e = error(r#"{"l":[1,2]}"#, &set(&[("/l/2", json!(3))]));
        assert_eq!(
            e,
            EditError::NoSuchIndex {
                pointer: "/l/2".into(),
                at: "/l/2".into()
            }
        );
        assert_eq!(e.reason(), "invalid-body");
        assert_eq!(
            e.to_string(),
            r#""/l/2": "/l/2" is past the end of the array"#
        );
        assert_eq!(
            error(r#"{"l":[]}"#, &set(&[("/l/0/x", json!(3))])),
            EditError::NoSuchIndex {
                pointer: "/l/0/x".into(),
                at: "/l/0".into()
            }
        );
        assert_eq!(
            error(
                r#"{"l":[]}"#,
                &set(&[("/l/99999999999999999999", json!(3))])
            ),
            EditError::NoSuchIndex {
                pointer: "/l/99999999999999999999".into(),
                at: "/l/99999999999999999999".into()
            }
        );
        // A segment that is not an index, on an array.
        for pointer in ["/l/x", "/l/01"] {
            assert_eq!(
                error(r#"{"l":[1]}"#, &set(&[(pointer, json!(3))])),
                EditError::NotAnObject {
                    pointer: pointer.into(),
                    at: "/l".into()
                }
            );
        }
    }

    #[test]
    fn set_through_wildcards_writes_existing_locations_only() {
        assert_eq!(
            out(
                r#"{"content":[{"id":1},{"t":"x"}],"o":{"a":1,"b":2}}"#,
                &set(&[("/content/*/id", json!(0)), ("/o/*", json!(5))])
            ),
            r#"{"content":[{"id":0},{"t":"x","id":0}],"o":{"a":5,"b":5}}"#
        );
        // No element, no member, no parent: nothing written, nothing recorded.
        let (output, changes) = run(
            r#"{"content":[],"o":{}}"#,
            &set(&[
                ("/content/*/id", json!(0)),
                ("/o/*", json!(5)),
                ("/x/*/y", json!(1)),
            ]),
        );
        assert_eq!(output, r#"{"content":[],"o":{}}"#);
        assert!(changes.is_empty());
        // A wildcard over a scalar is an error, wherever it is.
        assert_eq!(
            error(r#"{"a":"s"}"#, &set(&[("/a/*", json!(1))])),
            EditError::NotAnObject {
                pointer: "/a/*".into(),
                at: "/a".into()
            }
        );
        assert_eq!(
            error(r#"{"a":[{},1]}"#, &set(&[("/a/*/b", json!(1))])),
            EditError::NotAnObject {
                pointer: "/a/*/b".into(),
                at: "/a/1".into()
            }
        );
    }

    #[test]
    fn a_failing_pointer_writes_nowhere() {
        let mut map = body(r#"{"a":[{},1]}"#);
        apply(&mut map, &set(&[("/a/*/b", json!(1))])).unwrap_err();
        assert_eq!(text(&map), r#"{"a":[{},1]}"#);
    }

    // ----------------------------------------------------- set_if_missing

    #[test]
    fn set_if_missing_writes_only_absent_locations() {
        let (output, changes) = run(
            r#"{"to":{"id":"mine"},"n":null,"l":[{"k":1},{}]}"#,
            &set_if_missing(&[
                ("/to", json!({"id": "q"})),
                ("/n", json!(1)),
                ("/l/*/k", json!(0)),
                ("/new/x", json!(2)),
            ]),
        );
        assert_eq!(
            output,
            r#"{"to":{"id":"mine"},"n":null,"l":[{"k":1},{"k":0}],"new":{"x":2}}"#
        );
        assert_eq!(
            changes,
            ops(&[
                (Op::Kept, "/to"),
                (Op::Kept, "/n"),
                (Op::Injected, "/l/*/k"),
                (Op::Injected, "/new/x"),
            ])
        );
    }

    #[test]
    fn set_if_missing_has_the_same_errors_as_set() {
        assert_eq!(
            error(r#"{"a":1}"#, &set_if_missing(&[("/a/b", json!(1))])),
            EditError::NotAnObject {
                pointer: "/a/b".into(),
                at: "/a".into()
            }
        );
        assert_eq!(
            error(r#"{"a":[]}"#, &set_if_missing(&[("/a/0", json!(1))])),
            EditError::NoSuchIndex {
                pointer: "/a/0".into(),
                at: "/a/0".into()
            }
        );
    }

    // ------------------------------------------------------------- checks

    #[test]
    fn allow_checks_present_values_only() {
        let edits = allow("/bodyType", &[json!("standard"), json!("notice")]);
        assert_eq!(
            out(r#"{"bodyType":"notice"}"#, &edits),
            r#"{"bodyType":"notice"}"#
        );
        assert_eq!(out(r#"{"text":"x"}"#, &edits), r#"{"text":"x"}"#);
        let e = error(r#"{"bodyType":"structured"}"#, &edits);
        assert_eq!(
            e,
            EditError::NotAllowed {
                pointer: "/bodyType".into()
            }
        );
        assert_eq!(e.reason(), "field-not-allowed");
        assert_eq!(e.to_string(), r#""/bodyType": value not allowed"#);
        // null is a value like any other.
        assert!(apply(&mut body(r#"{"bodyType":null}"#), &edits).is_err());
        assert!(
            apply(
                &mut body(r#"{"bodyType":null}"#),
                &allow("/bodyType", &[Value::Null])
            )
            .is_ok()
        );
    }

    #[test]
    fn allow_through_a_wildcard_checks_every_element() {
        let edits = allow("/content/*/type", &[json!("text")]);
        assert!(apply(&mut body(r#"{"content":[{"type":"text"},{}]}"#), &edits).is_ok());
        assert!(apply(&mut body(r#"{"content":[]}"#), &edits).is_ok());
        assert!(
            apply(
                &mut body(r#"{"content":[{"type":"text"},{"type":"file"}]}"#),
                &edits
            )
            .is_err()
        );
    }

    #[test]
    fn allow_compares_numbers_by_their_text() {
        // arbitrary_precision keeps the client's digits, so 1.0 is not 1.
        let edits = allow("/n", &[json!(1)]);
        assert!(apply(&mut body(r#"{"n":1}"#), &edits).is_ok());
        assert!(apply(&mut body(r#"{"n":1.0}"#), &edits).is_err());
    }

    #[test]
    fn require_needs_the_location_after_the_edits() {
        let edits = require(&["/memberInfo/displayName"]);
        assert!(apply(&mut body(r#"{"memberInfo":{"displayName":null}}"#), &edits).is_ok());
        for input in [
            r#"{}"#,
            r#"{"memberInfo":{}}"#,
            r#"{"memberInfo":"Ana"}"#,
            r#"{"memberInfo":["Ana"]}"#,
        ] {
            let e = error(input, &edits);
            assert_eq!(
                e,
                EditError::Required {
                    pointer: "/memberInfo/displayName".into()
                },
                "{input}"
            );
            assert_eq!(e.reason(), "field-required");
            assert_eq!(
                e.to_string(),
                r#""/memberInfo/displayName": required field is missing"#
            );
        }
        // What a set writes counts; what a remove removed does not.
        let mut edits = require(&["/a", "/b/c"]);
        edits.set = vec![(p("/b/c"), json!(1))];
        edits.remove = vec![p("/a")];
        assert_eq!(
            error(r#"{"a":1}"#, &edits),
            EditError::Required {
                pointer: "/a".into()
            }
        );
        edits.require.remove(0);
        assert!(apply(&mut body(r#"{"a":1}"#), &edits).is_ok());
    }

    #[test]
    fn require_with_a_wildcard_needs_every_element_and_the_prefix() {
        let edits = require(&["/content/*/id"]);
        assert!(apply(&mut body(r#"{"content":[{"id":1},{"id":2}]}"#), &edits).is_ok());
        assert!(apply(&mut body(r#"{"content":{"a":{"id":1}}}"#), &edits).is_ok());
        assert!(apply(&mut body(r#"{"content":[]}"#), &edits).is_ok());
        assert!(apply(&mut body(r#"{"content":{}}"#), &edits).is_ok());
        for input in [
            r#"{"content":[{"id":1},{}]}"#,
            r#"{"content":[{"id":1},"s"]}"#,
            r#"{"content":"s"}"#,
            r#"{}"#,
        ] {
            assert!(apply(&mut body(input), &edits).is_err(), "{input}");
        }
        let nested = require(&["/a/*/b/*"]);
        assert!(apply(&mut body(r#"{"a":[{"b":[]},{"b":{"x":1}}]}"#), &nested).is_ok());
        assert!(apply(&mut body(r#"{"a":[{"b":[]},{"c":1}]}"#), &nested).is_err());
    }

    // ----------------------------------------------------- order, changes

    #[test]
    fn remove_runs_before_set_so_a_set_builds_a_fresh_parent() {
        let mut edits = set(&[("/a/b", json!(1))]);
        edits.remove = vec![p("/a")];
        let (output, changes) = run(r#"{"a":{"x":1,"b":0},"k":2}"#, &edits);
        assert_eq!(output, r#"{"k":2,"a":{"b":1}}"#);
        assert_eq!(changes, ops(&[(Op::Removed, "/a"), (Op::Injected, "/a/b")]));
    }

    #[test]
    fn set_runs_after_set_if_missing_and_each_list_in_order() {
        let mut edits = set(&[("/a", json!(2)), ("/a", json!(3))]);
        edits.set_if_missing = vec![(p("/a"), json!(1))];
        let (output, changes) = run("{}", &edits);
        assert_eq!(output, r#"{"a":3}"#);
        assert_eq!(
            changes,
            ops(&[
                (Op::Injected, "/a"),
                (Op::Overridden, "/a"),
                (Op::Overridden, "/a")
            ])
        );
    }

    #[test]
    fn checks_see_the_edited_body() {
        let mut edits = allow("/bodyType", &[json!("standard")]);
        edits.set = vec![(p("/bodyType"), json!("standard"))];
        assert!(apply(&mut body(r#"{"bodyType":"evil"}"#), &edits).is_ok());
    }

    #[test]
    fn op_precedence_injected_then_overridden_then_kept() {
        let edits = set(&[("/*/k", json!(1))]);
        // One created, one replaced: Injected.
        assert_eq!(
            run(r#"{"a":{},"b":{"k":0}}"#, &edits).1,
            ops(&[(Op::Injected, "/*/k")])
        );
        // One replaced, one equal: Overridden.
        assert_eq!(
            run(r#"{"a":{"k":1},"b":{"k":0}}"#, &edits).1,
            ops(&[(Op::Overridden, "/*/k")])
        );
        // All equal: Kept, and not modified.
        let mut map = body(r#"{"a":{"k":1},"b":{"k":1}}"#);
        let changes = apply(&mut map, &edits).unwrap();
        assert_eq!(changes.edits[0].op, Op::Kept);
        assert!(!changes.modified());
    }

    #[test]
    fn labels_are_stable() {
        let labels: Vec<&str> = [Op::Removed, Op::Injected, Op::Overridden, Op::Kept]
            .into_iter()
            .map(Op::as_str)
            .collect();
        assert_eq!(labels, ["removed", "injected", "overridden", "kept"]);
    }

    #[test]
    fn applying_again_changes_nothing() {
        let edits = Edits {
            remove: vec![p("/id"), p("/content/*/id"), p("/meta/*")],
            set_if_missing: vec![(p("/memberInfo/displayName"), json!("Guest"))],
            set: vec![
                (p("/to"), json!({"id": "q"})),
                (p("/content/*/type"), json!("text")),
            ],
            allow: vec![(p("/bodyType"), vec![json!("standard")])],
            require: vec![p("/memberInfo/displayName"), p("/content/*/type")],
        };
        assert!(edits.is_idempotent());
        let mut map = body(
            r#"{"id":1,"z":[1,{"id":2}],"content":[{"id":"c","body":"x"},{"type":"file"}],"meta":{"a":1},"bodyType":"standard"}"#,
        );
        assert!(apply(&mut map, &edits).unwrap().modified());
        let once = text(&map);
        assert_eq!(
            once,
            r#"{"z":[1,{"id":2}],"content":[{"body":"x","type":"text"},{"type":"text"}],"meta":{},"bodyType":"standard","memberInfo":{"displayName":"Guest"},"to":{"id":"q"}}"#
        );
        let again = apply(&mut map, &edits).unwrap();
        assert_eq!(text(&map), once);
        assert!(!again.modified());
    }

    #[test]
    fn idempotence_check_names_the_exceptions() {
        assert!(Edits::default().is_idempotent());
        assert!(remove(&["/a", "/a/b", "/*"]).is_idempotent());
        assert!(set(&[("/a/b", json!(1)), ("/a/c", json!(1))]).is_idempotent());
        // Removing by index moves the next element into place.
        assert!(!remove(&["/l/0"]).is_idempotent());
        let mut map = body(r#"{"l":[1,2]}"#);
        apply(&mut map, &remove(&["/l/0"])).unwrap();
        apply(&mut map, &remove(&["/l/0"])).unwrap();
        assert_eq!(text(&map), r#"{"l":[]}"#);
        // A write over another edit's location redoes both every time.
        let mut edits = set(&[("/a/b", json!(1))]);
        edits.remove = vec![p("/a")];
        assert!(!edits.is_idempotent());
        assert!(
            apply(&mut body(r#"{"a":{"b":1}}"#), &edits)
                .unwrap()
                .modified()
        );
        assert!(!set(&[("/*", json!(1)), ("/a", json!(2))]).is_idempotent());
        // A wildcard reaches what another write created the first time.
        let mut edits = set(&[("/*/a", json!(1)), ("/x/b", json!(1))]);
        assert!(!edits.is_idempotent());
        let mut map = body("{}");
        apply(&mut map, &edits).unwrap();
        assert!(apply(&mut map, &edits).unwrap().modified());
        edits.set.reverse();
        assert!(!edits.is_idempotent());
        assert!(set(&[("/*/a", json!(1)), ("/*/b", json!(1))]).is_idempotent());
    }

    #[test]
    fn is_empty_means_nothing_configured() {
        assert!(Edits::default().is_empty());
        assert!(!require(&["/a"]).is_empty());
        assert!(!allow("/a", &[]).is_empty());
    }

    #[test]
    fn deep_bodies_are_walked_without_recursion() {
        // Deeper than the parser allows: edits look only as deep as the
        // pointer. (Nothing deep is removed or replaced here, because
        // dropping a value is serde_json's recursion, bounded by the parser.)
        let mut value = json!(1);
        for _ in 0..10_000 {
            value = Value::Object(Map::from_iter([("a".to_owned(), value)]));
        }
        let mut map = Map::from_iter([("a".to_owned(), value)]);
        let edits = Edits {
            remove: vec![p("/a/a/x"), p("/a/*/*/x")],
            set: vec![(p("/a/a/b"), json!(2)), (p("/a/*/a/*/c"), json!(3))],
            require: vec![p("/a/*/b")],
            ..Edits::default()
        };
        assert!(apply(&mut map, &edits).is_ok());
        // serde_json drops values recursively; unwind it by hand.
        let mut next = map.shift_remove("a");
        while let Some(Value::Object(mut inner)) = next {
            next = inner.shift_remove("a");
        }
    }
}
