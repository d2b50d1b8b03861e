//! Names of the objects the renderer creates: valid `nft` identifiers, stable
//! across runs and agent restarts, so a re-render of unchanged input names every
//! object the same and the diff against the committed table is empty.
//!
//! Two kinds of names:
//!
//! - **content names** (`in-3f2a9c1e0b7d4a21`): objects shared by every user with
//!   the same content (chains, port sets, CIDR sets) are named by a hash of that
//!   content, so identical content is one object and changed content is a new
//!   object (the old one goes away when unused);
//! - **IR names** (`as-peer-0123456789abcdef-v4`): address sets keep the name the
//!   compiler gave them, which is derived from the selector, not the members.

use std::collections::HashMap;

use nft::render::{is_valid_name, sanitize_comment, MAX_COMMENT_LEN};

/// 64-bit FNV-1a. Part of the on-kernel naming contract: changing it renames
/// every shared chain and set once (harmless, but a full rewrite).
pub fn stable_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// 32-bit FNV-1a, for the class ids of policy chains (see
/// [`class_id`](super::policy::class_id)). Part of the same on-kernel contract
/// as [`stable_hash`].
pub fn stable_hash32(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Hands out content names and remembers which content owns which name, so
/// that a hash collision (different content, same hash) cannot silently merge
/// two objects: the later content gets a `-1`, `-2`… suffix instead. With 64-bit
/// hashes that never happens in practice; it is here because merging two
/// chains would be a wrong verdict, not a cosmetic problem.
#[derive(Debug, Default)]
pub struct ContentNames {
    owner: HashMap<String, String>,
}

impl ContentNames {
    /// The name of `content` under `prefix`, and whether it is new (the caller
    /// then creates the object).
    pub fn name(&mut self, prefix: &str, content: &str) -> (String, bool) {
        let base = format!("{prefix}-{:016x}", stable_hash(content));
        let mut name = base.clone();
        for i in 1.. {
            match self.owner.get(&name) {
                Some(owner) if owner == content => return (name, false),
                Some(_) => name = format!("{base}-{i}"),
                None => break,
            }
        }
        self.owner.insert(name.clone(), content.to_string());
        (name, true)
    }
}

/// The nft name of an object derived from a named IR object:
/// `<prefix>-<ir_name>-<suffix>`. IR names come from another process (CRDs in a
/// cluster), so one that would not be a valid or readable nft name is replaced
/// by its hash under `<prefix>x`, a prefix no readable name can have.
pub fn ir_object_name(prefix: &str, ir_name: &str, suffix: &str) -> String {
    const MAX_READABLE: usize = 128;
    let readable = format!("{prefix}-{ir_name}-{suffix}");
    if readable.len() <= MAX_READABLE && is_valid_name(&readable) {
        readable
    } else {
        format!("{prefix}x-{:016x}-{suffix}", stable_hash(ir_name))
    }
}

/// A comment of at most [`MAX_COMMENT_LEN`] bytes; a cut one ends in `...` so a
/// reader knows the list goes on.
pub fn comment(text: &str) -> String {
    let clean = sanitize_comment(text);
    if clean.len() == text.len() {
        return clean;
    }
    let mut cut = sanitize_comment(text);
    while cut.len() > MAX_COMMENT_LEN - 3 {
        cut.pop();
    }
    cut.push_str("...");
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_names_are_stable_and_shared() {
        let mut n = ContentNames::default();
        let (a, new_a) = n.name("in", "rule 1");
        let (b, new_b) = n.name("in", "rule 1");
        let (c, _) = n.name("in", "rule 2");
        assert!(new_a && !new_b);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(is_valid_name(&a));
        assert_eq!(a, ContentNames::default().name("in", "rule 1").0);
    }

    #[test]
    fn collisions_get_a_suffix() {
        let mut n = ContentNames::default();
        let (a, _) = n.name("in", "x");
        // Forge a collision: another content already owns the name.
        n.owner.insert(a.clone(), "other".into());
        let (b, new) = n.name("in", "x");
        assert!(new);
        assert_eq!(b, format!("{a}-1"));
    }

    #[test]
    fn ir_names() {
        assert_eq!(ir_object_name("as", "peer-00ff", "v4"), "as-peer-00ff-v4");
        let weird = ir_object_name("as", "a b\"c", "v6");
        assert!(weird.starts_with("asx-") && is_valid_name(&weird));
        assert!(ir_object_name("as", &"a".repeat(300), "v4").starts_with("asx-"));
    }

    #[test]
    fn long_comments_are_cut_visibly() {
        let c = comment(&"NetworkPolicy ns/p, ".repeat(20));
        assert!(c.len() <= MAX_COMMENT_LEN && c.ends_with("..."));
        assert_eq!(comment("short"), "short");
    }
}
