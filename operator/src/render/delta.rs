//! Incremental render: an IR delta ([`IrDelta`]) and the committed table → the
//! small batch that makes the committed table equal to a full
//! [`render_policy`](super::render_policy) of the new IR, without rendering or
//! diffing the whole table.
//!
//! - Address-set element changes become element adds/removes in the `as-*` /
//!   `asp-*` sets the committed table holds.
//! - A pod whose rule list changed gets its policy chains rendered alone
//!   ([`pod_policy_chains`], the same code as the full render) and named by
//!   their content. When the committed table has them, only the pod's elements
//!   change: its IPs in the selection sets `sel-<chain>-v4/-v6` and in the
//!   class maps (no rule, no verdict: no jump-graph validation in the kernel).
//!   A policy chain the table lacks is added (with any set it uses that the
//!   table lacks) and its namespace chain is rewritten with the new guard
//!   (flush + the full guard list, one atomic batch); the same for a chain
//!   that loses its last pod. A namespace chain with no pod left goes away
//!   with its `*-chains` element; a new one comes with it.
//! - Reference counts (class-map elements per namespace chain, selection-set
//!   elements per policy chain, rules per set) say when an object is no
//!   longer used; it is then removed, after its users.
//! - A class id the committed table gives another chain (a collision the full
//!   render resolves by renaming, see [`super::policy`]) is a
//!   [`DeltaError::ClassCollision`]: the caller falls back to a full sync.
//!
//! Order inside the batch: new sets, new policy chains (headers, then rules),
//! new and rewritten namespace chains and their `*-chains` elements, element
//! changes of existing address sets, selection-set and class-map element
//! deletes then adds, then what nothing uses any more: `*-chains` elements,
//! namespace chains, policy chains, sets.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use kube_nft_crds::ir::{AddressSet, PodPolicy};
use nft::diff::{elem_chain_ref, header_of_chain, header_of_set, rule_refs};
use nft::{Batch, ElemKey, ElemValue, Op, Rule, Set, Table};

use super::names::ir_object_name;
use super::policy::{
    chains_element, chains_map, class_element, class_id, class_key, class_map, element_class,
    ip_key, ir_element_key, ir_set_elements, ns_chain_guards, ns_chain_header, ns_chain_name,
    ns_chain_rules, pod_policy_chains, sel_element, sel_set, sel_set_header, Dir, Guards, IpFamily,
    PolicyChain,
};
use crate::policy::incremental::IrDelta;

/// Why a delta could not be rendered; a full render + diff is the fallback.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    #[error(
        "chain {0} exists in the committed table with other content \
         (hash collision or drift); a full sync is needed"
    )]
    ChainContent(String),
    #[error("the committed table has no dispatch map {0}; a full sync is needed")]
    NoDispatchMap(String),
    #[error(
        "chain {0} has no class id of its own (id collision or invalid id); \
         a full sync is needed"
    )]
    ClassCollision(String),
}

/// Reference counts over the committed table, kept in step with the batches
/// [`DeltaRenderer::render`] produces.
///
/// [`render`](DeltaRenderer::render) advances the counts as if its batch will
/// be committed; when the kernel refuses a batch, rebuild with
/// [`DeltaRenderer::new`] from the committed table.
#[derive(Debug, Clone, Default)]
pub struct DeltaRenderer {
    /// Class-map elements dispatching to each namespace chain.
    ns_refs: HashMap<String, usize>,
    /// Selection-set elements of each policy chain.
    chain_refs: HashMap<String, usize>,
    /// Rules naming each set.
    set_refs: HashMap<String, usize>,
}

/// Counts one batch changes.
#[derive(Default)]
struct Changes {
    ns: HashMap<String, isize>,
    chains: HashMap<String, isize>,
    sets: HashMap<String, isize>,
}

impl Changes {
    fn rules(&mut self, rules: &[Rule], d: isize) {
        for rule in rules {
            for s in rule_refs(rule).sets {
                *self.sets.entry(s.to_string()).or_insert(0) += d;
            }
        }
    }
}

