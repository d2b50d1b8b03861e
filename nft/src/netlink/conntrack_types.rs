//! Conntrack entries and filters as plain data: what [`super::conntrack`] lists
//! and deletes. Pure (no kernel), so matching is unit-tested here.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::model::{ct_status, proto};

/// Address family of a conntrack table (`nfgen_family` of the dump).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    /// The family of an address.
    pub fn of(addr: IpAddr) -> IpFamily {
        match addr {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }

    /// `AF_INET` / `AF_INET6`, as nfgenmsg carries it.
    pub(super) fn af(self) -> u8 {
        match self {
            IpFamily::V4 => libc::AF_INET as u8,
            IpFamily::V6 => libc::AF_INET6 as u8,
        }
    }
}

/// Transport protocols with ports: the only ones a Service forwards, and the
/// only ones whose tuples this module parses and deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    /// The IP protocol number (`CTA_PROTO_NUM`).
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => proto::TCP,
            Proto::Udp => proto::UDP,
            Proto::Sctp => proto::SCTP,
        }
    }

    /// `None` for protocols without ports (ICMP, GRE, …).
    pub fn from_number(n: u8) -> Option<Proto> {
        match n {
            proto::TCP => Some(Proto::Tcp),
            proto::UDP => Some(Proto::Udp),
            proto::SCTP => Some(Proto::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        })
    }
}

/// One direction of a connection: protocol, source and destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub proto: Proto,
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

impl fmt::Display for Tuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} -> {}", self.proto, self.src, self.dst)
    }
}

/// A conntrack entry as the kernel dumps it (the parts Service cleanup and
/// `explain` need).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The tuple of the first packet, before NAT: client → Service VIP:port.
    pub orig: Tuple,
    /// The tuple replies are expected on, after NAT: endpoint → client.
    pub reply: Tuple,
    /// Conntrack zone (0 unless a `ct zone set` rule put it elsewhere).
    pub zone: u16,
    /// `CTA_ID`: sent back on delete so a newer entry that reuses the tuple
    /// after a dump is not deleted by mistake.
    pub id: Option<u32>,
    /// `IPS_*` status bits (see [`crate::model::ct_status`]).
    pub status: u32,
    /// Seconds until the entry expires.
    pub timeout_secs: Option<u32>,
    pub mark: u32,
}

impl Entry {
    /// The address family of the entry's tuples.
    pub fn family(&self) -> IpFamily {
        IpFamily::of(self.orig.src.ip())
    }

    /// Whether the destination was rewritten: the connection was DNATed to
    /// `reply.src`.
    pub fn is_dnat(&self) -> bool {
        self.status & ct_status::DNAT != 0
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (reply {} -> {})",
            self.orig, self.reply.src, self.reply.dst
        )?;
        if self.is_dnat() {
            write!(f, " dnat")?;
        }
        if self.zone != 0 {
            write!(f, " zone {}", self.zone)?;
        }
        Ok(())
    }
}

/// Which entries to list or delete. Every constraint given must hold (AND);
/// none given means every entry of that protocol and family.
///
/// ```
/// use nft::conntrack::{Filter, IpFamily, Proto};
/// // UDP flows to a Service VIP:port that were DNATed to an endpoint that went away:
/// let f = Filter::new(Proto::Udp, IpFamily::V4)
///     .orig_dst("10.96.0.10:53".parse().unwrap())
///     .dnat_to("10.244.1.7:5353".parse().unwrap());
/// // The same endpoint behind NodePort 30053, whatever node address the client used:
/// let n = Filter::new(Proto::Udp, IpFamily::V4)
///     .orig_dst_port(30053)
///     .dnat_to("10.244.1.7:5353".parse().unwrap());
/// # let _ = (f, n);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub proto: Proto,
    pub family: IpFamily,
    /// Original destination address (the Service VIP, or a node address).
    pub orig_dst_addr: Option<IpAddr>,
    /// Original destination port (the Service port, or a NodePort).
    pub orig_dst_port: Option<u16>,
    /// DNATed to this address: the entry has the DNAT status bit and its
    /// reply source is this address (an endpoint pod IP). Entries of direct,
    /// un-NATed flows to the same pod never match.
    pub dnat_to_addr: Option<IpAddr>,
    /// DNATed to this port (the endpoint's targetPort).
    pub dnat_to_port: Option<u16>,
}

