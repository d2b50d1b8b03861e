//! Preparing an API server for a lab run: the CRDs and deploy/'s RBAC
//! installed, what a crashed run left removed, nothing in the way (a Node of
//! the same name that the lab did not create, another kube-nft operator),
//! and the objects the lab did not write but the agents will see (the
//! `kubernetes` Service and its EndpointSlice) read.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DeleteParams, GroupVersionKind, ListParams, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use kube_nft_crds::resources::{AddressSetShard, NodePolicyShare};

use super::objects::{Id, Kind, PROTECTED_NAMESPACES, RUN_ANNOTATION};
use super::writer::{api_error, apply_value, retrying, Writer, MANAGER};
use super::{deploy, DEPLOY_NAMESPACE, OPERATOR_IDENTITY, OPERATOR_LEASE};
use crate::kubeapi::endpoint_slices::{self, SliceVersion};

const CRD_WAIT: Duration = Duration::from_secs(30);
/// The label the operator puts on everything it writes.
const OPERATOR_MANAGED: &str = "app.kubernetes.io/managed-by=kube-nft-operator";

/// Installs (server-side apply) the CRDs and waits until they are served.
pub async fn install_crds(client: &Client) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(MANAGER).force();
    let crds = kube_nft_crds::resources::crds();
    for crd in &crds {
        let name = crd.name_any();
        let patch = Patch::Apply(crd);
        retrying(|| api.patch(&name, &params, &patch))
            .await
            .map_err(|e| {
                anyhow!(
                    "installing CustomResourceDefinition {name}: {}",
                    api_error(&e)
                )
            })?;
    }
    let start = Instant::now();
    for crd in &crds {
        let name = crd.name_any();
        loop {
            let got = retrying(|| api.get(&name)).await.map_err(|e| {
                anyhow!("reading CustomResourceDefinition {name}: {}", api_error(&e))
            })?;
            let established = got
                .status
                .iter()
                .flat_map(|s| s.conditions.iter().flatten())
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                break;
            }
            if start.elapsed() > CRD_WAIT {
                bail!(
                    "CustomResourceDefinition {name} is not Established after {} s",
                    CRD_WAIT.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// Installs deploy/'s namespace, ServiceAccounts and RBAC.
pub async fn install_deploy(client: &Client) -> anyhow::Result<()> {
    let objects = deploy::objects(DEPLOY_NAMESPACE).map_err(|e| anyhow!("{e}"))?;
    for o in &objects {
        let (group, version) = match o.api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", o.api_version.as_str()),
        };
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, &o.kind));
        apply_value(
            client,
            &resource,
            o.namespace.as_deref(),
            &o.name,
            &o.manifest,
        )
        .await
        .map_err(|e| anyhow!("installing {} (deploy/): {}", o.describe(), api_error(&e)))?;
    }
    Ok(())
}

/// Fails when another kube-nft operator holds the leader Lease: the lab's
/// operator would never lead, and the lab would clean up that operator's
/// objects. A holder that stops renewing within the lease duration is a
/// crashed run's and is taken over.
pub async fn check_no_foreign_operator(client: &Client) -> anyhow::Result<()> {
    let api: Api<Lease> = Api::namespaced(client.clone(), DEPLOY_NAMESPACE);
    let read = || async {
        retrying(|| api.get_opt(OPERATOR_LEASE)).await.map_err(|e| {
            anyhow!(
                "reading Lease {DEPLOY_NAMESPACE}/{OPERATOR_LEASE}: {}",
                api_error(&e)
            )
        })
    };
    let Some(lease) = read().await? else {
        return Ok(());
    };
    let Some(spec) = lease.spec else {
        return Ok(());
    };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder.is_empty() || holder == OPERATOR_IDENTITY {
        return Ok(());
    }
    let renewed = |l: &Lease| {
        serde_json::to_string(&l.spec.as_ref().map(|s| &s.renew_time)).unwrap_or_default()
    };
    let first = renewed(&Lease {
        spec: Some(spec.clone()),
        ..Default::default()
    });
    let duration = u64::try_from(spec.lease_duration_seconds.unwrap_or(15)).unwrap_or(15);
    let deadline = Instant::now() + Duration::from_secs(duration + 1);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some(now) = read().await? else {
            return Ok(());
        };
        let same_holder =
            now.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some(holder.as_str());
        if same_holder && renewed(&now) != first {
            bail!(
                "a kube-nft operator (`{holder}`) runs against this API server (it renews Lease \
                 {DEPLOY_NAMESPACE}/{OPERATOR_LEASE}); the lab needs an API server of its own"
            );
        }
    }
    Ok(())
}

/// Fails when a lab node's name is taken by a Node the lab did not create.
pub async fn check_nodes(client: &Client, nodes: &[String]) -> anyhow::Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    for name in nodes {
        let node = retrying(|| api.get_opt(name))
            .await
            .map_err(|e| anyhow!("reading Node {name}: {}", api_error(&e)))?;
        if let Some(node) = node {
            if !node.annotations().contains_key(RUN_ANNOTATION) {
                bail!(
                    "Node {name} exists on the API server and was not created by a kube-nft lab; \
                     the lab needs an API server without real nodes"
                );
            }
        }
    }
    Ok(())
}