/// A namespace chain a batch touches.
struct NsChain {
    dir: Dir,
    namespace: String,
    class: u32,
}

/// The policy chain and family a selection set belongs to.
fn sel_owner(set: &str) -> Option<(&str, IpFamily)> {
    let rest = set.strip_prefix("sel-")?;
    IpFamily::ALL.into_iter().find_map(|fam| {
        let chain = rest.strip_suffix(fam.suffix())?.strip_suffix('-')?;
        Some((chain, fam))
    })
}

impl DeltaRenderer {
    /// Counts the references in `committed` (one pass over the table).
    pub fn new(committed: &Table) -> DeltaRenderer {
        let mut r = DeltaRenderer::default();
        for dir in Dir::ALL {
            for fam in IpFamily::ALL {
                let Some(s) = committed.sets.get(&class_map(dir, fam)) else {
                    continue;
                };
                for v in s.elements.values() {
                    if let Some(c) = element_class(v).and_then(|c| chain_of(committed, dir, c)) {
                        *r.ns_refs.entry(c.to_string()).or_insert(0) += 1;
                    }
                }
            }
        }
        for (name, set) in &committed.sets {
            if let Some((chain, _)) = sel_owner(name) {
                *r.chain_refs.entry(chain.to_string()).or_insert(0) += set.elements.len();
            }
        }
        for c in committed.chains.values() {
            for rule in &c.rules {
                for s in rule_refs(rule).sets {
                    *r.set_refs.entry(s.to_string()).or_insert(0) += 1;
                }
            }
        }
        r
    }

