//! Kernel VM expressions → rule statements (pure code), the inverse of
//! `encode_expr`. Tracks what each register holds, then recognises the patterns
//! the encoder (and nft) emit. Anything else is an error, never skipped.

use std::collections::BTreeMap;
use std::time::Duration;

use super::consts::*;
use super::types::*;
use super::vm::{reg_offset, Imm, Vm};
use crate::model::{
    Expr, Family, Field, MapKey, MatchOp, NatFamily, NatTarget, RejectKind, Rhs, SetUpdateOp,
    Value, Verdict,
};

/// What a register holds at this point of the rule.
#[derive(Debug, Clone, PartialEq)]
enum Src {
    Field(Field),
    /// `field & mask` (before a compare with zero).
    Masked(Field, u32),
    /// `meta mark | bits` (before `meta mark set`).
    MarkOr(u32),
    /// A host-order field converted to network order (before a range).
    Hton(Field),
    Numgen(u32),
    Imm(Vec<u8>),
    MapData(MapKey, String),
}

#[derive(Default)]
struct Regs {
    /// Register byte offset → (source, length in bytes).
    slots: BTreeMap<u32, (Src, u32)>,
}

impl Regs {
    fn write(&mut self, reg: u32, src: Src, len: u32) {
        let off = reg_offset(reg);
        let end = off + len.max(1);
        // A write clobbers whatever overlapped it.
        self.slots
            .retain(|o, (_, l)| *o + (*l).max(1) <= off || *o >= end);
        self.slots.insert(off, (src, len));
    }

    /// The sources a read of `len` bytes from `reg` covers, in register order.
    fn read(&self, reg: u32, len: u32) -> Option<Vec<Src>> {
        let mut off = reg_offset(reg);
        let end = off + len;
        let mut out = Vec::new();
        while off < end {
            let (src, l) = self.slots.get(&off)?;
            out.push(src.clone());
            off += (*l).div_ceil(4) * 4;
        }
        Some(out)
    }

    fn one(&self, reg: u32) -> Option<Src> {
        self.slots.get(&reg_offset(reg)).map(|(s, _)| s.clone())
    }
}

type R<T> = Result<T, String>;