/// Deletes what earlier lab runs left (objects carrying [`RUN_ANNOTATION`]),
/// except the namespaces in `keep` (this run writes them again). Returns how
/// many objects went.
pub async fn remove_leftovers(
    client: &Client,
    slices: SliceVersion,
    keep: &BTreeSet<String>,
) -> anyhow::Result<usize> {
    let mut ids: Vec<Id> = Vec::new();
    ids.extend(annotated::<NetworkPolicy>(client, Kind::NetworkPolicy).await?);
    ids.extend(annotated::<Pod>(client, Kind::Pod).await?);
    ids.extend(annotated::<Service>(client, Kind::Service).await?);
    for slice in endpoint_slices::list(client, slices)
        .await
        .context("listing EndpointSlices")?
    {
        if slice
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(RUN_ANNOTATION))
        {
            ids.push(Id {
                kind: Kind::EndpointSlice,
                namespace: slice.metadata.namespace.clone().unwrap_or_default(),
                name: slice.metadata.name.clone().unwrap_or_default(),
            });
        }
    }
    let nodes = annotated::<Node>(client, Kind::Node).await?;
    ids.extend(nodes.iter().cloned());
    ids.extend(
        annotated::<Namespace>(client, Kind::Namespace)
            .await?
            .into_iter()
            .filter(|id| {
                !keep.contains(&id.name) && !PROTECTED_NAMESPACES.contains(&id.name.as_str())
            }),
    );
    let writer = Writer::new(client.clone(), slices);
    for id in &ids {
        writer.delete(id).await?;
    }
    let shares: Api<NodePolicyShare> = Api::all(client.clone());
    let params = DeleteParams::default();
    for node in &nodes {
        match retrying(|| shares.delete(&node.name, &params)).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => bail!("deleting NodePolicyShare {}: {}", node.name, api_error(&e)),
        }
    }
    Ok(ids.len())
}

/// Deletes every AddressSetShard the operator wrote (after a run: they are
/// the lab operator's, [`check_no_foreign_operator`] made sure).
pub async fn remove_operator_output(client: &Client, nodes: &[String]) -> anyhow::Result<()> {
    let shards: Api<AddressSetShard> = Api::all(client.clone());
    let params = DeleteParams::default();
    let selector = ListParams::default().labels(OPERATOR_MANAGED);
    retrying(|| shards.delete_collection(&params, &selector))
        .await
        .map_err(|e| anyhow!("deleting AddressSetShards: {}", api_error(&e)))?;
    let shares: Api<NodePolicyShare> = Api::all(client.clone());
    for node in nodes {
        match retrying(|| shares.delete(node, &params)).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => bail!("deleting NodePolicyShare {node}: {}", api_error(&e)),
        }
    }
    Ok(())
}

async fn annotated<K>(client: &Client, kind: Kind) -> anyhow::Result<Vec<Id>>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let api: Api<K> = Api::all(client.clone());
    let all = ListParams::default();
    let list = retrying(|| api.list(&all))
        .await
        .map_err(|e| anyhow!("listing {}s: {}", kind.as_str(), api_error(&e)))?;
    Ok(list
        .items
        .iter()
        .filter(|o| {
            o.meta()
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(RUN_ANNOTATION))
        })
        .map(|o| Id {
            kind,
            namespace: o.meta().namespace.clone().unwrap_or_default(),
            name: o.meta().name.clone().unwrap_or_default(),
        })
        .collect())
}

/// The Services the lab did not write and their EndpointSlices: agents see
/// them (every cluster has the `kubernetes` Service), so the lab's
/// expectation of each node's table includes them.
pub async fn foreign_services(
    client: &Client,
    slices: SliceVersion,
) -> anyhow::Result<(Vec<Service>, Vec<EndpointSlice>)> {
    let api: Api<Service> = Api::all(client.clone());
    let all = ListParams::default();
    let services: Vec<Service> = retrying(|| api.list(&all))
        .await
        .map_err(|e| anyhow!("listing Services: {}", api_error(&e)))?
        .items
        .into_iter()
        .filter(|s| !s.annotations().contains_key(RUN_ANNOTATION))
        .collect();
    let keys: BTreeSet<(String, String)> = services
        .iter()
        .map(|s| (s.namespace().unwrap_or_default(), s.name_any()))
        .collect();
    let slices = endpoint_slices::list(client, slices)
        .await
        .context("listing EndpointSlices")?
        .into_iter()
        .filter(|s| {
            let service = s
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(crate::service::spec::SERVICE_NAME_LABEL));
            service.is_some_and(|name| {
                keys.contains(&(
                    s.metadata.namespace.clone().unwrap_or_default(),
                    name.clone(),
                ))
            })
        })
        .collect();
    Ok((services, slices))
}
