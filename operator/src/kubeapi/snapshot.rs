//! One read of the live cluster into the [`Cluster`] model, for `explain`
//! without `-f`: Namespaces, Pods, Services, EndpointSlices, NetworkPolicies
//! and Nodes, listed concurrently.
//!
//! The edge (listing, paging, deadlines) is [`cluster`]; the core ([`build`])
//! is pure: it types each object on its own and inserts it, so an object that
//! does not read or does not validate is reported (object and field, worded
//! as the manifest loader words its problems) and skipped, and the rest is
//! kept.

use std::fmt;
use std::time::Duration;

use anyhow::{anyhow, Context};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{ApiResource, DynamicObject, ListParams};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::endpoint_slices;
use crate::cluster::{Cluster, Object};

/// Objects per list request: big clusters come in pages rather than in one
/// response the server has to build (and we have to hold) whole.
const PAGE_SIZE: u32 = 500;
/// How long the first request may take. A reachable API server answers
/// discovery in milliseconds; an address that swallows packets would
/// otherwise hold the command for the client's 30 s connect timeout.
const REACH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long any later request may take. The client has no read timeout, so a
/// server that stalls mid-list would hang the command for ever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// An object that was skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `Kind namespace/name` (`Kind name` when cluster-scoped).
    pub object: String,
    /// Field path, when known.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.object)?;
        if let Some(field) = &self.field {
            write!(f, ": field {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The cluster as read, plus every object that was skipped.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub cluster: Cluster,
    pub problems: Vec<Problem>,
}

/// The objects as listed: JSON as the server sent them (typed one by one in
/// [`build`]), EndpointSlices already converted to v1.
#[derive(Debug, Default)]
pub struct Lists {
    pub namespaces: Vec<Value>,
    pub pods: Vec<Value>,
    pub services: Vec<Value>,
    pub endpoint_slices: Vec<EndpointSlice>,
    pub policies: Vec<Value>,
    pub nodes: Vec<Value>,
}

/// Reads the cluster `client` talks to.
pub async fn cluster(client: &Client) -> anyhow::Result<Snapshot> {
    // Discovery comes first and alone: it tells the EndpointSlice version and
    // doubles as the reachability check, so an unreachable server is one
    // clear error instead of six.
    let version = tokio::time::timeout(REACH_TIMEOUT, endpoint_slices::served_version(client))
        .await
        .map_err(|_| {
            anyhow!(
                "the API server did not answer within {} s",
                REACH_TIMEOUT.as_secs()
            )
        })?
        .context("asking the API server for its API groups")?;
    let slices = async {
        bounded(endpoint_slices::list(client, version))
            .await
            .with_context(|| format!("listing EndpointSlices ({})", version.as_str()))
    };
    let (namespaces, pods, services, endpoint_slices, policies, nodes) = futures::try_join!(
        list::<Namespace>(client),
        list::<Pod>(client),
        list::<Service>(client),
        slices,
        list::<NetworkPolicy>(client),
        list::<Node>(client),
    )?;
    Ok(build(Lists {
        namespaces,
        pods,
        services,
        endpoint_slices,
        policies,
        nodes,
    }))
}

/// Every object of kind `K` in every namespace, page by page, as JSON.
async fn list<K>(client: &Client) -> anyhow::Result<Vec<Value>>
where
    K: Resource<DynamicType = ()>,
{
    // Untyped on the wire: a list of typed objects fails whole when one
    // object does not deserialize; [`build`] types them one at a time.
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ApiResource::erase::<K>(&()));
    let mut out = Vec::new();
    let mut params = ListParams::default().limit(PAGE_SIZE);
    loop {
        let page = bounded(api.list(&params))
            .await
            .with_context(|| format!("listing {}s", K::kind(&())))?;
        for item in page.items {
            out.push(serde_json::to_value(item)?);
        }
        match page.metadata.continue_.as_deref() {
            Some(token) if !token.is_empty() => params = params.continue_token(token),
            _ => return Ok(out),
        }
    }
}

/// `request` with the [`REQUEST_TIMEOUT`] deadline.
async fn bounded<T, E>(
    request: impl std::future::Future<Output = Result<T, E>>,
) -> anyhow::Result<T>
where
    E: Into<anyhow::Error>,
{
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(anyhow!("no answer within {} s", REQUEST_TIMEOUT.as_secs())),
    }
}

/// The model of the listed objects. Namespaces go in first so that the
/// namespaces other objects create implicitly are replaced by the real ones
/// (insertion order does not change the result, it only saves the work).
pub fn build(lists: Lists) -> Snapshot {
    let mut s = Snapshot::default();
    for v in lists.namespaces {
        s.add("Namespace", v, Object::Namespace);
    }
    for v in lists.nodes {
        s.add("Node", v, Object::Node);
    }
    for v in lists.pods {
        s.add("Pod", v, Object::Pod);
    }
    for v in lists.services {
        s.add("Service", v, Object::Service);
    }
    for slice in lists.endpoint_slices {
        s.insert(Object::EndpointSlice(slice));
    }
    for v in lists.policies {
        s.add("NetworkPolicy", v, Object::NetworkPolicy);
    }
    s
}

impl Snapshot {
    fn add<K: DeserializeOwned>(&mut self, kind: &str, value: Value, wrap: fn(K) -> Object) {
        let object = describe(kind, &value);
        match typed::<K>(value) {
            Ok(k) => self.insert(wrap(k)),
            Err((field, message)) => self.problems.push(Problem {
                object,
                field: Some(field),
                message,
            }),
        }
    }