pub(crate) fn decode_rule(family: Family, vms: &[Vm]) -> R<Vec<Expr>> {
    let mut regs = Regs::default();
    let mut out: Vec<Expr> = Vec::new();
    // Index of an `meta nfproto X` match that may be the implicit dependency of an
    // IP header load that follows.
    let mut dep: Option<(usize, u8)> = None;
    for (i, vm) in vms.iter().enumerate() {
        let n_before = out.len();
        let step = |m: String| format!("expression {} ({vm:?}): {m}", i + 1);
        match vm {
            Vm::Payload {
                dreg,
                base,
                offset,
                len,
            } => {
                let f = field_of_load(super::types::Load::Payload {
                    base: *base,
                    offset: *offset,
                    len: *len,
                })
                .ok_or_else(|| step("payload the model has no field for".into()))?;
                if let (Family::Inet, Some(want), Some((idx, got))) =
                    (family, field_nfproto(f), dep)
                {
                    if want == got && idx + 1 == out.len() {
                        out.pop();
                    }
                }
                regs.write(*dreg, Src::Field(f), *len);
            }
            Vm::Meta { key, dreg } => {
                let f = field_of_load(super::types::Load::Meta(*key))
                    .ok_or_else(|| step("unknown meta key".into()))?;
                regs.write(*dreg, Src::Field(f), field_kind(f).len() as u32);
            }
            Vm::Ct { key, dreg, dir } => {
                let load = match dir {
                    None => super::types::Load::Ct(*key),
                    Some(IP_CT_DIR_ORIGINAL) => super::types::Load::CtOriginal(*key),
                    Some(d) => return Err(step(format!("ct direction {d}"))),
                };
                let f = field_of_load(load).ok_or_else(|| step("unknown ct key".into()))?;
                regs.write(*dreg, Src::Field(f), field_kind(f).len() as u32);
            }
            Vm::Fib {
                flags,
                result,
                dreg,
            } => {
                if *flags != NFTA_FIB_F_DADDR || *result != NFT_FIB_RESULT_ADDRTYPE {
                    return Err(step("only `fib daddr type` is supported".into()));
                }
                regs.write(*dreg, Src::Field(Field::FibDaddrType), 4);
            }
            Vm::Numgen {
                dreg,
                modulus,
                kind,
                offset,
            } => {
                if *kind != NFT_NG_RANDOM || *offset != 0 {
                    return Err(step("only `numgen random mod N` is supported".into()));
                }
                regs.write(*dreg, Src::Numgen(*modulus), 4);
            }
            Vm::Immediate { dreg, data } => match data {
                Imm::Verdict(code, chain) => out.push(Expr::Verdict(
                    verdict_of(*code, chain.clone()).map_err(step)?,
                )),
                Imm::Data(d) => regs.write(*dreg, Src::Imm(d.clone()), d.len() as u32),
            },
            Vm::Bitwise {
                sreg,
                dreg,
                len,
                mask,
                xor,
            } => {
                let src = regs
                    .one(*sreg)
                    .ok_or_else(|| step("unset register".into()))?;
                let (mask, xor) = (u32_ne(mask).map_err(step)?, u32_ne(xor).map_err(step)?);
                let res = match src {
                    Src::Field(f) if xor == 0 => Src::Masked(f, mask),
                    Src::Field(Field::Mark) if mask == !xor => Src::MarkOr(xor),
                    _ => {
                        return Err(step(
                            "bitwise pattern the model has no statement for".into(),
                        ))
                    }
                };
                regs.write(*dreg, res, *len);
            }
            Vm::Byteorder {
                sreg,
                dreg,
                op,
                len,
                size,
            } => match regs.one(*sreg) {
                Some(Src::Field(f)) if *op == NFT_BYTEORDER_HTON && *size == 4 => {
                    regs.write(*dreg, Src::Hton(f), *len)
                }
                _ => return Err(step("byteorder pattern not supported".into())),
            },
            Vm::MetaSet { key, sreg } => match regs.one(*sreg) {
                Some(Src::MarkOr(bits)) if *key == NFT_META_MARK => {
                    out.push(Expr::SetMarkBits(bits))
                }
                Some(Src::MapData(key_, map)) if *key == NFT_META_MARK => {
                    out.push(Expr::SetFromMap {
                        target: Field::Mark,
                        key: key_,
                        map,
                    })
                }
                _ => {
                    return Err(step(
                        "only `meta mark set meta mark | bits` and `meta mark set … map @m`".into(),
                    ))
                }
            },
            Vm::CtSet { key, sreg } => match regs.one(*sreg) {
                Some(Src::MapData(key_, map)) if *key == NFT_CT_MARK => {
                    out.push(Expr::SetFromMap {
                        target: Field::CtMark,
                        key: key_,
                        map,
                    })
                }
                _ => return Err(step("only `ct mark set … map @m`".into())),
            },
            Vm::Cmp { sreg, op, data } => {
                let op = match *op {
                    NFT_CMP_EQ => MatchOp::Eq,
                    NFT_CMP_NEQ => MatchOp::Neq,
                    _ => return Err(step("only == and != compares".into())),
                };
                let srcs = regs
                    .read(*sreg, data.len() as u32)
                    .or_else(|| regs.one(*sreg).map(|s| vec![s]))
                    .ok_or_else(|| step("compare of an unset register".into()))?;
                let e = decode_cmp(&srcs, op, data).map_err(step)?;
                if let Expr::Match {
                    left,
                    op: MatchOp::Eq,
                    right: Rhs::Value(v),
                } = &e
                {
                    if let ([Field::NfProto], [Value::NfProto(p)]) = (left.as_slice(), v.as_slice())
                    {
                        out.push(e.clone());
                        dep = Some((out.len() - 1, *p));
                        continue;
                    }
                }
                out.push(e);
            }
            Vm::Range { sreg, op, from, to } => {
                let op = match *op {
                    NFT_RANGE_EQ => MatchOp::Eq,
                    NFT_RANGE_NEQ => MatchOp::Neq,
                    _ => return Err(step("unknown range op".into())),
                };
                let (f, host) = match regs.one(*sreg) {
                    Some(Src::Field(f)) => (f, false),
                    Some(Src::Hton(f)) => (f, true),
                    _ => return Err(step("range of an unknown register".into())),
                };
                let conv = |b: &[u8]| -> R<Value> {
                    let bytes = if host {
                        u32::from_be_bytes(b.try_into().map_err(|_| "bad range length")?)
                            .to_ne_bytes()
                            .to_vec()
                    } else {
                        b.to_vec()
                    };
                    value_from_bytes(field_kind(f), &bytes).ok_or_else(|| "bad range bytes".into())
                };
                out.push(Expr::Match {
                    left: vec![f],
                    op,
                    right: Rhs::Range(conv(from).map_err(step)?, conv(to).map_err(step)?),
                });
            }
            Vm::Lookup {
                sreg,
                dreg,
                set,
                inv,
            } => {
                let key = lookup_key(&regs, *sreg).map_err(step)?;
                match dreg {
                    None => {
                        let MapKey::Fields(left) = key else {
                            return Err(step("set lookup keyed by numgen".into()));
                        };
                        out.push(Expr::Match {
                            left,
                            op: if *inv { MatchOp::Neq } else { MatchOp::Eq },
                            right: Rhs::Set(set.clone()),
                        });
                    }
                    Some(NFT_REG_VERDICT) => out.push(Expr::Vmap {
                        key,
                        map: set.clone(),
                    }),
                    Some(d) => regs.write(*d, Src::MapData(key, set.clone()), 16),
                }
            }
            Vm::Nat {
                kind,
                family: nfam,
                reg_addr,
                reg_proto,
                flags: _,
            } => {
                let fam = match u8::try_from(*nfam).unwrap_or(0) {
                    NFPROTO_IPV4 => NatFamily::Ip,
                    NFPROTO_IPV6 => NatFamily::Ip6,
                    _ => return Err(step("NAT family".into())),
                };
                let addr_kind = if fam == NatFamily::Ip {
                    Kind::Ipv4
                } else {
                    Kind::Ipv6
                };
                let reg_addr = reg_addr.ok_or_else(|| step("NAT without address".into()))?;
                let to = match regs.one(reg_addr) {
                    Some(Src::Imm(a)) => {
                        let addr = value_from_bytes(addr_kind, &a)
                            .ok_or_else(|| step("NAT address bytes".into()))?;
                        let port = match reg_proto {
                            None => None,
                            Some(r) => match regs.one(*r) {
                                Some(Src::Imm(p)) if p.len() == 2 => {
                                    Some(u16::from_be_bytes([p[0], p[1]]))
                                }
                                _ => return Err(step("NAT port register".into())),
                            },
                        };
                        NatTarget::Addr { addr, port }
                    }
                    Some(Src::MapData(key, map)) => NatTarget::Map { key, map },
                    _ => return Err(step("NAT address register".into())),
                };
                out.push(match *kind {
                    NFT_NAT_DNAT => Expr::Dnat { family: fam, to },
                    NFT_NAT_SNAT => Expr::Snat { family: fam, to },
                    _ => return Err(step("NAT type".into())),
                });
            }
            Vm::Masq { flags } => out.push(Expr::Masquerade {
                fully_random: flags & NF_NAT_RANGE_PROTO_RANDOM_FULLY != 0,
            }),
            Vm::Reject { kind, code } => out.push(Expr::Reject(match (*kind, *code) {
                (NFT_REJECT_TCP_RST, _) => RejectKind::TcpReset,
                (NFT_REJECT_ICMPX_UNREACH, NFT_REJECT_ICMPX_PORT_UNREACH) => {
                    RejectKind::IcmpxPortUnreachable
                }
                (NFT_REJECT_ICMPX_UNREACH, NFT_REJECT_ICMPX_ADMIN_PROHIBITED) => {
                    RejectKind::IcmpxAdminProhibited
                }
                _ => return Err(step("reject kind".into())),
            })),
            Vm::Counter => out.push(Expr::Counter),
            Vm::Log { prefix, group } => out.push(Expr::Log {
                prefix: prefix.clone(),
                group: *group,
            }),
            Vm::Dynset {
                sreg_key,
                sreg_data,
                op,
                set,
                timeout_ms,
            } => {
                let op = match *op {
                    NFT_DYNSET_OP_ADD => SetUpdateOp::Add,
                    NFT_DYNSET_OP_UPDATE => SetUpdateOp::Update,
                    _ => return Err(step("dynset op".into())),
                };
                let timeout = timeout_ms.filter(|t| *t != 0).map(Duration::from_millis);
                // The key ends where the data begins (they are adjacent).
                let end = sreg_data.map(reg_offset);
                let MapKey::Fields(key) = fields_key(&regs, *sreg_key, end).map_err(step)? else {
                    return Err(step("set update keyed by numgen".into()));
                };
                match sreg_data {
                    None => out.push(Expr::SetUpdate {
                        op,
                        set: set.clone(),
                        key,
                        timeout,
                    }),
                    Some(d) => {
                        let MapKey::Fields(data) = fields_key(&regs, *d, None).map_err(step)?
                        else {
                            return Err(step("map update data from numgen".into()));
                        };
                        out.push(Expr::MapUpdate {
                            op,
                            map: set.clone(),
                            key,
                            data,
                            timeout,
                        });
                    }
                }
            }
            Vm::Unknown(name) => return Err(step(format!("unsupported expression {name:?}"))),
        }
        if out.len() != n_before {
            dep = None;
        }
    }
    Ok(out)
}

