//! ctnetlink wire format: the dump request, the delete request, and parsing of
//! dumped entries. Plain byte handling, no `unsafe`, no socket.
//!
//! A message is `nlmsghdr` (16 bytes) + `nfgenmsg` (4 bytes) + attributes; an
//! attribute is `u16 len, u16 type`, its payload, then padding to 4 bytes.
//! Multi-byte payloads of ctnetlink attributes are big-endian.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::conntrack_types::{Entry, IpFamily, Proto, Tuple};

// linux/netfilter/nfnetlink.h: subsystem id (high byte of nlmsg_type) and
// nfgenmsg version.
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const NFNETLINK_V0: u8 = 0;

// linux/netfilter/nfnetlink_conntrack.h, enum cntl_msg_types. Dump replies come
// as IPCTNL_MSG_CT_NEW.
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;

// linux/netfilter/nfnetlink_conntrack.h, enum ctattr_type.
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_TIMEOUT: u16 = 7;
const CTA_MARK: u16 = 8;
const CTA_ID: u16 = 12;
const CTA_ZONE: u16 = 18;
// enum ctattr_tuple.
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
// enum ctattr_ip.
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
// enum ctattr_l4proto.
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

// linux/netlink.h.
pub(super) const NLM_F_REQUEST: u16 = 0x1;
pub(super) const NLM_F_ACK: u16 = 0x4;
pub(super) const NLM_F_DUMP: u16 = 0x300;
pub(super) const NLMSG_ERROR: u16 = 2;
pub(super) const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 1 << 15;
const NLA_TYPE_MASK: u16 = 0x3fff;

const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;

/// The nlmsg_type of ctnetlink message `msg`.
const fn ct_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_CTNETLINK << 8) | msg
}

/// The nlmsg_type of a dumped entry.
pub(super) const CT_NEW: u16 = ct_type(IPCTNL_MSG_CT_NEW);

/// Appends one netlink message; nests are closed by patching their length.
struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    fn new(ty: u16, flags: u16, seq: u32, family: u8) -> Msg {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, set in finish
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // portid: the kernel fills it
                                                    // nfgenmsg: family, version, res_id (big-endian, 0).
        buf.extend_from_slice(&[family, NFNETLINK_V0, 0, 0]);
        Msg { buf }
    }

    fn attr(&mut self, ty: u16, data: &[u8]) {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn nest(&mut self, ty: u16, body: impl FnOnce(&mut Msg)) {
        let at = self.buf.len();
        self.attr(ty | NLA_F_NESTED, &[]);
        body(self);
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }

    fn tuple(&mut self, ty: u16, t: &Tuple) {
        self.nest(ty, |m| {
            m.nest(CTA_TUPLE_IP, |m| match (t.src.ip(), t.dst.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    m.attr(CTA_IP_V4_SRC, &s.octets());
                    m.attr(CTA_IP_V4_DST, &d.octets());
                }
                (s, d) => {
                    m.attr(CTA_IP_V6_SRC, &v6(s).octets());
                    m.attr(CTA_IP_V6_DST, &v6(d).octets());
                }
            });
            m.nest(CTA_TUPLE_PROTO, |m| {
                m.attr(CTA_PROTO_NUM, &[t.proto.number()]);
                m.attr(CTA_PROTO_SRC_PORT, &t.src.port().to_be_bytes());
                m.attr(CTA_PROTO_DST_PORT, &t.dst.port().to_be_bytes());
            });
        });
    }
}

fn v6(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V6(a) => a,
        IpAddr::V4(a) => a.to_ipv6_mapped(),
    }
}

/// Dump every entry of `family` (the kernel filters on nfgen_family).
pub(super) fn dump_request(family: IpFamily, seq: u32) -> Vec<u8> {
    Msg::new(
        ct_type(IPCTNL_MSG_CT_GET),
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        family.af(),
    )
    .finish()
}

