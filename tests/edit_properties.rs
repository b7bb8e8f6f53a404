//! Property tests (proptest) of the body edits in `guestgate::edit`.
//!
//! Bodies and pointers are drawn from one small pool of key names (including
//! `a/b`, `m~n`, `*` and digit keys), so pointers often hit, escapes and
//! indices matter, and wildcards meet objects, arrays and scalars. The
//! expected results come from a small recursive model written here from the
//! rules, independent of the library's traversal.
//!
//! - `apply` never panics; after it succeeds every remove pointer matches
//!   nothing and every set pointer's locations hold its value (unless a later
//!   edit overlaps), and `allow`/`require` fail exactly when the model says.
//! - Remove-only edits give exactly the model's document.
//! - Set-only edits change no leaf off the set pointers' paths, and keep the
//!   others in order.
//! - Edits that `Edits::is_idempotent` accepts change nothing the second time.

use guestgate::edit::{EditError, Edits, apply};
use guestgate::pointer::Pointer;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// Key names in bodies.
const KEYS: [&str; 9] = ["a", "b", "a/b", "m~n", "*", "0", "1", "01", "c"];

/// Key names in pointers (`*` is the wildcard there; `z` is never in a body).
const NAMES: [&str; 9] = ["a", "b", "a/b", "m~n", "0", "1", "01", "c", "z"];

// --------------------------------------------------------------- documents

fn small_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(1)),
        Just(json!("v")),
        Just(Value::Null),
        Just(json!(true)),
        Just(json!(1.0)),
        Just(json!({})),
        Just(json!([])),
        Just(json!({"a": 1})),
        Just(json!([{"b": "v"}])),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        small_value(),
        any::<i32>().prop_map(|n| json!(n)),
        "[a-z]{0,3}".prop_map(Value::String),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop::sample::select(KEYS.to_vec()).prop_map(str::to_owned)
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 40, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..5)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

fn object() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::vec((key(), value()), 0..7).prop_map(|pairs| pairs.into_iter().collect())
}

// ---------------------------------------------------------------- pointers

#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Name(&'static str),
    Star,
}

/// A pointer and the segments it was spelled from.
#[derive(Debug, Clone)]
struct Spec {
    segs: Vec<Seg>,
    pointer: Pointer,
}

fn seg() -> impl Strategy<Value = Seg> {
    prop_oneof![
        4 => prop::sample::select(NAMES.to_vec()).prop_map(Seg::Name),
        1 => Just(Seg::Star),
    ]
}

fn spec() -> impl Strategy<Value = Spec> {
    prop::collection::vec(seg(), 1..=3).prop_map(|segs| {
        let mut text = String::new();
        for seg in &segs {
            text.push('/');
            match seg {
                Seg::Name(name) => text.push_str(&name.replace('~', "~0").replace('/', "~1")),
                Seg::Star => text.push('*'),
            }
        }
        let pointer = Pointer::parse(&text).expect("the generator spells valid pointers");
        Spec { segs, pointer }
    })
}

/// The edits and the segments of each pointer, in the same lists.
#[derive(Debug, Clone, Default)]
struct Case {
    remove: Vec<Spec>,
    set_if_missing: Vec<(Spec, Value)>,
    set: Vec<(Spec, Value)>,
    allow: Vec<(Spec, Vec<Value>)>,
    require: Vec<Spec>,
}

impl Case {
    fn edits(&self) -> Edits {
        Edits {
            remove: self.remove.iter().map(|s| s.pointer.clone()).collect(),
            set_if_missing: pairs(&self.set_if_missing),
            set: pairs(&self.set),
            allow: pairs(&self.allow),
            require: self.require.iter().map(|s| s.pointer.clone()).collect(),
        }
    }

    /// Every pointer that writes or removes, in order of application.
    fn edited(&self) -> Vec<&Spec> {
        let writes = self.set_if_missing.iter().chain(&self.set).map(|(s, _)| s);
        self.remove.iter().chain(writes).collect()
    }
}

