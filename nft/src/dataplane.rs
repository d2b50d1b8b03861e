//! The enforcing edge: one table of ours in the kernel, kept equal to a desired
//! [`Table`] by diffs.
//!
//! [`Dataplane`] owns a netlink [`Conn`] and the table the kernel last committed, in
//! memory. The hot path diffs desired against that copy and sends one atomic batch;
//! it never lists the kernel. The copy is read from the kernel once, in
//! [`Dataplane::open`], so a restarted agent diffs against what is really enforced
//! and loses nothing.
//!
//! A large change is sent as a *staged load* (see DESIGN.md, "nftables layout
//! principles"): the new objects nothing references yet — new sets with their
//! elements, new regular chains with their rules — go first, in transactions of at
//! most [`Dataplane::chunk_messages`] messages each; one final transaction then makes
//! them live (base chains, rules and verdict-map elements that reference them) and
//! removes what goes away. Until that flip the previous ruleset keeps enforcing,
//! and no single transaction holds the nf_tables commit lock for long (one huge
//! transaction stalls packet processing in the namespace).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::batch::{Batch, Op};
use crate::diff::{self, elem_chain_ref, rule_refs, SplitError};
use crate::model::{Family, Table};
use crate::netlink::{self, Conn};

/// Default upper bound of one staged transaction, in [`Batch::message_count`]
/// units (elements, rules, headers). Measured with `bench dataplane
/// --sweep-chunks` on 5,000 × 50 services (kernel 6.18, 2 cores): total cold load
/// 1.95 s at 1k, 1.66 s at 2k, 1.60 s at 5k, 1.68 s at 20k; the longest single
/// transaction (the nf_tables commit-lock hold) was 220 / 239 / 422 / 461 ms,
/// dominated by creating set headers (the kernel keeps a table's sets in a list,
/// so each new set costs O(sets)). 5k: the fastest total, lock held < 0.5 s.
pub const DEFAULT_CHUNK_MESSAGES: usize = 5_000;

/// What one [`Dataplane::sync`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SyncReport {
    /// Operations of the diff ([`Op`]s; an element list is one op).
    pub ops: usize,
    /// Objects changed: elements, rules and headers ([`Batch::message_count`]).
    pub changes: usize,
    /// Netlink messages sent (elements are packed many to a message).
    pub messages: usize,
    /// Bytes sent.
    pub bytes: usize,
    /// Committed transactions: 0 for an empty diff, 1 for a plain sync, more for a
    /// staged load.
    pub transactions: usize,
    /// Whether the change went through the staged path.
    pub staged: bool,
    /// Wall time of the whole sync: diff, encoding, kernel, bookkeeping.
    pub elapsed: Duration,
    /// Longest single transaction (encode + send), the bound on lock hold time.
    pub longest_transaction: Duration,
    /// Time spent diffing desired against the committed copy.
    pub diff: Duration,
    /// Time of each transaction (encode + send + ACKs), in order.
    pub transaction_times: Vec<Duration>,
}

/// What happened to the kernel when a sync failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leftovers {
    /// Nothing of the failed sync is in the kernel.
    None,
    /// Staged objects were committed before the failure and removed again.
    Removed,
    /// Staged objects are still in the kernel (the clean-up failed too); nothing
    /// references them, and the next sync removes them.
    Pending,
}

/// Why a sync did not happen. The previously committed ruleset stays enforced.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("this dataplane manages table {family} {name}, not {got_family} {got_name}")]
    WrongTable {
        family: Family,
        name: String,
        got_family: Family,
        got_name: String,
    },
    /// The kernel (or the encoder) refused transaction `transaction` (1-based) of
    /// `transactions`; `source` names the op.
    #[error(
        "transaction {transaction} of {transactions} refused, leftovers {leftovers:?}: {source}"
    )]
    Kernel {
        transaction: usize,
        transactions: usize,
        leftovers: Leftovers,
        #[source]
        source: netlink::Error,
    },
    /// A staged part could not be split (a bug in the staging plan).
    #[error("staging: {0}")]
    Split(#[from] SplitError),
    /// The kernel's ruleset generation or table could not be read (drift check).
    #[error("reading table {family} {name} back: {source}")]
    Read {
        family: Family,
        name: String,
        #[source]
        source: netlink::Error,
    },
}

