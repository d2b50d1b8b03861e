//! Splitting the compiled address sets into [`AddressSetShard`] objects, and
//! putting them back together.
//!
//! # Layout
//!
//! **One set per chain of shards.** Every shard holds elements of exactly one
//! set and carries the label [`SET_LABEL`] with the set's [`set_key`]. An agent
//! needs only the sets its node's rules name ([`referenced_sets`]), so it
//! watches with the selector [`set_selector`] and never receives the rest.
//! Packing several small sets into one object would save objects but break that
//! selection (a label value names one set, and selectors cannot OR several
//! label keys); labelling shards with the nodes that use them instead would put
//! up to one label per node on a shard (label keys cannot even hold a 253-char
//! node name) and rewrite shards whenever a pod moves between nodes.
//!
//! **Bounded, and local under change.** A set's sorted elements are cut into
//! chunks of at most `max_elements`. Where to cut is decided by the content:
//! after every element whose hash is `0 mod max_elements / 8` (so chunks hold
//! about an eighth of the maximum), or after `max_elements` elements when no such
//! element came (chance ≈ e⁻⁸ per chunk). Cutting at fixed positions instead
//! would shift every later chunk when one pod joins a large set and rewrite
//! half of its shards; with content-defined cuts, adding or removing an element
//! changes one shard, or two when the element is itself a cut point (a forced
//! cut can shift with it, rarely). This is
//! what EndpointSlices need a stateful controller for; here it stays a pure
//! function of the set.
//!
//! A set of n elements takes about 1 + n / 125 shards with the default maximum
//! (EndpointSlices hold up to 100 endpoints by default).
//!
//! **Names and the chain.** The first shard is named [`set_key`]`(set)` (a small
//! set is usually that one shard: `kubectl get ashard peer-3f…` just works);
//! each later shard is named `KEY.HASH` after the last element of the shard
//! before it, so a name survives changes to its content. Each shard names its
//! successor in `spec.next`; the last has none. [`reassemble`] follows the chain
//! from the first shard and reports a missing link instead of enforcing half a
//! set; shards not on the chain (left over while the operator updates) are
//! ignored. A writer keeps every chain complete by applying a set's shards
//! last to first, then deleting the ones no longer produced.
//!
//! **Size.** An element is at most ~80 bytes of JSON (a full-length IPv6
//! address, `SCTP`, port 65535), so with [`DEFAULT_MAX_ELEMENTS`] a shard stays
//! under ~100 KiB plus its selector text, far from etcd's 1.5 MiB request limit
//! (the tests measure it).
//!
//! [`referenced_sets`]: crate::resources::referenced_sets

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::ir::{AddressSet, AddressSetElement};
use crate::resources::{AddressSetShard, AddressSetShardSpec};

/// Label on every shard: the [`set_key`] of its set.
pub const SET_LABEL: &str = "kubenft.io/address-set";

/// Elements per shard by default, the largest EndpointSlice size too.
pub const DEFAULT_MAX_ELEMENTS: usize = 1000;

/// Chunks average `max_elements / AVERAGE_DIVISOR` elements.
const AVERAGE_DIVISOR: u64 = 8;

/// The name of a set's first shard and the value of its [`SET_LABEL`]: the set
/// name itself when it is a DNS label (the compiler's `peer-…`/`ports-…` names
/// are), else a hash of it. Never contains a dot, so it cannot be mistaken for a
/// later shard's `KEY.HASH` name.
pub fn set_key(set: &str) -> String {
    if is_dns_label(set) {
        set.to_string()
    } else {
        format!("set-{:016x}", fnv1a(set.as_bytes()))
    }
}

/// The label selector for the shards of `sets`; `None` when there are none
/// (an empty `in ()` is not a valid selector).
pub fn set_selector<'a>(sets: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let keys: BTreeSet<String> = sets.into_iter().map(set_key).collect();
    if keys.is_empty() {
        return None;
    }
    let keys: Vec<String> = keys.into_iter().collect();
    Some(format!("{SET_LABEL} in ({})", keys.join(",")))
}

/// The shards of every set (keyed by the name rules use), each set's shards in
/// chain order; see the module doc. `max_elements` below 1 counts as 1.
pub fn shard(
    address_sets: &BTreeMap<String, AddressSet>,
    max_elements: usize,
) -> Vec<AddressSetShard> {
    address_sets
        .iter()
        .flat_map(|(name, set)| shard_set(name, set, max_elements.max(1)))
        .collect()
}

fn shard_set(name: &str, set: &AddressSet, max: usize) -> Vec<AddressSetShard> {
    let key = set_key(name);
    let chunks = split(&set.elements, max);
    let mut names = Vec::with_capacity(chunks.len());
    let mut used = BTreeSet::new();
    for (i, _) in chunks.iter().enumerate() {
        let base = match i {
            0 => key.clone(),
            _ => {
                let cut = chunks[i - 1].last().expect("cuts follow an element");
                format!("{key}.{:016x}", element_hash(cut))
            }
        };
        // Two cut elements with the same 64-bit hash must not share a name
        // (the later shard would overwrite the earlier one's elements).
        let mut candidate = base.clone();
        let mut n = 1;
        while !used.insert(candidate.clone()) {
            candidate = format!("{base}-{n}");
            n += 1;
        }
        names.push(candidate);
    }
    let labels = BTreeMap::from([(SET_LABEL.to_string(), key)]);
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            let spec = AddressSetShardSpec {
                set: name.to_string(),
                selector: set.selector.clone(),
                next: names.get(i + 1).cloned(),
                element_count: u32::try_from(chunk.len()).unwrap_or(u32::MAX),
                elements: chunk.to_vec(),
            };
            let mut shard = AddressSetShard::new(&names[i], spec);
            shard.metadata.labels = Some(labels.clone());
            shard
        })
        .collect()
}

