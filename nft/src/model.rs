//! The nftables object model: what a table holds, as plain comparable data.
//!
//! The model sits at the level of `nft` statements (`ip daddr @pods`, `dnat ip to
//! numgen random mod 2 map @eps`), not of kernel VM registers: the same value renders
//! to `nft -f` text, encodes to netlink and is decoded back from a kernel dump, so a
//! table read back from the kernel compares equal (`==`) to the table that was loaded.
//!
//! Everything is ordered (`BTreeMap`, sorted element keys) so rendering and diffing
//! are deterministic.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// Address family of a table (`nft` calls it the table's family).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Family {
    #[default]
    Inet,
    Ip,
    Ip6,
}

/// One table and everything in it. kube-nft owns whole tables and nothing outside them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Table {
    pub family: Family,
    pub name: String,
    pub comment: Option<String>,
    /// Sets, maps and verdict maps, by name.
    pub sets: BTreeMap<String, Set>,
    /// Base and regular chains, by name.
    pub chains: BTreeMap<String, Chain>,
}

/// A chain. A base chain is attached to a netfilter hook; a regular chain is reached
/// only by `jump`/`goto` or a verdict map.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Chain {
    pub name: String,
    pub base: Option<BaseChain>,
    pub comment: Option<String>,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseChain {
    pub kind: ChainType,
    pub hook: Hook,
    /// Hook priority; lower runs first (`filter` = 0, `dstnat` = -100, `srcnat` = 100).
    pub priority: i32,
    pub policy: ChainPolicy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainType {
    Filter,
    Nat,
    Route,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainPolicy {
    Accept,
    Drop,
}

/// One rule: statements evaluated left to right, and an optional comment naming the
/// object that made it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rule {
    pub exprs: Vec<Expr>,
    pub comment: Option<String>,
}

/// A named set, map (`key : value`) or verdict map (`key : verdict`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Set {
    pub name: String,
    /// Key type; more than one entry is a concatenation (`ipv4_addr . inet_service`).
    pub key: Vec<DataType>,
    /// `None` for a plain set.
    pub data: Option<SetData>,
    pub flags: SetFlags,
    /// Default timeout of elements (sets with `flags.timeout`).
    pub timeout: Option<Duration>,
    pub comment: Option<String>,
    /// Elements by key. Ignored by diff for `flags.dynamic` sets: the kernel fills those.
    pub elements: BTreeMap<ElemKey, ElemValue>,
}

/// What a map maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetData {
    /// A verdict map (`vmap`).
    Verdict,
    /// A data map; more than one entry is a concatenation (`ipv4_addr . inet_service`).
    Values(Vec<DataType>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SetFlags {
    /// Keys may be ranges and prefixes.
    pub interval: bool,
    /// Elements may carry a timeout.
    pub timeout: bool,
    /// Rules may add elements from the packet path (`update @set { … }`).
    pub dynamic: bool,
}

/// Types of set keys, map data and concatenation fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DataType {
    Ipv4Addr,
    Ipv6Addr,
    /// Layer 4 protocol number (`inet_proto`).
    InetProto,
    /// Transport port (`inet_service`).
    InetService,
    /// 32-bit mark; also the natural key type of `numgen` output.
    Mark,
    /// Interface name (`ifname`).
    IfName,
}

/// A set element's key: one part per concatenation field.
pub type ElemKey = Vec<KeyPart>;

/// One field of an element key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyPart {
    Value(Value),
    /// Inclusive range; a CIDR prefix is a range (see [`KeyPart::prefix_v4`]).
    /// Only in interval sets. A range whose ends are equal is normalised to `Value`.
    Range(Value, Value),
}

/// What an element maps to, its per-element timeout and comment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ElemValue {
    /// Verdict or data for maps; `None` for plain sets.
    pub data: Option<ElemData>,
    pub timeout: Option<Duration>,
    pub comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElemData {
    Verdict(Verdict),
    /// One value per data concatenation field.
    Values(Vec<Value>),
}

/// A literal value of one [`DataType`] (or of a field compared against a literal).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Value {
    Ipv4(Ipv4Addr),
    Ipv6(Ipv6Addr),
    /// IP protocol number: 6 tcp, 17 udp, 132 sctp, 1 icmp, 58 icmpv6.
    Proto(u8),
    Port(u16),
    Mark(u32),
    IfName(String),
    /// `meta nfproto`: 2 ipv4, 10 ipv6.
    NfProto(u8),
    /// `ct state` bits, see [`ct_state`].
    CtState(u32),
    /// `ct status` bits, see [`ct_status`].
    CtStatus(u32),
    /// `fib … type` address type, see [`addr_type`].
    AddrType(u32),
}

