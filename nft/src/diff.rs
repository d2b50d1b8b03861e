//! Desired vs. committed state → the smallest [`Batch`] that turns one into the other.
//!
//! What changes how:
//!
//! - set elements: added and removed one by one; a map key whose value (or element
//!   timeout/comment) changed is deleted and re-added in the same batch. Elements
//!   of `dynamic` sets belong to the kernel and are never diffed or loaded.
//! - a set whose header (key, data, flags, timeout, comment) changed is deleted
//!   and recreated with its elements; every chain with a rule that names it is
//!   rewritten, because the kernel refuses to delete a set a rule still uses.
//! - a chain whose rules changed is flushed and its rules re-added. A chain whose
//!   header changed (comment; base chain type, hook, priority or policy) is deleted
//!   and recreated: the kernel cannot change a chain's comment, hook or priority in
//!   place. For a base chain that is harmless (nothing can jump to one); for a
//!   regular chain every rule that jumps to it is rewritten and every verdict-map
//!   element that names it is removed first and added back afterwards.
//! - a changed table comment cannot be updated in place either: the batch deletes
//!   and reloads the whole table (atomic, but dynamic sets lose their contents).
//!
//! Order inside the batch, so every step is valid when the kernel applies it:
//!
//! 1. flush the chains being rewritten, recreated or removed (drops their
//!    references to sets and chains);
//! 2. delete set elements (including verdict elements naming a dying chain);
//! 3. delete removed and recreated sets, then 4. their chains;
//! 5. add sets, 6. add regular chains (headers), 7. add elements (vmap targets
//!    exist by now), 8. add regular chains' rules;
//! 9. base chains last: new base-chain headers and all base-chain rules. Inside one
//!    transaction that order is free, and it makes [`split`] of a cold load safe:
//!    nothing is reachable from a hook until the last chunk.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashSet};

use crate::batch::{Batch, Op};
use crate::model::*;

/// The batch that loads `desired` into an empty kernel (diff against nothing).
pub fn full_load(desired: &Table) -> Batch {
    diff(None, desired)
}

/// The smallest batch turning `committed` into `desired` (see the module doc).
///
/// `committed` is the state of the same table (same family and name); anything
/// else is treated as absent and the batch creates the table.
pub fn diff(committed: Option<&Table>, desired: &Table) -> Batch {
    let mut b = Batch::new(desired.family, desired.name.clone());
    let committed = committed.filter(|c| c.family == desired.family && c.name == desired.name);
    let Some(cur) = committed else {
        load(&mut b, desired);
        return b;
    };
    if cur.comment != desired.comment {
        b.ops.push(Op::DeleteTable);
        load(&mut b, desired);
        return b;
    }

    // Objects that go away in this batch, and objects (new or recreated) that come.
    let dying_sets: HashSet<&str> = cur
        .sets
        .values()
        .filter(|s| {
            desired
                .sets
                .get(&s.name)
                .is_none_or(|d| !same_set_header(s, d))
        })
        .map(|s| s.name.as_str())
        .collect();
    let dying_chains: HashSet<&str> = cur
        .chains
        .values()
        .filter(|c| {
            desired
                .chains
                .get(&c.name)
                .is_none_or(|d| !same_chain_header(c, d))
        })
        .map(|c| c.name.as_str())
        .collect();
    let uses_dying = |rule: &Rule| {
        let r = rule_refs(rule);
        r.sets.iter().any(|s| dying_sets.contains(s))
            || r.chains.iter().any(|c| dying_chains.contains(c))
    };
    // Surviving chains whose rules must be rewritten.
    let rewritten: HashSet<&str> = cur
        .chains
        .values()
        .filter(|c| !dying_chains.contains(c.name.as_str()))
        .filter(|c| c.rules != desired.chains[&c.name].rules || c.rules.iter().any(uses_dying))
        .map(|c| c.name.as_str())
        .collect();

    // 1. flush
    for c in cur.chains.values() {
        let name = c.name.as_str();
        if !c.rules.is_empty() && (dying_chains.contains(name) || rewritten.contains(name)) {
            b.ops.push(Op::FlushChain(c.name.clone()));
        }
    }
    // 2. element removals of surviving sets; additions are kept for step 7.
    let mut element_adds = Vec::new();
    for s in cur.sets.values() {
        if dying_sets.contains(s.name.as_str()) || s.flags.dynamic {
            continue;
        }
        let d = &desired.sets[&s.name];
        let (removes, adds) = merge_elements(&s.elements, &d.elements, &dying_chains);
        if !removes.is_empty() {
            b.ops.push(Op::DeleteElements {
                set: s.name.clone(),
                keys: removes,
            });
        }
        if !adds.is_empty() {
            element_adds.push(Op::AddElements {
                set: s.name.clone(),
                elements: adds,
            });
        }
    }
    // 3, 4. deletions, sets before chains (a dying vmap may name a dying chain).
    for s in cur.sets.keys() {
        if dying_sets.contains(s.as_str()) {
            b.ops.push(Op::DeleteSet(s.clone()));
        }
    }
    for c in cur.chains.keys() {
        if dying_chains.contains(c.as_str()) {
            b.ops.push(Op::DeleteChain(c.clone()));
        }
    }
    // 5-9. creation.
    let is_new_set =
        |s: &Set| !cur.sets.contains_key(&s.name) || dying_sets.contains(s.name.as_str());
    let is_new_chain =
        |c: &Chain| !cur.chains.contains_key(&c.name) || dying_chains.contains(c.name.as_str());
    let needs_rules = |c: &Chain| is_new_chain(c) || rewritten.contains(c.name.as_str());
    create(
        &mut b,
        desired,
        is_new_set,
        is_new_chain,
        needs_rules,
        element_adds,
    );
    b
}

