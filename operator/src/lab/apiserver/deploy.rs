//! The part of `deploy/` the lab installs: the namespace, the two
//! ServiceAccounts and their RBAC, read from the repository's own manifests
//! at compile time, so the lab's operator and agents run with exactly the
//! permissions a real installation grants them (a missing rule fails the
//! lab as it would fail the cluster). The workloads (Deployment, DaemonSet)
//! are not installed: the lab runs them as processes.

use serde::Deserialize;
use serde_json::Value;

/// The files, as `kubectl apply -k deploy/` reads them.
const FILES: [(&str, &str); 3] = [
    (
        "deploy/namespace.yaml",
        include_str!("../../../../deploy/namespace.yaml"),
    ),
    (
        "deploy/rbac-operator.yaml",
        include_str!("../../../../deploy/rbac-operator.yaml"),
    ),
    (
        "deploy/rbac-agent.yaml",
        include_str!("../../../../deploy/rbac-agent.yaml"),
    ),
];

/// The kinds taken from those files; anything else in them is left out.
pub const KINDS: [&str; 6] = [
    "Namespace",
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
];

/// One object to apply: its `apiVersion`, `kind`, and the whole manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct DeployObject {
    pub api_version: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    pub manifest: Value,
}

impl DeployObject {
    pub fn describe(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }
}

/// The objects of [`KINDS`] in the deploy files, in file order. Namespaced
/// kinds without a namespace get `namespace` (what the kustomization's
/// `namespace:` does).
pub fn objects(namespace: &str) -> Result<Vec<DeployObject>, String> {
    let mut out = Vec::new();
    for (file, text) in FILES {
        out.extend(parse(file, text, namespace)?);
    }
    Ok(out)
}

fn parse(file: &str, text: &str, namespace: &str) -> Result<Vec<DeployObject>, String> {
    let mut out = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let mut v =
            Value::deserialize(doc).map_err(|e| format!("{file}: document {}: {e}", i + 1))?;
        if v.is_null() {
            continue;
        }
        let kind = v["kind"].as_str().unwrap_or_default().to_string();
        if !KINDS.contains(&kind.as_str()) {
            continue;
        }
        let name = v["metadata"]["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| format!("{file}: document {}: {kind} has no metadata.name", i + 1))?
            .to_string();
        let cluster_scoped = matches!(
            kind.as_str(),
            "Namespace" | "ClusterRole" | "ClusterRoleBinding"
        );
        let ns = if cluster_scoped {
            None
        } else {
            let ns = v["metadata"]["namespace"]
                .as_str()
                .unwrap_or(namespace)
                .to_string();
            v["metadata"]["namespace"] = ns.clone().into();
            Some(ns)
        };
        out.push(DeployObject {
            api_version: v["apiVersion"].as_str().unwrap_or_default().to_string(),
            kind,
            namespace: ns,
            name,
            manifest: v,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_accounts_and_their_rbac_come_from_deploy() {
        let objects = objects("kube-nft").unwrap();
        let names: Vec<String> = objects.iter().map(DeployObject::describe).collect();
        for want in [
            "Namespace kube-nft",
            "ServiceAccount kube-nft/kube-nft-operator",
            "ServiceAccount kube-nft/kube-nft-agent",
            "ClusterRole kube-nft-operator",
            "ClusterRoleBinding kube-nft-agent",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
        }
        assert!(objects.iter().all(|o| KINDS.contains(&o.kind.as_str())));
    }

    #[test]
    fn other_kinds_are_left_out_and_namespaces_filled_in() {
        let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n---\n\
                    apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: r}\n---\n";
        let objects = parse("t.yaml", text, "lab").unwrap();
        assert_eq!(objects.len(), 1);
        assert_eq!(objects[0].describe(), "Role lab/r");
        assert_eq!(objects[0].manifest["metadata"]["namespace"], "lab");
        let e = parse("t.yaml", "kind: Role\nmetadata: {}\n", "lab").unwrap_err();
        assert!(
            e.contains("t.yaml: document 1: Role has no metadata.name"),
            "{e}"
        );
    }
}