/// What [`Dataplane::check_drift`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drift {
    /// The ruleset generation has not moved since our last commit (or last
    /// check): nobody committed anything in this namespace. Nothing was read.
    Unchanged,
    /// Someone committed in this namespace, but our table is still what we
    /// committed (another table changed, or a change was undone).
    Clean,
    /// Our table differed from the committed copy (flushed, deleted, edited by
    /// hand); the sync in the report restored it.
    Repaired(SyncReport),
}

/// One table in one network namespace, kept equal to a desired [`Table`].
pub struct Dataplane {
    conn: Conn,
    family: Family,
    name: String,
    committed: Option<Table>,
    chunk_messages: usize,
    /// The committed copy is unknown (a batch committed but could not be
    /// replayed or read back): the next sync reloads first.
    stale: bool,
    /// The ruleset generation id at which the kernel provably held the
    /// committed copy: read right after our own commits when nobody else
    /// committed in between, or at the last drift check. `None`: unknown, the
    /// next drift check reads the table.
    verified_generation: Option<u32>,
}

/// The generation id after `n` more commits: the kernel increments it by one
/// per committed transaction and skips 0 when it wraps.
fn generation_after(mut g: u32, n: usize) -> u32 {
    for _ in 0..n {
        g = g.wrapping_add(1);
        if g == 0 {
            g = 1;
        }
    }
    g
}

impl Dataplane {
    /// Take over table `name` of `family` on `conn`, reading its current kernel
    /// content once as the committed state (absent table: `None`).
    pub fn open(mut conn: Conn, family: Family, name: &str) -> Result<Dataplane, netlink::Error> {
        let before = conn.generation()?;
        let committed = conn.read_table(family, name)?;
        // A dump is not atomic: the copy is verified only if nothing committed
        // while it was read.
        let verified_generation = (conn.generation()? == before).then_some(before);
        Ok(Dataplane {
            conn,
            family,
            name: name.to_string(),
            committed,
            chunk_messages: DEFAULT_CHUNK_MESSAGES,
            stale: false,
            verified_generation,
        })
    }

    /// Changes larger than `n` messages are staged in transactions of at most `n`.
    pub fn with_chunk_messages(mut self, n: usize) -> Dataplane {
        self.chunk_messages = n.max(1);
        self
    }

    pub fn chunk_messages(&self) -> usize {
        self.chunk_messages
    }

    /// What the kernel holds as far as this dataplane knows (`None`: no table).
    pub fn committed(&self) -> Option<&Table> {
        self.committed.as_ref()
    }

    /// The connection, e.g. for [`Conn::read_table`] in drift checks.
    pub fn conn(&mut self) -> &mut Conn {
        &mut self.conn
    }

    pub fn into_conn(self) -> Conn {
        self.conn
    }

    /// Re-read the table from the kernel (after drift: someone else changed it).
    pub fn reload(&mut self) -> Result<(), netlink::Error> {
        self.verified_generation = None;
        self.conn.forget(self.family, &self.name);
        self.committed = self.conn.read_table(self.family, &self.name)?;
        self.stale = false;
        Ok(())
    }

