//! A flow to judge: who talks to whom on which port.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use kube_nft_crds::ir::Protocol;
use serde::Serialize;

use crate::cluster::ObjectKey;

/// One end of a flow: a pod by name, or a bare IP (which may still turn out to
/// be a pod's IP; the engine resolves it).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Endpoint {
    Pod(ObjectKey),
    Ip(IpAddr),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Pod(k) => k.fmt(f),
            Endpoint::Ip(ip) => ip.fmt(f),
        }
    }
}

impl FromStr for Endpoint {
    type Err = String;
    /// `NAMESPACE/POD` or an IP address.
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(ip) = s.parse() {
            return Ok(Endpoint::Ip(ip));
        }
        s.parse::<ObjectKey>()
            .map(Endpoint::Pod)
            .map_err(|_| format!("`{s}` is neither NAMESPACE/POD nor an IP address"))
    }
}

/// A port and protocol, written `80`, `80/TCP`, `53/udp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortProto {
    pub port: u16,
    pub protocol: Protocol,
}

impl FromStr for PortProto {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (port, proto) = match s.split_once('/') {
            Some((p, proto)) => (p, Some(proto)),
            None => (s, None),
        };
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("`{port}` is not a port number (1-65535)"))?;
        let protocol = match proto {
            None => Protocol::Tcp,
            Some(p) => {
                Protocol::parse(p).ok_or_else(|| format!("`{p}` is not TCP, UDP or SCTP"))?
            }
        };
        Ok(PortProto { port, protocol })
    }
}

impl fmt::Display for PortProto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.protocol, self.port)
    }
}

/// A flow between two endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub from: Endpoint,
    pub to: Endpoint,
    pub protocol: Protocol,
    pub port: u16,
}

/// A flow reduced to addresses: what a packet carries and the IR sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpFlow {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
}

/// The address family of a flow or probe (Kubernetes spells them `IPv4`/`IPv6`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Family {
    #[default]
    IPv4,
    IPv6,
}

impl Family {
    /// `IPv4`/`IPv6`, case-insensitively (`ipv6` too).
    pub fn parse(s: &str) -> Option<Family> {
        match s.to_ascii_lowercase().as_str() {
            "ipv4" => Some(Family::IPv4),
            "ipv6" => Some(Family::IPv6),
            _ => None,
        }
    }

    /// Whether `ip` is of this family.
    pub fn has(self, ip: &IpAddr) -> bool {
        match self {
            Family::IPv4 => ip.is_ipv4(),
            Family::IPv6 => ip.is_ipv6(),
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::IPv4 => "IPv4",
            Family::IPv6 => "IPv6",
        })
    }
}
