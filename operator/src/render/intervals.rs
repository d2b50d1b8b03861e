//! Interval arithmetic for interval sets. The kernel (and `nft`) reject
//! overlapping elements in an interval set, so every set the renderer fills
//! holds sorted, disjoint, non-adjacent inclusive ranges.
//!
//! Addresses of both families and ports all fit a `u128`, so one implementation
//! serves CIDRs (`ipBlock` minus `except`) and port ranges.

use ipnet::IpNet;

/// An inclusive range `lo..=hi`.
pub type Range = (u128, u128);

/// The addresses a prefix covers, as integers (IPv4 in the low 32 bits).
pub fn prefix_range(net: &IpNet) -> Range {
    match net.trunc() {
        IpNet::V4(n) => (
            u128::from(u32::from(n.network())),
            u128::from(u32::from(n.broadcast())),
        ),
        IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast())),
    }
}

/// Sorted, disjoint, non-adjacent ranges covering exactly the union of the input.
/// Ranges with `lo > hi` are empty and dropped.
pub fn union(mut ranges: Vec<Range>) -> Vec<Range> {
    ranges.retain(|(lo, hi)| lo <= hi);
    ranges.sort_unstable();
    let mut out: Vec<Range> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match out.last_mut() {
            // Overlapping or adjacent (`prev.hi + 1 == lo`): extend.
            Some(prev) if prev.1 == u128::MAX || lo <= prev.1 + 1 => prev.1 = prev.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

/// `base` minus every hole: the sorted, disjoint ranges of `base` not in any hole.
pub fn subtract(base: Range, holes: Vec<Range>) -> Vec<Range> {
    let (lo, hi) = base;
    if lo > hi {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut next = lo; // first address not yet decided
    for (h_lo, h_hi) in union(holes) {
        if h_hi < next {
            continue;
        }
        if h_lo > hi {
            break;
        }
        if h_lo > next {
            out.push((next, h_lo - 1));
        }
        match h_hi.checked_add(1) {
            Some(n) if h_hi < hi => next = n,
            _ => return out, // the hole reaches the end of `base`
        }
    }
    out.push((next, hi));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn prefixes() {
        assert_eq!(prefix_range(&net("10.0.0.0/8")), (0x0a00_0000, 0x0aff_ffff));
        // Host bits are ignored, like `IpNet::contains`.
        assert_eq!(
            prefix_range(&net("10.1.2.3/24")),
            (0x0a01_0200, 0x0a01_02ff)
        );
        assert_eq!(prefix_range(&net("::/0")), (0, u128::MAX));
    }

    #[test]
    fn cidr_minus_excepts() {
        let base = prefix_range(&net("10.0.0.0/8"));
        let holes = vec![
            prefix_range(&net("10.1.0.0/16")),
            prefix_range(&net("10.1.2.0/24")), // inside the previous one
            prefix_range(&net("10.255.0.0/16")), // at the end
        ];
        assert_eq!(
            subtract(base, holes),
            vec![(0x0a00_0000, 0x0a00_ffff), (0x0a02_0000, 0x0afe_ffff)]
        );
        assert_eq!(subtract(base, vec![base]), vec![]);
        assert_eq!(subtract((0, u128::MAX), vec![(0, 0)]), vec![(1, u128::MAX)]);
        assert_eq!(
            subtract((0, u128::MAX), vec![(u128::MAX, u128::MAX)]),
            vec![(0, u128::MAX - 1)]
        );
    }

    #[test]
    fn unions_merge_overlaps_and_neighbours() {
        assert_eq!(
            union(vec![(80, 80), (8000, 8080), (79, 81), (8081, 8090), (5, 1)]),
            vec![(79, 81), (8000, 8090)]
        );
        assert_eq!(union(vec![(0, u128::MAX), (5, 6)]), vec![(0, u128::MAX)]);
    }

    fn covered(ranges: &[Range], x: u128) -> bool {
        ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&x))
    }

    fn well_formed(ranges: &[Range]) -> bool {
        ranges.iter().all(|(lo, hi)| lo <= hi) && ranges.windows(2).all(|w| w[0].1 + 1 < w[1].0)
    }

    proptest! {
        #[test]
        fn subtract_matches_pointwise(
            base in (0u128..64, 0u128..64),
            holes in proptest::collection::vec((0u128..64, 0u128..64), 0..6),
        ) {
            let out = subtract(base, holes.clone());
            prop_assert!(well_formed(&out));
            for x in 0..70u128 {
                let want = (base.0..=base.1).contains(&x) && !covered(&holes, x);
                prop_assert_eq!(covered(&out, x), want, "x = {}", x);
            }
        }

        #[test]
        fn union_matches_pointwise(
            ranges in proptest::collection::vec((0u128..64, 0u128..64), 0..8),
        ) {
            let out = union(ranges.clone());
            prop_assert!(well_formed(&out));
            for x in 0..70u128 {
                prop_assert_eq!(covered(&out, x), covered(&ranges, x));
            }
        }
    }
}