    /// The batch that takes `committed` (a render of the IR before `delta`) to
    /// the render of `node`'s share after it; `address_sets` are the IR's sets
    /// after `delta`.
    pub fn render(
        &mut self,
        committed: &Table,
        node: &str,
        delta: &IrDelta,
        address_sets: &BTreeMap<String, AddressSet>,
    ) -> Result<Batch, DeltaError> {
        let mut b = Batch::new(committed.family, committed.name.clone());
        let mut changes = Changes::default();
        // Policy chains the committed table lacks, as rendered for a pod.
        let mut new_chains: BTreeMap<String, PolicyChain> = BTreeMap::new();
        // The namespace chain of each policy chain this batch may add or drop.
        let mut home: BTreeMap<String, String> = BTreeMap::new();
        // Namespace chains the batch touches.
        let mut ns_chains: BTreeMap<String, NsChain> = BTreeMap::new();
        // Class ids of the namespace chains this batch adds: (egress, id) → chain.
        let mut new_classes: BTreeMap<(bool, u32), String> = BTreeMap::new();
        let mut dels: BTreeMap<String, Vec<ElemKey>> = BTreeMap::new();
        let mut adds: BTreeMap<String, Vec<(ElemKey, ElemValue)>> = BTreeMap::new();

        // 1. Pods: their dispatch and selection elements.
        for pd in delta.pods.values() {
            let old = pd.old.as_ref().filter(|_| pd.old_node == node);
            let new = pd.new.as_ref().filter(|_| pd.new_node == node);
            for dir in Dir::ALL {
                let old = old.filter(|p| isolated(p, dir));
                let new = new.filter(|p| isolated(p, dir));
                // (set, key) → (element, chain it counts for).
                let mut before: BTreeMap<(String, ElemKey), (ElemValue, String)> = BTreeMap::new();
                let mut after: BTreeMap<(String, ElemKey), (ElemValue, String)> = BTreeMap::new();
                if let Some(pp) = old {
                    let ns_chain = ns_chain_name(dir, &pp.namespace);
                    for ip in &pp.ips {
                        let map = class_map(dir, IpFamily::of(ip));
                        let set = committed
                            .sets
                            .get(&map)
                            .ok_or_else(|| DeltaError::NoDispatchMap(map.clone()))?;
                        let key = ip_key(ip);
                        if let Some(v) = set.elements.get(&key) {
                            let chain = element_class(v)
                                .and_then(|c| chain_of(committed, dir, c))
                                .unwrap_or_default()
                                .to_string();
                            before.insert((map, key), (v.clone(), chain));
                        }
                    }
                    for pc in pod_policy_chains(dir, rules(pp, dir), &pp.ips, address_sets) {
                        let sel = pp
                            .ips
                            .iter()
                            .map(|ip| (sel_set(&pc.name, IpFamily::of(ip)), ip_key(ip)));
                        for (set, key) in sel.chain(pc.pod_elements.iter().cloned()) {
                            let have = committed.sets.get(&set).and_then(|s| s.elements.get(&key));
                            if let Some(v) = have {
                                before.insert((set, key), (v.clone(), pc.name.clone()));
                            }
                        }
                        home.insert(pc.name, ns_chain.clone());
                    }
                }
                if let Some(pp) = new {
                    let (ns_chain, class) =
                        self.ns_chain(committed, dir, &pp.namespace, &mut new_classes)?;
                    ns_chains.entry(ns_chain.clone()).or_insert(NsChain {
                        dir,
                        namespace: pp.namespace.clone(),
                        class,
                    });
                    for ip in &pp.ips {
                        let v = class_element(&pp.namespace, &pp.name, class);
                        after.insert(
                            (class_map(dir, IpFamily::of(ip)), ip_key(ip)),
                            (v, ns_chain.clone()),
                        );
                    }
                    for pc in pod_policy_chains(dir, rules(pp, dir), &pp.ips, address_sets) {
                        if let Some(have) = committed.chains.get(&pc.name) {
                            let want = &pc.objects.chains[&pc.name];
                            if have.rules != want.rules || have.comment != want.comment {
                                return Err(DeltaError::ChainContent(pc.name));
                            }
                        }
                        let sel = pp
                            .ips
                            .iter()
                            .map(|ip| (sel_set(&pc.name, IpFamily::of(ip)), ip_key(ip)));
                        for k in sel.chain(pc.pod_elements.iter().cloned()) {
                            let v = sel_element(&pp.namespace, &pp.name);
                            after.insert(k, (v, pc.name.clone()));
                        }
                        home.insert(pc.name.clone(), ns_chain.clone());
                        if !committed.chains.contains_key(&pc.name) {
                            new_chains.entry(pc.name.clone()).or_insert(pc);
                        }
                    }
                }
                for (k, (v, chain)) in &before {
                    if after.get(k).map(|a| &a.0) != Some(v) {
                        dels.entry(k.0.clone()).or_default().push(k.1.clone());
                        count(&mut changes, &k.0, chain, -1);
                    }
                }
                for (k, (v, chain)) in after {
                    if before.get(&k).map(|b| &b.0) != Some(&v) {
                        count(&mut changes, &k.0, &chain, 1);
                        adds.entry(k.0).or_default().push((k.1, v));
                    }
                }
            }
        }

        // 2. Policy chains that come and go, and the guards that follow them.
        let mut add_chains = Vec::new();
        let mut dying_chains = Vec::new();
        let mut rewrite: BTreeMap<String, Guards> = BTreeMap::new();
        let mut chain_deltas: Vec<(&String, &isize)> = changes.chains.iter().collect();
        chain_deltas.sort();
        for (name, d) in chain_deltas {
            let after = self.chain_refs.get(name).copied().unwrap_or(0) as isize + d;
            let exists = committed.chains.contains_key(name);
            let Some(ns_chain) = home.get(name) else {
                continue;
            };
            if after <= 0 && exists {
                dying_chains.push(name.clone());
                guards_of(&mut rewrite, committed, ns_chain).retain(|(c, _), _| c != name);
            } else if after > 0 && !exists {
                let pc = &new_chains[name];
                let guards = guards_of(&mut rewrite, committed, ns_chain);
                for &fam in &pc.fams {
                    guards.insert((name.clone(), fam), pc.policy.clone());
                }
                add_chains.push(name.clone());
            }
        }
        let mut sets_born: BTreeMap<String, Set> = BTreeMap::new();
        let mut sets_dying: BTreeSet<String> = BTreeSet::new();
        for name in &dying_chains {
            changes.rules(&committed.chains[name].rules, -1);
        }
        for name in &add_chains {
            let pc = &new_chains[name];
            changes.rules(&pc.objects.chains[name].rules, 1);
            for &fam in &pc.fams {
                sets_born.insert(sel_set(name, fam), sel_set_header(name, fam, &pc.policy));
            }
        }

        // 3. Namespace chains: born, rewritten, dying.
        let mut ns_born = Vec::new();
        let mut ns_dying = Vec::new();
        let mut ns_deltas: Vec<(&String, &isize)> = changes.ns.iter().collect();
        ns_deltas.sort();
        for (name, d) in ns_deltas {
            let after = self.ns_refs.get(name).copied().unwrap_or(0) as isize + d;
            let exists = committed.chains.contains_key(name);
            if after <= 0 && exists {
                ns_dying.push(name.clone());
                rewrite.remove(name);
            } else if after > 0 && !exists {
                ns_born.push(name.clone());
                rewrite.entry(name.clone()).or_default();
            }
        }
        for name in &ns_dying {
            changes.rules(&committed.chains[name].rules, -1);
        }
        let mut ns_rules: BTreeMap<String, Vec<Rule>> = BTreeMap::new();
        for (name, guards) in &rewrite {
            let dir = match ns_chains.get(name) {
                Some(ns) => ns.dir,
                None => super::policy::chain_dir(name).expect("namespace chains are in-/eg-"),
            };
            if let Some(have) = committed.chains.get(name) {
                changes.rules(&have.rules, -1);
            }
            let rules = ns_chain_rules(dir, guards);
            changes.rules(&rules, 1);
            ns_rules.insert(name.clone(), rules);
        }

        // 4. Sets that come and go.
        for (name, d) in &changes.sets {
            let after = self.set_refs.get(name).copied().unwrap_or(0) as isize + d;
            let exists = committed.sets.contains_key(name);
            if after <= 0 && exists {
                sets_dying.insert(name.clone());
            } else if after > 0 && !exists && !sets_born.contains_key(name) {
                let set = new_chains
                    .values()
                    .find_map(|pc| pc.objects.sets.get(name))
                    .expect("a new set is used by a new chain");
                sets_born.insert(name.clone(), set.clone());
            }
        }
        for (name, set) in &sets_born {
            b.ops.push(Op::AddSet(header_of_set(set)));
            let ir = new_chains.values().find_map(|pc| pc.ir_sets.get(name));
            let elements: Vec<(ElemKey, ElemValue)> = match ir {
                Some(r) => ir_set_elements(r, address_sets).into_iter().collect(),
                None => set
                    .elements
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            };
            if !elements.is_empty() {
                b.ops.push(Op::AddElements {
                    set: name.clone(),
                    elements,
                });
            }
        }

        // 5. New policy chains, then namespace chains (which jump to them).
        for name in &add_chains {
            b.ops.push(Op::AddChain(header_of_chain(
                &new_chains[name].objects.chains[name],
            )));
        }
        for name in &add_chains {
            for rule in &new_chains[name].objects.chains[name].rules {
                b.ops.push(Op::AddRule {
                    chain: name.clone(),
                    rule: rule.clone(),
                });
            }
        }
        for name in &ns_born {
            let ns = &ns_chains[name];
            b.ops
                .push(Op::AddChain(ns_chain_header(ns.dir, name, &ns.namespace)));
        }
        for (name, rules) in &ns_rules {
            if committed
                .chains
                .get(name)
                .is_some_and(|c| !c.rules.is_empty())
            {
                b.ops.push(Op::FlushChain(name.clone()));
            }
            for rule in rules {
                b.ops.push(Op::AddRule {
                    chain: name.clone(),
                    rule: rule.clone(),
                });
            }
        }
        // Their `*-chains` elements: the only verdict elements a batch adds.
        for (set, elements) in chains_elements(&ns_born, &ns_chains) {
            b.ops.push(Op::AddElements { set, elements });
        }

        // 6. Element changes of surviving address sets.
        for (ir_name, sd) in &delta.sets {
            if sd.deleted {
                continue;
            }
            for fam in IpFamily::ALL {
                for (prefix, ports) in [("as", false), ("asp", true)] {
                    let nft_name = ir_object_name(prefix, ir_name, fam.suffix());
                    if sets_dying.contains(&nft_name) || sets_born.contains_key(&nft_name) {
                        continue;
                    }
                    let Some(have) = committed.sets.get(&nft_name) else {
                        continue;
                    };
                    let (dels, adds) = if sd.created {
                        // Known to the table already: compare in full.
                        let want = ir_set_elements(
                            &super::policy::IrSetRef {
                                ir_name: ir_name.clone(),
                                fam,
                                ports,
                            },
                            address_sets,
                        );
                        let dels = have
                            .elements
                            .keys()
                            .filter(|k| !want.contains_key(*k))
                            .cloned()
                            .collect();
                        let adds = want
                            .into_iter()
                            .filter(|(k, _)| !have.elements.contains_key(k))
                            .collect();
                        (dels, adds)
                    } else {
                        let of_fam =
                            |e: &&kube_nft_crds::ir::AddressSetElement| IpFamily::of(&e.ip) == fam;
                        let dels: Vec<ElemKey> = sd
                            .removed
                            .iter()
                            .filter(of_fam)
                            .filter_map(|e| ir_element_key(ports, e))
                            .filter(|k| have.elements.contains_key(k))
                            .collect();
                        let adds: Vec<(ElemKey, ElemValue)> = sd
                            .added
                            .iter()
                            .filter(of_fam)
                            .filter_map(|e| ir_element_key(ports, e))
                            .filter(|k| !have.elements.contains_key(k))
                            .map(|k| (k, ElemValue::default()))
                            .collect();
                        (dels, adds)
                    };
                    if !dels.is_empty() {
                        b.ops.push(Op::DeleteElements {
                            set: nft_name.clone(),
                            keys: dels,
                        });
                    }
                    if !adds.is_empty() {
                        b.ops.push(Op::AddElements {
                            set: nft_name,
                            elements: adds,
                        });
                    }
                }
            }
        }
        // 7. Selection sets and class maps: deletes, then adds (their chains
        // exist by now).
        for (set, keys) in dels {
            if !sets_dying.contains(&set) {
                b.ops.push(Op::DeleteElements { set, keys });
            }
        }
        for (set, elements) in adds {
            b.ops.push(Op::AddElements { set, elements });
        }
        // 8. What nothing uses any more: `*-chains` elements, namespace
        // chains, policy chains, then the sets they used.
        let dying_classes: Vec<(String, ElemKey)> = ns_dying
            .iter()
            .filter_map(|name| {
                let dir = super::policy::chain_dir(name)?;
                Some((chains_map(dir), class_key(class_id(dir, name)?)))
            })
            .collect();
        let mut by_map: BTreeMap<String, Vec<ElemKey>> = BTreeMap::new();
        for (map, key) in dying_classes {
            by_map.entry(map).or_default().push(key);
        }
        for (set, keys) in by_map {
            b.ops.push(Op::DeleteElements { set, keys });
        }
        for name in ns_dying.iter().chain(&dying_chains) {
            if !committed.chains[name].rules.is_empty() {
                b.ops.push(Op::FlushChain(name.clone()));
            }
        }
        for name in ns_dying.iter().chain(&dying_chains) {
            b.ops.push(Op::DeleteChain(name.clone()));
        }
        for name in &sets_dying {
            b.ops.push(Op::DeleteSet(name.clone()));
        }

        // The counts follow the batch.
        for (name, d) in changes.ns {
            bump(&mut self.ns_refs, name, d);
        }
        for (name, d) in changes.chains {
            bump(&mut self.chain_refs, name, d);
        }
        for (name, d) in changes.sets {
            bump(&mut self.set_refs, name, d);
        }
        Ok(b)
    }

