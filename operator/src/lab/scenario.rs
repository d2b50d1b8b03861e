//! The lab's scenario file (pure): steps run in order, each an `apply`, a
//! `delete` or a `probe`.
//!
//! ```yaml
//! steps:
//!   - probe: {protocol: TCP, port: 80, to: pod, expect: {allow: ["shop/frontend-1->shop/backend"]}}
//!   - apply: [ {apiVersion: v1, kind: Pod, metadata: {…}, spec: {…}} ]   # create or replace
//!   - delete: [ {kind: NetworkPolicy, namespace: shop, name: allow-web} ]
//!   - probe: {protocol: UDP, port: 53, expect: {deny: ["*/*->kube-system/dns"]}}
//!   - probe: {port: 80, family: IPv6}        # to and from the pods' IPv6 addresses
//! ```
//!
//! * `expect` lists pairs `from->to` (`namespace/name`; `*` matches any namespace
//!   or name); pairs not listed get the opposite verdict. Without `expect` the
//!   lab expects what explain says.
//! * `protocol` defaults to TCP, `to` to `pod`, `from` to `pod`.
//! * `to: service` probes every ClusterIP of a Service port with that protocol
//!   and port; `to: nodeport` that port's NodePort on every node (columns
//!   `namespace/name@node`); `to: loadbalancer` its load-balancer IPs and
//!   externalIPs. Columns are named by the Service, and so are expectations
//!   (`x/a->y/web`).
//! * `from: outside` probes from the lab's host beyond the cluster CIDR (row
//!   `outside`, `outside->y/web` in expectations); the lab's router sends the
//!   Service CIDR to the first node, as clusters that announce it do. `to:
//!   outside` probes that host from the pods (it answers on the probed port),
//!   to see masquerade of traffic leaving the cluster.
//! * `family` (`IPv4` or `IPv6`, default `IPv4`; a kube-nft extension) picks the
//!   address family: both ends' addresses of that family are used, and explain
//!   judges the flow between those addresses. A pair where either pod has no
//!   address of the family is not probed (nor judged). Pods get IPv6 addresses
//!   from their node's IPv6 pod CIDR (`spec.podCIDRs`, or `--pod-cidr-v6`).
//! * `apply` items are inline manifests (any kind the cluster model holds).

use std::fmt;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use super::Protocol;
use crate::cluster::{Object, ObjectKey};

/// A parsed, checked scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Create or replace each manifest (by kind/namespace/name).
    Apply(Vec<Value>),
    Delete(Vec<ObjectRef>),
    Probe(ProbeStep),
}

/// What a `delete` names. `namespace` is ignored for cluster-scoped kinds and
/// defaults to `default` for namespaced ones, like kubectl.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectRef {
    pub kind: String,
    #[serde(default)]
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectRef {
    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(
            self.namespace.as_deref().unwrap_or("default"),
            self.name.as_str(),
        )
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind.as_str() {
            "Namespace" | "Node" => write!(f, "{} {}", self.kind, self.name),
            _ => write!(f, "{} {}", self.kind, self.key()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Pod,
    /// ClusterIPs.
    Service,
    NodePort,
    LoadBalancer,
    /// The lab's host beyond the cluster CIDR (it answers on the probed port).
    Outside,
}

impl Target {
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Pod => "pod",
            Target::Service => "service",
            Target::NodePort => "nodeport",
            Target::LoadBalancer => "loadbalancer",
            Target::Outside => "outside",
        }
    }
}

/// Where probes start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Pod,
    /// The lab's host beyond the cluster CIDR.
    Outside,
}

/// The row name, and the key in expectations, of the outside host.
pub const OUTSIDE: &str = "outside";

/// The key the outside host has in expectations (no namespace).
pub fn outside_key() -> ObjectKey {
    ObjectKey::new("", OUTSIDE)
}

pub use crate::policy::Family;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeStep {
    pub protocol: Protocol,
    pub port: u16,
    pub to: Target,
    pub from: Source,
    pub family: Family,
    /// `None`: expect explain's verdict.
    pub expect: Option<Expect>,
}

/// Listed pairs get `verdict`, the others its opposite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    /// `true` for an `allow:` list, `false` for `deny:`.
    pub verdict: bool,
    pub pairs: Vec<PairPattern>,
}

