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

    /// True when applying these edits to their own output is guaranteed to
    /// change nothing (same body, `modified() == false`) for every body.
    ///
    /// Two things break that, so configuration can warn about them: a
    /// `remove` whose last segment is an array index (the next element moves
    /// into its place and is removed the next time), and a `set` or
    /// `set_if_missing` whose pointer overlaps another edit's pointer (equal
    /// segments or `*` over the shorter length, e.g. `remove /a` with
    /// `set /a/b`: each run removes and re-creates `a`). The check is
    /// conservative: edits it refuses may still be idempotent on a given body.
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
        all.iter().enumerate().all(|(i, (p, p_writes))| {
            all[i + 1..]
                .iter()
                .all(|(q, q_writes)| !(*p_writes || *q_writes) || !p.overlaps(q))
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
    /// True when the edited body differs from the client's.
    pub fn modified(&self) -> bool {
        self.edits.iter().any(|c| c.op != Op::Kept)
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
    /// A location to write is under something that is not an object: a
    /// scalar, or an array where the segment is not an index or is `*` over a
    /// scalar.
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
                (Value::Object(map), Token::Wildcard) => {
                    for (k, v) in map {
                        next.push((extend(&path, Step::Key(k.clone())), v));
                    }
                }
                (Value::Array(items), Token::Wildcard) => {
                    for (i, v) in items.iter().enumerate() {
                        next.push((extend(&path, Step::Index(i)), v));
                    }
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

fn extend(path: &[Step], step: Step) -> Path {
    let mut path = path.to_vec();
    path.push(step);
    path
}

/// Removes every location `pointer` matches; true when there was one.
fn remove(root: &mut Value, pointer: &Pointer) -> bool {
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
                (Value::Object(map), Token::Wildcard) => {
                    for (k, v) in map {
                        next.push((extend(&path, Step::Key(k.clone())), v));
                    }
                }
                (Value::Array(items), Token::Wildcard) => {
                    for (i, v) in items.iter().enumerate() {
                        next.push((extend(&path, Step::Index(i)), v));
                    }
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
                (Value::Array(items), Token::Name { index: Some(i), .. }) => match items.get(*i) {
                    Some(v) => next.push((extend(&path, Step::Index(*i)), v)),
                    None => {
                        return Err(EditError::NoSuchIndex {
                            pointer: Arc::clone(pointer.text()),
                            at: render(&extend(&path, Step::Index(*i))),
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
