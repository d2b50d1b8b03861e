//! Generators of kube-proxy-sized rulesets as [`nft::Table`]s, for benches and
//! kernel tests. The `services` bench extends [`ServiceRuleset`].
//!
//! The shape follows DESIGN.md ("Dispatch by lookup, not by rule lists") and the
//! measurements in shared/notes/nftables-netlink.md: no chain per endpoint (5,000 ×
//! 50 of those took 207 s to load). Per packet: one verdict-map lookup on
//! `vip . proto . port`, then one numgen-indexed map lookup for the endpoint.

use std::net::Ipv4Addr;

use nft::*;

/// Services × endpoints behind a `vip . proto . port : verdict` map, plus
/// pod-policy set elements. Addresses are deterministic functions of the indices
/// so two generators with the same sizes produce equal tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceRuleset {
    pub family: Family,
    pub services: u32,
    pub endpoints: u32,
    pub policy_elements: u32,
}

/// Table name the benches load into (an `ip` table of our own).
pub const TABLE: &str = "kube-nft";
/// The vip . proto . port verdict map.
pub const SERVICES: &str = "services";
/// Pod-policy allow set: `src . dst . port`.
pub const POLICY: &str = "policy-allow";
/// Port every service listens on; endpoints listen on [`ENDPOINT_PORT`].
pub const SERVICE_PORT: u16 = 80;
pub const ENDPOINT_PORT: u16 = 8080;

impl ServiceRuleset {
    /// The kube-proxy-sized default: 5,000 services × 50 endpoints, 10,000 policy
    /// elements.
    pub fn kube_proxy_sized() -> Self {
        ServiceRuleset {
            family: Family::Ip,
            services: 5_000,
            endpoints: 50,
            policy_elements: 10_000,
        }
    }

    /// The table: base chains, the services vmap, per-service chains and endpoint
    /// maps, the policy set.
    pub fn build(&self) -> Table {
        let mut t = Table::new(self.family, TABLE);
        t.comment = Some("kube-nft bench ruleset".into());
        t.add_set(Set {
            name: SERVICES.into(),
            key: vec![
                DataType::Ipv4Addr,
                DataType::InetProto,
                DataType::InetService,
            ],
            data: Some(SetData::Verdict),
            comment: Some("Service VIP . proto . port".into()),
            ..Default::default()
        });
        for hook in [Hook::Prerouting, Hook::Output] {
            t.add_chain(nat_dispatch_chain(hook));
        }
        t.add_chain(forward_chain());
        t.add_set(self.policy_set());
        for svc in 0..self.services {
            self.add_service(&mut t, svc);
        }
        t
    }

    /// Add service `svc` (its chain, endpoint map and vmap element) to `t`.
    /// Indices at or beyond `services` make new services for incremental tests.
    pub fn add_service(&self, t: &mut Table, svc: u32) {
        let chain = service_chain(svc);
        let map = endpoints_map(svc);
        let mut eps = Set {
            name: map.clone(),
            key: vec![DataType::Mark],
            data: Some(SetData::Values(vec![
                DataType::Ipv4Addr,
                DataType::InetService,
            ])),
            ..Default::default()
        };
        for ep in 0..self.endpoints {
            eps.elements
                .insert(endpoint_key(ep), endpoint_value(svc, ep, 0));
        }
        t.add_set(eps);
        t.add_chain(Chain {
            name: chain.clone(),
            comment: Some(format!("bench/svc-{svc}")),
            rules: vec![Rule::new(vec![
                Expr::Match {
                    left: vec![Field::L4Proto],
                    op: MatchOp::Eq,
                    right: Rhs::Value(vec![Value::Proto(proto::TCP)]),
                },
                Expr::Dnat {
                    family: NatFamily::Ip,
                    to: NatTarget::Map {
                        key: MapKey::NumgenRandom {
                            modulus: self.endpoints,
                        },
                        map,
                    },
                },
            ])
            .with_comment(format!("bench/svc-{svc}"))],
            ..Default::default()
        });
        t.sets
            .get_mut(SERVICES)
            .expect("services map exists")
            .elements
            .insert(
                service_key(svc),
                ElemValue {
                    data: Some(ElemData::Verdict(Verdict::Goto(chain))),
                    ..Default::default()
                },
            );
    }

