//! Generators of kube-proxy-sized rulesets as [`nft::Table`]s, for benches and
//! kernel tests.
//!
//! Two layouts of the same Services ([`Layout`]):
//!
//! - [`Layout::ByEndpointCount`] (the default, the one that scales): services are
//!   grouped by their endpoint count N. One map per distinct N, `eps-N`, keyed
//!   `vip . proto . port . (numgen random mod N)` → `endpoint addr . port`, and one
//!   rule per distinct N in the regular chain `services` (jumped to from the NAT
//!   base chains):
//!
//!   ```text
//!   map eps-50 {
//!       typeof ip daddr . meta l4proto . th dport . numgen random mod 50 : ip daddr . th dport
//!       elements = { 10.96.0.0 . tcp . 80 . 0x00000000 : 10.128.0.0 . 8080, … }
//!   }
//!   chain services {
//!       meta l4proto tcp dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 50 map @eps-50
//!   }
//!   ```
//!
//!   A lookup miss (another N, or no Service) makes a rule not apply, so a packet
//!   tries at most one rule per distinct endpoint count (small in practice: the
//!   rule count is bounded by the number of distinct endpoint counts, not by the
//!   number of Services). Each map is bound from exactly one rule, so the
//!   kernel's bind walk over its elements happens once. A Service with an existing
//!   N is N element adds into an existing map; a new N is one map and one rule.
//!   No per-service chains or maps, no verdict elements: a change never makes the
//!   kernel revalidate the table graph or search a list of thousands of sets.
//! - [`Layout::PerService`] (the old shape, for comparison): a `vip . proto .
//!   port : goto svc-K` verdict map, one chain and one `numgen` endpoint map per
//!   service.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use nft::diff::Delta;
use nft::*;

/// How Services are laid out in the table (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// One map and one rule per distinct endpoint count.
    #[default]
    ByEndpointCount,
    /// One chain and one map per Service behind a verdict map (the old shape).
    PerService,
}

/// Services × endpoints, plus pod-policy set elements. Addresses are
/// deterministic functions of the indices so two generators with the same sizes
/// produce equal tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceRuleset {
    pub family: Family,
    pub services: u32,
    pub endpoints: u32,
    pub policy_elements: u32,
    pub layout: Layout,
}

/// Table name the benches load into (an `ip` table of our own).
pub const TABLE: &str = "kube-nft";
/// [`Layout::PerService`]: the vip . proto . port verdict map.
pub const SERVICES: &str = "services";
/// [`Layout::ByEndpointCount`]: the regular chain with one DNAT rule per group.
pub const SERVICES_CHAIN: &str = "services";
/// Pod-policy allow set: `src . dst . port`.
pub const POLICY: &str = "policy-allow";
/// Port every service listens on; endpoints listen on [`ENDPOINT_PORT`].
pub const SERVICE_PORT: u16 = 80;
pub const ENDPOINT_PORT: u16 = 8080;

/// One backend of a Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub addr: Ipv4Addr,
    pub port: u16,
}

/// The map of group `n` ([`Layout::ByEndpointCount`]).
pub fn group_map(n: u32) -> String {
    format!("eps-{n}")
}

/// The header of group map `n`.
pub fn group_set(n: u32) -> Set {
    Set {
        name: group_map(n),
        key: vec![
            DataType::Ipv4Addr,
            DataType::InetProto,
            DataType::InetService,
            DataType::Mark,
        ],
        data: Some(SetData::Values(vec![
            DataType::Ipv4Addr,
            DataType::InetService,
        ])),
        comment: Some(format!("Services with {n} endpoints")),
        ..Default::default()
    }
}