/// `ct state` bit values as the kernel encodes them.
pub mod ct_state {
    pub const INVALID: u32 = 1;
    pub const ESTABLISHED: u32 = 2;
    pub const RELATED: u32 = 4;
    pub const NEW: u32 = 8;
    pub const UNTRACKED: u32 = 64;
}

/// `ct status` bit values as the kernel encodes them.
pub mod ct_status {
    pub const SNAT: u32 = 1 << 4;
    pub const DNAT: u32 = 1 << 5;
}

/// `fib` address types (`RTN_*`).
pub mod addr_type {
    pub const UNICAST: u32 = 1;
    pub const LOCAL: u32 = 2;
    pub const BROADCAST: u32 = 3;
    pub const MULTICAST: u32 = 5;
}

/// IP protocol numbers.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
    pub const SCTP: u8 = 132;
}

/// Packet and connection fields that a rule reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Field {
    IpSaddr,
    IpDaddr,
    Ip6Saddr,
    Ip6Daddr,
    /// `meta l4proto`
    L4Proto,
    /// `th sport`: the transport header's source port, for TCP, UDP and SCTP alike.
    ThSport,
    /// `th dport`
    ThDport,
    /// `meta nfproto`
    NfProto,
    /// `meta iifname`
    IifName,
    /// `meta oifname`
    OifName,
    /// `meta mark`
    Mark,
    /// `ct state`
    CtState,
    /// `ct status`
    CtStatus,
    /// `ct mark`
    CtMark,
    /// `fib daddr type`
    FibDaddrType,
    /// `ct original ip daddr`: the IPv4 destination of the connection's original
    /// tuple, i.e. before DNAT (a Service VIP after the packet was DNATed).
    CtOriginalIpDaddr,
    /// `ct original ip6 daddr`
    CtOriginalIp6Daddr,
    /// `ct original proto-dst`: the transport destination port of the original
    /// tuple (before DNAT). `nft` gives it a type (`inet_service`) only after a
    /// `meta l4proto tcp|udp|sctp` match in the same rule, so concatenations
    /// that use it need one ([`crate::render::validate`] checks).
    CtOriginalProtoDst,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOp {
    Eq,
    Neq,
}

/// The right-hand side of a match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rhs {
    /// Equality with a literal; one value per concatenated field.
    Value(Vec<Value>),
    /// Inclusive range of a single field (`th dport 8000-8080`).
    Range(Value, Value),
    /// Lookup in a named set (`ip saddr @peers`, `!=` for "not in").
    Set(String),
    /// `field & bits != 0` with [`MatchOp::Eq`], `== 0` with [`MatchOp::Neq`]:
    /// how `ct state established,related` and `meta mark & 0x4000 != 0` work.
    Bits(u32),
}

/// Where NAT and lookup keys come from when they are not a packet field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapKey {
    /// Packet fields (concatenated when more than one).
    Fields(Vec<Field>),
    /// `numgen random mod N`: a uniformly random integer in `0..N`.
    NumgenRandom { modulus: u32 },
    /// Packet fields concatenated with `numgen random mod N` as the last part
    /// (`ip daddr . meta l4proto . th dport . numgen random mod 50`). The map's key
    /// type ends in [`DataType::Mark`] (the 32-bit numgen value). One map keyed this
    /// way serves every Service with N endpoints: a miss (another N, or no Service)
    /// makes the rule not apply, so the next rule is evaluated.
    FieldsAndNumgen { fields: Vec<Field>, modulus: u32 },
}

/// Address family of a NAT statement (`dnat ip to …`, `dnat ip6 to …`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatFamily {
    Ip,
    Ip6,
}

/// Where NAT sends a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatTarget {
    /// A fixed address and optional port.
    Addr { addr: Value, port: Option<u16> },
    /// Address (and port, when the map's data is `addr . inet_service`) looked up in
    /// a named map.
    Map { key: MapKey, map: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectKind {
    /// `reject with tcp reset`
    TcpReset,
    /// `reject with icmpx port-unreachable`
    IcmpxPortUnreachable,
    /// `reject with icmpx admin-prohibited`
    IcmpxAdminProhibited,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    Accept,
    Drop,
    Continue,
    Return,
    Jump(String),
    Goto(String),
}

/// How a rule changes a dynamic set from the packet path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetUpdateOp {
    /// `add @set { … }`: insert if absent.
    Add,
    /// `update @set { … }`: insert or refresh the timeout.
    Update,
}