    /// Move `count` endpoints to new addresses, spread over the services
    /// (`generation` makes each call's addresses distinct).
    pub fn change_endpoints(&self, t: &mut Table, count: u32, generation: u32) {
        for i in 0..count {
            let svc = (i.wrapping_mul(7_919) + generation) % self.services.max(1);
            let ep = (i + generation) % self.endpoints.max(1);
            if let Some(s) = t.sets.get_mut(&endpoints_map(svc)) {
                s.elements
                    .insert(endpoint_key(ep), endpoint_value(svc, ep, generation));
            }
        }
    }

    fn policy_set(&self) -> Set {
        let mut s = Set {
            name: POLICY.into(),
            key: vec![
                DataType::Ipv4Addr,
                DataType::Ipv4Addr,
                DataType::InetService,
            ],
            comment: Some("allowed src pod . dst pod . port".into()),
            ..Default::default()
        };
        for i in 0..self.policy_elements {
            // Pods live in 10.200.0.0/16 (a space the endpoints do not use).
            let src = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 0)) + i % 4_096);
            let dst = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 201, 0, 0)) + i / 4_096);
            s.elements.insert(
                vec![
                    KeyPart::Value(Value::Ipv4(src)),
                    KeyPart::Value(Value::Ipv4(dst)),
                    KeyPart::Value(Value::Port(ENDPOINT_PORT)),
                ],
                ElemValue::default(),
            );
        }
        s
    }

    /// Elements the kernel should hold per set, for cheap read-back checks:
    /// (services vmap, endpoint elements summed over maps, policy set).
    pub fn element_counts(t: &Table) -> (usize, usize, usize) {
        let eps = t
            .sets
            .values()
            .filter(|s| s.name.ends_with("-eps"))
            .map(|s| s.elements.len())
            .sum();
        let len = |n: &str| t.sets.get(n).map_or(0, |s| s.elements.len());
        (len(SERVICES), eps, len(POLICY))
    }
}

pub fn service_chain(svc: u32) -> String {
    format!("svc-{svc}")
}

pub fn endpoints_map(svc: u32) -> String {
    format!("svc-{svc}-eps")
}

/// Service VIPs: 10.96.0.0 + index (10.96.0.0/12 like a default service CIDR).
pub fn service_vip(svc: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + svc)
}

fn service_key(svc: u32) -> ElemKey {
    vec![
        KeyPart::Value(Value::Ipv4(service_vip(svc))),
        KeyPart::Value(Value::Proto(proto::TCP)),
        KeyPart::Value(Value::Port(SERVICE_PORT)),
    ]
}

fn endpoint_key(ep: u32) -> ElemKey {
    vec![KeyPart::Value(Value::Mark(ep))]
}

/// Endpoint addresses in 10.128.0.0/9, distinct per (service, endpoint,
/// generation) within a run.
fn endpoint_value(svc: u32, ep: u32, generation: u32) -> ElemValue {
    let base = u32::from(Ipv4Addr::new(10, 128, 0, 0));
    let n = (svc * 64 + ep + generation.wrapping_mul(1_000_003)) % (1 << 23);
    ElemValue {
        data: Some(ElemData::Values(vec![
            Value::Ipv4(Ipv4Addr::from(base + n)),
            Value::Port(ENDPOINT_PORT),
        ])),
        ..Default::default()
    }
}

fn nat_dispatch_chain(hook: Hook) -> Chain {
    let name = match hook {
        Hook::Output => "nat-output",
        _ => "nat-prerouting",
    };
    Chain {
        name: name.into(),
        base: Some(BaseChain {
            kind: ChainType::Nat,
            hook,
            priority: -100,
            policy: ChainPolicy::Accept,
        }),
        comment: Some("Service dispatch".into()),
        rules: vec![Rule::new(vec![Expr::Vmap {
            key: MapKey::Fields(vec![Field::IpDaddr, Field::L4Proto, Field::ThDport]),
            map: SERVICES.into(),
        }])],
    }
}

