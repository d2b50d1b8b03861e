//! Rule statements → kernel VM expressions (pure code).
//!
//! Register use mirrors nft so `nft --debug=netlink` output compares line by line:
//! a single key lives in register 1; a concatenation starts in register 1 and each
//! further field goes to the next free 4-byte register (9, 10, … for IPv4-sized
//! fields, 12 after an IPv6 address).

use super::consts::*;
use super::types::*;
use super::vm::{Imm, Vm};
use crate::model::{
    DataType, Expr, Family, Field, MapKey, MatchOp, NatFamily, NatTarget, RejectKind, Rhs, Rule,
    Set, SetData, SetUpdateOp, Value, Verdict,
};

/// Set headers the encoder may need: element encoding follows the set's key and
/// data types, and a NAT map's data types decide whether it also yields a port.
pub(crate) trait SetShapes {
    /// The header (elements ignored) of set `name` as it will be when the op runs.
    fn header(&self, name: &str) -> Option<&Set>;
}

pub(crate) struct RuleEncoder<'a> {
    family: Family,
    shapes: &'a dyn SetShapes,
    /// The `meta nfproto` the rule has established so far (inet tables only).
    nfproto: Option<u8>,
    out: Vec<Vm>,
}

type R<T> = Result<T, String>;

pub(crate) fn encode_rule(family: Family, shapes: &dyn SetShapes, rule: &Rule) -> R<Vec<Vm>> {
    let mut enc = RuleEncoder {
        family,
        shapes,
        nfproto: None,
        out: Vec::new(),
    };
    for (i, e) in rule.exprs.iter().enumerate() {
        enc.expr(e)
            .map_err(|m| format!("statement {} ({}): {m}", i + 1, expr_name(e)))?;
    }
    Ok(enc.out)
}

pub(crate) fn verdict_code(v: &Verdict) -> (i32, Option<String>) {
    match v {
        Verdict::Accept => (NF_ACCEPT, None),
        Verdict::Drop => (NF_DROP, None),
        Verdict::Continue => (NFT_CONTINUE, None),
        Verdict::Return => (NFT_RETURN, None),
        Verdict::Jump(c) => (NFT_JUMP, Some(c.clone())),
        Verdict::Goto(c) => (NFT_GOTO, Some(c.clone())),
    }
}

fn expr_name(e: &Expr) -> &'static str {
    match e {
        Expr::Match { .. } => "match",
        Expr::Vmap { .. } => "vmap",
        Expr::Counter => "counter",
        Expr::Log { .. } => "log",
        Expr::SetMarkBits(_) => "meta mark set",
        Expr::SetFromMap { .. } => "mark set from map",
        Expr::Dnat { .. } => "dnat",
        Expr::Snat { .. } => "snat",
        Expr::Masquerade { .. } => "masquerade",
        Expr::Reject(_) => "reject",
        Expr::SetUpdate { .. } => "set update",
        Expr::MapUpdate { .. } => "map update",
        Expr::Verdict(_) => "verdict",
    }
}