/// Everything of `desired`, in creation order, after `add table`.
fn load(b: &mut Batch, desired: &Table) {
    b.ops.push(Op::AddTable {
        comment: desired.comment.clone(),
    });
    create(b, desired, |_| true, |_| true, |_| true, Vec::new());
}

/// Steps 5-9 of the module doc: the sets and chains selected by the predicates,
/// the given element additions of surviving sets, and rules.
fn create(
    b: &mut Batch,
    desired: &Table,
    new_set: impl Fn(&Set) -> bool,
    new_chain: impl Fn(&Chain) -> bool,
    needs_rules: impl Fn(&Chain) -> bool,
    element_adds: Vec<Op>,
) {
    let new_sets: Vec<&Set> = desired.sets.values().filter(|s| new_set(s)).collect();
    for s in &new_sets {
        b.ops.push(Op::AddSet(header_of_set(s)));
    }
    let (base, regular): (Vec<&Chain>, Vec<&Chain>) =
        desired.chains.values().partition(|c| c.base.is_some());
    for c in regular.iter().filter(|c| new_chain(c)) {
        b.ops.push(Op::AddChain(header_of_chain(c)));
    }
    b.ops.extend(element_adds);
    for s in &new_sets {
        if !s.flags.dynamic && !s.elements.is_empty() {
            b.ops.push(Op::AddElements {
                set: s.name.clone(),
                elements: s
                    .elements
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            });
        }
    }
    let add_rules = |b: &mut Batch, c: &Chain| {
        for rule in &c.rules {
            b.ops.push(Op::AddRule {
                chain: c.name.clone(),
                rule: rule.clone(),
            });
        }
    };
    for c in regular.iter().filter(|c| needs_rules(c)) {
        add_rules(b, c);
    }
    for c in base {
        if new_chain(c) {
            b.ops.push(Op::AddChain(header_of_chain(c)));
        }
        if needs_rules(c) {
            add_rules(b, c);
        }
    }
}

fn same_set_header(a: &Set, b: &Set) -> bool {
    a.key == b.key
        && a.data == b.data
        && a.flags == b.flags
        && a.timeout == b.timeout
        && a.comment == b.comment
}

fn same_chain_header(a: &Chain, b: &Chain) -> bool {
    a.base == b.base && a.comment == b.comment
}

/// A set's header alone (what `Op::AddSet` carries).
pub fn header_of_set(s: &Set) -> Set {
    Set {
        elements: BTreeMap::new(),
        ..s.clone()
    }
}