/// Content-defined cuts (see the module doc). Always at least one chunk, so an
/// empty set still has its (empty) first shard.
fn split(elements: &[AddressSetElement], max: usize) -> Vec<&[AddressSetElement]> {
    let average = (max as u64 / AVERAGE_DIVISOR).max(1);
    let mut chunks = Vec::new();
    let mut start = 0;
    for (i, element) in elements.iter().enumerate() {
        let more = i + 1 < elements.len();
        if more && (i + 1 - start == max || element_hash(element).is_multiple_of(average)) {
            chunks.push(&elements[start..=i]);
            start = i + 1;
        }
    }
    chunks.push(&elements[start..]);
    chunks
}

/// Why a set cannot be put back together from the shards at hand (usually a
/// moment in the middle of an update: wait for the next event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardError {
    /// No shard carries the set's first name.
    MissingHead { set: String, head: String },
    /// A shard names a successor that is not there.
    MissingNext { shard: String, next: String },
    /// The chain comes back to a shard it has already visited.
    Loop { shard: String },
}

impl fmt::Display for ShardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShardError::MissingHead { set, head } => {
                write!(f, "address set {set}: first shard {head} is missing")
            }
            ShardError::MissingNext { shard, next } => {
                write!(f, "address set shard {shard}: next shard {next} is missing")
            }
            ShardError::Loop { shard } => write!(f, "address set shard {shard}: chain loops"),
        }
    }
}

impl std::error::Error for ShardError {}

/// The sets the shards make up, by set name: each set's elements gathered along
/// its chain, sorted and deduplicated, or why the chain is incomplete.
pub fn reassemble<'a>(
    shards: impl IntoIterator<Item = &'a AddressSetShard>,
) -> BTreeMap<String, Result<AddressSet, ShardError>> {
    let mut by_set: BTreeMap<&str, BTreeMap<&str, &AddressSetShardSpec>> = BTreeMap::new();
    for shard in shards {
        if let Some(name) = shard.metadata.name.as_deref() {
            let set = by_set.entry(shard.spec.set.as_str()).or_default();
            set.insert(name, &shard.spec);
        }
    }
    by_set
        .into_iter()
        .map(|(set, shards)| (set.to_string(), follow_chain(set, &shards)))
        .collect()
}

fn follow_chain(
    set: &str,
    shards: &BTreeMap<&str, &AddressSetShardSpec>,
) -> Result<AddressSet, ShardError> {
    let head = set_key(set);
    let first = *shards
        .get(head.as_str())
        .ok_or_else(|| ShardError::MissingHead {
            set: set.to_string(),
            head: head.clone(),
        })?;
    let mut elements = Vec::new();
    let mut visited = BTreeSet::new();
    let (mut name, mut spec) = (head.as_str(), first);
    loop {
        if !visited.insert(name) {
            return Err(ShardError::Loop { shard: name.into() });
        }
        elements.extend_from_slice(&spec.elements);
        let Some(next) = spec.next.as_deref() else {
            break;
        };
        spec = *shards.get(next).ok_or_else(|| ShardError::MissingNext {
            shard: name.into(),
            next: next.into(),
        })?;
        name = next;
    }
    // A chain read mid-update may mix old and new shard contents.
    elements.sort();
    elements.dedup();
    Ok(AddressSet {
        name: set.to_string(),
        selector: first.selector.clone(),
        elements,
    })
}

/// Stable across builds and machines (unlike std's hasher): cut points and
/// names are part of what the operator writes to the API server.
fn element_hash(e: &AddressSetElement) -> u64 {
    let text = match (e.protocol, e.port) {
        (Some(protocol), Some(port)) => format!("{} {protocol}/{port}", e.ip),
        (Some(protocol), None) => format!("{} {protocol}", e.ip),
        (None, Some(port)) => format!("{} /{port}", e.ip),
        (None, None) => e.ip.to_string(),
    };
    // FNV's low bits follow the input's low bits; the finaliser (MurmurHash3's
    // fmix64) spreads every input bit over the residue `% average` looks at.
    let mut h = fnv1a(text.as_bytes());
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// RFC 1123 label: what both an object name and a label value accept.
fn is_dns_label(s: &str) -> bool {
    let ok_char = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && ok_char(bytes[0])
        && ok_char(bytes[bytes.len() - 1])
        && bytes.iter().all(|&c| ok_char(c) || c == b'-')
}

#[cfg(test)]
#[path = "shard_tests.rs"]
mod tests;