    /// The namespace chain pods of `namespace` are dispatched to in `dir`, and
    /// its class id, checked against the committed table and the chains this
    /// batch adds.
    fn ns_chain(
        &self,
        committed: &Table,
        dir: Dir,
        namespace: &str,
        new_classes: &mut BTreeMap<(bool, u32), String>,
    ) -> Result<(String, u32), DeltaError> {
        let name = ns_chain_name(dir, namespace);
        let Some(class) = class_id(dir, &name) else {
            return Err(DeltaError::ClassCollision(name));
        };
        // The id must be this chain's in the committed table (or free, for a
        // new chain), and not another new chain's.
        let chains = chains_map(dir);
        let owner = committed
            .sets
            .get(&chains)
            .ok_or_else(|| DeltaError::NoDispatchMap(chains.clone()))?
            .elements
            .get(&class_key(class))
            .and_then(elem_chain_ref);
        let exists = committed.chains.contains_key(&name);
        let ok = match owner {
            Some(o) => o == name,
            None => !exists,
        };
        let new_ok = match new_classes.entry((dir == Dir::Egress, class)) {
            Entry::Occupied(o) => *o.get() == name,
            Entry::Vacant(v) => {
                if !exists {
                    v.insert(name.clone());
                }
                true
            }
        };
        if !ok || !new_ok {
            return Err(DeltaError::ClassCollision(name));
        }
        Ok((name, class))
    }
}