/// A chain's header alone (what `Op::AddChain` carries).
pub fn header_of_chain(c: &Chain) -> Chain {
    Chain {
        rules: Vec::new(),
        ..c.clone()
    }
}

/// Keys to delete and elements to add so that `cur` becomes `des`, by one merge
/// pass over the two sorted maps (linear, no lookups). An element naming a dying
/// chain is deleted, and re-added when `des` still has it (it will name the
/// recreated chain).
fn merge_elements(
    cur: &BTreeMap<ElemKey, ElemValue>,
    des: &BTreeMap<ElemKey, ElemValue>,
    dying_chains: &HashSet<&str>,
) -> (Vec<ElemKey>, Vec<(ElemKey, ElemValue)>) {
    let mut removes = Vec::new();
    let mut adds = Vec::new();
    let mut c = cur.iter().peekable();
    let mut d = des.iter().peekable();
    loop {
        let order = match (c.peek(), d.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((ck, _)), Some((dk, _))) => ck.cmp(dk),
        };
        match order {
            Ordering::Less => {
                let (k, _) = c.next().expect("peeked");
                removes.push(k.clone());
            }
            Ordering::Greater => {
                let (k, v) = d.next().expect("peeked");
                adds.push((k.clone(), v.clone()));
            }
            Ordering::Equal => {
                let (k, cv) = c.next().expect("peeked");
                let (_, dv) = d.next().expect("peeked");
                let dying = elem_chain_ref(cv).is_some_and(|ch| dying_chains.contains(ch));
                if cv != dv || dying {
                    removes.push(k.clone());
                    adds.push((k.clone(), dv.clone()));
                }
            }
        }
    }
    (removes, adds)
}

// ---------------------------------------------------------------------------
// Deltas: small changes without walking the table
// ---------------------------------------------------------------------------

/// The element operations that turn `old` into `new` in set `set`: at most one
/// [`Op::DeleteElements`] (keys that go, and keys whose value changes: the kernel
/// cannot change an element's data in place) followed by at most one
/// [`Op::AddElements`]. Cost O((|old| + |new|) · log) in the sizes of the two
/// slices only, never of the set: the event-driven path for one object's
/// elements (a Service's endpoints). Duplicate keys: the last one wins.
pub fn diff_elements(
    set: &str,
    old: &[(ElemKey, ElemValue)],
    new: &[(ElemKey, ElemValue)],
) -> Vec<Op> {
    let old: BTreeMap<&ElemKey, &ElemValue> = old.iter().map(|(k, v)| (k, v)).collect();
    let new: BTreeMap<&ElemKey, &ElemValue> = new.iter().map(|(k, v)| (k, v)).collect();
    let mut keys = Vec::new();
    for (k, v) in &old {
        if new.get(k) != Some(v) {
            keys.push((*k).clone());
        }
    }
    let elements: Vec<(ElemKey, ElemValue)> = new
        .iter()
        .filter(|(k, v)| old.get(*k) != Some(*v))
        .map(|(k, v)| ((*k).clone(), (*v).clone()))
        .collect();
    let mut ops = Vec::new();
    if !keys.is_empty() {
        ops.push(Op::DeleteElements {
            set: set.to_string(),
            keys,
        });
    }
    if !elements.is_empty() {
        ops.push(Op::AddElements {
            set: set.to_string(),
            elements,
        });
    }
    ops
}

/// Builds one small transaction from event-driven changes, in an order the kernel
/// accepts whatever order the changes were recorded in: new set headers, new
/// chain headers, element deletions, element additions, then rules. Nothing here
/// reads the committed table; the caller knows what it changes (and that the sets
/// and chains it names exist or are added here).
///
/// Element changes are kept as their net effect per key, so one element message
/// list per set goes out, and a key changed twice in one delta (an endpoint
/// moved, then moved again) is deleted once and added once.
///
/// ```
/// use nft::diff::Delta;
/// use nft::*;
/// let key = |i: u32| vec![KeyPart::Value(Value::Mark(i))];
/// let mut d = Delta::new(Family::Ip, "t");
/// d.elements("eps", &[(key(0), ElemValue::default())], &[(key(1), ElemValue::default())]);
/// let batch = d.into_batch();
/// assert_eq!(batch.message_count(), 2);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Delta {
    family: Family,
    table: String,
    sets: Vec<Op>,
    chains: Vec<Op>,
    /// Net element changes per set, sets in first-touched order.
    elements: Vec<(String, BTreeMap<ElemKey, ElemChange>)>,
    set_index: std::collections::HashMap<String, usize>,
    rules: Vec<Op>,
}

