//! Playing the EndpointSlice controller for the lab, where no controller runs:
//! a Service with a selector and no slice in the manifests gets the slices the
//! real controller would write.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube_nft_crds::ir::Protocol;

use super::model::IpFamily;
use super::spec::{self, ServiceSpec, ServiceType, TargetPort, SERVICE_NAME_LABEL};
use crate::cluster::{self, Cluster, ObjectKey};

/// `endpointslice.kubernetes.io/managed-by` of the slices made here.
pub const MANAGED_BY: &str = "kube-nft-lab";
const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";

/// `cluster` with the slices [`synthesize_slices`] derives added: what the
/// lab and `agent apply -f` (manifests without a control plane) compute
/// Services from.
pub fn with_synthesized_slices(cluster: &Cluster) -> Cluster {
    let mut out = cluster.clone();
    for slice in synthesize_slices(cluster) {
        // Slices the controller builds are well-formed; a failure would be a
        // bug in it, and the Service then simply has no endpoints.
        let _ = out.insert(cluster::Object::EndpointSlice(slice));
    }
    out
}

/// Slices for every Service that has a selector and no EndpointSlice in
/// `cluster`, built like the EndpointSlice controller does:
///
/// - pods of the Service's namespace whose labels match the selector, live
///   (not Succeeded/Failed, with an IP);
/// - one slice per address family and per list of resolved ports: a named
///   `targetPort` resolves per pod from its container ports (with the
///   Service port's protocol), so pods that resolve it to different numbers,
///   or not at all, land in different slices;
/// - `ready` = the pod's `Ready` condition (a pod without status conditions
///   counts as ready, as the lab's pods have none) and not terminating, or
///   always with `publishNotReadyAddresses`; `serving` = the `Ready`
///   condition; `terminating` = a `deletionTimestamp`;
/// - `nodeName` from `spec.nodeName`, `targetRef` naming the pod.
///
/// Services that do not parse are skipped here; [`compute`](super::compute)
/// reports them.
pub fn synthesize_slices(cluster: &Cluster) -> Vec<EndpointSlice> {
    let with_slices: BTreeSet<ObjectKey> = cluster
        .endpoint_slices()
        .values()
        .filter_map(|s| {
            let svc = s.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
            Some(ObjectKey::new(ObjectKey::of(&s.metadata).namespace, svc))
        })
        .collect();
    let mut out = Vec::new();
    for svc in cluster.services().values() {
        let Ok(spec) = spec::service(svc) else {
            continue;
        };
        if spec.kind == ServiceType::ExternalName || with_slices.contains(&spec.key) {
            continue;
        }
        let Some(selector) = &spec.selector else {
            continue;
        };
        let pods = cluster
            .pods()
            .range(ObjectKey::new(spec.key.namespace.clone(), "")..)
            .take_while(|(k, _)| k.namespace == spec.key.namespace)
            .filter(|(_, p)| cluster::is_live(p))
            .filter(|(_, p)| {
                let labels = cluster::pod_labels(p);
                selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            });
        out.extend(service_slices(&spec, pods));
    }
    out
}

/// A Service port as a slice lists it: name, protocol, resolved number.
type ResolvedPort = (String, Protocol, u16);

fn service_slices<'a>(
    spec: &ServiceSpec,
    pods: impl Iterator<Item = (&'a ObjectKey, &'a Pod)>,
) -> Vec<EndpointSlice> {
    let mut groups: BTreeMap<(IpFamily, Vec<ResolvedPort>), Vec<Endpoint>> = BTreeMap::new();
    for (key, pod) in pods {
        let ports = resolve_ports(spec, pod);
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let serving = pod_ready(pod);
        let ready = spec.publish_not_ready || (serving && !terminating);
        for ip in cluster::pod_ips(pod) {
            let fam = IpFamily::of(&ip);
            // A Service without cluster IPs or ipFamilies (headless, no
            // families given) takes every family its pods have.
            if !spec.families.is_empty() && !spec.families.contains(&fam) {
                continue;
            }
            groups
                .entry((fam, ports.clone()))
                .or_default()
                .push(Endpoint {
                    addresses: vec![ip.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(ready),
                        serving: Some(serving),
                        terminating: Some(terminating),
                    }),
                    node_name: cluster::pod_node(pod).map(str::to_string),
                    target_ref: Some(ObjectReference {
                        kind: Some("Pod".into()),
                        namespace: Some(key.namespace.clone()),
                        name: Some(key.name.clone()),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
        }
    }
    let mut index: BTreeMap<IpFamily, usize> = BTreeMap::new();
    groups
        .into_iter()
        .map(|((fam, ports), endpoints)| {
            let i = index.entry(fam).or_default();
            let name = format!("{}-{}-{i}", spec.key.name, fam.suffix());
            *i += 1;
            EndpointSlice {
                metadata: ObjectMeta {
                    name: Some(name),
                    namespace: Some(spec.key.namespace.clone()),
                    labels: Some(BTreeMap::from([
                        (SERVICE_NAME_LABEL.to_string(), spec.key.name.clone()),
                        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
                    ])),
                    ..Default::default()
                },
                address_type: fam.k8s_name().to_string(),
                endpoints,
                ports: Some(
                    ports
                        .into_iter()
                        .map(|(name, protocol, port)| EndpointPort {
                            name: Some(name),
                            protocol: Some(protocol.as_str().to_string()),
                            port: Some(i32::from(port)),
                            ..Default::default()
                        })
                        .collect(),
                ),
            }
        })
        .collect()
}

/// The Service's ports as this pod serves them; a named target port the pod
/// does not declare is left out (the controller does the same).
fn resolve_ports(spec: &ServiceSpec, pod: &Pod) -> Vec<ResolvedPort> {
    spec.ports
        .iter()
        .filter_map(|p| {
            let n = match &p.target {
                TargetPort::Number(n) => *n,
                TargetPort::Name(name) => cluster::named_port(pod, name, p.protocol)?,
            };
            Some((p.name.clone(), p.protocol, n))
        })
        .collect()
}

/// The pod's `Ready` condition; a pod without conditions counts as ready.
fn pod_ready(pod: &Pod) -> bool {
    match pod.status.as_ref().and_then(|s| s.conditions.as_ref()) {
        None => true,
        Some(c) if c.is_empty() => true,
        Some(c) => c.iter().any(|c| c.type_ == "Ready" && c.status == "True"),
    }
}
