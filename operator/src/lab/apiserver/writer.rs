//! The lab's writes to the API server: server-side apply of each object
//! (field manager [`MANAGER`]), its status through the status subresource,
//! deletions (pods with no grace period: no kubelet would ever confirm
//! them). Requests that fail on the way (connection lost, server
//! restarting, 5xx, 429) are retried for a while; the server's refusals
//! are errors naming the object.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{json, Value};

use super::objects::{slice_to_v1beta1, Id, Kind, Write};
use crate::kubeapi::endpoint_slices::SliceVersion;

/// The field manager of everything the lab writes.
pub const MANAGER: &str = "kube-nft-lab";
/// How long a request that fails on the way is retried.
const RETRY_FOR: Duration = Duration::from_secs(30);
/// How long the lab waits for a namespace's `default` ServiceAccount (the
/// API server refuses pods before it exists) or for a namespace still
/// being deleted to go.
const NAMESPACE_WAIT: Duration = Duration::from_secs(60);

/// One line for an API error: the server's message, or the transport error.
pub fn api_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if !s.message.is_empty() => format!("{} ({})", s.message, s.code),
        other => other.to_string(),
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Worth retrying: the request failed on the way or the server is not
/// ready to answer.
fn is_transient(e: &kube::Error) -> bool {
    match e {
        // 500 in general is not: server-side apply reports a patch it cannot
        // build as 500. But a v1.20 server refuses pods with 500 while the
        // namespace's `default` ServiceAccount has no token yet.
        kube::Error::Api(s) => {
            matches!(s.code, 429 | 502 | 503 | 504)
                || (s.code == 500 && s.message.contains("No API token found for service account"))
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// Runs `request` until it succeeds, fails for good, or [`RETRY_FOR`] passed.
pub async fn retrying<T, F, Fut>(mut request: F) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let start = Instant::now();
    let mut pause = Duration::from_millis(50);
    loop {
        match request().await {
            Err(e) if is_transient(&e) && start.elapsed() < RETRY_FOR => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            other => return other,
        }
    }
}

/// Writes objects for one lab run.
pub struct Writer {
    client: Client,
    slices: SliceVersion,
    /// Namespaces whose `default` ServiceAccount was seen.
    ready_namespaces: BTreeSet<String>,
}

impl Writer {
    pub fn new(client: Client, slices: SliceVersion) -> Writer {
        Writer {
            client,
            slices,
            ready_namespaces: BTreeSet::new(),
        }
    }

    fn api(&self, id: &Id) -> Api<DynamicObject> {
        let resource = match id.kind {
            Kind::Namespace => ApiResource::erase::<Namespace>(&()),
            Kind::Node => ApiResource::erase::<Node>(&()),
            Kind::Service => ApiResource::erase::<Service>(&()),
            Kind::Pod => ApiResource::erase::<Pod>(&()),
            Kind::NetworkPolicy => ApiResource::erase::<NetworkPolicy>(&()),
            Kind::EndpointSlice => ApiResource::from_gvk(&GroupVersionKind::gvk(
                "discovery.k8s.io",
                self.slices.as_str(),
                "EndpointSlice",
            )),
        };
        if id.kind.namespaced() {
            Api::namespaced_with(self.client.clone(), &id.namespace, &resource)
        } else {
            Api::all_with(self.client.clone(), &resource)
        }
    }

    /// Applies one write of a plan.
    pub async fn write(&mut self, w: &Write) -> anyhow::Result<()> {
        let api = self.api(&w.id);
        let at = |e: kube::Error| anyhow!("writing {}: {}", w.id, api_error(&e));
        if w.recreate {
            self.delete(&w.id).await?;
        }
        if w.id.kind == Kind::Namespace && w.body.is_some() {
            self.wait_until_not_terminating(&w.id.name).await?;
        }
        if w.id.kind == Kind::Pod {
            self.wait_for_default_service_account(&w.id.namespace)
                .await?;
        }
        if let Some(body) = &w.body {
            let body = match w.id.kind {
                Kind::EndpointSlice if self.slices == SliceVersion::V1beta1 => {
                    slice_to_v1beta1(body.clone())
                }
                _ => body.clone(),
            };
            let params = PatchParams::apply(MANAGER).force();
            let patch = Patch::Apply(&body);
            retrying(|| api.patch(&w.id.name, &params, &patch))
                .await
                .map_err(at)?;
        }
        if let Some(status) = &w.status {
            let patch = Patch::Merge(json!({ "status": status }));
            let params = PatchParams::default();
            retrying(|| api.patch_status(&w.id.name, &params, &patch))
                .await
                .map_err(|e| anyhow!("writing the status of {}: {}", w.id, api_error(&e)))?;
        }
        Ok(())
    }

    /// Deletes `id`; gone already counts as done.
    pub async fn delete(&self, id: &Id) -> anyhow::Result<()> {
        let api = self.api(id);
        let params = match id.kind {
            Kind::Pod => DeleteParams::default().grace_period(0),
            _ => DeleteParams::default(),
        };
        match retrying(|| api.delete(&id.name, &params)).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(anyhow!("deleting {id}: {}", api_error(&e))),
        }
    }

    /// A namespace deleted by an earlier step or run is gone for good before
    /// the lab creates it again (the server refuses new objects in it while
    /// it terminates).
    async fn wait_until_not_terminating(&self, name: &str) -> anyhow::Result<()> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let start = Instant::now();
        loop {
            let ns = retrying(|| api.get_opt(name))
                .await
                .map_err(|e| anyhow!("reading Namespace {name}: {}", api_error(&e)))?;
            match ns {
                Some(ns) if ns.metadata.deletion_timestamp.is_some() => {
                    if start.elapsed() > NAMESPACE_WAIT {
                        return Err(anyhow!(
                            "Namespace {name} is still terminating after {} s",
                            NAMESPACE_WAIT.as_secs()
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                _ => return Ok(()),
            }
        }
    }

    async fn wait_for_default_service_account(&mut self, namespace: &str) -> anyhow::Result<()> {
        if self.ready_namespaces.contains(namespace) {
            return Ok(());
        }
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let start = Instant::now();
        loop {
            let sa = retrying(|| api.get_opt("default")).await.map_err(|e| {
                anyhow!(
                    "reading ServiceAccount {namespace}/default: {}",
                    api_error(&e)
                )
            })?;
            if sa.is_some() {
                self.ready_namespaces.insert(namespace.to_string());
                return Ok(());
            }
            if start.elapsed() > NAMESPACE_WAIT {
                return Err(anyhow!(
                    "ServiceAccount {namespace}/default did not appear within {} s \
                     (the API server refuses pods without it; is the controller-manager running?)",
                    NAMESPACE_WAIT.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Applies `manifest` (any kind `resource` names) with the lab's field manager.
pub async fn apply_value(
    client: &Client,
    resource: &ApiResource,
    namespace: Option<&str>,
    name: &str,
    manifest: &Value,
) -> Result<(), kube::Error> {
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, resource),
        None => Api::all_with(client.clone(), resource),
    };
    let params = PatchParams::apply(MANAGER).force();
    let patch = Patch::Apply(manifest);
    retrying(|| api.patch(name, &params, &patch))
        .await
        .map(|_| ())
}