impl Expect {
    /// The expected verdict for one ordered pair.
    pub fn expected(&self, from: &ObjectKey, to: &ObjectKey) -> bool {
        let listed = self.pairs.iter().any(|p| p.matches(from, to));
        listed == self.verdict
    }
}

/// `ns/name->ns/name`; either part of each side may be `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairPattern {
    pub from: KeyPattern,
    pub to: KeyPattern,
}

impl PairPattern {
    pub fn matches(&self, from: &ObjectKey, to: &ObjectKey) -> bool {
        self.from.matches(from) && self.to.matches(to)
    }
}

impl fmt::Display for PairPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}->{}", self.from, self.to)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPattern {
    pub namespace: String,
    pub name: String,
}

impl KeyPattern {
    pub fn matches(&self, key: &ObjectKey) -> bool {
        (self.namespace == "*" || self.namespace == key.namespace)
            && (self.name == "*" || self.name == key.name)
    }

    /// A pattern without `*` names exactly one pod.
    pub fn exact(&self) -> Option<ObjectKey> {
        (self.namespace != "*" && self.name != "*")
            .then(|| ObjectKey::new(self.namespace.as_str(), self.name.as_str()))
    }
}

impl fmt::Display for KeyPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            return f.write_str(&self.name);
        }
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

pub fn parse_pair(s: &str) -> Result<PairPattern, String> {
    let (from, to) = s
        .split_once("->")
        .ok_or_else(|| format!("`{s}` is not FROM->TO (namespace/pod->namespace/pod)"))?;
    let side = |part: &str| -> Result<KeyPattern, String> {
        if part.trim() == OUTSIDE {
            return Ok(KeyPattern {
                namespace: String::new(),
                name: OUTSIDE.into(),
            });
        }
        match part.trim().split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(KeyPattern {
                    namespace: ns.into(),
                    name: name.into(),
                })
            }
            _ => Err(format!("`{s}`: `{}` is not namespace/pod", part.trim())),
        }
    };
    Ok(PairPattern {
        from: side(from)?,
        to: side(to)?,
    })
}

/// The file's wire shape; checked into [`Scenario`] by [`parse`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    steps: Vec<RawStep>,
}

// Structs with optional fields rather than enums: YAML libraries read
// externally tagged enums as `!tag`s, and people write `- probe: {…}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    #[serde(default)]
    apply: Option<Vec<Value>>,
    #[serde(default)]
    delete: Option<Vec<ObjectRef>>,
    #[serde(default)]
    probe: Option<RawProbe>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    #[serde(default)]
    protocol: Option<String>,
    port: u16,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    family: Option<String>,
    #[serde(default)]
    expect: Option<RawExpect>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpect {
    #[serde(default)]
    allow: Option<Vec<String>>,
    #[serde(default)]
    deny: Option<Vec<String>>,
}

/// Parses and checks a scenario; errors name the step (`steps[2].probe.port`).
pub fn parse(text: &str) -> Result<Scenario, String> {
    let de = serde_norway::Deserializer::from_str(text);
    let raw: RawScenario =
        serde_path_to_error::deserialize(de).map_err(|e| match e.path().to_string() {
            p if p == "." => e.inner().to_string(),
            p => format!("{p}: {}", e.inner()),
        })?;
    let steps = raw
        .steps
        .into_iter()
        .enumerate()
        .map(|(i, step)| check_step(step).map_err(|e| format!("steps[{i}]{e}")))
        .collect::<Result<_, _>>()?;
    Ok(Scenario { steps })
}