/// The DNAT rule of group `n`.
pub fn group_rule(n: u32) -> Rule {
    Rule::new(vec![
        Expr::Match {
            left: vec![Field::L4Proto],
            op: MatchOp::Eq,
            right: Rhs::Value(vec![Value::Proto(proto::TCP)]),
        },
        Expr::Dnat {
            family: NatFamily::Ip,
            to: NatTarget::Map {
                key: MapKey::FieldsAndNumgen {
                    fields: vec![Field::IpDaddr, Field::L4Proto, Field::ThDport],
                    modulus: n,
                },
                map: group_map(n),
            },
        },
    ])
    .with_comment(group_map(n))
}

/// The elements of a Service reachable at `vip . tcp . port` in its group map:
/// `vip . tcp . port . i : endpoint i`.
pub fn service_elements(vip: Ipv4Addr, port: u16, eps: &[Endpoint]) -> Vec<(ElemKey, ElemValue)> {
    eps.iter()
        .enumerate()
        .map(|(i, e)| slot_element(vip, port, i as u32, *e))
        .collect()
}

/// The element of slot `i` (`numgen` value `i`) of a Service: `vip . tcp . port
/// . i : endpoint`.
pub fn slot_element(vip: Ipv4Addr, port: u16, i: u32, e: Endpoint) -> (ElemKey, ElemValue) {
    (
        vec![
            KeyPart::Value(Value::Ipv4(vip)),
            KeyPart::Value(Value::Proto(proto::TCP)),
            KeyPart::Value(Value::Port(port)),
            KeyPart::Value(Value::Mark(i)),
        ],
        ElemValue {
            data: Some(ElemData::Values(vec![
                Value::Ipv4(e.addr),
                Value::Port(e.port),
            ])),
            ..Default::default()
        },
    )
}

/// What an agent knows about its Services ([`Layout::ByEndpointCount`]): each
/// Service's endpoints and the groups created so far, in creation order (the
/// order of their rules). [`ServiceState::table`] is the full desired table;
/// [`ServiceState::set_endpoints`] records the delta of one Service's change.
#[derive(Debug, Clone)]
pub struct ServiceState {
    pub gen: ServiceRuleset,
    /// Endpoints by Service index (VIP [`service_vip`], port [`SERVICE_PORT`]).
    pub services: BTreeMap<u32, Vec<Endpoint>>,
    /// Endpoint counts that have a map and a rule, in creation order. Groups that
    /// become empty stay (an empty map costs nothing; a resync may drop them).
    pub groups: Vec<u32>,
}

impl ServiceState {
    /// The generator's Services with their generation-0 endpoints.
    pub fn new(gen: ServiceRuleset) -> ServiceState {
        let mut st = ServiceState {
            gen,
            services: BTreeMap::new(),
            groups: Vec::new(),
        };
        for svc in 0..gen.services {
            let eps = default_endpoints(svc, gen.endpoints, 0);
            if !eps.is_empty() && !st.groups.contains(&(eps.len() as u32)) {
                st.groups.push(eps.len() as u32);
            }
            st.services.insert(svc, eps);
        }
        st
    }

    /// The whole table for this state (start-up and resync).
    pub fn table(&self) -> Table {
        let mut t = self.gen.skeleton();
        let mut maps: BTreeMap<u32, Set> =
            self.groups.iter().map(|n| (*n, group_set(*n))).collect();
        for (svc, eps) in &self.services {
            if let Some(m) = maps.get_mut(&(eps.len() as u32)) {
                m.elements
                    .extend(service_elements(service_vip(*svc), SERVICE_PORT, eps));
            }
        }
        for m in maps.into_values() {
            t.add_set(m);
        }
        let chain = t
            .chains
            .get_mut(SERVICES_CHAIN)
            .expect("skeleton has the services chain");
        chain.rules = self.groups.iter().map(|n| group_rule(*n)).collect();
        t
    }