/// One statement of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// Compare fields with a literal, range, set or bit mask. `left` has more than one
    /// field only for a concatenation against a set or a concatenated literal.
    Match {
        left: Vec<Field>,
        op: MatchOp,
        right: Rhs,
    },
    /// Look the key up in a verdict map and apply the verdict found
    /// (`ip daddr vmap @pods`, `numgen random mod 3 vmap @svc-eps`).
    Vmap {
        key: MapKey,
        map: String,
    },
    Counter,
    Log {
        prefix: Option<String>,
        group: Option<u16>,
    },
    /// `meta mark set meta mark | bits`: set bits, keep the others.
    SetMarkBits(u32),
    /// `ct mark set ip saddr map @m`: look `key` up in the data map `map` (data
    /// type `mark`) and store the value in `target`, which is [`Field::CtMark`]
    /// or [`Field::Mark`]. A lookup miss ends the rule, like a failed match: the
    /// mark keeps its value and later statements of the rule do not run.
    SetFromMap {
        target: Field,
        key: MapKey,
        map: String,
    },
    Dnat {
        family: NatFamily,
        to: NatTarget,
    },
    Snat {
        family: NatFamily,
        to: NatTarget,
    },
    Masquerade {
        fully_random: bool,
    },
    Reject(RejectKind),
    /// Add or refresh an element of a dynamic set from packet fields.
    SetUpdate {
        op: SetUpdateOp,
        set: String,
        key: Vec<Field>,
        timeout: Option<Duration>,
    },
    /// Add or refresh an element of a dynamic *map* from packet and conntrack
    /// fields: `update @map { ip saddr . ct original ip daddr timeout 3h : ip daddr
    /// . th dport }`. `data` must match the map's data types.
    MapUpdate {
        op: SetUpdateOp,
        map: String,
        key: Vec<Field>,
        data: Vec<Field>,
        timeout: Option<Duration>,
    },
    Verdict(Verdict),
}

impl KeyPart {
    /// The interval an IPv4 prefix covers, e.g. `10.0.0.0/8` → `10.0.0.0-10.255.255.255`.
    pub fn prefix_v4(addr: Ipv4Addr, len: u8) -> KeyPart {
        let len = u32::from(len.min(32));
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        let lo = u32::from(addr) & mask;
        let hi = lo | !mask;
        KeyPart::range(
            Value::Ipv4(Ipv4Addr::from(lo)),
            Value::Ipv4(Ipv4Addr::from(hi)),
        )
    }

    /// The interval an IPv6 prefix covers.
    pub fn prefix_v6(addr: Ipv6Addr, len: u8) -> KeyPart {
        let len = u32::from(len.min(128));
        let mask = if len == 0 {
            0
        } else {
            u128::MAX << (128 - len)
        };
        let lo = u128::from(addr) & mask;
        let hi = lo | !mask;
        KeyPart::range(
            Value::Ipv6(Ipv6Addr::from(lo)),
            Value::Ipv6(Ipv6Addr::from(hi)),
        )
    }

    /// An inclusive range, normalised to a single value when both ends are equal.
    pub fn range(lo: Value, hi: Value) -> KeyPart {
        if lo == hi {
            KeyPart::Value(lo)
        } else {
            KeyPart::Range(lo, hi)
        }
    }
}

impl Family {
    /// The `nft` keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Table {
    pub fn new(family: Family, name: impl Into<String>) -> Self {
        Table {
            family,
            name: name.into(),
            ..Default::default()
        }
    }

    /// Insert or replace a chain, keyed by its name.
    pub fn add_chain(&mut self, chain: Chain) {
        self.chains.insert(chain.name.clone(), chain);
    }

    /// Insert or replace a set, keyed by its name.
    pub fn add_set(&mut self, set: Set) {
        self.sets.insert(set.name.clone(), set);
    }
}

impl Rule {
    pub fn new(exprs: Vec<Expr>) -> Self {
        Rule {
            exprs,
            comment: None,
        }
    }

    pub fn with_comment(mut self, comment: impl Into<String>) -> Self {
        self.comment = Some(comment.into());
        self
    }
}
