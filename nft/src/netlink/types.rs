//! How model values, fields and data types look in kernel registers and set keys.
//! Pure code: no FFI.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::consts::*;
use crate::model::{DataType, Field, Value};

/// The shape of a value: decides its byte encoding and how bytes decode back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Ipv4,
    Ipv6,
    Proto,
    Port,
    Mark,
    IfName,
    NfProto,
    CtState,
    CtStatus,
    AddrType,
}

impl Kind {
    /// Length in bytes of a value of this kind in a register.
    pub fn len(self) -> usize {
        match self {
            Kind::Ipv4 => 4,
            Kind::Ipv6 => 16,
            Kind::Proto | Kind::NfProto => 1,
            Kind::Port => 2,
            Kind::Mark | Kind::CtState | Kind::CtStatus | Kind::AddrType => 4,
            Kind::IfName => IFNAMSIZ,
        }
    }

    /// 32-bit integers the kernel keeps in host byte order (`meta mark`, `ct state`).
    pub fn host_u32(self) -> bool {
        matches!(
            self,
            Kind::Mark | Kind::CtState | Kind::CtStatus | Kind::AddrType
        )
    }

    pub fn of_value(v: &Value) -> Kind {
        match v {
            Value::Ipv4(_) => Kind::Ipv4,
            Value::Ipv6(_) => Kind::Ipv6,
            Value::Proto(_) => Kind::Proto,
            Value::Port(_) => Kind::Port,
            Value::Mark(_) => Kind::Mark,
            Value::IfName(_) => Kind::IfName,
            Value::NfProto(_) => Kind::NfProto,
            Value::CtState(_) => Kind::CtState,
            Value::CtStatus(_) => Kind::CtStatus,
            Value::AddrType(_) => Kind::AddrType,
        }
    }

    pub fn of_type(t: DataType) -> Kind {
        match t {
            DataType::Ipv4Addr => Kind::Ipv4,
            DataType::Ipv6Addr => Kind::Ipv6,
            DataType::InetProto => Kind::Proto,
            DataType::InetService => Kind::Port,
            DataType::Mark => Kind::Mark,
            DataType::IfName => Kind::IfName,
        }
    }
}

/// How a rule loads a field into a register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Load {
    Payload {
        base: u32,
        offset: u32,
        len: u32,
    },
    Meta(u32),
    Ct(u32),
    /// A ct key of the original direction (`ct original ip daddr`).
    CtOriginal(u32),
    FibDaddrType,
}

pub(crate) fn field_load(f: Field) -> Load {
    let nh = |offset, len| Load::Payload {
        base: NFT_PAYLOAD_NETWORK_HEADER,
        offset,
        len,
    };
    let th = |offset| Load::Payload {
        base: NFT_PAYLOAD_TRANSPORT_HEADER,
        offset,
        len: 2,
    };
    match f {
        Field::IpSaddr => nh(12, 4),
        Field::IpDaddr => nh(16, 4),
        Field::Ip6Saddr => nh(8, 16),
        Field::Ip6Daddr => nh(24, 16),
        Field::ThSport => th(0),
        Field::ThDport => th(2),
        Field::L4Proto => Load::Meta(NFT_META_L4PROTO),
        Field::NfProto => Load::Meta(NFT_META_NFPROTO),
        Field::IifName => Load::Meta(NFT_META_IIFNAME),
        Field::OifName => Load::Meta(NFT_META_OIFNAME),
        Field::Mark => Load::Meta(NFT_META_MARK),
        Field::CtState => Load::Ct(NFT_CT_STATE),
        Field::CtStatus => Load::Ct(NFT_CT_STATUS),
        Field::CtMark => Load::Ct(NFT_CT_MARK),
        Field::FibDaddrType => Load::FibDaddrType,
        Field::CtOriginalIpDaddr => Load::CtOriginal(NFT_CT_DST_IP),
        Field::CtOriginalIp6Daddr => Load::CtOriginal(NFT_CT_DST_IP6),
        Field::CtOriginalProtoDst => Load::CtOriginal(NFT_CT_PROTO_DST),
    }
}

const ALL_FIELDS: [Field; 18] = [
    Field::IpSaddr,
    Field::IpDaddr,
    Field::Ip6Saddr,
    Field::Ip6Daddr,
    Field::L4Proto,
    Field::ThSport,
    Field::ThDport,
    Field::NfProto,
    Field::IifName,
    Field::OifName,
    Field::Mark,
    Field::CtState,
    Field::CtStatus,
    Field::CtMark,
    Field::FibDaddrType,
    Field::CtOriginalIpDaddr,
    Field::CtOriginalIp6Daddr,
    Field::CtOriginalProtoDst,
];