    /// Give Service `svc` the endpoints `eps` (an empty list removes it) and
    /// record in `delta` what the kernel must change: its elements in the old and
    /// new group maps, and a new group's map and rule. O(endpoints): nothing else
    /// of the table is read.
    pub fn set_endpoints(&mut self, delta: &mut Delta, svc: u32, eps: Vec<Endpoint>) {
        let vip = service_vip(svc);
        let old = self.services.remove(&svc).unwrap_or_default();
        let (n_old, n_new) = (old.len() as u32, eps.len() as u32);
        if n_new > 0 && !self.groups.contains(&n_new) {
            self.groups.push(n_new);
            delta.add_set(&group_set(n_new));
            delta.add_rule(SERVICES_CHAIN, group_rule(n_new));
        }
        if n_old == n_new {
            // Same group: only the slots whose endpoint changed.
            let changed: Vec<usize> = (0..eps.len()).filter(|i| old[*i] != eps[*i]).collect();
            let slots = |list: &[Endpoint]| -> Vec<(ElemKey, ElemValue)> {
                changed
                    .iter()
                    .map(|i| slot_element(vip, SERVICE_PORT, *i as u32, list[*i]))
                    .collect()
            };
            if !changed.is_empty() {
                delta.elements(&group_map(n_new), &slots(&old), &slots(&eps));
            }
        } else {
            let old_elems = service_elements(vip, SERVICE_PORT, &old);
            let new_elems = service_elements(vip, SERVICE_PORT, &eps);
            if n_old > 0 {
                delta.elements(&group_map(n_old), &old_elems, &[]);
            }
            if n_new > 0 {
                delta.elements(&group_map(n_new), &[], &new_elems);
            }
        }
        if n_new > 0 {
            self.services.insert(svc, eps);
        }
    }

    /// The endpoints [`ServiceRuleset::change_endpoints`] moves, as
    /// `(service, endpoint index)` pairs.
    pub fn moved(&self, count: u32, generation: u32) -> Vec<(u32, u32)> {
        moved_endpoints(&self.gen, count, generation)
    }
}

/// Endpoints of Service `svc`: `n` of them, generation `generation`.
pub fn default_endpoints(svc: u32, n: u32, generation: u32) -> Vec<Endpoint> {
    (0..n).map(|ep| endpoint(svc, ep, generation)).collect()
}

/// Endpoint addresses in 10.128.0.0/9, distinct per (service, endpoint,
/// generation) within a run.
pub fn endpoint(svc: u32, ep: u32, generation: u32) -> Endpoint {
    let base = u32::from(Ipv4Addr::new(10, 128, 0, 0));
    let n = (svc.wrapping_mul(64) + ep + generation.wrapping_mul(1_000_003)) % (1 << 23);
    Endpoint {
        addr: Ipv4Addr::from(base + n),
        port: ENDPOINT_PORT,
    }
}

fn moved_endpoints(g: &ServiceRuleset, count: u32, generation: u32) -> Vec<(u32, u32)> {
    (0..count)
        .map(|i| {
            let svc = (i.wrapping_mul(7_919) + generation) % g.services.max(1);
            let ep = (i + generation) % g.endpoints.max(1);
            (svc, ep)
        })
        .collect()
}

impl ServiceRuleset {
    /// The kube-proxy-sized default: 5,000 services × 50 endpoints, 10,000 policy
    /// elements, grouped by endpoint count.
    pub fn kube_proxy_sized() -> Self {
        ServiceRuleset {
            family: Family::Ip,
            services: 5_000,
            endpoints: 50,
            policy_elements: 10_000,
            layout: Layout::ByEndpointCount,
        }
    }

    /// The whole table in the generator's layout.
    pub fn build(&self) -> Table {
        match self.layout {
            Layout::ByEndpointCount => ServiceState::new(*self).table(),
            Layout::PerService => {
                let mut t = self.skeleton();
                for svc in 0..self.services {
                    self.add_service(&mut t, svc);
                }
                t
            }
        }
    }