/// The net change of one element key: delete the committed element first, then
/// add this value.
#[derive(Debug, Clone, Default)]
struct ElemChange {
    delete: bool,
    add: Option<ElemValue>,
}

impl Delta {
    pub fn new(family: Family, table: impl Into<String>) -> Delta {
        Delta {
            family,
            table: table.into(),
            ..Default::default()
        }
    }

    /// Create a set (its elements are added after all deletions).
    pub fn add_set(&mut self, set: &Set) -> &mut Self {
        self.sets.push(Op::AddSet(header_of_set(set)));
        let adds = set
            .elements
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.add_elements(&set.name, adds)
    }

    /// Create a regular chain (its rules are appended with the other rules).
    pub fn add_chain(&mut self, chain: &Chain) -> &mut Self {
        self.chains.push(Op::AddChain(header_of_chain(chain)));
        for rule in &chain.rules {
            self.add_rule(&chain.name, rule.clone());
        }
        self
    }

    /// Append a rule to a chain.
    pub fn add_rule(&mut self, chain: &str, rule: Rule) -> &mut Self {
        self.rules.push(Op::AddRule {
            chain: chain.to_string(),
            rule,
        });
        self
    }

    /// Turn `old` into `new` in `set` ([`diff_elements`]).
    pub fn elements(
        &mut self,
        set: &str,
        old: &[(ElemKey, ElemValue)],
        new: &[(ElemKey, ElemValue)],
    ) -> &mut Self {
        for op in diff_elements(set, old, new) {
            match op {
                Op::DeleteElements { keys, .. } => {
                    self.delete_elements(set, keys);
                }
                Op::AddElements { elements, .. } => {
                    self.add_elements(set, elements);
                }
                _ => unreachable!("diff_elements only adds and deletes elements"),
            }
        }
        self
    }

    fn set_changes(&mut self, set: &str) -> &mut BTreeMap<ElemKey, ElemChange> {
        let i = match self.set_index.get(set) {
            Some(i) => *i,
            None => {
                self.elements.push((set.to_string(), BTreeMap::new()));
                self.set_index
                    .insert(set.to_string(), self.elements.len() - 1);
                self.elements.len() - 1
            }
        };
        &mut self.elements[i].1
    }

    /// Add elements that are absent (or deleted earlier in this delta).
    pub fn add_elements(&mut self, set: &str, elements: Vec<(ElemKey, ElemValue)>) -> &mut Self {
        if elements.is_empty() {
            return self;
        }
        let changes = self.set_changes(set);
        for (k, v) in elements {
            changes.entry(k).or_default().add = Some(v);
        }
        self
    }

    /// Delete elements that are present (or added earlier in this delta).
    pub fn delete_elements(&mut self, set: &str, keys: Vec<ElemKey>) -> &mut Self {
        if keys.is_empty() {
            return self;
        }
        let changes = self.set_changes(set);
        for k in keys {
            let c = changes.entry(k).or_default();
            if c.add.take().is_none() {
                // Not added in this delta: the committed element goes.
                c.delete = true;
            }
        }
        self
    }

    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
            && self.chains.is_empty()
            && self
                .elements
                .iter()
                .all(|(_, c)| c.values().all(|c| !c.delete && c.add.is_none()))
            && self.rules.is_empty()
    }

    /// The transaction, for [`crate::dataplane::Dataplane::apply_batch`].
    pub fn into_batch(self) -> Batch {
        let mut b = Batch::new(self.family, self.table);
        b.ops.extend(self.sets);
        b.ops.extend(self.chains);
        let mut adds = Vec::new();
        for (set, changes) in self.elements {
            let mut keys = Vec::new();
            let mut elements = Vec::new();
            for (k, c) in changes {
                match (c.delete, c.add) {
                    (true, Some(v)) => {
                        keys.push(k.clone());
                        elements.push((k, v));
                    }
                    (true, None) => keys.push(k),
                    (false, Some(v)) => elements.push((k, v)),
                    (false, None) => {}
                }
            }
            if !keys.is_empty() {
                b.ops.push(Op::DeleteElements {
                    set: set.clone(),
                    keys,
                });
            }
            if !elements.is_empty() {
                adds.push(Op::AddElements { set, elements });
            }
        }
        b.ops.extend(adds);
        b.ops.extend(self.rules);
        b
    }
}