fn check_step(step: RawStep) -> Result<Step, String> {
    Ok(match (step.apply, step.delete, step.probe) {
        (Some(items), None, None) => {
            for (j, item) in items.iter().enumerate() {
                to_object(item).map_err(|e| format!(".apply[{j}]: {e}"))?;
            }
            Step::Apply(items)
        }
        (None, Some(refs), None) => {
            for (j, r) in refs.iter().enumerate() {
                if !DELETABLE.contains(&r.kind.as_str()) {
                    return Err(format!(
                        ".delete[{j}].kind: `{}` is not one of {}",
                        r.kind,
                        DELETABLE.join(", ")
                    ));
                }
            }
            Step::Delete(refs)
        }
        (None, None, Some(p)) => {
            let protocol = match p.protocol.as_deref() {
                None => Protocol::Tcp,
                Some(s) => Protocol::parse(s)
                    .ok_or_else(|| format!(".probe.protocol: `{s}` is not TCP, UDP or SCTP"))?,
            };
            if p.port == 0 {
                return Err(".probe.port: 0 is not a port number (1-65535)".into());
            }
            let to = match p.to.as_deref().unwrap_or("pod") {
                "pod" => Target::Pod,
                "service" => Target::Service,
                "nodeport" => Target::NodePort,
                "loadbalancer" => Target::LoadBalancer,
                "outside" => Target::Outside,
                other => {
                    return Err(format!(
                        ".probe.to: `{other}` is not `pod`, `service`, `nodeport`, `loadbalancer` or `outside`"
                    ))
                }
            };
            let from = match p.from.as_deref().unwrap_or("pod") {
                "pod" => Source::Pod,
                "outside" => Source::Outside,
                other => return Err(format!(".probe.from: `{other}` is not `pod` or `outside`")),
            };
            if from == Source::Outside && to == Target::Outside {
                return Err(".probe: from outside to outside probes nothing".into());
            }
            let family = match p.family.as_deref() {
                None => Family::IPv4,
                Some(s) => Family::parse(s)
                    .ok_or_else(|| format!(".probe.family: `{s}` is not IPv4 or IPv6"))?,
            };
            let expect = p
                .expect
                .map(|e| {
                    let (verdict, list, field) = match (e.allow, e.deny) {
                        (Some(l), None) => (true, l, "allow"),
                        (None, Some(l)) => (false, l, "deny"),
                        _ => {
                            return Err(
                                ".probe.expect: exactly one of `allow` or `deny`".to_string()
                            )
                        }
                    };
                    let pairs = list
                        .iter()
                        .enumerate()
                        .map(|(k, s)| {
                            parse_pair(s).map_err(|e| format!(".probe.expect.{field}[{k}]: {e}"))
                        })
                        .collect::<Result<_, _>>()?;
                    Ok::<_, String>(Expect { verdict, pairs })
                })
                .transpose()?;
            Step::Probe(ProbeStep {
                protocol,
                port: p.port,
                to,
                from,
                family,
                expect,
            })
        }
        _ => return Err(": a step is exactly one of `apply`, `delete` or `probe`".into()),
    })
}

/// Kinds a `delete` step may name.
pub const DELETABLE: [&str; 6] = [
    "Namespace",
    "Pod",
    "NetworkPolicy",
    "Service",
    "EndpointSlice",
    "Node",
];

/// A manifest as a model object; errors name the field.
pub fn to_object(value: &Value) -> Result<Object, String> {
    fn typed<T: DeserializeOwned>(value: &Value) -> Result<T, String> {
        serde_path_to_error::deserialize(value.clone())
            .map_err(|e| format!("field {}: {}", e.path(), e.inner()))
    }
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
    if value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err(format!("{kind}: metadata.name is required"));
    }
    Ok(match kind {
        "Namespace" => Object::Namespace(typed::<Namespace>(value)?),
        "Pod" => Object::Pod(typed::<Pod>(value)?),
        "Service" => Object::Service(typed::<Service>(value)?),
        "EndpointSlice" => Object::EndpointSlice(typed::<EndpointSlice>(value)?),
        "NetworkPolicy" => Object::NetworkPolicy(typed::<NetworkPolicy>(value)?),
        "Node" => Object::Node(typed::<Node>(value)?),
        "" => return Err("kind is missing".into()),
        other => return Err(format!("kind `{other}` is not one the lab understands")),
    })
}

impl Scenario {
    /// The default scenario: one probe per declared (protocol, port) and
    /// family (in that order: a port's IPv4 probe, then its IPv6 one), expecting
    /// explain's verdict.
    pub fn from_ports(ports: &[(Protocol, u16)], families: &[Family]) -> Scenario {
        Scenario {
            steps: ports
                .iter()
                .flat_map(|&(protocol, port)| {
                    families.iter().map(move |&family| {
                        Step::Probe(ProbeStep {
                            protocol,
                            port,
                            to: Target::Pod,
                            from: Source::Pod,
                            family,
                            expect: None,
                        })
                    })
                })
                .collect(),
        }
    }