/// Forward filter: established first, then the policy set. Policy `accept` so
/// loading the bench ruleset into a router never cuts unrelated traffic.
fn forward_chain() -> Chain {
    Chain {
        name: "forward".into(),
        base: Some(BaseChain {
            kind: ChainType::Filter,
            hook: Hook::Forward,
            priority: 0,
            policy: ChainPolicy::Accept,
        }),
        comment: Some("pod policy".into()),
        rules: vec![
            Rule::new(vec![
                Expr::Match {
                    left: vec![Field::CtState],
                    op: MatchOp::Eq,
                    right: Rhs::Bits(ct_state::ESTABLISHED | ct_state::RELATED),
                },
                Expr::Verdict(Verdict::Accept),
            ]),
            Rule::new(vec![
                Expr::Match {
                    left: vec![Field::IpSaddr, Field::IpDaddr, Field::ThDport],
                    op: MatchOp::Eq,
                    right: Rhs::Set(POLICY.into()),
                },
                Expr::Verdict(Verdict::Accept),
            ])
            .with_comment("bench/policy"),
        ],
    }
}

/// The same services in the alternative layout, as `nft -f` text: one shared
/// endpoint map indexed by `numgen random mod N offset K` (service `i`'s endpoints
/// at `i * 64 ..`), so the table holds 3 sets instead of `services + 2`. The model
/// has no numgen offset yet, so this layout exists as text only, for the bench's
/// comparison. Table `kube-nft-alt`; policy set and chains omitted (same in both).
pub fn shared_map_text(g: &ServiceRuleset, services: std::ops::Range<u32>, header: bool) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let eps = |s: &mut String, svc: u32| {
        for ep in 0..g.endpoints {
            if let Some(ElemData::Values(v)) = endpoint_value(svc, ep, 0).data {
                if let (Value::Ipv4(a), Value::Port(p)) = (&v[0], &v[1]) {
                    let _ = write!(s, "{} : {a} . {p}, ", svc * 64 + ep);
                }
            }
        }
    };
    let rule = |svc: u32| {
        format!(
            "meta l4proto tcp dnat ip to numgen random mod {} offset {} map @endpoints",
            g.endpoints,
            svc * 64
        )
    };
    if !header {
        // Incremental: `add` commands, as an agent would send for one service.
        for svc in services {
            let _ = writeln!(s, "add chain ip kube-nft-alt svc-{svc}");
            let _ = writeln!(s, "add rule ip kube-nft-alt svc-{svc} {}", rule(svc));
            let _ = write!(s, "add element ip kube-nft-alt endpoints {{ ");
            eps(&mut s, svc);
            let _ = writeln!(s, "}}");
            let _ = writeln!(
                s,
                "add element ip kube-nft-alt services {{ {} . tcp . {SERVICE_PORT} : goto svc-{svc} }}",
                service_vip(svc)
            );
        }
        return s;
    }
    // Cold load: one table block, like `render_text` writes the model's layout.
    let _ = writeln!(s, "table ip kube-nft-alt {{");
    let _ = write!(
        s,
        "  map services {{ type ipv4_addr . inet_proto . inet_service : verdict; elements = {{ "
    );
    for svc in services.clone() {
        let _ = write!(
            s,
            "{} . tcp . {SERVICE_PORT} : goto svc-{svc}, ",
            service_vip(svc)
        );
    }
    let _ = writeln!(s, "}} }}");
    let _ = write!(
        s,
        "  map endpoints {{ typeof numgen random mod 1 : ip daddr . tcp dport\n    elements = {{ "
    );
    for svc in services.clone() {
        eps(&mut s, svc);
    }
    let _ = writeln!(s, "}} }}");
    for svc in services {
        let _ = writeln!(s, "  chain svc-{svc} {{ {}; }}", rule(svc));
    }
    for hook in ["prerouting", "output"] {
        let _ = writeln!(
            s,
            "  chain nat-{hook} {{ type nat hook {hook} priority -100; policy accept; \
             ip daddr . meta l4proto . th dport vmap @services; }}"
        );
    }
    let _ = writeln!(s, "}}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_ruleset_validates_and_counts() {
        let g = ServiceRuleset {
            services: 3,
            endpoints: 4,
            policy_elements: 10,
            ..ServiceRuleset::kube_proxy_sized()
        };
        let t = g.build();
        assert!(
            nft::render::validate(&t).is_empty(),
            "{:?}",
            nft::render::validate(&t)
        );
        assert_eq!(ServiceRuleset::element_counts(&t), (3, 12, 10));
        assert_eq!(t.chains.len(), 3 + 3);
        assert_eq!(g.build(), t, "deterministic");
    }
}