// ---------------------------------------------------------------------------
// Reference analysis, shared by the creation and deletion orderings and `apply`.
// ---------------------------------------------------------------------------

/// The named objects a rule uses: the kernel refuses to delete them while it exists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refs<'a> {
    pub sets: Vec<&'a str>,
    pub chains: Vec<&'a str>,
}

/// Which sets and chains `rule` names (`@set`, `vmap @m`, `map @m`, `jump c`).
pub fn rule_refs(rule: &Rule) -> Refs<'_> {
    let mut r = Refs::default();
    for e in &rule.exprs {
        match e {
            Expr::Match {
                right: Rhs::Set(s), ..
            } => r.sets.push(s),
            Expr::Vmap { map, .. } | Expr::SetFromMap { map, .. } => r.sets.push(map),
            Expr::Dnat {
                to: NatTarget::Map { map, .. },
                ..
            }
            | Expr::Snat {
                to: NatTarget::Map { map, .. },
                ..
            } => r.sets.push(map),
            Expr::SetUpdate { set, .. } | Expr::MapUpdate { map: set, .. } => r.sets.push(set),
            Expr::Verdict(Verdict::Jump(c) | Verdict::Goto(c)) => r.chains.push(c),
            _ => {}
        }
    }
    r
}

/// The chain a verdict-map element jumps or goes to.
pub fn elem_chain_ref(v: &ElemValue) -> Option<&str> {
    match &v.data {
        Some(ElemData::Verdict(Verdict::Jump(c) | Verdict::Goto(c))) => Some(c),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Chunking
// ---------------------------------------------------------------------------

/// Why a batch cannot be split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error("only batches that add objects can be split; operation {index} is {op}")]
    NotAddOnly { index: usize, op: &'static str },
    #[error("max_messages must be at least 1")]
    ZeroLimit,
}

/// Cut an add-only batch (a cold load, a staged load) into batches of at most
/// `max_messages` messages each ([`Batch::message_count`]), to be committed one
/// after another. Element lists are split across chunks; order is kept.
///
/// Only valid for batches that only add: with deletions, a chunk boundary could
/// expose a half-removed state or make a later chunk fail against an earlier one.
/// Each chunk is atomic, the sequence is not: between chunks the kernel holds a
/// prefix of the load. To keep that prefix unreachable, every operation on a base
/// chain created in this batch (its header and its rules) is held back into the
/// final chunk, which may therefore exceed `max_messages`; [`full_load`] already
/// orders base chains last.
pub fn split(batch: Batch, max_messages: usize) -> Result<Vec<Batch>, SplitError> {
    if max_messages == 0 {
        return Err(SplitError::ZeroLimit);
    }
    let base_chains: HashSet<String> = batch
        .ops
        .iter()
        .filter_map(|op| match op {
            Op::AddChain(c) if c.base.is_some() => Some(c.name.clone()),
            _ => None,
        })
        .collect();
    let Batch { family, table, ops } = batch;
    let new_chunk = || Batch::new(family, table.clone());
    let mut chunks = Vec::new();
    let mut cur = new_chunk();
    let mut used = 0usize;
    let mut tail = new_chunk();
    for (index, op) in ops.into_iter().enumerate() {
        let op = match op {
            Op::AddChain(c) if c.base.is_some() => {
                tail.ops.push(Op::AddChain(c));
                continue;
            }
            Op::AddRule { chain, rule } if base_chains.contains(&chain) => {
                tail.ops.push(Op::AddRule { chain, rule });
                continue;
            }
            op @ (Op::AddTable { .. } | Op::AddSet(_) | Op::AddChain(_) | Op::AddRule { .. }) => op,
            Op::AddElements { set, mut elements } => {
                // Fill the current chunk, then whole chunks, then leave the rest open.
                while !elements.is_empty() {
                    if used == max_messages {
                        chunks.push(std::mem::replace(&mut cur, new_chunk()));
                        used = 0;
                    }
                    let take = (max_messages - used).min(elements.len());
                    let rest = elements.split_off(take);
                    cur.ops.push(Op::AddElements {
                        set: set.clone(),
                        elements,
                    });
                    used += take;
                    elements = rest;
                }
                continue;
            }
            other => {
                return Err(SplitError::NotAddOnly {
                    index,
                    op: op_name(&other),
                })
            }
        };
        if used == max_messages {
            chunks.push(std::mem::replace(&mut cur, new_chunk()));
            used = 0;
        }
        cur.ops.push(op);
        used += 1;
    }
    if !cur.ops.is_empty() {
        chunks.push(cur);
    }
    if !tail.ops.is_empty() {
        chunks.push(tail);
    }
    Ok(chunks)
}

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::AddTable { .. } => "AddTable",
        Op::DeleteTable => "DeleteTable",
        Op::AddSet(_) => "AddSet",
        Op::DeleteSet(_) => "DeleteSet",
        Op::FlushSet(_) => "FlushSet",
        Op::AddElements { .. } => "AddElements",
        Op::DeleteElements { .. } => "DeleteElements",
        Op::AddChain(_) => "AddChain",
        Op::FlushChain(_) => "FlushChain",
        Op::DeleteChain(_) => "DeleteChain",
        Op::AddRule { .. } => "AddRule",
    }
}