fn pairs<T: Clone>(list: &[(Spec, T)]) -> Vec<(Pointer, T)> {
    list.iter()
        .map(|(s, v)| (s.pointer.clone(), v.clone()))
        .collect()
}

fn writes() -> impl Strategy<Value = Vec<(Spec, Value)>> {
    prop::collection::vec((spec(), small_value()), 0..3)
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(spec(), 0..3),
        writes(),
        writes(),
        prop::collection::vec((spec(), prop::collection::vec(small_value(), 0..4)), 0..2),
        prop::collection::vec(spec(), 0..2),
    )
        .prop_map(|(remove, set_if_missing, set, allow, require)| Case {
            remove,
            set_if_missing,
            set,
            allow,
            require,
        })
}

// ------------------------------------------------------------------- model

/// RFC 6901 array index.
fn index(name: &str) -> Option<usize> {
    let digits = !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit());
    if digits && (name == "0" || !name.starts_with('0')) {
        name.parse().ok()
    } else {
        None
    }
}

fn ends_in_index(segs: &[Seg]) -> bool {
    matches!(segs.last(), Some(Seg::Name(name)) if index(name).is_some())
}

/// Segment by segment over the shorter one: equal, or one is `*`.
fn overlaps(a: &[Seg], b: &[Seg]) -> bool {
    a.iter()
        .zip(b)
        .all(|(x, y)| x == y || *x == Seg::Star || *y == Seg::Star)
}

/// Before the first pair of different names, one has `*` where the other
/// has a name (or they overlap).
fn crosses(a: &[Seg], b: &[Seg]) -> bool {
    for (x, y) in a.iter().zip(b) {
        match (x, y) {
            (Seg::Star, Seg::Star) => {}
            (Seg::Star, _) | (_, Seg::Star) => return true,
            (x, y) if x == y => {}
            _ => return false,
        }
    }
    true
}

/// The children `seg` names under `value`.
fn children<'a>(value: &'a Value, seg: &Seg) -> Vec<&'a Value> {
    match (value, seg) {
        (Value::Object(map), Seg::Star) => map.values().collect(),
        (Value::Array(items), Seg::Star) => items.iter().collect(),
        (Value::Object(map), Seg::Name(name)) => map.get(*name).into_iter().collect(),
        (Value::Array(items), Seg::Name(name)) => {
            index(name).and_then(|i| items.get(i)).into_iter().collect()
        }
        _ => Vec::new(),
    }
}

fn children_mut<'a>(value: &'a mut Value, seg: &Seg) -> Vec<&'a mut Value> {
    match (value, seg) {
        (Value::Object(map), Seg::Star) => map.values_mut().collect(),
        (Value::Array(items), Seg::Star) => items.iter_mut().collect(),
        (Value::Object(map), Seg::Name(name)) => map.get_mut(*name).into_iter().collect(),
        (Value::Array(items), Seg::Name(name)) => match index(name) {
            Some(i) => items.get_mut(i).into_iter().collect(),
            None => Vec::new(),
        },
        _ => Vec::new(),
    }
}

fn lookup<'a>(value: &'a Value, segs: &[Seg]) -> Vec<&'a Value> {
    match segs.split_first() {
        None => vec![value],
        Some((first, rest)) => children(value, first)
            .into_iter()
            .flat_map(|child| lookup(child, rest))
            .collect(),
    }
}

fn present(value: &Value, segs: &[Seg]) -> bool {
    match segs.split_first() {
        None => true,
        Some((Seg::Star, rest)) => {
            matches!(value, Value::Object(_) | Value::Array(_))
                && children(value, &Seg::Star)
                    .into_iter()
                    .all(|child| present(child, rest))
        }
        Some((seg, rest)) => children(value, seg)
            .first()
            .is_some_and(|child| present(child, rest)),
    }
}