impl RuleEncoder<'_> {
    fn expr(&mut self, e: &Expr) -> R<()> {
        match e {
            Expr::Match { left, op, right } => self.matches(left, *op, right),
            Expr::Vmap { key, map } => {
                let sreg = self.map_key(key)?;
                check_name(map)?;
                self.out.push(Vm::Lookup {
                    sreg,
                    dreg: Some(NFT_REG_VERDICT),
                    set: map.clone(),
                    inv: false,
                });
                Ok(())
            }
            Expr::Counter => {
                self.out.push(Vm::Counter);
                Ok(())
            }
            Expr::Log { prefix, group } => {
                if let Some(p) = prefix {
                    check_str(p, NF_LOG_PREFIXLEN, "log prefix")?;
                }
                self.out.push(Vm::Log {
                    prefix: prefix.clone(),
                    group: *group,
                });
                Ok(())
            }
            Expr::SetMarkBits(bits) => {
                // `meta mark set meta mark | bits` is `(mark & !bits) ^ bits`.
                self.out.push(Vm::Meta {
                    key: NFT_META_MARK,
                    dreg: NFT_REG_1,
                });
                self.out.push(Vm::Bitwise {
                    sreg: NFT_REG_1,
                    dreg: NFT_REG_1,
                    len: 4,
                    mask: (!bits).to_ne_bytes().to_vec(),
                    xor: bits.to_ne_bytes().to_vec(),
                });
                self.out.push(Vm::MetaSet {
                    key: NFT_META_MARK,
                    sreg: NFT_REG_1,
                });
                Ok(())
            }
            Expr::SetFromMap { target, key, map } => {
                let set = match target {
                    Field::CtMark => Vm::CtSet {
                        key: NFT_CT_MARK,
                        sreg: NFT_REG_1,
                    },
                    Field::Mark => Vm::MetaSet {
                        key: NFT_META_MARK,
                        sreg: NFT_REG_1,
                    },
                    f => return Err(format!("cannot set {f:?}: only ct mark and meta mark")),
                };
                let sreg = self.map_key(key)?;
                check_name(map)?;
                self.out.push(Vm::Lookup {
                    sreg,
                    dreg: Some(NFT_REG_1),
                    set: map.clone(),
                    inv: false,
                });
                self.out.push(set);
                Ok(())
            }
            Expr::Dnat { family, to } => self.nat(NFT_NAT_DNAT, *family, to),
            Expr::Snat { family, to } => self.nat(NFT_NAT_SNAT, *family, to),
            Expr::Masquerade { fully_random } => {
                let flags = if *fully_random {
                    NF_NAT_RANGE_PROTO_RANDOM_FULLY
                } else {
                    0
                };
                self.out.push(Vm::Masq { flags });
                Ok(())
            }
            Expr::Reject(kind) => {
                let (kind, code) = match kind {
                    RejectKind::TcpReset => (NFT_REJECT_TCP_RST, 0),
                    RejectKind::IcmpxPortUnreachable => {
                        (NFT_REJECT_ICMPX_UNREACH, NFT_REJECT_ICMPX_PORT_UNREACH)
                    }
                    RejectKind::IcmpxAdminProhibited => {
                        (NFT_REJECT_ICMPX_UNREACH, NFT_REJECT_ICMPX_ADMIN_PROHIBITED)
                    }
                };
                self.out.push(Vm::Reject { kind, code });
                Ok(())
            }
            Expr::SetUpdate {
                op,
                set,
                key,
                timeout,
            } => {
                check_name(set)?;
                let (sreg_key, _) = self.load_fields(key)?;
                let timeout_ms = match timeout {
                    Some(t) => Some(
                        u64::try_from(t.as_millis())
                            .map_err(|_| "timeout too large".to_string())?,
                    ),
                    None => None,
                };
                self.out.push(Vm::Dynset {
                    sreg_key,
                    sreg_data: None,
                    op: match op {
                        SetUpdateOp::Add => NFT_DYNSET_OP_ADD,
                        SetUpdateOp::Update => NFT_DYNSET_OP_UPDATE,
                    },
                    set: set.clone(),
                    timeout_ms,
                });
                Ok(())
            }
            Expr::MapUpdate {
                op,
                map,
                key,
                data,
                timeout,
            } => {
                check_name(map)?;
                if data.is_empty() {
                    return Err("map update without data".into());
                }
                // Dependencies first: they use register 1, which the key then
                // overwrites. The data follows the key in the next free 4-byte
                // register, so the two never overlap.
                for f in key.iter().chain(data) {
                    self.dependency(*f)?;
                }
                let (sreg_key, key_len) = self.load_fields_at(key, 0)?;
                let (sreg_data, _) = self.load_fields_at(data, key_len.div_ceil(4))?;
                let timeout_ms = timeout.map(super::encode_set::millis).transpose()?;
                self.out.push(Vm::Dynset {
                    sreg_key,
                    sreg_data: Some(sreg_data),
                    op: match op {
                        SetUpdateOp::Add => NFT_DYNSET_OP_ADD,
                        SetUpdateOp::Update => NFT_DYNSET_OP_UPDATE,
                    },
                    set: map.clone(),
                    timeout_ms,
                });
                Ok(())
            }
            Expr::Verdict(v) => {
                if let Verdict::Jump(c) | Verdict::Goto(c) = v {
                    check_name(c)?;
                }
                let (code, chain) = verdict_code(v);
                self.out.push(Vm::Immediate {
                    dreg: NFT_REG_VERDICT,
                    data: Imm::Verdict(code, chain),
                });
                Ok(())
            }
        }
    }

    fn matches(&mut self, left: &[Field], op: MatchOp, right: &Rhs) -> R<()> {
        let cmp_op = match op {
            MatchOp::Eq => NFT_CMP_EQ,
            MatchOp::Neq => NFT_CMP_NEQ,
        };
        match right {
            Rhs::Value(values) => {
                if values.len() != left.len() {
                    return Err(format!(
                        "{} fields compared with {} values",
                        left.len(),
                        values.len()
                    ));
                }
                let mut parts = Vec::new();
                for (f, v) in left.iter().zip(values) {
                    check_kind(*f, v)?;
                    parts.push(value_bytes(v));
                }
                // `iifname "veth*"`: a prefix compare of the name without the star.
                if let [Value::IfName(n)] = values.as_slice() {
                    check_ifname(n)?;
                    if let Some(prefix) = n.strip_suffix('*') {
                        parts[0] = prefix.as_bytes().to_vec();
                    }
                }
                let (sreg, _) = self.load_fields(left)?;
                self.out.push(Vm::Cmp {
                    sreg,
                    op: cmp_op,
                    data: concat_bytes(&parts),
                });
                if let ([Field::NfProto], MatchOp::Eq, [Value::NfProto(p)]) =
                    (left, op, values.as_slice())
                {
                    self.nfproto = Some(*p);
                }
                Ok(())
            }
            Rhs::Range(lo, hi) => {
                let [f] = left else {
                    return Err("a range matches exactly one field".into());
                };
                check_kind(*f, lo)?;
                check_kind(*f, hi)?;
                let (sreg, len) = self.load_fields(left)?;
                let (mut from, mut to) = (value_bytes(lo), value_bytes(hi));
                // The range expression compares bytes; host-order integers are turned
                // into network order first, as nft does.
                if field_kind(*f).host_u32() {
                    self.out.push(Vm::Byteorder {
                        sreg,
                        dreg: sreg,
                        op: NFT_BYTEORDER_HTON,
                        len,
                        size: 4,
                    });
                    from = be_u32(&from);
                    to = be_u32(&to);
                }
                self.out.push(Vm::Range {
                    sreg,
                    op: match op {
                        MatchOp::Eq => NFT_RANGE_EQ,
                        MatchOp::Neq => NFT_RANGE_NEQ,
                    },
                    from,
                    to,
                });
                Ok(())
            }
            Rhs::Set(name) => {
                check_name(name)?;
                let (sreg, _) = self.load_fields(left)?;
                self.out.push(Vm::Lookup {
                    sreg,
                    dreg: None,
                    set: name.clone(),
                    inv: op == MatchOp::Neq,
                });
                Ok(())
            }
            Rhs::Bits(bits) => {
                let [f] = left else {
                    return Err("a bit test matches exactly one field".into());
                };
                if !field_kind(*f).host_u32() {
                    return Err(format!("bit test on {f:?}: only 32-bit integer fields"));
                }
                let (sreg, _) = self.load_fields(left)?;
                self.out.push(Vm::Bitwise {
                    sreg,
                    dreg: sreg,
                    len: 4,
                    mask: bits.to_ne_bytes().to_vec(),
                    xor: vec![0; 4],
                });
                // `& bits != 0` is the positive test.
                self.out.push(Vm::Cmp {
                    sreg,
                    op: match op {
                        MatchOp::Eq => NFT_CMP_NEQ,
                        MatchOp::Neq => NFT_CMP_EQ,
                    },
                    data: vec![0; 4],
                });
                Ok(())
            }
        }
    }

    /// Emit loads of `fields` (and their protocol dependency) into consecutive
    /// registers. Returns the first register and the key length in bytes.
    fn load_fields(&mut self, fields: &[Field]) -> R<(u32, u32)> {
        // Dependencies first: they use register 1, which the key then overwrites.
        for f in fields {
            self.dependency(*f)?;
        }
        self.load_fields_at(fields, 0)
    }

    /// Load `fields` into consecutive registers from 4-byte word `first` of the
    /// register file on (0 is register 1). Dependencies must already be loaded.
    /// Returns the first register and the key length in bytes.
    fn load_fields_at(&mut self, fields: &[Field], first: u32) -> R<(u32, u32)> {
        if fields.is_empty() {
            return Err("no fields".into());
        }
        if fields.len() > 1 && fields.contains(&Field::FibDaddrType) {
            return Err("fib cannot be part of a concatenation".into());
        }
        let reg_of = |words: u32| {
            if words == 0 {
                NFT_REG_1
            } else {
                NFT_REG32_00 + words
            }
        };
        let mut words = first;
        for f in fields {
            self.load(*f, reg_of(words));
            words += field_kind(*f).len().div_ceil(4) as u32;
        }
        if words > 16 {
            return Err("concatenation longer than the 64-byte register file".into());
        }
        let kinds: Vec<Kind> = fields.iter().map(|f| field_kind(*f)).collect();
        Ok((reg_of(first), concat_len(&kinds) as u32))
    }

    /// In an inet table the IP header is only known after `meta nfproto`: nft adds
    /// the same implicit match, and the decoder drops it again.
    fn dependency(&mut self, f: Field) -> R<()> {
        let Some(want) = field_nfproto(f) else {
            return Ok(());
        };
        match self.family {
            Family::Inet => {
                if self.nfproto != Some(want) {
                    self.out.push(Vm::Meta {
                        key: NFT_META_NFPROTO,
                        dreg: NFT_REG_1,
                    });
                    self.out.push(Vm::Cmp {
                        sreg: NFT_REG_1,
                        op: NFT_CMP_EQ,
                        data: vec![want],
                    });
                    self.nfproto = Some(want);
                }
                Ok(())
            }
            Family::Ip if want == NFPROTO_IPV4 => Ok(()),
            Family::Ip6 if want == NFPROTO_IPV6 => Ok(()),
            fam => Err(format!("{f:?} cannot be matched in a {fam} table")),
        }
    }

    fn load(&mut self, f: Field, dreg: u32) {
        self.out.push(match field_load(f) {
            Load::Payload { base, offset, len } => Vm::Payload {
                dreg,
                base,
                offset,
                len,
            },
            Load::Meta(key) => Vm::Meta { key, dreg },
            Load::Ct(key) => Vm::Ct {
                key,
                dreg,
                dir: None,
            },
            Load::CtOriginal(key) => Vm::Ct {
                key,
                dreg,
                dir: Some(IP_CT_DIR_ORIGINAL),
            },
            Load::FibDaddrType => Vm::Fib {
                flags: NFTA_FIB_F_DADDR,
                result: NFT_FIB_RESULT_ADDRTYPE,
                dreg,
            },
        });
    }

    fn map_key(&mut self, key: &MapKey) -> R<u32> {
        match key {
            MapKey::Fields(fields) => Ok(self.load_fields(fields)?.0),
            MapKey::NumgenRandom { modulus } => {
                if *modulus == 0 {
                    return Err("numgen modulus 0".into());
                }
                self.out.push(Vm::Numgen {
                    dreg: NFT_REG_1,
                    modulus: *modulus,
                    kind: NFT_NG_RANDOM,
                    offset: 0,
                });
                Ok(NFT_REG_1)
            }
            MapKey::FieldsAndNumgen { fields, modulus } => {
                if *modulus == 0 {
                    return Err("numgen modulus 0".into());
                }
                // Fields from register 1 on, the numgen value in the next free
                // 4-byte register (as nft does: `numgen reg 11` after 3 fields).
                let (sreg, len) = self.load_fields(fields)?;
                let words = len.div_ceil(4);
                if words >= 16 {
                    return Err("concatenation longer than the 64-byte register file".into());
                }
                self.out.push(Vm::Numgen {
                    dreg: NFT_REG32_00 + words,
                    modulus: *modulus,
                    kind: NFT_NG_RANDOM,
                    offset: 0,
                });
                Ok(sreg)
            }
        }
    }

    fn nat(&mut self, kind: u32, family: NatFamily, to: &NatTarget) -> R<()> {
        let (nfproto, addr_type) = match family {
            NatFamily::Ip => (NFPROTO_IPV4, DataType::Ipv4Addr),
            NatFamily::Ip6 => (NFPROTO_IPV6, DataType::Ipv6Addr),
        };
        let reg_proto = match to {
            NatTarget::Addr { addr, port } => {
                if Kind::of_value(addr) != Kind::of_type(addr_type) {
                    return Err(format!("{addr:?} is not a {family:?} address"));
                }
                self.out.push(Vm::Immediate {
                    dreg: NFT_REG_1,
                    data: Imm::Data(value_bytes(addr)),
                });
                match port {
                    Some(p) => {
                        self.out.push(Vm::Immediate {
                            dreg: NFT_REG_1 + 1,
                            data: Imm::Data(p.to_be_bytes().to_vec()),
                        });
                        Some(NFT_REG_1 + 1)
                    }
                    None => None,
                }
            }
            NatTarget::Map { key, map } => {
                check_name(map)?;
                let data = self
                    .shapes
                    .header(map)
                    .ok_or_else(|| unknown_set(map))?
                    .data
                    .clone()
                    .ok_or_else(|| format!("{map:?} is a set, not a map"))?;
                let types = match data {
                    SetData::Values(t) => t,
                    SetData::Verdict => return Err(format!("{map:?} is a verdict map")),
                };
                let with_port = match types.as_slice() {
                    [t] if *t == addr_type => false,
                    [t, DataType::InetService] if *t == addr_type => true,
                    _ => {
                        return Err(format!(
                            "map {map:?} yields {types:?}, not an address (and port)"
                        ))
                    }
                };
                let sreg = self.map_key(key)?;
                self.out.push(Vm::Lookup {
                    sreg,
                    dreg: Some(NFT_REG_1),
                    set: map.clone(),
                    inv: false,
                });
                // The port follows the address in the next 4-byte register.
                with_port.then(|| NFT_REG32_00 + Kind::of_type(addr_type).len() as u32 / 4)
            }
        };
        self.out.push(Vm::Nat {
            kind,
            family: u32::from(nfproto),
            reg_addr: Some(NFT_REG_1),
            reg_proto,
            flags: 0,
        });
        Ok(())
    }
}