    /// The default probes of Services: every (protocol, port) of a Service
    /// through its ClusterIPs, and from outside through NodePorts or load
    /// balancers for Services that have them (IPv4), expecting explain's
    /// verdict.
    pub fn service_probes(cluster: &crate::cluster::Cluster) -> Scenario {
        use crate::service::spec::{self, ServiceType};
        let mut probes: Vec<(Target, Source, Protocol, u16)> = Vec::new();
        for svc in cluster.services().values() {
            let Ok(spec) = spec::service(svc) else {
                continue;
            };
            let external = match spec.kind {
                ServiceType::ExternalName => continue,
                ServiceType::LoadBalancer => Some(Target::LoadBalancer),
                ServiceType::NodePort => Some(Target::NodePort),
                ServiceType::ClusterIp => None,
            };
            for p in &spec.ports {
                probes.push((Target::Service, Source::Pod, p.protocol, p.port));
                if let Some(to) = external {
                    probes.push((to, Source::Outside, p.protocol, p.port));
                }
            }
        }
        probes.sort_by_key(|&(to, from, protocol, port)| (to as u8, from as u8, port, protocol));
        probes.dedup();
        Scenario {
            steps: probes
                .into_iter()
                .map(|(to, from, protocol, port)| {
                    Step::Probe(ProbeStep {
                        protocol,
                        port,
                        to,
                        from,
                        family: Family::IPv4,
                        expect: None,
                    })
                })
                .collect(),
        }
    }

    /// Every (protocol, port) the outside host must answer on.
    pub fn outside_ports(&self) -> Vec<(Protocol, u16)> {
        let mut ports: Vec<_> = self
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Probe(p) if p.to == Target::Outside => Some((p.protocol, p.port)),
                _ => None,
            })
            .collect();
        ports.sort();
        ports.dedup();
        ports
    }

    /// Every (protocol, port) some probe of pods uses: every pod listens on
    /// them, so a verdict is about policy, never about a closed port. (Probes
    /// of Services reach the ports their endpoints declare.)
    pub fn probed_ports(&self) -> Vec<(Protocol, u16)> {
        let mut ports: Vec<_> = self
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Probe(p) if p.to == Target::Pod => Some((p.protocol, p.port)),
                _ => None,
            })
            .collect();
        ports.sort();
        ports.dedup();
        ports
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCENARIO: &str = r#"
steps:
  - probe: {protocol: tcp, port: 80, expect: {allow: ["x/a->y/b", "*/*->y/c"]}}
  - apply:
      - {apiVersion: v1, kind: Namespace, metadata: {name: y, labels: {team: b}}}
  - delete: [{kind: NetworkPolicy, namespace: y, name: deny}]
  - probe: {port: 53, protocol: UDP, to: pod, expect: {deny: ["x/a->y/b"]}}
  - probe: {port: 8080, family: IPv6}