    /// Everything but the Services: base chains, the policy set, and the
    /// layout's dispatch (the empty `services` chain, or the empty verdict map).
    pub fn skeleton(&self) -> Table {
        let mut t = Table::new(self.family, TABLE);
        t.comment = Some("kube-nft bench ruleset".into());
        match self.layout {
            Layout::ByEndpointCount => {
                t.add_chain(Chain {
                    name: SERVICES_CHAIN.into(),
                    comment: Some("one DNAT rule per endpoint count".into()),
                    ..Default::default()
                });
            }
            Layout::PerService => {
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
            }
        }
        for hook in [Hook::Prerouting, Hook::Output] {
            t.add_chain(nat_dispatch_chain(hook, self.layout));
        }
        t.add_chain(forward_chain());
        t.add_set(self.policy_set());
        t
    }

    /// Add service `svc` with its generation-0 endpoints to `t` (a table of this
    /// generator's layout). Indices at or beyond `services` make new services for
    /// incremental tests.
    pub fn add_service(&self, t: &mut Table, svc: u32) {
        let eps = default_endpoints(svc, self.endpoints, 0);
        match self.layout {
            Layout::ByEndpointCount => {
                let n = eps.len() as u32;
                if n == 0 {
                    return;
                }
                let map = t.sets.entry(group_map(n)).or_insert_with(|| group_set(n));
                map.elements
                    .extend(service_elements(service_vip(svc), SERVICE_PORT, &eps));
                let chain = t
                    .chains
                    .get_mut(SERVICES_CHAIN)
                    .expect("services chain exists");
                let rule = group_rule(n);
                if !chain.rules.contains(&rule) {
                    chain.rules.push(rule);
                }
            }
            Layout::PerService => self.add_service_chain(t, svc, &eps),
        }
    }

