//! How the lab's operator and agents authenticate: as deploy/'s
//! ServiceAccounts, with tokens from the TokenRequest API, each through a
//! kubeconfig of its own that names the admin kubeconfig's server and CA.
//! Nothing of the admin's credentials reaches them.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::PostParams;
use kube::config::Kubeconfig;
use kube::{Api, Client};
use serde_json::{json, Value};

/// How long the tokens live: longer than any lab run.
const TOKEN_SECONDS: i64 = 24 * 3600;

/// The `cluster` entry of `admin`'s current context (server, CA), as JSON.
pub fn current_cluster(admin: &Kubeconfig, path: &Path) -> anyhow::Result<Value> {
    let context_name = admin
        .current_context
        .as_deref()
        .ok_or_else(|| anyhow!("kubeconfig {}: no current-context", path.display()))?;
    let context = admin
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.as_ref())
        .ok_or_else(|| {
            anyhow!(
                "kubeconfig {}: current-context `{context_name}` is not in contexts",
                path.display()
            )
        })?;
    let cluster = admin
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .and_then(|c| c.cluster.as_ref())
        .ok_or_else(|| {
            anyhow!(
                "kubeconfig {}: cluster `{}` of context `{context_name}` is not in clusters",
                path.display(),
                context.cluster
            )
        })?;
    serde_json::to_value(cluster).context("serializing the kubeconfig's cluster entry")
}

/// A kubeconfig (JSON, which is YAML) that reaches `cluster` as `user` with
/// a bearer `token`.
pub fn kubeconfig_text(cluster: &Value, user: &str, token: &str) -> String {
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "lab", "cluster": cluster}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": "lab", "user": user}}],
        "current-context": user,
    });
    serde_json::to_string_pretty(&config).expect("a JSON value serializes")
}

/// A token for ServiceAccount `namespace/name` from the TokenRequest API.
pub async fn token(client: &Client, namespace: &str, name: &str) -> anyhow::Result<String> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(TOKEN_SECONDS),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = api
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .with_context(|| format!("requesting a token for ServiceAccount {namespace}/{name}"))?;
    answer
        .status
        .map(|s| s.token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            anyhow!("the TokenRequest for ServiceAccount {namespace}/{name} returned no token")
        })
}

/// Writes `text` to `dir/name`, readable by the owner only (it holds a token).
pub fn write_private(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADMIN: &str = r#"
apiVersion: v1
kind: Config
clusters:
- name: other
  cluster: {server: "https://10.0.0.1:6443"}
- name: local
  cluster: {server: "https://127.0.0.1:23456", certificate-authority-data: Q0E=}
users:
- name: admin
  user: {client-certificate-data: Y2VydA==, client-key-data: a2V5}
contexts:
- name: ctx
  context: {cluster: local, user: admin}
current-context: ctx
"#;

    #[test]
    fn a_component_kubeconfig_keeps_server_and_ca_and_nothing_of_the_admin() {
        let admin: Kubeconfig = serde_norway::from_str(ADMIN).unwrap();
        let cluster = current_cluster(&admin, Path::new("admin.kubeconfig")).unwrap();
        let text = kubeconfig_text(&cluster, "kube-nft-agent", "tok");
        assert!(
            !text.contains("a2V5") && !text.contains("Y2VydA=="),
            "{text}"
        );
        let parsed: Kubeconfig = serde_json::from_str(&text).unwrap();
        let c = parsed.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(c.server.as_deref(), Some("https://127.0.0.1:23456"));
        assert_eq!(c.certificate_authority_data.as_deref(), Some("Q0E="));
        assert_eq!(parsed.current_context.as_deref(), Some("kube-nft-agent"));
        assert!(text.contains("\"token\": \"tok\""), "{text}");
    }

    #[test]
    fn a_kubeconfig_without_current_context_is_named() {
        let mut admin: Kubeconfig = serde_norway::from_str(ADMIN).unwrap();
        admin.current_context = Some("gone".into());
        let e = current_cluster(&admin, Path::new("a.kubeconfig"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("a.kubeconfig: current-context `gone` is not in contexts"),
            "{e}"
        );
    }
}