fn model_remove(value: &mut Value, segs: &[Seg]) {
    match segs {
        [] => {}
        [last] => match (value, last) {
            (Value::Object(map), Seg::Star) => map.clear(),
            (Value::Array(items), Seg::Star) => items.clear(),
            (Value::Object(map), Seg::Name(name)) => {
                map.shift_remove(*name);
            }
            (Value::Array(items), Seg::Name(name)) => {
                if let Some(i) = index(name).filter(|i| *i < items.len()) {
                    items.remove(i);
                }
            }
            _ => {}
        },
        [first, rest @ ..] => {
            for child in children_mut(value, first) {
                model_remove(child, rest);
            }
        }
    }
}

/// One step of a concrete location.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

/// Scalars and empty containers with their locations, in document order.
fn leaves<'a>(value: &'a Value, at: &mut Vec<Step>, out: &mut Vec<(Vec<Step>, &'a Value)>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                at.push(Step::Key(k.clone()));
                leaves(v, at, out);
                at.pop();
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for (i, v) in items.iter().enumerate() {
                at.push(Step::Index(i));
                leaves(v, at, out);
                at.pop();
            }
        }
        _ => out.push((at.clone(), value)),
    }
}

/// True when the location is at, inside or above one `segs` can name.
fn on_path(at: &[Step], segs: &[Seg]) -> bool {
    at.iter().zip(segs).all(|(step, seg)| match (step, seg) {
        (_, Seg::Star) => true,
        (Step::Key(k), Seg::Name(name)) => k == name,
        (Step::Index(i), Seg::Name(name)) => index(name) == Some(*i),
    })
}

fn off_path_leaves<'a>(value: &'a Value, specs: &[&Spec]) -> Vec<(Vec<Step>, &'a Value)> {
    let mut all = Vec::new();
    leaves(value, &mut Vec::new(), &mut all);
    all.into_iter()
        .filter(|(at, _)| !specs.iter().any(|s| on_path(at, &s.segs)))
        .collect()
}

fn text(value: &Value) -> String {
    serde_json::to_string(value).unwrap()
}

/// Drops from `case` every remove by index, every write that overlaps an
/// earlier remove and every write that crosses an earlier write, so
/// `Edits::is_idempotent` holds.
fn without_overlaps(mut case: Case) -> Case {
    case.remove.retain(|s| !ends_in_index(&s.segs));
    let removes = case.remove.clone();
    let mut writes: Vec<Spec> = Vec::new();
    let mut keep = |list: &mut Vec<(Spec, Value)>| {
        list.retain(|(s, _)| {
            let free = !removes.iter().any(|r| overlaps(&r.segs, &s.segs))
                && !writes.iter().any(|w| crosses(&w.segs, &s.segs));
            if free {
                writes.push(s.clone());
            }
            free
        });
    };
    keep(&mut case.set_if_missing);
    keep(&mut case.set);
    case
}