"#;

    fn key(s: &str) -> ObjectKey {
        s.parse().unwrap()
    }

    #[test]
    fn parses_steps_in_order() {
        let s = parse(SCENARIO).unwrap();
        assert_eq!(s.steps.len(), 5);
        assert!(matches!(&s.steps[1], Step::Apply(v) if v.len() == 1));
        assert!(matches!(&s.steps[2], Step::Delete(v) if v[0].key() == key("y/deny")));
        let Step::Probe(p) = &s.steps[3] else {
            panic!()
        };
        assert_eq!((p.protocol, p.port, p.to), (Protocol::Udp, 53, Target::Pod));
        let Step::Probe(p) = &s.steps[4] else {
            panic!()
        };
        assert_eq!((p.protocol, p.expect.is_none()), (Protocol::Tcp, true));
        assert_eq!(p.family, Family::IPv6);
        let Step::Probe(p) = &s.steps[3] else {
            panic!()
        };
        assert_eq!(p.family, Family::IPv4, "the default");
        assert_eq!(
            s.probed_ports(),
            vec![
                (Protocol::Tcp, 80),
                (Protocol::Tcp, 8080),
                (Protocol::Udp, 53)
            ]
        );
    }

    #[test]
    fn unlisted_pairs_get_the_opposite_verdict() {
        let s = parse(SCENARIO).unwrap();
        let (Step::Probe(allow), Step::Probe(deny)) = (&s.steps[0], &s.steps[3]) else {
            panic!()
        };
        let allow = allow.expect.as_ref().unwrap();
        assert!(allow.expected(&key("x/a"), &key("y/b")));
        assert!(!allow.expected(&key("y/b"), &key("x/a")));
        assert!(allow.expected(&key("z/q"), &key("y/c")), "wildcards");
        let deny = deny.expect.as_ref().unwrap();
        assert!(!deny.expected(&key("x/a"), &key("y/b")));
        assert!(deny.expected(&key("y/b"), &key("x/a")));
    }

    #[test]
    fn errors_name_the_step_and_field() {
        let bad_port = parse("steps:\n  - probe: {port: 70000}\n").unwrap_err();
        assert!(bad_port.contains("steps[0].probe.port"), "{bad_port}");
        let bad_pair =
            parse("steps:\n  - probe: {port: 80, expect: {allow: [\"x/a\"]}}\n").unwrap_err();
        assert!(
            bad_pair.contains("steps[0].probe.expect.allow[0]"),
            "{bad_pair}"
        );
        let bad_kind = parse("steps:\n  - delete: [{kind: Deployment, name: x}]\n").unwrap_err();
        assert!(bad_kind.contains("steps[0].delete[0].kind"), "{bad_kind}");
        let bad_manifest =
            parse("steps:\n  - apply: [{kind: Pod, metadata: {name: p}, spec: {containers: 3}}]\n")
                .unwrap_err();
        assert!(bad_manifest.contains("steps[0].apply[0]"), "{bad_manifest}");
        assert!(bad_manifest.contains("spec.containers"), "{bad_manifest}");
        let bad_family = parse("steps:\n  - probe: {port: 80, family: IPv5}\n").unwrap_err();
        assert!(
            bad_family.contains("steps[0].probe.family: `IPv5` is not IPv4 or IPv6"),
            "{bad_family}"
        );
        let unknown = parse("steps:\n  - wait: 3\n").unwrap_err();
        assert!(unknown.contains("steps[0]"), "{unknown}");
    }

    #[test]
    fn service_targets_and_the_outside_host() {
        let s = parse(
            "steps:\n  - probe: {port: 80, to: nodeport, from: outside, expect: {allow: [\"outside->y/web\"]}}\n  - probe: {port: 80, to: loadbalancer}\n",
        )
        .unwrap();
        let Step::Probe(p) = &s.steps[0] else {
            panic!("{s:?}")
        };
        assert_eq!((p.to, p.from), (Target::NodePort, Source::Outside));
        let expect = p.expect.as_ref().unwrap();
        assert!(expect.expected(&outside_key(), &key("y/web")));
        assert!(!expect.expected(&key("x/a"), &key("y/web")));
        assert_eq!(expect.pairs[0].to_string(), "outside->y/web");
        // Pods listen on the ports of pod probes only.
        assert!(s.probed_ports().is_empty());
        let e = parse("steps:\n  - probe: {port: 80, to: outside, from: outside}\n").unwrap_err();
        assert!(e.contains("steps[0].probe: from outside to outside"), "{e}");
        let e = parse("steps:\n  - probe: {port: 80, to: ingress}\n").unwrap_err();
        assert!(e.contains("`ingress` is not `pod`, `service`"), "{e}");
        let s = parse("steps:\n  - probe: {port: 443, to: outside}\n").unwrap();
        assert_eq!(s.outside_ports(), [(Protocol::Tcp, 443)]);
    }

    #[test]
    fn default_scenario_probes_each_port_against_explain() {
        let s = Scenario::from_ports(&[(Protocol::Tcp, 80), (Protocol::Sctp, 9)], &[Family::IPv4]);
        assert_eq!(s.steps.len(), 2);
        assert!(matches!(&s.steps[1], Step::Probe(p) if p.expect.is_none() && p.port == 9));
        let dual = Scenario::from_ports(
            &[(Protocol::Tcp, 80), (Protocol::Udp, 53)],
            &[Family::IPv4, Family::IPv6],
        );
        let probes: Vec<(u16, Family)> = dual
            .steps
            .iter()
            .map(|s| match s {
                Step::Probe(p) => (p.port, p.family),
                _ => panic!(),
            })
            .collect();
        assert_eq!(
            probes,
            [
                (80, Family::IPv4),
                (80, Family::IPv6),
                (53, Family::IPv4),
                (53, Family::IPv6)
            ]
        );
    }
}