/// The key of a lookup: all packet fields, one numgen, or fields then numgen.
fn lookup_key(regs: &Regs, sreg: u32) -> R<MapKey> {
    fields_key(regs, sreg, None)
}

/// Like [`lookup_key`], stopping before register byte offset `end` (where a map
/// update's data begins).
fn fields_key(regs: &Regs, sreg: u32, end: Option<u32>) -> R<MapKey> {
    // The key length is not on the lookup; follow the loads from `sreg` on.
    let mut fields = Vec::new();
    let mut off = reg_offset(sreg);
    while let Some((src, len)) = regs.slots.get(&off).filter(|_| end.is_none_or(|e| off < e)) {
        match src {
            Src::Field(f) => fields.push(*f),
            Src::Numgen(m) if fields.is_empty() => return Ok(MapKey::NumgenRandom { modulus: *m }),
            // numgen ends a key: nothing the encoder emits follows it.
            Src::Numgen(m) => {
                return Ok(MapKey::FieldsAndNumgen {
                    fields,
                    modulus: *m,
                })
            }
            _ => break,
        }
        off += (*len).div_ceil(4) * 4;
    }
    if fields.is_empty() {
        return Err("lookup key register holds no packet field".into());
    }
    Ok(MapKey::Fields(fields))
}

fn decode_cmp(srcs: &[Src], op: MatchOp, data: &[u8]) -> R<Expr> {
    if let [Src::Masked(f, mask)] = srcs {
        if data.iter().any(|b| *b != 0) {
            return Err("masked compare with non-zero value".into());
        }
        return Ok(Expr::Match {
            left: vec![*f],
            // `& bits != 0` is the positive test.
            op: if op == MatchOp::Neq {
                MatchOp::Eq
            } else {
                MatchOp::Neq
            },
            right: Rhs::Bits(*mask),
        });
    }
    let fields = srcs
        .iter()
        .map(|s| match s {
            Src::Field(f) => Ok(*f),
            other => Err(format!("compare of {other:?}")),
        })
        .collect::<R<Vec<Field>>>()?;
    // Interface-name prefix: `iifname "veth*"`.
    if let [f @ (Field::IifName | Field::OifName)] = fields.as_slice() {
        if data.len() < IFNAMSIZ {
            let name = String::from_utf8(data.to_vec()).map_err(|_| "interface name")?;
            return Ok(Expr::Match {
                left: vec![*f],
                op,
                right: Rhs::Value(vec![Value::IfName(format!("{name}*"))]),
            });
        }
    }
    let kinds: Vec<Kind> = fields.iter().map(|f| field_kind(*f)).collect();
    let values = split_concat(&kinds, data).ok_or("compare data does not fit the fields")?;
    Ok(Expr::Match {
        left: fields,
        op,
        right: Rhs::Value(values),
    })
}