impl Filter {
    pub fn new(proto: Proto, family: IpFamily) -> Filter {
        Filter {
            proto,
            family,
            orig_dst_addr: None,
            orig_dst_port: None,
            dnat_to_addr: None,
            dnat_to_port: None,
        }
    }

    /// Original destination address and port (Service VIP:port).
    pub fn orig_dst(mut self, dst: SocketAddr) -> Filter {
        self.orig_dst_addr = Some(dst.ip());
        self.orig_dst_port = Some(dst.port());
        self
    }

    /// Original destination port only (a NodePort, on any node address).
    pub fn orig_dst_port(mut self, port: u16) -> Filter {
        self.orig_dst_port = Some(port);
        self
    }

    /// DNATed to this endpoint address and port.
    pub fn dnat_to(mut self, endpoint: SocketAddr) -> Filter {
        self.dnat_to_addr = Some(endpoint.ip());
        self.dnat_to_port = Some(endpoint.port());
        self
    }

    /// DNATed to this endpoint address, any port.
    pub fn dnat_to_addr(mut self, addr: IpAddr) -> Filter {
        self.dnat_to_addr = Some(addr);
        self
    }

    /// An address of the other family can never match: that is a caller bug,
    /// reported instead of silently deleting nothing.
    pub(super) fn check(&self) -> Result<(), String> {
        for a in [self.orig_dst_addr, self.dnat_to_addr]
            .into_iter()
            .flatten()
        {
            if IpFamily::of(a) != self.family {
                return Err(format!(
                    "conntrack filter for {:?} names address {a} of the other family",
                    self.family
                ));
            }
        }
        Ok(())
    }

    pub fn matches(&self, e: &Entry) -> bool {
        let dnat_wanted = self.dnat_to_addr.is_some() || self.dnat_to_port.is_some();
        e.family() == self.family
            && e.orig.proto == self.proto
            && self.orig_dst_addr.is_none_or(|a| e.orig.dst.ip() == a)
            && self.orig_dst_port.is_none_or(|p| e.orig.dst.port() == p)
            && (!dnat_wanted || e.is_dnat())
            && self.dnat_to_addr.is_none_or(|a| e.reply.src.ip() == a)
            && self.dnat_to_port.is_none_or(|p| e.reply.src.port() == p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn entry(orig: (&str, &str), reply: (&str, &str), status: u32) -> Entry {
        let t = |(s, d): (&str, &str)| Tuple {
            proto: Proto::Udp,
            src: sa(s),
            dst: sa(d),
        };
        Entry {
            orig: t(orig),
            reply: t(reply),
            zone: 0,
            id: Some(1),
            status,
            timeout_secs: Some(30),
            mark: 0,
        }
    }

    #[test]
    fn endpoint_filter_needs_dnat_and_matching_reply_source() {
        let vip = ("10.0.0.1:40000", "10.96.0.10:53");
        let nated = entry(vip, ("10.244.0.5:5353", "10.0.0.1:40000"), ct_status::DNAT);
        let direct = entry(
            ("10.0.0.1:40001", "10.244.0.5:5353"),
            ("10.244.0.5:5353", "10.0.0.1:40001"),
            0,
        );
        let other = entry(vip, ("10.244.0.6:5353", "10.0.0.1:40000"), ct_status::DNAT);
        let f = Filter::new(Proto::Udp, IpFamily::V4).dnat_to(sa("10.244.0.5:5353"));
        assert!(f.matches(&nated));
        assert!(!f.matches(&direct), "un-NATed flow to the pod");
        assert!(!f.matches(&other));
        let g = f.clone().orig_dst(sa("10.96.0.11:53"));
        assert!(!g.matches(&nated), "other VIP");
        let n = Filter::new(Proto::Udp, IpFamily::V4)
            .orig_dst_port(53)
            .dnat_to_addr("10.244.0.5".parse().unwrap());
        assert!(n.matches(&nated));
        assert!(!Filter::new(Proto::Tcp, IpFamily::V4).matches(&nated));
        assert!(!Filter::new(Proto::Udp, IpFamily::V6).matches(&nated));
        assert!(Filter::new(Proto::Udp, IpFamily::V4).matches(&direct));
    }

    #[test]
    fn mixed_family_filter_is_rejected() {
        let f = Filter::new(Proto::Udp, IpFamily::V4).dnat_to(sa("[fd00::5]:53"));
        assert!(f.check().is_err());
        assert!(Filter::new(Proto::Udp, IpFamily::V6)
            .dnat_to(sa("[fd00::5]:53"))
            .check()
            .is_ok());
    }
}
