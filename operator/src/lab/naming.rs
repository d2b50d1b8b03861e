//! Names of everything a lab run creates (pure).
//!
//! A run's prefix is `kn-<6 hex>`; every namespace is `<prefix>-<role>…`, so a
//! run's leftovers are found by prefix alone. Interface names are short and fixed
//! (`eth0`, `pod7`, `node1`): they live inside lab namespaces only, where they
//! cannot collide with anything outside the run, and must stay ≤ 15 bytes.

use std::fmt::Write as _;

/// Start of every lab name; followed by six lowercase hex digits.
pub const PREFIX_START: &str = "kn-";
const PREFIX_HEX_DIGITS: usize = 6;
/// Linux's IFNAMSIZ minus the terminating NUL.
pub const MAX_IFNAME_LEN: usize = 15;
/// Namespace names stay readable in `ip netns list`; the index keeps them unique
/// when the readable part is cut.
const MAX_NETNS_NAME_LEN: usize = 64;

/// A run prefix from three random bytes: `kn-1a2b3c`.
pub fn run_prefix(random: [u8; 3]) -> String {
    let mut prefix = String::from(PREFIX_START);
    for byte in random {
        write!(prefix, "{byte:02x}").expect("writing to a String cannot fail");
    }
    prefix
}

/// The run prefix of a lab namespace name (`kn-1a2b3c-n0-worker` → `kn-1a2b3c`),
/// or `None` for names the lab never creates.
pub fn prefix_of(netns_name: &str) -> Option<&str> {
    let prefix_len = PREFIX_START.len() + PREFIX_HEX_DIGITS;
    let prefix = netns_name.get(..prefix_len)?;
    let hex = &prefix[PREFIX_START.len()..];
    let is_lab_name = prefix.starts_with(PREFIX_START)
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && netns_name[prefix_len..].starts_with('-');
    is_lab_name.then_some(prefix)
}

pub fn underlay_netns(prefix: &str) -> String {
    format!("{prefix}-underlay")
}

pub fn outside_netns(prefix: &str) -> String {
    format!("{prefix}-outside")
}

pub fn node_netns(prefix: &str, index: usize, node: &str) -> String {
    bounded(format!("{prefix}-n{index}-{}", sanitize(node)))
}

pub fn pod_netns(prefix: &str, index: usize, namespace: &str, name: &str) -> String {
    // Kubernetes namespaces hold no dots, so `ns.name` reads back unambiguously.
    bounded(format!(
        "{prefix}-p{index}-{}.{}",
        sanitize(namespace),
        sanitize(name)
    ))
}

/// The underlay's end of the veth to node `index`.
pub fn underlay_node_iface(index: usize) -> String {
    format!("node{index}")
}

/// The underlay's end of the veth to the outside host.
pub const UNDERLAY_OUTSIDE_IFACE: &str = "outside";
/// The underlay's bridge joining all nodes.
pub const UNDERLAY_BRIDGE: &str = "br0";
/// The interface of a node, pod or outside host towards its upstream.
pub const UPLINK_IFACE: &str = "eth0";

/// The node's end of the veth to pod `index` (indexes are lab-wide).
pub fn node_pod_iface(index: usize) -> String {
    format!("pod{index}")
}

/// Keeps `[A-Za-z0-9._-]`, maps the rest to `_` (a netns name is a file name).
fn sanitize(part: &str) -> String {
    part.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn bounded(mut name: String) -> String {
    if name.len() > MAX_NETNS_NAME_LEN {
        // Only ASCII survives `sanitize`, so any byte index is a char boundary.
        name.truncate(MAX_NETNS_NAME_LEN);
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_is_hex_and_parses_back() {
        let prefix = run_prefix([0x1a, 0x2b, 0x03]);
        assert_eq!(prefix, "kn-1a2b03");
        assert_eq!(prefix_of(&node_netns(&prefix, 0, "w")), Some("kn-1a2b03"));
        assert_eq!(prefix_of(&underlay_netns(&prefix)), Some("kn-1a2b03"));
    }

    #[test]
    fn foreign_names_have_no_prefix() {
        for name in [
            "kn-1a2b0",
            "kn-1a2b03",
            "kn-1A2B03-x",
            "kn-zzzzzz-x",
            "cni-1234",
            "kn-1a2b03x",
        ] {
            assert_eq!(prefix_of(name), None, "{name}");
        }
    }

    #[test]
    fn pod_names_are_bounded_sanitized_and_unique_by_index() {
        let long = "a".repeat(253);
        let a = pod_netns("kn-000000", 1, "default", &long);
        let b = pod_netns("kn-000000", 2, "default", &long);
        assert!(a.len() <= MAX_NETNS_NAME_LEN);
        assert_ne!(a, b);
        assert_eq!(
            pod_netns("kn-000000", 3, "ns", "we/b"),
            "kn-000000-p3-ns.we_b"
        );
    }

    #[test]
    fn interface_names_fit_ifnamsiz() {
        // Ten-digit indexes are far beyond any lab on one machine.
        for name in [
            underlay_node_iface(9_999_999_999),
            node_pod_iface(9_999_999_999),
            UNDERLAY_OUTSIDE_IFACE.to_string(),
            UNDERLAY_BRIDGE.to_string(),
        ] {
            assert!(name.len() <= MAX_IFNAME_LEN, "{name}");
        }
    }
}