    /// The drift check: has anyone changed our table behind our back (`nft
    /// flush table`, `nft delete table`, a hand edit)? Cheap when nothing
    /// happened in the namespace: one generation-id request. When the
    /// generation moved since our last commit, reads the table once and, if
    /// it differs from the committed copy, brings the kernel back to that copy
    /// (a normal diff sync from what the kernel holds, staged if large).
    /// Elements the kernel adds to dynamic sets are not drift.
    pub fn check_drift(&mut self) -> Result<Drift, SyncError> {
        let read_err = |dp: &Dataplane| {
            let (family, name) = (dp.family, dp.name.clone());
            move |source| SyncError::Read {
                family,
                name,
                source,
            }
        };
        let generation = self.conn.generation().map_err(read_err(self))?;
        if self.verified_generation == Some(generation) && !self.stale {
            return Ok(Drift::Unchanged);
        }
        self.conn.forget(self.family, &self.name);
        let kernel = self
            .conn
            .read_table(self.family, &self.name)
            .map_err(read_err(self))?;
        let after = self.conn.generation().map_err(read_err(self))?;
        let consistent = (after == generation).then_some(generation);
        let want = match (&self.committed, self.stale) {
            // Never committed anything, or the copy is unknown: the kernel is
            // the truth (the next sync brings it to the desired state).
            (None, _) | (_, true) => None,
            (Some(committed), false) => Some(committed.clone()),
        };
        let Some(want) = want.filter(|w| !diff::diff(kernel.as_ref(), w).is_empty()) else {
            if self.stale || self.committed.is_none() {
                self.committed = kernel;
                self.stale = false;
            }
            self.verified_generation = consistent;
            return Ok(Drift::Clean);
        };
        // Diff from what the kernel really holds back to the committed copy.
        self.committed = kernel;
        self.verified_generation = consistent;
        self.sync(&want).map(Drift::Repaired)
    }

    /// Reads the generation before a commit of ours; see [`Self::note_commits`].
    fn generation_before_commit(&mut self) -> Option<u32> {
        let now = self.conn.generation().ok();
        // Only a generation at which the copy was verified carries forward:
        // anything committed by others before this point is unknown.
        now.filter(|g| self.verified_generation == Some(*g))
    }

    /// After `n` commits of ours: the copy stays verified when the generation
    /// moved by exactly `n` (nobody else committed meanwhile).
    fn note_commits(&mut self, before: Option<u32>, n: usize) {
        let after = self.conn.generation().ok();
        self.verified_generation = match (before, after) {
            (Some(b), Some(a)) if generation_after(b, n) == a => Some(a),
            _ => None,
        };
    }

    /// Make the kernel hold `desired`: diff against the committed copy, send, and
    /// advance the copy only when the kernel committed.
    pub fn sync(&mut self, desired: &Table) -> Result<SyncReport, SyncError> {
        let start = Instant::now();
        if desired.family != self.family || desired.name != self.name {
            return Err(SyncError::WrongTable {
                family: self.family,
                name: self.name.clone(),
                got_family: desired.family,
                got_name: desired.name.clone(),
            });
        }
        if self.stale {
            self.reload().map_err(|source| SyncError::Kernel {
                transaction: 0,
                transactions: 0,
                leftovers: Leftovers::None,
                source,
            })?;
        }
        let batch = diff::diff(self.committed.as_ref(), desired);
        let mut report = SyncReport {
            ops: batch.ops.len(),
            changes: batch.message_count(),
            diff: start.elapsed(),
            ..Default::default()
        };
        if batch.is_empty() {
            report.elapsed = start.elapsed();
            return Ok(report);
        }
        let plan = self.plan(batch)?;
        report.staged = plan.len() > 1;
        let total = plan.len();
        let before = self.generation_before_commit();
        for (i, chunk) in plan.iter().enumerate() {
            let t = Instant::now();
            match self.conn.apply(chunk) {
                Ok(applied) => {
                    report.messages += applied.messages;
                    report.bytes += applied.bytes;
                    report.transactions += 1;
                    let took = t.elapsed();
                    report.longest_transaction = report.longest_transaction.max(took);
                    report.transaction_times.push(took);
                }
                Err(source) => {
                    let leftovers = self.undo_staged(&plan[..i]);
                    self.verified_generation = None;
                    return Err(SyncError::Kernel {
                        transaction: i + 1,
                        transactions: total,
                        leftovers,
                        source,
                    });
                }
            }
        }
        self.advance(&plan, desired);
        self.note_commits(before, report.transactions);
        report.elapsed = start.elapsed();
        Ok(report)
    }