/// The field a load reads, if the model has one for it.
pub(crate) fn field_of_load(l: Load) -> Option<Field> {
    ALL_FIELDS.iter().copied().find(|f| field_load(*f) == l)
}

pub(crate) fn field_kind(f: Field) -> Kind {
    match f {
        Field::IpSaddr | Field::IpDaddr | Field::CtOriginalIpDaddr => Kind::Ipv4,
        Field::Ip6Saddr | Field::Ip6Daddr | Field::CtOriginalIp6Daddr => Kind::Ipv6,
        Field::L4Proto => Kind::Proto,
        Field::ThSport | Field::ThDport | Field::CtOriginalProtoDst => Kind::Port,
        Field::NfProto => Kind::NfProto,
        Field::IifName | Field::OifName => Kind::IfName,
        Field::Mark | Field::CtMark => Kind::Mark,
        Field::CtState => Kind::CtState,
        Field::CtStatus => Kind::CtStatus,
        Field::FibDaddrType => Kind::AddrType,
    }
}

/// The `meta nfproto` a field of the IP or IPv6 header depends on in an inet table.
pub(crate) fn field_nfproto(f: Field) -> Option<u8> {
    match f {
        Field::IpSaddr | Field::IpDaddr => Some(NFPROTO_IPV4),
        Field::Ip6Saddr | Field::Ip6Daddr => Some(NFPROTO_IPV6),
        _ => None,
    }
}

/// Register bytes of a value (addresses and ports in network order, integers in host
/// order, interface names NUL-padded to 16 bytes).
pub(crate) fn value_bytes(v: &Value) -> Vec<u8> {
    match v {
        Value::Ipv4(a) => a.octets().to_vec(),
        Value::Ipv6(a) => a.octets().to_vec(),
        Value::Proto(p) | Value::NfProto(p) => vec![*p],
        Value::Port(p) => p.to_be_bytes().to_vec(),
        Value::Mark(x) | Value::CtState(x) | Value::CtStatus(x) | Value::AddrType(x) => {
            x.to_ne_bytes().to_vec()
        }
        Value::IfName(n) => {
            let mut b = n.as_bytes().to_vec();
            b.resize(IFNAMSIZ, 0);
            b
        }
    }
}

pub(crate) fn value_from_bytes(kind: Kind, b: &[u8]) -> Option<Value> {
    let u32n = || b.try_into().ok().map(u32::from_ne_bytes);
    Some(match kind {
        Kind::Ipv4 => Value::Ipv4(Ipv4Addr::from(<[u8; 4]>::try_from(b).ok()?)),
        Kind::Ipv6 => Value::Ipv6(Ipv6Addr::from(<[u8; 16]>::try_from(b).ok()?)),
        Kind::Proto => Value::Proto(*single(b)?),
        Kind::NfProto => Value::NfProto(*single(b)?),
        Kind::Port => Value::Port(u16::from_be_bytes(b.try_into().ok()?)),
        Kind::Mark => Value::Mark(u32n()?),
        Kind::CtState => Value::CtState(u32n()?),
        Kind::CtStatus => Value::CtStatus(u32n()?),
        Kind::AddrType => Value::AddrType(u32n()?),
        Kind::IfName => {
            if b.len() != IFNAMSIZ {
                return None;
            }
            let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
            Value::IfName(String::from_utf8(b[..end].to_vec()).ok()?)
        }
    })
}

fn single(b: &[u8]) -> Option<&u8> {
    if b.len() == 1 {
        b.first()
    } else {
        None
    }
}

/// Length rounded up to whole 32-bit registers, the stride of concatenations.
pub(crate) fn padded(len: usize) -> usize {
    len.div_ceil(4) * 4
}

/// Bytes of a concatenation: each part padded to 4 bytes when there is more than one.
pub(crate) fn concat_bytes(parts: &[Vec<u8>]) -> Vec<u8> {
    if parts.len() == 1 {
        return parts[0].clone();
    }
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(p);
        out.resize(padded(out.len()), 0);
    }
    out
}

/// Split bytes of a concatenation of `kinds` back into values.
pub(crate) fn split_concat(kinds: &[Kind], b: &[u8]) -> Option<Vec<Value>> {
    if kinds.len() == 1 {
        return Some(vec![value_from_bytes(kinds[0], b)?]);
    }
    let mut out = Vec::new();
    let mut off = 0;
    for k in kinds {
        let end = off + k.len();
        out.push(value_from_bytes(*k, b.get(off..end)?)?);
        off = padded(end);
    }
    (off == b.len()).then_some(out)
}