pub(crate) fn verdict_of(code: i32, chain: Option<String>) -> R<Verdict> {
    Ok(match (code, chain) {
        (NF_ACCEPT, _) => Verdict::Accept,
        (NF_DROP, _) => Verdict::Drop,
        (NFT_CONTINUE, _) => Verdict::Continue,
        (NFT_RETURN, _) => Verdict::Return,
        (NFT_JUMP, Some(c)) => Verdict::Jump(c),
        (NFT_GOTO, Some(c)) => Verdict::Goto(c),
        (c, _) => return Err(format!("verdict code {c}")),
    })
}

fn u32_ne(b: &[u8]) -> R<u32> {
    Ok(u32::from_ne_bytes(
        b.try_into().map_err(|_| "expected 4 bytes".to_string())?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;
    use crate::netlink::encode_expr::{encode_rule, SetShapes};

    struct Shapes(Vec<Set>);
    impl SetShapes for Shapes {
        fn header(&self, name: &str) -> Option<&Set> {
            self.0.iter().find(|s| s.name == name)
        }
    }
    fn shapes() -> Shapes {
        let map = |name: &str, data: Vec<DataType>| Set {
            name: name.into(),
            key: vec![DataType::Mark],
            data: Some(SetData::Values(data)),
            ..Default::default()
        };
        Shapes(vec![
            map("eps", vec![DataType::Ipv4Addr, DataType::InetService]),
            map("addrs", vec![DataType::Ipv6Addr]),
        ])
    }

    fn roundtrip(family: Family, exprs: Vec<Expr>) {
        let vms = encode_rule(family, &shapes(), &Rule::new(exprs.clone())).unwrap();
        assert_eq!(decode_rule(family, &vms).unwrap(), exprs, "{vms:#?}");
    }

    fn m(left: Vec<Field>, op: MatchOp, right: Rhs) -> Expr {
        Expr::Match { left, op, right }
    }

    #[test]
    fn statements_roundtrip_through_vm() {
        let ip = |s: &str| Value::Ipv4(s.parse().unwrap());
        roundtrip(
            Family::Inet,
            vec![
                m(vec![Field::CtState], MatchOp::Eq, Rhs::Bits(6)),
                m(
                    vec![Field::IpSaddr, Field::L4Proto, Field::ThDport],
                    MatchOp::Eq,
                    Rhs::Set("svc".into()),
                ),
                m(
                    vec![Field::ThDport],
                    MatchOp::Neq,
                    Rhs::Range(Value::Port(1), Value::Port(9)),
                ),
                m(
                    vec![Field::Mark],
                    MatchOp::Eq,
                    Rhs::Range(Value::Mark(1), Value::Mark(300)),
                ),
                m(
                    vec![Field::IifName],
                    MatchOp::Eq,
                    Rhs::Value(vec![Value::IfName("veth*".into())]),
                ),
                m(
                    vec![Field::IpDaddr, Field::ThDport],
                    MatchOp::Eq,
                    Rhs::Value(vec![ip("1.2.3.4"), Value::Port(80)]),
                ),
                Expr::Counter,
                Expr::SetMarkBits(0x4000),
                Expr::Dnat {
                    family: NatFamily::Ip,
                    to: NatTarget::Map {
                        key: MapKey::NumgenRandom { modulus: 3 },
                        map: "eps".into(),
                    },
                },
            ],
        );
        roundtrip(
            Family::Inet,
            vec![
                m(
                    vec![Field::NfProto],
                    MatchOp::Eq,
                    Rhs::Value(vec![Value::NfProto(2)]),
                ),
                Expr::Counter,
                m(vec![Field::IpSaddr], MatchOp::Neq, Rhs::Set("x".into())),
                Expr::Vmap {
                    key: MapKey::Fields(vec![Field::Ip6Daddr]),
                    map: "v".into(),
                },
                Expr::Snat {
                    family: NatFamily::Ip6,
                    to: NatTarget::Map {
                        key: MapKey::Fields(vec![Field::Ip6Saddr]),
                        map: "addrs".into(),
                    },
                },
                Expr::Dnat {
                    family: NatFamily::Ip,
                    to: NatTarget::Addr {
                        addr: ip("10.0.0.1"),
                        port: Some(8080),
                    },
                },
                Expr::Masquerade { fully_random: true },
                Expr::Log {
                    prefix: Some("x ".into()),
                    group: Some(2),
                },
                Expr::SetUpdate {
                    op: SetUpdateOp::Update,
                    set: "d".into(),
                    key: vec![Field::IpSaddr, Field::ThDport],
                    timeout: Some(Duration::from_secs(30)),
                },
                m(
                    vec![Field::FibDaddrType],
                    MatchOp::Eq,
                    Rhs::Value(vec![Value::AddrType(addr_type::LOCAL)]),
                ),
                Expr::Reject(RejectKind::IcmpxAdminProhibited),
                Expr::Verdict(Verdict::Jump("c".into())),
            ],
        );
    }

    #[test]
    fn map_updates_and_ct_original_roundtrip() {
        let update = |key: Vec<Field>, data: Vec<Field>| Expr::MapUpdate {
            op: SetUpdateOp::Update,
            map: "aff".into(),
            key,
            data,
            timeout: Some(Duration::from_secs(10800)),
        };
        let tcp = m(
            vec![Field::L4Proto],
            MatchOp::Eq,
            Rhs::Value(vec![Value::Proto(proto::TCP)]),
        );
        for (key, data) in [
            (
                vec![
                    Field::IpSaddr,
                    Field::CtOriginalIpDaddr,
                    Field::L4Proto,
                    Field::CtOriginalProtoDst,
                ],
                vec![Field::IpDaddr, Field::ThDport],
            ),
            (
                vec![
                    Field::Ip6Saddr,
                    Field::CtOriginalIp6Daddr,
                    Field::L4Proto,
                    Field::CtOriginalProtoDst,
                ],
                vec![Field::Ip6Daddr, Field::ThDport],
            ),
        ] {
            roundtrip(
                Family::Inet,
                vec![
                    tcp.clone(),
                    m(
                        vec![Field::CtOriginalIpDaddr, Field::CtOriginalProtoDst],
                        MatchOp::Eq,
                        Rhs::Set("fe".into()),
                    ),
                    update(key, data),
                ],
            );
        }
        // The v6 key (40 bytes) and data (20) share the 64-byte register file.
        let e = vec![update(
            vec![
                Field::Ip6Saddr,
                Field::CtOriginalIp6Daddr,
                Field::L4Proto,
                Field::CtOriginalProtoDst,
            ],
            vec![Field::Ip6Daddr, Field::ThDport],
        )];
        let vms = encode_rule(Family::Inet, &shapes(), &Rule::new(e)).unwrap();
        assert!(
            matches!(
                vms.last(),
                Some(Vm::Dynset {
                    sreg_key: 1,
                    sreg_data: Some(18),
                    ..
                })
            ),
            "{vms:#?}"
        );
    }

    #[test]
    fn implicit_nfproto_dependency_is_dropped() {
        let e = vec![m(vec![Field::IpSaddr], MatchOp::Eq, Rhs::Set("s".into()))];
        let vms = encode_rule(Family::Inet, &shapes(), &Rule::new(e.clone())).unwrap();
        assert_eq!(vms.len(), 4, "nfproto load+cmp, payload, lookup");
        assert_eq!(decode_rule(Family::Inet, &vms).unwrap(), e);
        let vms = encode_rule(Family::Ip, &shapes(), &Rule::new(e.clone())).unwrap();
        assert_eq!(vms.len(), 2);
    }

    #[test]
    fn nat_map_port_register_follows_address() {
        let e = vec![Expr::Dnat {
            family: NatFamily::Ip,
            to: NatTarget::Map {
                key: MapKey::NumgenRandom { modulus: 2 },
                map: "eps".into(),
            },
        }];
        let vms = encode_rule(Family::Inet, &shapes(), &Rule::new(e)).unwrap();
        assert!(matches!(
            vms.last(),
            Some(Vm::Nat {
                reg_addr: Some(1),
                reg_proto: Some(9),
                ..
            })
        ));
    }
}