    fn add_service_chain(&self, t: &mut Table, svc: u32, eps: &[Endpoint]) {
        let chain = service_chain(svc);
        let map = endpoints_map(svc);
        let mut set = Set {
            name: map.clone(),
            key: vec![DataType::Mark],
            data: Some(SetData::Values(vec![
                DataType::Ipv4Addr,
                DataType::InetService,
            ])),
            ..Default::default()
        };
        for (ep, e) in eps.iter().enumerate() {
            set.elements
                .insert(endpoint_key(ep as u32), endpoint_value(*e));
        }
        t.add_set(set);
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
                            modulus: eps.len() as u32,
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
        for (svc, ep) in moved_endpoints(self, count, generation) {
            let e = endpoint(svc, ep, generation);
            match self.layout {
                Layout::ByEndpointCount => {
                    let Some(set) = t.sets.get_mut(&group_map(self.endpoints)) else {
                        continue;
                    };
                    let (k, v) = service_elements(service_vip(svc), SERVICE_PORT, &[e])
                        .pop()
                        .expect("one element");
                    let mut k = k;
                    k[3] = KeyPart::Value(Value::Mark(ep));
                    if set.elements.contains_key(&k) {
                        set.elements.insert(k, v);
                    }
                }
                Layout::PerService => {
                    if let Some(s) = t.sets.get_mut(&endpoints_map(svc)) {
                        s.elements.insert(endpoint_key(ep), endpoint_value(e));
                    }
                }
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

    /// Elements the kernel should hold, for cheap read-back checks: (services,
    /// endpoint elements summed over maps, policy set). Either layout.
    pub fn element_counts(t: &Table) -> (usize, usize, usize) {
        let eps_maps = || {
            t.sets
                .values()
                .filter(|s| s.name.ends_with("-eps") || s.name.starts_with("eps-"))
        };
        let eps = eps_maps().map(|s| s.elements.len()).sum();
        let len = |n: &str| t.sets.get(n).map_or(0, |s| s.elements.len());
        // Grouped: one element with numgen value 0 per Service.
        let grouped: usize = eps_maps()
            .filter(|s| s.name.starts_with("eps-"))
            .map(|s| {
                s.elements
                    .keys()
                    .filter(|k| k.last() == Some(&KeyPart::Value(Value::Mark(0))))
                    .count()
            })
            .sum();
        (len(SERVICES) + grouped, eps, len(POLICY))
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

fn endpoint_value(e: Endpoint) -> ElemValue {
    ElemValue {
        data: Some(ElemData::Values(vec![
            Value::Ipv4(e.addr),
            Value::Port(e.port),
        ])),
        ..Default::default()
    }
}

fn nat_dispatch_chain(hook: Hook, layout: Layout) -> Chain {
    let name = match hook {
        Hook::Output => "nat-output",
        _ => "nat-prerouting",
    };
    let rule = match layout {
        Layout::ByEndpointCount => {
            Rule::new(vec![Expr::Verdict(Verdict::Jump(SERVICES_CHAIN.into()))])
        }
        Layout::PerService => Rule::new(vec![Expr::Vmap {
            key: MapKey::Fields(vec![Field::IpDaddr, Field::L4Proto, Field::ThDport]),
            map: SERVICES.into(),
        }]),
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
        rules: vec![rule],
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

#[cfg(test)]
mod tests {
    use super::*;

    fn small(layout: Layout) -> ServiceRuleset {
        ServiceRuleset {
            services: 3,
            endpoints: 4,
            policy_elements: 10,
            layout,
            ..ServiceRuleset::kube_proxy_sized()
        }
    }

    #[test]
    fn small_ruleset_validates_and_counts() {
        for layout in [Layout::ByEndpointCount, Layout::PerService] {
            let g = small(layout);
            let t = g.build();
            assert!(
                nft::render::validate(&t).is_empty(),
                "{:?}",
                nft::render::validate(&t)
            );
            assert_eq!(ServiceRuleset::element_counts(&t), (3, 12, 10));
            assert_eq!(g.build(), t, "deterministic");
        }
        let grouped = small(Layout::ByEndpointCount).build();
        assert_eq!(grouped.chains.len(), 4, "services + 3 base chains");
        assert_eq!(grouped.sets.len(), 2, "eps-4 + policy");
        assert_eq!(small(Layout::PerService).build().chains.len(), 3 + 3);
    }

    #[test]
    fn deltas_replay_to_the_full_table() {
        let g = small(Layout::ByEndpointCount);
        let mut st = ServiceState::new(g);
        let mut committed = Some(st.table());
        let mut t = st.table();
        // Same N, a new N, a move between groups, an endpoint change, a removal.
        let steps: Vec<(u32, Vec<Endpoint>)> = vec![
            (10, default_endpoints(10, 4, 0)),
            (11, default_endpoints(11, 2, 0)),
            (1, default_endpoints(1, 2, 1)),
            (0, default_endpoints(0, 4, 2)),
            (2, vec![]),
        ];
        for (svc, eps) in steps {
            let mut d = Delta::new(g.family, TABLE);
            st.set_endpoints(&mut d, svc, eps);
            nft::diff::apply(&mut committed, &d.into_batch()).unwrap();
            t = st.table();
            assert_eq!(committed.as_ref(), Some(&t));
        }
        assert!(t.sets.contains_key("eps-2"));
        assert!(nft::render::validate(&t).is_empty());
        // add_service/change_endpoints on a table agree with the state.
        let mut by_table = g.build();
        g.add_service(&mut by_table, 10);
        let mut st = ServiceState::new(g);
        let mut d = Delta::new(g.family, TABLE);
        st.set_endpoints(&mut d, 10, default_endpoints(10, 4, 0));
        for (svc, ep) in st.moved(2, 1) {
            let mut eps = st.services[&svc].clone();
            eps[ep as usize] = endpoint(svc, ep, 1);
            st.set_endpoints(&mut d, svc, eps);
        }
        g.change_endpoints(&mut by_table, 2, 1);
        assert_eq!(st.table(), by_table);
    }
}