/// Key/data length of a (possibly concatenated) type as the kernel wants it.
pub(crate) fn concat_len(kinds: &[Kind]) -> usize {
    if kinds.len() == 1 {
        kinds[0].len()
    } else {
        kinds.iter().map(|k| padded(k.len())).sum()
    }
}

pub(crate) fn type_id(t: DataType) -> u32 {
    match t {
        DataType::Ipv4Addr => TYPE_IPADDR,
        DataType::Ipv6Addr => TYPE_IP6ADDR,
        DataType::InetProto => TYPE_INET_PROTOCOL,
        DataType::InetService => TYPE_INET_SERVICE,
        DataType::Mark => TYPE_MARK,
        DataType::IfName => TYPE_IFNAME,
    }
}

fn type_of_id(id: u32) -> Option<DataType> {
    Some(match id {
        TYPE_IPADDR => DataType::Ipv4Addr,
        TYPE_IP6ADDR => DataType::Ipv6Addr,
        TYPE_INET_PROTOCOL => DataType::InetProto,
        TYPE_INET_SERVICE => DataType::InetService,
        TYPE_MARK => DataType::Mark,
        TYPE_IFNAME => DataType::IfName,
        _ => return None,
    })
}

/// nft's concatenated type id: `(t1 << 6) | t2 …`.
pub(crate) fn concat_type_id(ts: &[DataType]) -> u32 {
    ts.iter()
        .fold(0u32, |acc, t| (acc << TYPE_BITS) | type_id(*t))
}

/// Split a concatenated type id back into types, checking the key length.
pub(crate) fn types_of_id(mut id: u32, len: usize) -> Option<Vec<DataType>> {
    let mut out = Vec::new();
    while id != 0 {
        out.push(type_of_id(id & ((1 << TYPE_BITS) - 1))?);
        id >>= TYPE_BITS;
    }
    out.reverse();
    if out.is_empty() {
        return None;
    }
    let kinds: Vec<Kind> = out.iter().map(|t| Kind::of_type(*t)).collect();
    (concat_len(&kinds) == len).then_some(out)
}

pub(crate) fn byteorder(t: DataType) -> u32 {
    match t {
        DataType::Mark | DataType::IfName => BYTEORDER_HOST_ENDIAN,
        _ => BYTEORDER_BIG_ENDIAN,
    }
}

/// `bytes + 1` as a big-endian number; `None` on overflow (the range reaches the top).
pub(crate) fn be_increment(b: &[u8]) -> Option<Vec<u8>> {
    let mut out = b.to_vec();
    for byte in out.iter_mut().rev() {
        if *byte == 0xff {
            *byte = 0;
        } else {
            *byte += 1;
            return Some(out);
        }
    }
    None
}

/// `bytes - 1` as a big-endian number; `None` below zero.
pub(crate) fn be_decrement(b: &[u8]) -> Option<Vec<u8>> {
    let mut out = b.to_vec();
    for byte in out.iter_mut().rev() {
        if *byte == 0 {
            *byte = 0xff;
        } else {
            *byte -= 1;
            return Some(out);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concat_type_ids() {
        let ts = [
            DataType::Ipv4Addr,
            DataType::InetProto,
            DataType::InetService,
        ];
        let id = concat_type_id(&ts);
        assert_eq!(id, (7 << 12) | (12 << 6) | 13);
        assert_eq!(types_of_id(id, 12).unwrap(), ts.to_vec());
        assert_eq!(types_of_id(id, 11), None);
    }

    #[test]
    fn increments() {
        assert_eq!(be_increment(&[0, 0xff]), Some(vec![1, 0]));
        assert_eq!(be_increment(&[0xff, 0xff]), None);
        assert_eq!(be_decrement(&[1, 0]), Some(vec![0, 0xff]));
        assert_eq!(be_decrement(&[0, 0]), None);
    }

    #[test]
    fn values_roundtrip() {
        for v in [
            Value::Ipv4("10.1.2.3".parse().unwrap()),
            Value::Port(8080),
            Value::Mark(0x4000),
            Value::IfName("eth0".into()),
            Value::Proto(6),
        ] {
            let k = Kind::of_value(&v);
            assert_eq!(value_from_bytes(k, &value_bytes(&v)), Some(v));
        }
    }
}