/// Delete exactly `e`: its original tuple, zone and id.
///
/// The tuple is always present: a CT_DELETE without a tuple flushes the whole
/// table of the family.
pub(super) fn delete_request(e: &Entry, seq: u32) -> Vec<u8> {
    let mut m = Msg::new(
        ct_type(IPCTNL_MSG_CT_DELETE),
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        e.family().af(),
    );
    m.tuple(CTA_TUPLE_ORIG, &e.orig);
    if e.zone != 0 {
        m.attr(CTA_ZONE, &e.zone.to_be_bytes());
    }
    if let Some(id) = e.id {
        m.attr(CTA_ID, &id.to_be_bytes());
    }
    m.finish()
}

/// Attributes of `b` as (type without flag bits, payload); stops at a
/// malformed one.
fn attrs(b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut off = 0usize;
    std::iter::from_fn(move || {
        let h = b.get(off..off + 4)?;
        let len = u16::from_ne_bytes([h[0], h[1]]) as usize;
        let ty = u16::from_ne_bytes([h[2], h[3]]) & NLA_TYPE_MASK;
        let payload = b.get(off + 4..off + len.max(4))?;
        off += len.max(4).div_ceil(4) * 4;
        Some((ty, payload))
    })
}

fn find(b: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(b).find(|(t, _)| *t == ty).map(|(_, p)| p)
}

fn be16(b: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(b.try_into().ok()?))
}

fn be32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.try_into().ok()?))
}

/// Parse a dumped entry (the whole message, header included). `Ok(None)` for
/// entries of protocols without ports; `Err` for a message that lacks what
/// every entry has.
pub(super) fn parse_entry(msg: &[u8]) -> Result<Option<Entry>, String> {
    let body = msg
        .get(NLMSG_HDRLEN + NFGENMSG_LEN..)
        .ok_or("conntrack message too short")?;
    let tuple = |ty, what| -> Result<Option<Tuple>, String> {
        let nest = find(body, ty).ok_or_else(|| format!("conntrack entry without {what}"))?;
        parse_tuple(nest).map_err(|e| format!("{what}: {e}"))
    };
    let Some(orig) = tuple(CTA_TUPLE_ORIG, "original tuple")? else {
        return Ok(None);
    };
    let reply = tuple(CTA_TUPLE_REPLY, "reply tuple")?
        .ok_or("reply tuple of another protocol than the original")?;
    let u32_attr = |ty| find(body, ty).and_then(be32);
    Ok(Some(Entry {
        orig,
        reply,
        zone: find(body, CTA_ZONE).and_then(be16).unwrap_or(0),
        id: u32_attr(CTA_ID),
        status: u32_attr(CTA_STATUS).unwrap_or(0),
        timeout_secs: u32_attr(CTA_TIMEOUT),
        mark: u32_attr(CTA_MARK).unwrap_or(0),
    }))
}