    /// The event-driven path: send one prepared batch (e.g. from
    /// [`diff::Delta`]) as one transaction and advance the committed copy by
    /// replaying it, in O(batch · log n): no render, no diff, no walk of the
    /// table. The caller vouches that the batch fits the committed state (the
    /// kernel refuses it otherwise, and nothing changes). For start-up and
    /// resync use [`Dataplane::sync`].
    ///
    /// Not staged: the batch is one transaction whatever its size.
    pub fn apply_batch(&mut self, batch: &Batch) -> Result<SyncReport, SyncError> {
        let start = Instant::now();
        if batch.family != self.family || batch.table != self.name {
            return Err(SyncError::WrongTable {
                family: self.family,
                name: self.name.clone(),
                got_family: batch.family,
                got_name: batch.table.clone(),
            });
        }
        let mut report = SyncReport {
            ops: batch.ops.len(),
            changes: batch.message_count(),
            ..Default::default()
        };
        if batch.is_empty() {
            report.elapsed = start.elapsed();
            return Ok(report);
        }
        let before = self.generation_before_commit();
        let applied = self.conn.apply(batch).map_err(|source| SyncError::Kernel {
            transaction: 1,
            transactions: 1,
            leftovers: Leftovers::None,
            source,
        })?;
        let took = start.elapsed();
        report.messages = applied.messages;
        report.bytes = applied.bytes;
        report.transactions = 1;
        report.longest_transaction = took;
        report.transaction_times.push(took);
        // The kernel committed: the copy must follow. `apply` refuses less than
        // the kernel does only for a copy that was already wrong; then the kernel
        // is the truth.
        if diff::apply_acknowledged(&mut self.committed, batch).is_err() && self.reload().is_err() {
            // Cannot read it back either: an unknown copy makes the next full
            // sync reload the table (see `sync`).
            self.committed = None;
            self.stale = true;
        }
        self.note_commits(before, 1);
        report.elapsed = start.elapsed();
        Ok(report)
    }

    /// The transactions that carry `batch`: itself when small, else the staged
    /// chunks followed by the final flip.
    fn plan(&self, batch: Batch) -> Result<Vec<Batch>, SplitError> {
        if batch.message_count() <= self.chunk_messages {
            return Ok(vec![batch]);
        }
        let (stage, flip) = partition(self.committed.as_ref(), batch);
        if stage.is_empty() {
            return Ok(vec![flip]);
        }
        let mut plan = diff::split(stage, self.chunk_messages)?;
        if !flip.is_empty() {
            plan.push(flip);
        }
        Ok(plan)
    }

    /// Move the committed copy forward over the transactions just committed.
    fn advance(&mut self, plan: &[Batch], desired: &Table) {
        // Small changes: replay them (cost proportional to the change, where a
        // clone or comparison of the whole table would dominate the hot path).
        // Large ones: a clone of desired is cheaper than replaying every element.
        let small = plan.len() == 1 && plan[0].message_count() <= 1_000;
        if small {
            let mut state = self.committed.take();
            if diff::apply_acknowledged(&mut state, &plan[0]).is_ok() {
                self.committed = state;
                return;
            }
        }
        self.committed = Some(desired.clone());
    }

    /// After transaction `committed.len()` failed: remove the staged objects the
    /// earlier transactions of this sync committed. Returns what is left.
    fn undo_staged(&mut self, committed: &[Batch]) -> Leftovers {
        if committed.is_empty() {
            return Leftovers::None;
        }
        // The kernel now holds the old state plus the staged prefix.
        let mut prefix = self.committed.clone();
        for b in committed {
            if diff::apply_acknowledged(&mut prefix, b).is_err() {
                // Cannot model the kernel any more: read it back.
                let _ = self.reload();
                return Leftovers::Pending;
            }
        }
        let cleanup = match &self.committed {
            Some(old) => diff::diff(prefix.as_ref(), old),
            None => {
                let mut b = Batch::new(self.family, self.name.clone());
                b.ops.push(Op::DeleteTable);
                b
            }
        };
        match self.conn.apply(&cleanup) {
            Ok(_) => Leftovers::Removed,
            Err(_) => {
                // Keep the copy truthful: the next sync's diff removes the rest.
                self.committed = prefix;
                Leftovers::Pending
            }
        }
    }
}

