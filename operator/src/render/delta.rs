//! Incremental render: an IR delta ([`IrDelta`]) and the committed table → the
//! small batch that makes the committed table equal to a full
//! [`render_policy`](super::render_policy) of the new IR, without rendering or
//! diffing the whole table.
//!
//! - Address-set element changes become element adds/removes in the `as-*` /
//!   `asp-*` sets the committed table holds.
//! - A pod whose rule list changed gets its chain rendered alone
//!   ([`pod_chain`], the same code as the full render) and named by its
//!   content: when the committed table has that chain, only the pod's
//!   class-map elements change (delete + add of data elements: no verdict, so
//!   no jump-graph validation in the kernel); otherwise the chain (and any set
//!   it uses that the table lacks) is added first, with its one
//!   `*-chains` verdict element.
//! - Reference counts (class-map elements per chain, rules per set) say when a
//!   chain or set is no longer used; it is then removed, after its users.
//! - A class id the committed table gives another chain (a collision the full
//!   render resolves by renaming, see [`super::policy`]) is a
//!   [`DeltaError::ClassCollision`]: the caller falls back to a full sync.
//!
//! Order inside the batch: new sets (with elements), new chains (headers, then
//! rules), their `*-chains` elements, element changes of existing sets,
//! class-map element deletes then adds, then the `*-chains` elements of unused
//! chains, the chains (flush, delete) and unused sets.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use kube_nft_crds::ir::{AddressSet, PodPolicy};
use nft::diff::{elem_chain_ref, header_of_chain, header_of_set, rule_refs};
use nft::{Batch, ElemKey, ElemValue, Op, Table};

use super::names::ir_object_name;
use super::policy::{
    chain_dir, chains_element, chains_map, class_element, class_id, class_key, class_map,
    element_class, ip_key, ir_element_key, ir_set_elements, pod_chain, Dir, Fam, PodChain,
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
    /// Class-map elements holding the class id of each chain.
    chain_refs: HashMap<String, usize>,
    /// Rules naming each set.
    set_refs: HashMap<String, usize>,
}

/// Counts one batch changes.
#[derive(Default)]
struct Changes {
    chains: HashMap<String, isize>,
    sets: HashMap<String, isize>,
}

