//! Kubernetes values as nftables sees them, shared by the policy and Service
//! renderers: an address family's data type and packet fields, addresses and
//! protocols as values.

use std::net::IpAddr;

use kube_nft_crds::ir::Protocol;
use nft::{DataType, Field, Value};

use crate::service::IpFamily;

/// An address as an nft value.
pub fn ip_value(ip: &IpAddr) -> Value {
    match ip {
        IpAddr::V4(a) => Value::Ipv4(*a),
        IpAddr::V6(a) => Value::Ipv6(*a),
    }
}

/// The IP protocol number of a Kubernetes protocol.
pub fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => nft::proto::TCP,
        Protocol::Udp => nft::proto::UDP,
        Protocol::Sctp => nft::proto::SCTP,
    }
}

impl IpFamily {
    /// `ipv4_addr` / `ipv6_addr`.
    pub fn addr_type(self) -> DataType {
        match self {
            IpFamily::V4 => DataType::Ipv4Addr,
            IpFamily::V6 => DataType::Ipv6Addr,
        }
    }

    /// `ip saddr` / `ip6 saddr`.
    pub fn saddr(self) -> Field {
        match self {
            IpFamily::V4 => Field::IpSaddr,
            IpFamily::V6 => Field::Ip6Saddr,
        }
    }

    /// `ip daddr` / `ip6 daddr`.
    pub fn daddr(self) -> Field {
        match self {
            IpFamily::V4 => Field::IpDaddr,
            IpFamily::V6 => Field::Ip6Daddr,
        }
    }

    /// The family of an address field.
    pub fn of_field(f: Field) -> Option<IpFamily> {
        match f {
            Field::IpSaddr | Field::IpDaddr => Some(IpFamily::V4),
            Field::Ip6Saddr | Field::Ip6Daddr => Some(IpFamily::V6),
            _ => None,
        }
    }

    /// An address of this family from its integer form (see
    /// [`super::intervals`]).
    pub fn value(self, x: u128) -> Value {
        match self {
            IpFamily::V4 => Value::Ipv4((x as u32).into()),
            IpFamily::V6 => Value::Ipv6(x.into()),
        }
    }
}