/// Split a diff batch into the part that can be staged (creates objects nothing
/// live references, referring only to objects that survive the change) and the
/// final flip (everything else, in the diff's order).
fn partition(committed: Option<&Table>, batch: Batch) -> (Batch, Batch) {
    let mut stage = Batch::new(batch.family, batch.table.clone());
    let mut flip = Batch::new(batch.family, batch.table.clone());
    // Deleting the table discards anything staged before: send it all at once.
    if batch.ops.iter().any(|op| matches!(op, Op::DeleteTable)) {
        flip.ops = batch.ops;
        return (stage, flip);
    }
    let exists_set = |n: &str| committed.is_some_and(|t| t.sets.contains_key(n));
    let exists_chain = |n: &str| committed.is_some_and(|t| t.chains.contains_key(n));
    let mut dying_sets = HashSet::new();
    let mut dying_chains = HashSet::new();
    let mut sets = HashSet::new();
    let mut chains = HashSet::new();
    for op in &batch.ops {
        match op {
            Op::DeleteSet(n) => {
                dying_sets.insert(n.clone());
            }
            Op::DeleteChain(n) => {
                dying_chains.insert(n.clone());
            }
            // Only names the kernel does not hold: a recreated object replaces a
            // live one and must change in the flip.
            Op::AddSet(s) if !exists_set(&s.name) => {
                sets.insert(s.name.clone());
            }
            Op::AddChain(c) if c.base.is_none() && !exists_chain(&c.name) => {
                chains.insert(c.name.clone());
            }
            _ => {}
        }
    }
    // A staged object may only refer to staged objects or to live ones that
    // survive; dropping one can disqualify others, so iterate to a fixpoint.
    loop {
        let set_ok = |n: &str, sets: &HashSet<String>| {
            sets.contains(n) || (exists_set(n) && !dying_sets.contains(n))
        };
        let chain_ok = |n: &str, chains: &HashSet<String>| {
            chains.contains(n) || (exists_chain(n) && !dying_chains.contains(n))
        };
        let mut bad_sets = Vec::new();
        let mut bad_chains = Vec::new();
        for op in &batch.ops {
            match op {
                Op::AddRule { chain, rule } if chains.contains(chain) => {
                    let r = rule_refs(rule);
                    let ok = r.sets.iter().all(|s| set_ok(s, &sets))
                        && r.chains.iter().all(|c| chain_ok(c, &chains));
                    if !ok {
                        bad_chains.push(chain.clone());
                    }
                }
                Op::AddElements { set, elements } if sets.contains(set) => {
                    let ok = elements
                        .iter()
                        .filter_map(|(_, v)| elem_chain_ref(v))
                        .all(|c| chain_ok(c, &chains));
                    if !ok {
                        bad_sets.push(set.clone());
                    }
                }
                _ => {}
            }
        }
        if bad_sets.is_empty() && bad_chains.is_empty() {
            break;
        }
        for s in bad_sets {
            sets.remove(&s);
        }
        for c in bad_chains {
            chains.remove(&c);
        }
    }
    for op in batch.ops {
        let staged = match &op {
            Op::AddTable { .. } => committed.is_none(),
            Op::AddSet(s) => sets.contains(&s.name),
            Op::AddElements { set, .. } => sets.contains(set),
            Op::AddChain(c) => chains.contains(&c.name),
            Op::AddRule { chain, .. } => chains.contains(chain),
            _ => false,
        };
        if staged {
            stage.ops.push(op);
        } else {
            flip.ops.push(op);
        }
    }
    (stage, flip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;

    fn svc_table(n: usize) -> Table {
        let mut t = Table::new(Family::Ip, "t");
        let mut vmap = Set {
            name: "services".into(),
            key: vec![DataType::Ipv4Addr],
            data: Some(SetData::Verdict),
            ..Default::default()
        };
        for i in 0..n {
            let name = format!("svc{i}");
            t.add_chain(Chain {
                name: name.clone(),
                rules: vec![Rule::new(vec![Expr::Verdict(Verdict::Accept)])],
                ..Default::default()
            });
            vmap.elements.insert(
                vec![KeyPart::Value(Value::Ipv4([10, 0, 0, i as u8].into()))],
                ElemValue {
                    data: Some(ElemData::Verdict(Verdict::Goto(name))),
                    ..Default::default()
                },
            );
        }
        t.add_set(vmap);
        t.add_chain(Chain {
            name: "pre".into(),
            base: Some(BaseChain {
                kind: ChainType::Filter,
                hook: Hook::Prerouting,
                priority: 0,
                policy: ChainPolicy::Accept,
            }),
            rules: vec![Rule::new(vec![Expr::Vmap {
                key: MapKey::Fields(vec![Field::IpDaddr]),
                map: "services".into(),
            }])],
            ..Default::default()
        });
        t
    }

    #[test]
    fn new_chains_are_staged_and_live_references_flip() {
        let old = svc_table(2);
        let new = svc_table(4);
        let (stage, flip) = partition(Some(&old), diff::diff(Some(&old), &new));
        let mut staged_chains: Vec<_> = stage
            .ops
            .iter()
            .filter_map(|op| match op {
                Op::AddChain(c) => Some(c.name.as_str()),
                _ => None,
            })
            .collect();
        staged_chains.sort();
        assert_eq!(staged_chains, ["svc2", "svc3"]);
        // The vmap elements that reach them are live: they flip.
        assert!(flip
            .ops
            .iter()
            .any(|op| matches!(op, Op::AddElements { set, .. } if set == "services")));
        // Replaying stage then flip reaches the desired table.
        let mut state = Some(old);
        diff::apply(&mut state, &stage).unwrap();
        diff::apply(&mut state, &flip).unwrap();
        assert_eq!(state.as_ref(), Some(&new));
    }

    #[test]
    fn cold_load_stages_everything_but_base_chains() {
        let new = svc_table(3);
        let (stage, flip) = partition(None, diff::full_load(&new));
        assert!(flip.ops.iter().all(|op| match op {
            Op::AddChain(c) => c.base.is_some(),
            Op::AddRule { chain, .. } => chain == "pre",
            _ => false,
        }));
        let mut state = None;
        diff::apply(&mut state, &stage).unwrap();
        diff::apply(&mut state, &flip).unwrap();
        assert_eq!(state.as_ref(), Some(&new));
    }

    #[test]
    fn rules_naming_a_recreated_set_are_not_staged() {
        let mut old = svc_table(1);
        let mut new = svc_table(1);
        // A new chain using a set whose header changes (recreated in the flip).
        let peers = Set {
            name: "peers".into(),
            key: vec![DataType::Ipv4Addr],
            ..Default::default()
        };
        old.add_set(peers.clone());
        new.add_set(Set {
            comment: Some("changed".into()),
            ..peers
        });
        new.add_chain(Chain {
            name: "uses-peers".into(),
            rules: vec![Rule::new(vec![Expr::Match {
                left: vec![Field::IpSaddr],
                op: MatchOp::Eq,
                right: Rhs::Set("peers".into()),
            }])],
            ..Default::default()
        });
        let (stage, flip) = partition(Some(&old), diff::diff(Some(&old), &new));
        assert!(stage.is_empty(), "{stage:?}");
        let mut state = Some(old);
        diff::apply(&mut state, &flip).unwrap();
        assert_eq!(state.as_ref(), Some(&new));
    }
}