// ---------------------------------------------------------------------------
// Applying a batch in memory
// ---------------------------------------------------------------------------

/// A batch operation the kernel would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("operation {index} ({op}): {reason}")]
pub struct ApplyError {
    pub index: usize,
    pub op: &'static str,
    pub reason: String,
}

/// Apply `batch` to an in-memory table the way the kernel would, refusing what
/// it refuses: references to missing sets or chains, deleting a set or chain
/// still in use, deleting a non-empty chain, jumping to a base chain, adding an
/// element or object that exists, deleting one that does not. (It does not check
/// datatypes, interval overlaps or jump loops.)
///
/// Used by tests to prove diff ordering, and by the agent to advance its
/// committed copy after the kernel acknowledged a batch.
///
/// Cost: O(log n) per element, rule or header the batch carries (map lookups and
/// inserts), so a small batch on a 265k-element table stays in microseconds. Only
/// `DeleteSet` and `DeleteChain` check references, in O(rules) (plus the elements
/// of verdict maps for `DeleteChain`), never the elements of data maps or sets. Not atomic: on error the
/// state holds the operations before the failing one; treat it as unknown.
pub fn apply(state: &mut Option<Table>, batch: &Batch) -> Result<(), ApplyError> {
    apply_with(state, batch, Checks::All)
}

/// [`apply`] for a batch the kernel has already committed: the kernel refused
/// any dangling reference, so the O(rules) reference scans of `DeleteSet` and
/// `DeleteChain` are skipped and every operation costs O(log n). This keeps
/// an event's path to the kernel independent of the table's size.
pub fn apply_acknowledged(state: &mut Option<Table>, batch: &Batch) -> Result<(), ApplyError> {
    apply_with(state, batch, Checks::AcknowledgedByKernel)
}

/// How much of the kernel's refusals [`apply`] re-checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Checks {
    All,
    /// Skip the whole-table reference scans on deletes.
    AcknowledgedByKernel,
}

fn apply_with(state: &mut Option<Table>, batch: &Batch, checks: Checks) -> Result<(), ApplyError> {
    for (index, op) in batch.ops.iter().enumerate() {
        apply_op(state, batch, op, checks).map_err(|reason| ApplyError {
            index,
            op: op_name(op),
            reason,
        })?;
    }
    Ok(())
}