/// The guards of namespace chain `ns_chain` as this batch rewrites them,
/// starting from the committed ones.
fn guards_of<'a>(
    rewrite: &'a mut BTreeMap<String, Guards>,
    committed: &Table,
    ns_chain: &str,
) -> &'a mut Guards {
    rewrite.entry(ns_chain.to_string()).or_insert_with(|| {
        committed
            .chains
            .get(ns_chain)
            .map(ns_chain_guards)
            .unwrap_or_default()
    })
}

/// Counts an element change of `set` for the chain it belongs to: class-map
/// elements count for namespace chains, selection-set elements for policy
/// chains (a pod's named-port elements follow its selection elements and
/// count for nothing).
fn count(changes: &mut Changes, set: &str, chain: &str, d: isize) {
    let counts = if chain.is_empty() {
        return;
    } else if set.starts_with("sel-") {
        &mut changes.chains
    } else if set.contains("-class-") {
        &mut changes.ns
    } else {
        return;
    };
    *counts.entry(chain.to_string()).or_insert(0) += d;
}

/// The `*-chains` elements of new namespace chains, by map.
fn chains_elements(
    names: &[String],
    ns_chains: &BTreeMap<String, NsChain>,
) -> BTreeMap<String, Vec<(ElemKey, ElemValue)>> {
    let mut by_map: BTreeMap<String, Vec<(ElemKey, ElemValue)>> = BTreeMap::new();
    for name in names {
        let ns = &ns_chains[name];
        by_map
            .entry(chains_map(ns.dir))
            .or_default()
            .push((class_key(ns.class), chains_element(name)));
    }
    by_map
}

/// The chain class `class` of direction `dir` dispatches to in `committed`.
fn chain_of(committed: &Table, dir: Dir, class: u32) -> Option<&str> {
    committed
        .sets
        .get(&chains_map(dir))?
        .elements
        .get(&class_key(class))
        .and_then(elem_chain_ref)
}

fn bump(counts: &mut HashMap<String, usize>, name: String, d: isize) {
    let after = counts.get(&name).copied().unwrap_or(0) as isize + d;
    if after <= 0 {
        counts.remove(&name);
    } else {
        counts.insert(name, after as usize);
    }
}

fn isolated(pp: &PodPolicy, dir: Dir) -> bool {
    match dir {
        Dir::Ingress => pp.ingress_isolated,
        Dir::Egress => pp.egress_isolated,
    }
}

fn rules(pp: &PodPolicy, dir: Dir) -> &[kube_nft_crds::ir::IrRule] {
    match dir {
        Dir::Ingress => &pp.ingress,
        Dir::Egress => &pp.egress,
    }
}