impl DeltaRenderer {
    /// Counts the references in `committed` (one pass over the table).
    pub fn new(committed: &Table) -> DeltaRenderer {
        let mut r = DeltaRenderer::default();
        for dir in [Dir::Ingress, Dir::Egress] {
            for fam in Fam::ALL {
                let Some(s) = committed.sets.get(&class_map(dir, fam)) else {
                    continue;
                };
                for v in s.elements.values() {
                    if let Some(c) = element_class(v).and_then(|c| chain_of(committed, dir, c)) {
                        *r.chain_refs.entry(c.to_string()).or_insert(0) += 1;
                    }
                }
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
        let mut new_chains: BTreeMap<String, PodChain> = BTreeMap::new();
        let mut map_dels: BTreeMap<String, Vec<ElemKey>> = BTreeMap::new();
        let mut map_adds: BTreeMap<String, Vec<(ElemKey, ElemValue)>> = BTreeMap::new();
        // Class ids of the chains this batch adds: (egress, id) → chain.
        let mut new_classes: BTreeMap<(bool, u32), String> = BTreeMap::new();

        // 1. Pods: their chains and dispatch elements.
        for pd in delta.pods.values() {
            let old = pd.old.as_ref().filter(|_| pd.old_node == node);
            let new = pd.new.as_ref().filter(|_| pd.new_node == node);
            for dir in [Dir::Ingress, Dir::Egress] {
                let mut before: BTreeMap<(String, ElemKey), ElemValue> = BTreeMap::new();
                if let Some(pp) = old.filter(|p| isolated(p, dir)) {
                    for ip in &pp.ips {
                        let map = class_map(dir, Fam::of(ip));
                        let set = committed
                            .sets
                            .get(&map)
                            .ok_or_else(|| DeltaError::NoDispatchMap(map.clone()))?;
                        let key = ip_key(ip);
                        if let Some(v) = set.elements.get(&key) {
                            before.insert((map, key), v.clone());
                        }
                    }
                }
                let mut after: BTreeMap<(String, ElemKey), ElemValue> = BTreeMap::new();
                if let Some(pp) = new.filter(|p| isolated(p, dir)) {
                    let rules = match dir {
                        Dir::Ingress => &pp.ingress,
                        Dir::Egress => &pp.egress,
                    };
                    if let Some(pc) = pod_chain(dir, rules, &pp.ips, address_sets) {
                        if let Some(have) = committed.chains.get(&pc.name) {
                            let want = &pc.objects.chains[&pc.name];
                            if have.rules != want.rules || have.comment != want.comment {
                                return Err(DeltaError::ChainContent(pc.name));
                            }
                        }
                        let Some(class) = pc.class else {
                            return Err(DeltaError::ClassCollision(pc.name));
                        };
                        // The id must be this chain's in the committed table (or
                        // free, for a new chain), and not another new chain's.
                        let chains = chains_map(dir);
                        let owner = committed
                            .sets
                            .get(&chains)
                            .ok_or_else(|| DeltaError::NoDispatchMap(chains.clone()))?
                            .elements
                            .get(&class_key(class))
                            .and_then(elem_chain_ref);
                        let exists = committed.chains.contains_key(&pc.name);
                        let ok = match owner {
                            Some(o) => o == pc.name,
                            None => !exists,
                        };
                        let new_owner = new_classes.entry((dir == Dir::Egress, class));
                        let new_ok = match &new_owner {
                            std::collections::btree_map::Entry::Occupied(o) => *o.get() == pc.name,
                            std::collections::btree_map::Entry::Vacant(_) => true,
                        };
                        if !ok || !new_ok {
                            return Err(DeltaError::ClassCollision(pc.name));
                        }
                        if !exists {
                            new_owner.or_insert_with(|| pc.name.clone());
                        }
                        for ip in &pp.ips {
                            let map = class_map(dir, Fam::of(ip));
                            let v = class_element(&pp.namespace, &pp.name, class);
                            after.insert((map, ip_key(ip)), v);
                        }
                        if !exists {
                            new_chains.entry(pc.name.clone()).or_insert(pc);
                        }
                    }
                }
                for (k, v) in &before {
                    if after.get(k) != Some(v) {
                        map_dels.entry(k.0.clone()).or_default().push(k.1.clone());
                        if let Some(c) = element_class(v).and_then(|c| chain_of(committed, dir, c))
                        {
                            *changes.chains.entry(c.to_string()).or_insert(0) -= 1;
                        }
                    }
                }
                for (k, v) in after {
                    if before.get(&k) != Some(&v) {
                        // `after` holds only this pod's chain, new or committed.
                        let class = element_class(&v);
                        let c = class.and_then(|c| {
                            chain_of(committed, dir, c)
                                .map(str::to_string)
                                .or_else(|| new_classes.get(&(dir == Dir::Egress, c)).cloned())
                        });
                        if let Some(c) = c {
                            *changes.chains.entry(c).or_insert(0) += 1;
                        }
                        map_adds.entry(k.0).or_default().push((k.1, v));
                    }
                }
            }
        }

        // 2. Chains that come and go, and what that does to set references.
        let mut add_chains = Vec::new();
        let mut dying_chains = Vec::new();
        for (name, d) in &changes.chains {
            let after = self.chain_refs.get(name).copied().unwrap_or(0) as isize + d;
            let exists = committed.chains.contains_key(name);
            if after <= 0 && exists {
                dying_chains.push(name.clone());
                for rule in &committed.chains[name].rules {
                    for s in rule_refs(rule).sets {
                        *changes.sets.entry(s.to_string()).or_insert(0) -= 1;
                    }
                }
            } else if after > 0 && !exists {
                let pc = &new_chains[name];
                for rule in &pc.objects.chains[name].rules {
                    for s in rule_refs(rule).sets {
                        *changes.sets.entry(s.to_string()).or_insert(0) += 1;
                    }
                }
                add_chains.push(name.clone());
            }
        }
        add_chains.sort();
        dying_chains.sort();
        let mut add_sets = BTreeSet::new();
        let mut dying_sets = BTreeSet::new();
        for (name, d) in &changes.sets {
            let after = self.set_refs.get(name).copied().unwrap_or(0) as isize + d;
            let exists = committed.sets.contains_key(name);
            if after <= 0 && exists {
                dying_sets.insert(name.clone());
            } else if after > 0 && !exists {
                add_sets.insert(name.clone());
            }
        }

        // 3. New sets with their elements.
        for name in &add_sets {
            let (set, ir) = new_chains
                .values()
                .find_map(|pc| Some((pc.objects.sets.get(name)?, pc.ir_sets.get(name))))
                .expect("a new set is used by a new chain");
            b.ops.push(Op::AddSet(header_of_set(set)));
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
        // 4. New chains.
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
        // Their `*-chains` elements: the only verdict elements a batch adds.
        let chains_elements = |names: &[String]| {
            let mut by_map: BTreeMap<String, Vec<(ElemKey, ElemValue)>> = BTreeMap::new();
            for name in names {
                let dir = chain_dir(name).expect("a policy chain is in- or eg-");
                let class = class_id(dir, name).expect("checked when the chain was chosen");
                by_map
                    .entry(chains_map(dir))
                    .or_default()
                    .push((class_key(class), chains_element(name)));
            }
            by_map
        };
        for (set, elements) in chains_elements(&add_chains) {
            b.ops.push(Op::AddElements { set, elements });
        }
        // 5. Element changes of surviving address sets.
        for (ir_name, sd) in &delta.sets {
            if sd.deleted {
                continue;
            }
            for fam in Fam::ALL {
                for (prefix, ports) in [("as", false), ("asp", true)] {
                    let nft_name = ir_object_name(prefix, ir_name, fam.suffix());
                    if dying_sets.contains(&nft_name) || add_sets.contains(&nft_name) {
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
                            |e: &&kube_nft_crds::ir::AddressSetElement| Fam::of(&e.ip) == fam;
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
        // 6. Class maps: deletes, then adds (their chains exist by now).
        for (set, keys) in map_dels {
            b.ops.push(Op::DeleteElements { set, keys });
        }
        for (set, elements) in map_adds {
            b.ops.push(Op::AddElements { set, elements });
        }
        // 7. What nothing uses any more: `*-chains` elements, chains, then the
        // sets they used.
        for (set, elements) in chains_elements(&dying_chains) {
            b.ops.push(Op::DeleteElements {
                set,
                keys: elements.into_iter().map(|(k, _)| k).collect(),
            });
        }
        for name in &dying_chains {
            if !committed.chains[name].rules.is_empty() {
                b.ops.push(Op::FlushChain(name.clone()));
            }
        }
        for name in &dying_chains {
            b.ops.push(Op::DeleteChain(name.clone()));
        }
        for name in &dying_sets {
            b.ops.push(Op::DeleteSet(name.clone()));
        }

        // The counts follow the batch.
        for (name, d) in changes.chains {
            bump(&mut self.chain_refs, name, d);
        }
        for (name, d) in changes.sets {
            bump(&mut self.set_refs, name, d);
        }
        Ok(b)
    }
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