fn apply_op(
    state: &mut Option<Table>,
    batch: &Batch,
    op: &Op,
    checks: Checks,
) -> Result<(), String> {
    if let Op::AddTable { comment } = op {
        if state.is_none() {
            let mut t = Table::new(batch.family, batch.table.clone());
            t.comment = comment.clone();
            *state = Some(t);
        }
        return Ok(());
    }
    let Some(t) = state.as_mut() else {
        return Err(format!("table {} does not exist", batch.table));
    };
    match op {
        Op::AddTable { .. } => unreachable!("handled above"),
        Op::DeleteTable => *state = None,
        Op::AddSet(s) => {
            if t.sets.contains_key(&s.name) {
                return Err(format!("set {} exists", s.name));
            }
            t.sets.insert(s.name.clone(), header_of_set(s));
        }
        Op::DeleteSet(name) => {
            set_mut(t, name)?;
            let scan = checks == Checks::All;
            if let Some(c) = t.chains.values().filter(|_| scan).find(|c| {
                c.rules
                    .iter()
                    .any(|r| rule_refs(r).sets.contains(&name.as_str()))
            }) {
                return Err(format!("set {name} is used by chain {}", c.name));
            }
            t.sets.remove(name);
        }
        Op::FlushSet(name) => set_mut(t, name)?.elements.clear(),
        Op::AddElements { set, elements } => {
            for (_, v) in elements {
                if let Some(c) = elem_chain_ref(v) {
                    check_jump_target(t, c)?;
                }
            }
            let s = set_mut(t, set)?;
            for (k, v) in elements {
                if k.len() != s.key.len() {
                    return Err(format!("element {k:?} does not fit the key of {set}"));
                }
                if v.data.is_some() != s.data.is_some() {
                    return Err(format!("element {k:?} data does not fit {set}"));
                }
                if s.elements.insert(k.clone(), v.clone()).is_some() {
                    return Err(format!("element {k:?} exists in {set}"));
                }
            }
        }
        Op::DeleteElements { set, keys } => {
            let s = set_mut(t, set)?;
            for k in keys {
                if s.elements.remove(k).is_none() {
                    return Err(format!("element {k:?} is not in {set}"));
                }
            }
        }
        Op::AddChain(c) => {
            if t.chains.contains_key(&c.name) {
                return Err(format!("chain {} exists", c.name));
            }
            t.chains.insert(c.name.clone(), header_of_chain(c));
        }
        Op::FlushChain(name) => chain_mut(t, name)?.rules.clear(),
        Op::DeleteChain(name) => {
            if !chain_mut(t, name)?.rules.is_empty() {
                return Err(format!("chain {name} is not empty"));
            }
            let scan = checks == Checks::All;
            if let Some(c) = t.chains.values().filter(|_| scan).find(|c| {
                c.rules
                    .iter()
                    .any(|r| rule_refs(r).chains.contains(&name.as_str()))
            }) {
                return Err(format!("chain {name} is a jump target of chain {}", c.name));
            }
            if let Some(s) = t.sets.values().filter(|_| scan).find(|s| {
                s.data == Some(SetData::Verdict)
                    && s.elements.values().any(|v| elem_chain_ref(v) == Some(name))
            }) {
                return Err(format!("chain {name} is named by an element of {}", s.name));
            }
            t.chains.remove(name);
        }
        Op::AddRule { chain, rule } => {
            let refs = rule_refs(rule);
            for s in &refs.sets {
                if !t.sets.contains_key(*s) {
                    return Err(format!("rule names missing set {s}"));
                }
            }
            for c in &refs.chains {
                check_jump_target(t, c)?;
            }
            chain_mut(t, chain)?.rules.push(rule.clone());
        }
    }
    Ok(())
}

fn set_mut<'t>(t: &'t mut Table, name: &str) -> Result<&'t mut Set, String> {
    t.sets
        .get_mut(name)
        .ok_or_else(|| format!("set {name} does not exist"))
}

fn chain_mut<'t>(t: &'t mut Table, name: &str) -> Result<&'t mut Chain, String> {
    t.chains
        .get_mut(name)
        .ok_or_else(|| format!("chain {name} does not exist"))
}

fn check_jump_target(t: &Table, name: &str) -> Result<(), String> {
    match t.chains.get(name) {
        None => Err(format!("jump target {name} does not exist")),
        Some(c) if c.base.is_some() => Err(format!("cannot jump to base chain {name}")),
        Some(_) => Ok(()),
    }
}