fn be_u32(native: &[u8]) -> Vec<u8> {
    let v = u32::from_ne_bytes(native.try_into().unwrap_or([0; 4]));
    v.to_be_bytes().to_vec()
}

fn check_kind(f: Field, v: &Value) -> R<()> {
    if field_kind(f) == Kind::of_value(v) {
        Ok(())
    } else {
        Err(format!("value {v:?} does not fit field {f:?}"))
    }
}

fn check_ifname(n: &str) -> R<()> {
    if n.is_empty() || n.len() >= IFNAMSIZ || n.contains('\0') {
        return Err(format!("bad interface name {n:?}"));
    }
    Ok(())
}

pub(crate) fn check_name(n: &str) -> R<()> {
    if n.is_empty() {
        return Err("empty name".into());
    }
    check_str(n, NFT_NAME_MAXLEN, "name")
}

pub(crate) fn check_str(s: &str, max: usize, what: &str) -> R<()> {
    if s.len() > max {
        return Err(format!("{what} {s:?} longer than {max} bytes"));
    }
    if s.contains('\0') {
        return Err(format!("{what} {s:?} contains NUL"));
    }
    Ok(())
}

/// Prefix of the error for a set the encoder has no header for (the connection
/// fetches it from the kernel and retries).
pub(crate) const UNKNOWN_SET: &str = "unknown set ";

pub(crate) fn unknown_set(name: &str) -> String {
    format!("{UNKNOWN_SET}{name:?}: add it in this batch or load it first")
}