// -------------------------------------------------------------- properties

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn edits_hold_after_apply_and_checks_match_the_model(input in object(), case in case()) {
        let mut body = input.clone();
        let result = apply(&mut body, &case.edits());
        let output = Value::Object(body);

        if let Err(EditError::NotAnObject { .. } | EditError::NoSuchIndex { .. }) = result {
            return Ok(());
        }
        // Otherwise every edit ran: the checks saw `output`.
        let not_allowed = case.allow.iter().find(|(s, values)| {
            !lookup(&output, &s.segs).iter().all(|v| values.contains(v))
        });
        let missing = case.require.iter().find(|s| !present(&output, &s.segs));
        let expected = match (not_allowed, missing) {
            (Some((s, _)), _) => Err(EditError::NotAllowed { pointer: s.pointer.as_str().into() }),
            (None, Some(s)) => Err(EditError::Required { pointer: s.pointer.as_str().into() }),
            (None, None) => Ok(()),
        };
        prop_assert_eq!(result.as_ref().map(|_| ()).map_err(Clone::clone), expected);

        let edited = case.edited();
        for (i, r) in case.remove.iter().enumerate() {
            let disturbed = edited.iter().enumerate().any(|(j, other)| {
                j != i && overlaps(&other.segs, &r.segs)
                    && (j >= case.remove.len() || ends_in_index(&other.segs))
            });
            if !ends_in_index(&r.segs) && !disturbed {
                prop_assert!(lookup(&output, &r.segs).is_empty(), "{} still matches", r.pointer);
            }
        }
        for (i, (s, v)) in case.set.iter().enumerate() {
            if case.set[i + 1..].iter().any(|(later, _)| overlaps(&later.segs, &s.segs)) {
                continue;
            }
            let found = lookup(&output, &s.segs);
            prop_assert!(found.iter().all(|x| *x == v), "{} holds its value", s.pointer);
            if !s.pointer.has_wildcard() {
                prop_assert_eq!(found.len(), 1, "{} was written", s.pointer);
            }
        }
        for (s, _) in &case.set_if_missing {
            let overwritten = case.set.iter().any(|(later, _)| overlaps(&later.segs, &s.segs));
            if !overwritten && !s.pointer.has_wildcard() {
                prop_assert_eq!(lookup(&output, &s.segs).len(), 1, "{} is present", s.pointer);
            }
        }
    }

    #[test]
    fn remove_only_gives_the_model_document(
        input in object(),
        removes in prop::collection::vec(spec(), 1..4),
    ) {
        let case = Case { remove: removes, ..Case::default() };
        let mut body = input.clone();
        let changes = apply(&mut body, &case.edits()).expect("removing never fails");
        let output = Value::Object(body);

        let mut expected = Value::Object(input.clone());
        for r in &case.remove {
            model_remove(&mut expected, &r.segs);
        }
        prop_assert_eq!(text(&output), text(&expected));
        prop_assert_eq!(changes.modified(), output != Value::Object(input));

        // Removing the same paths from the output finds nothing more, unless
        // an index removal moved the next element into place.
        if !case.remove.iter().any(|r| ends_in_index(&r.segs)) {
            let mut again = output.clone();
            for r in &case.remove {
                model_remove(&mut again, &r.segs);
            }
            prop_assert_eq!(text(&again), text(&output));
        }
    }

    #[test]
    fn set_only_leaves_everything_off_its_paths_alone(
        input in object(),
        set_if_missing in writes(),
        set in writes(),
    ) {
        let case = Case { set_if_missing, set, ..Case::default() };
        let mut body = input.clone();
        if apply(&mut body, &case.edits()).is_err() {
            return Ok(());
        }
        let (before, after) = (Value::Object(input), Value::Object(body));
        let edited = case.edited();
        // Same leaves, same values, same order.
        prop_assert_eq!(off_path_leaves(&before, &edited), off_path_leaves(&after, &edited));
    }

    #[test]
    fn idempotent_edits_change_nothing_the_second_time(input in object(), case in case()) {
        let case = without_overlaps(case);
        let edits = case.edits();
        prop_assert!(edits.is_idempotent());
        let mut body = input;
        if apply(&mut body, &edits).is_err() {
            return Ok(());
        }
        let once = text(&Value::Object(body.clone()));
        let again = apply(&mut body, &edits).expect("the output is accepted again");
        prop_assert_eq!(text(&Value::Object(body)), once);
        prop_assert!(!again.modified(), "{:?}", again);
    }

    #[test]
    fn is_idempotent_is_never_wrong(input in object(), case in case()) {
        let edits = case.edits();
        let mut body = input;
        if !edits.is_idempotent() || apply(&mut body, &edits).is_err() {
            return Ok(());
        }
        let once = text(&Value::Object(body.clone()));
        let again = apply(&mut body, &edits).expect("the output is accepted again");
        prop_assert_eq!(text(&Value::Object(body)), once);
        prop_assert!(!again.modified());
    }
}
