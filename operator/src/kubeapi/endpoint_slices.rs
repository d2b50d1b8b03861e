//! EndpointSlices from any server: `discovery.k8s.io/v1` where served, else
//! `v1beta1` (Kubernetes 1.17–1.24; v1.20 serves nothing newer), converted to
//! the v1 type the rest of kube-nft reads.
//!
//! The conversion is the API server's own (v1beta1 ⇄ v1): `topology` becomes
//! `deprecatedTopology`, its `kubernetes.io/hostname` becomes `nodeName` when
//! the endpoint has none (the v1beta1 controller of 1.20 wrote only the
//! topology), and `topology.kubernetes.io/zone` becomes `zone`.

use futures::{Stream, StreamExt};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::runtime::watcher::{self, watcher};
use kube::{Api, Client};
use serde_json::Value;

const GROUP: &str = "discovery.k8s.io";
const HOSTNAME_TOPOLOGY: &str = "kubernetes.io/hostname";
const ZONE_TOPOLOGY: &str = "topology.kubernetes.io/zone";

/// Which EndpointSlice version a server serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SliceVersion {
    V1,
    V1beta1,
}

impl SliceVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            SliceVersion::V1 => "v1",
            SliceVersion::V1beta1 => "v1beta1",
        }
    }

    fn api_resource(self) -> ApiResource {
        ApiResource::from_gvk(&GroupVersionKind::gvk(
            GROUP,
            self.as_str(),
            "EndpointSlice",
        ))
    }
}

/// Asks the server which version it serves (v1 preferred).
pub async fn served_version(client: &Client) -> anyhow::Result<SliceVersion> {
    let groups = client.list_api_groups().await?;
    let group = groups
        .groups
        .iter()
        .find(|g| g.name == GROUP)
        .ok_or_else(|| anyhow::anyhow!("the API server serves no {GROUP} group"))?;
    let versions: Vec<&str> = group.versions.iter().map(|v| v.version.as_str()).collect();
    if versions.contains(&"v1") {
        Ok(SliceVersion::V1)
    } else if versions.contains(&"v1beta1") {
        Ok(SliceVersion::V1beta1)
    } else {
        anyhow::bail!("the API server serves {GROUP} only as {versions:?}")
    }
}

/// Every EndpointSlice of the cluster, as v1. A slice that does not convert
/// is reported on the log and left out.
pub async fn list(client: &Client, version: SliceVersion) -> anyhow::Result<Vec<EndpointSlice>> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &version.api_resource());
    let list = api.list(&ListParams::default()).await?;
    Ok(list.items.into_iter().filter_map(convert_logged).collect())
}

/// A watcher of every EndpointSlice, as v1 (see [`watcher`]).
pub fn watch(
    client: Client,
    version: SliceVersion,
    config: watcher::Config,
) -> impl Stream<Item = Result<watcher::Event<EndpointSlice>, watcher::Error>> + Send {
    let api: Api<DynamicObject> = Api::all_with(client, &version.api_resource());
    watcher(api, config).filter_map(|event| async move {
        use watcher::Event::*;
        Some(Ok(match event {
            Err(e) => return Some(Err(e)),
            Ok(Apply(o)) => Apply(convert_logged(o)?),
            Ok(Delete(o)) => Delete(convert_logged(o)?),
            Ok(InitApply(o)) => InitApply(convert_logged(o)?),
            Ok(Init) => Init,
            Ok(InitDone) => InitDone,
        }))
    })
}

fn convert_logged(object: DynamicObject) -> Option<EndpointSlice> {
    let name = format!(
        "{}/{}",
        object.metadata.namespace.as_deref().unwrap_or(""),
        object.metadata.name.as_deref().unwrap_or("")
    );
    match serde_json::to_value(&object)
        .map_err(|e| e.to_string())
        .and_then(|v| to_v1(v).map_err(|e| e.to_string()))
    {
        Ok(slice) => Some(slice),
        Err(e) => {
            tracing::warn!(slice = %name, error = %e, "EndpointSlice skipped: it does not read as discovery.k8s.io/v1");
            None
        }
    }
}

/// Converts a v1 or v1beta1 EndpointSlice (as JSON) to the v1 type.
pub fn to_v1(mut slice: Value) -> Result<EndpointSlice, serde_json::Error> {
    if let Some(obj) = slice.as_object_mut() {
        obj.insert("apiVersion".into(), Value::from(format!("{GROUP}/v1")));
        obj.insert("kind".into(), Value::from("EndpointSlice"));
    }
    if let Some(endpoints) = slice.get_mut("endpoints").and_then(Value::as_array_mut) {
        for ep in endpoints.iter_mut().filter_map(Value::as_object_mut) {
            let Some(topology) = ep.remove("topology") else {
                continue;
            };
            if !ep.contains_key("nodeName") {
                if let Some(host) = topology.get(HOSTNAME_TOPOLOGY) {
                    ep.insert("nodeName".into(), host.clone());
                }
            }
            if !ep.contains_key("zone") {
                if let Some(zone) = topology.get(ZONE_TOPOLOGY) {
                    ep.insert("zone".into(), zone.clone());
                }
            }
            ep.insert("deprecatedTopology".into(), topology);
        }
    }
    serde_json::from_value(slice)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_v1beta1_slice_reads_as_v1_with_its_node_and_zone() {
        let slice = to_v1(json!({
            "apiVersion": "discovery.k8s.io/v1beta1",
            "kind": "EndpointSlice",
            "metadata": {"name": "web-abc", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{
                "addresses": ["10.0.1.5"],
                "conditions": {"ready": true},
                "topology": {"kubernetes.io/hostname": "node-a",
                             "topology.kubernetes.io/zone": "z1"}
            }],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        }))
        .unwrap();
        let ep = &slice.endpoints[0];
        assert_eq!(ep.node_name.as_deref(), Some("node-a"));
        assert_eq!(ep.zone.as_deref(), Some("z1"));
        assert_eq!(ep.addresses, vec!["10.0.1.5".to_string()]);
        assert_eq!(ep.conditions.as_ref().unwrap().ready, Some(true));
        assert_eq!(slice.ports.as_ref().unwrap()[0].port, Some(8080));
    }

    #[test]
    fn an_explicit_node_name_wins_over_the_topology() {
        let slice = to_v1(json!({
            "metadata": {"name": "s", "namespace": "n"},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.1"], "nodeName": "real",
                           "topology": {"kubernetes.io/hostname": "stale"}}]
        }))
        .unwrap();
        assert_eq!(slice.endpoints[0].node_name.as_deref(), Some("real"));
    }

    #[test]
    fn a_malformed_slice_is_an_error() {
        assert!(
            to_v1(json!({"metadata": {"name": "s"}, "endpoints": [{"addresses": 5}]})).is_err()
        );
    }
}