    fn insert(&mut self, o: Object) {
        if let Err(e) = self.cluster.insert(o) {
            // The validator names the object itself, as `describe` does.
            self.problems.push(Problem {
                object: e.object,
                field: Some(e.field),
                message: e.message,
            });
        }
    }
}

/// Deserializes one listed object, keeping the path of a failing field. The
/// managed fields are dropped first: nothing reads them, and on a big
/// cluster they are a good part of every object.
fn typed<K: DeserializeOwned>(mut value: Value) -> Result<K, (String, String)> {
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "(object)".into() } else { path };
        (field, e.into_inner().to_string())
    })
}

/// `Kind namespace/name` (`Kind name` when cluster-scoped) of a listed object.
fn describe(kind: &str, value: &Value) -> String {
    let meta = value.get("metadata");
    let field = |f: &str| meta.and_then(|m| m.get(f)).and_then(Value::as_str);
    name_of(kind, field("namespace"), field("name"))
}

fn name_of(kind: &str, namespace: Option<&str>, name: Option<&str>) -> String {
    let name = name.unwrap_or("?");
    match kind {
        "Namespace" | "Node" => format!("{kind} {name}"),
        // As the model keys it (and as the validator names it).
        _ => format!("{kind} {}/{name}", namespace.unwrap_or("default")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{ObjectKey, NAMESPACE_NAME_LABEL};
    use serde_json::json;

    fn pod(name: &str, ip: Value) -> Value {
        json!({
            "metadata": {"name": name, "namespace": "shop", "labels": {"role": "web"},
                         "managedFields": [{"manager": "kubectl", "operation": "Update"}]},
            "spec": {"nodeName": "n1", "containers": [{"name": "c",
                     "ports": [{"name": "http", "containerPort": 80, "protocol": "TCP"}]}]},
            "status": {"phase": "Running", "podIP": ip}
        })
    }

    fn lists() -> Lists {
        Lists {
            namespaces: vec![json!({"metadata": {"name": "shop", "labels": {"team": "a"}}})],
            pods: vec![
                pod("ok", json!("10.0.0.1")),
                pod("badip", json!("10.0.0.300")),
                pod("wrongtype", json!(["10.0.0.2"])),
            ],
            services: vec![json!({
                "metadata": {"name": "web", "namespace": "shop"},
                "spec": {"selector": {"role": "web"}, "clusterIP": "10.96.0.10",
                         "ports": [{"port": 80, "targetPort": "http"}]}
            })],
            endpoint_slices: vec![serde_json::from_value(json!({
                "metadata": {"name": "web-x", "namespace": "shop",
                             "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.0.0.1"], "nodeName": "n1"}]
            }))
            .unwrap()],
            policies: vec![
                json!({"metadata": {"name": "deny", "namespace": "shop"},
                       "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}),
                json!({"metadata": {"name": "badcidr", "namespace": "shop"},
                       "spec": {"podSelector": {}, "ingress": [{"from": [
                           {"ipBlock": {"cidr": "10.0.0.0/33"}}]}]}}),
            ],
            nodes: vec![json!({"metadata": {"name": "n1"}, "spec": {"podCIDR": "10.0.0.0/24"}})],
        }
    }

    #[test]
    fn bad_objects_are_named_with_their_field_and_the_rest_is_kept() {
        let s = build(lists());
        let problems: Vec<String> = s.problems.iter().map(ToString::to_string).collect();
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(
            problems[0].starts_with("Pod shop/badip: field status.podIP: "),
            "{problems:#?}"
        );
        assert!(
            problems[1].starts_with("Pod shop/wrongtype: field status.podIP: "),
            "{problems:#?}"
        );
        assert!(
            problems[2].starts_with(
                "NetworkPolicy shop/badcidr: field spec.ingress[0].from[0].ipBlock.cidr: "
            ),
            "{problems:#?}"
        );
        let c = &s.cluster;
        assert_eq!(c.pods().len(), 1);
        let ok = c.pod(&ObjectKey::new("shop", "ok")).unwrap();
        assert!(
            ok.metadata.managed_fields.is_none(),
            "managed fields are dropped"
        );
        assert_eq!(
            c.pod_by_ip("10.0.0.1".parse().unwrap())
                .map(|(k, _)| k.name.as_str()),
            Some("ok")
        );
        assert_eq!(c.services().len(), 1);
        assert_eq!(c.endpoint_slices().len(), 1);
        assert_eq!(c.policies().len(), 1);
        assert_eq!(c.nodes().len(), 1);
    }

    #[test]
    fn listed_namespaces_keep_their_labels_and_get_the_name_label() {
        let s = build(lists());
        let labels = s.cluster.namespace_labels("shop");
        assert_eq!(labels.get("team").map(String::as_str), Some("a"));
        assert_eq!(
            labels.get(NAMESPACE_NAME_LABEL).map(String::as_str),
            Some("shop")
        );
    }

    #[test]
    fn a_cluster_scoped_object_is_named_without_namespace() {
        let s = build(Lists {
            nodes: vec![json!({"metadata": {"name": "n1"}, "spec": {"podCIDR": 5}})],
            ..Default::default()
        });
        assert_eq!(s.problems.len(), 1);
        assert_eq!(s.problems[0].object, "Node n1");
        assert_eq!(s.problems[0].field.as_deref(), Some("spec.podCIDR"));
        assert!(s.cluster.nodes().is_empty());
    }
}