fn parse_tuple(nest: &[u8]) -> Result<Option<Tuple>, String> {
    let p = find(nest, CTA_TUPLE_PROTO).ok_or("no protocol")?;
    let num = find(p, CTA_PROTO_NUM)
        .and_then(|b| b.first().copied())
        .ok_or("no protocol number")?;
    let Some(proto) = Proto::from_number(num) else {
        return Ok(None);
    };
    let port = |ty| find(p, ty).and_then(be16).ok_or("no port");
    let ip = find(nest, CTA_TUPLE_IP).ok_or("no addresses")?;
    let addr = |v4, v6| -> Result<IpAddr, &str> {
        if let Some(b) = find(ip, v4) {
            let o: [u8; 4] = b.try_into().map_err(|_| "bad IPv4 address")?;
            return Ok(IpAddr::V4(Ipv4Addr::from(o)));
        }
        let b = find(ip, v6).ok_or("no address")?;
        let o: [u8; 16] = b.try_into().map_err(|_| "bad IPv6 address")?;
        Ok(IpAddr::V6(Ipv6Addr::from(o)))
    };
    Ok(Some(Tuple {
        proto,
        src: SocketAddr::new(
            addr(CTA_IP_V4_SRC, CTA_IP_V6_SRC)?,
            port(CTA_PROTO_SRC_PORT)?,
        ),
        dst: SocketAddr::new(
            addr(CTA_IP_V4_DST, CTA_IP_V6_DST)?,
            port(CTA_PROTO_DST_PORT)?,
        ),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ct_status;

    fn entry(orig: (&str, &str), reply: (&str, &str)) -> Entry {
        let t = |(s, d): (&str, &str)| Tuple {
            proto: Proto::Udp,
            src: s.parse().unwrap(),
            dst: d.parse().unwrap(),
        };
        Entry {
            orig: t(orig),
            reply: t(reply),
            zone: 7,
            id: Some(0xdead_beef),
            status: ct_status::DNAT | 0x8,
            timeout_secs: Some(29),
            mark: 0x4000,
        }
    }

    /// What the kernel sends for `e`, built with the same writer.
    fn dumped(e: &Entry) -> Vec<u8> {
        let mut m = Msg::new(CT_NEW, 0x2, 9, e.family().af());
        m.tuple(CTA_TUPLE_ORIG, &e.orig);
        m.tuple(CTA_TUPLE_REPLY, &e.reply);
        m.attr(CTA_STATUS, &e.status.to_be_bytes());
        m.attr(CTA_TIMEOUT, &e.timeout_secs.unwrap().to_be_bytes());
        m.attr(CTA_MARK, &e.mark.to_be_bytes());
        m.attr(CTA_ID, &e.id.unwrap().to_be_bytes());
        m.attr(CTA_ZONE, &e.zone.to_be_bytes());
        m.finish()
    }

    #[test]
    fn dumped_entries_parse_back_for_both_families() {
        for e in [
            entry(
                ("10.0.0.1:40000", "10.96.0.10:53"),
                ("10.244.0.5:5353", "10.0.0.1:40000"),
            ),
            entry(
                ("[fd00::1]:40000", "[fd96::10]:53"),
                ("[fd44::5]:5353", "[fd00::1]:40000"),
            ),
        ] {
            let msg = dumped(&e);
            assert_eq!(msg.len() % 4, 0);
            assert_eq!(parse_entry(&msg), Ok(Some(e)));
        }
    }

    #[test]
    fn delete_request_carries_original_tuple_zone_and_id() {
        let e = entry(
            ("10.0.0.1:40000", "10.96.0.10:53"),
            ("10.244.0.5:5353", "10.0.0.1:40000"),
        );
        let msg = delete_request(&e, 5);
        assert_eq!(
            u32::from_ne_bytes(msg[0..4].try_into().unwrap()) as usize,
            msg.len()
        );
        assert_eq!(u16::from_ne_bytes([msg[4], msg[5]]), 0x0102);
        assert_eq!(msg[16], libc::AF_INET as u8);
        let body = &msg[20..];
        let orig = find(body, CTA_TUPLE_ORIG).expect("original tuple");
        assert_eq!(parse_tuple(orig), Ok(Some(e.orig)));
        assert_eq!(find(body, CTA_TUPLE_REPLY), None);
        assert_eq!(find(body, CTA_ZONE).and_then(be16), Some(7));
        assert_eq!(find(body, CTA_ID).and_then(be32), Some(0xdead_beef));
    }

    #[test]
    fn portless_protocols_are_skipped_and_truncation_is_an_error() {
        let mut m = Msg::new(CT_NEW, 0, 1, libc::AF_INET as u8);
        for ty in [CTA_TUPLE_ORIG, CTA_TUPLE_REPLY] {
            m.nest(ty, |m| {
                m.nest(CTA_TUPLE_IP, |m| {
                    m.attr(CTA_IP_V4_SRC, &[10, 0, 0, 1]);
                    m.attr(CTA_IP_V4_DST, &[10, 0, 0, 2]);
                });
                m.nest(CTA_TUPLE_PROTO, |m| m.attr(CTA_PROTO_NUM, &[1]));
            });
        }
        assert_eq!(parse_entry(&m.finish()), Ok(None), "ICMP has no ports");
        let e = entry(
            ("10.0.0.1:40000", "10.96.0.10:53"),
            ("10.244.0.5:5353", "10.0.0.1:40000"),
        );
        let msg = dumped(&e);
        assert!(parse_entry(&msg[..24]).is_err());
    }
}
