//! Offline checks of `deploy/`, what `kubectl apply -k deploy/` installs: no
//! cluster, no kernel.
//!
//! The objects are read straight from the files `deploy/kustomization.yaml`
//! lists, so the checks run wherever `cargo test` does (`scripts/setup` does
//! not install kubectl). The files spell out every namespace themselves, so
//! they are what kustomize renders minus its labels; when kubectl is on the
//! PATH, one more test checks exactly that against `kubectl kustomize deploy/`.

#[allow(dead_code)] // only workspace_root is used here
mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::{json, Value};

const NAMESPACE: &str = "kube-nft";
const IMAGE: &str = "kube-nft:0.1.0";
/// Added by the kustomization's `labels:` to every object and pod template.
const PART_OF: &str = "app.kubernetes.io/part-of";

fn deploy_dir() -> PathBuf {
    common::workspace_root().join("deploy")
}

/// Every document of a YAML stream, as JSON; empty documents are skipped.
fn parse_yaml_stream(text: &str, origin: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .enumerate()
        .map(|(i, doc)| {
            Value::deserialize(doc).unwrap_or_else(|e| panic!("{origin}: document {}: {e}", i + 1))
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn read_yaml(path: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    parse_yaml_stream(&text, &path.display().to_string())
}

fn kustomization() -> Value {
    let mut docs = read_yaml(&deploy_dir().join("kustomization.yaml"));
    assert_eq!(docs.len(), 1, "one document in deploy/kustomization.yaml");
    docs.remove(0)
}

/// The `resources:` of deploy/kustomization.yaml, as written.
fn resources() -> Vec<String> {
    kustomization()["resources"]
        .as_array()
        .expect("deploy/kustomization.yaml has resources")
        .iter()
        .map(|r| r.as_str().expect("resources are paths").to_string())
        .collect()
}

/// Every object of every resource file, in kustomization order.
fn objects() -> Vec<Value> {
    let dir = deploy_dir();
    resources()
        .iter()
        .flat_map(|r| {
            let path = dir.join(r);
            assert!(path.is_file(), "deploy/{r} is a file (listed by file)");
            read_yaml(&path)
        })
        .collect()
}

fn kind(o: &Value) -> &str {
    o["kind"].as_str().unwrap_or_default()
}

fn name(o: &Value) -> &str {
    o["metadata"]["name"].as_str().unwrap_or_default()
}

fn find<'a>(objects: &'a [Value], kind_: &str, name_: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| kind(o) == kind_ && name(o) == name_)
        .unwrap_or_else(|| panic!("deploy/ has no {kind_} {name_}"))
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The kinds deploy/ may hold that are not namespaced.
fn cluster_scoped(kind_: &str) -> bool {
    matches!(
        kind_,
        "Namespace" | "CustomResourceDefinition" | "ClusterRole" | "ClusterRoleBinding"
    )
}

/// One permission: (apiGroup, resource, resourceName or "", verb).
type Grant = (String, String, String, String);

/// A role's rules, flattened into single permissions, so equal permission
/// sets compare equal however the rules group them.
fn grants(role: &Value) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().expect("a role has rules") {
        let mut names = strs(&rule["resourceNames"]);
        if names.is_empty() {
            names.push("");
        }
        for group in strs(&rule["apiGroups"]) {
            for resource in strs(&rule["resources"]) {
                for verb in strs(&rule["verbs"]) {
                    for n in &names {
                        out.insert((group.into(), resource.into(), n.to_string(), verb.into()));
                    }
                }
            }
        }
    }
    out
}

/// A rule as written: (apiGroups, resources, resourceNames, verbs).
type Rule<'a> = (&'a [&'a str], &'a [&'a str], &'a [&'a str], &'a [&'a str]);

fn expected(rules: &[Rule]) -> BTreeSet<Grant> {
    grants(&json!({
        "rules": rules
            .iter()
            .map(|(groups, resources, names, verbs)| json!({
                "apiGroups": groups,
                "resources": resources,
                "resourceNames": names,
                "verbs": verbs,
            }))
            .collect::<Vec<_>>()
    }))
}

const READ: &[&str] = &["get", "list", "watch"];
/// kube-runtime's event recorder writes `events.k8s.io/v1` Events only.
const EVENTS: Rule = (&["events.k8s.io"], &["events"], &[], &["create", "patch"]);

fn pod_spec(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]
}

fn containers(workload: &Value) -> Vec<&Value> {
    let spec = pod_spec(workload);
    ["initContainers", "containers"]
        .iter()
        .filter_map(|k| spec[k].as_array())
        .flatten()
        .collect()
}

fn only_container(workload: &Value) -> &Value {
    let c = containers(workload);
    assert_eq!(c.len(), 1, "{} runs one container", name(workload));
    c[0]
}

fn workloads(objects: &[Value]) -> Vec<&Value> {
    objects
        .iter()
        .filter(|o| matches!(kind(o), "Deployment" | "DaemonSet" | "StatefulSet" | "Job"))
        .collect()
}

#[test]
fn kustomization_lists_every_manifest_and_every_crd_file() {
    let k = kustomization();
    assert_eq!(k["namespace"], NAMESPACE);
    assert_eq!(
        k["images"],
        json!([{"name": "kube-nft", "newName": "kube-nft", "newTag": "0.1.0"}]),
        "one images entry for the kube-nft image"
    );
    for label in k["labels"].as_array().into_iter().flatten() {
        assert_eq!(
            label["includeSelectors"], false,
            "labels must stay out of the (immutable) selectors"
        );
    }
    assert!(
        k.get("commonLabels").is_none(),
        "commonLabels rewrites selectors"
    );

    let listed: BTreeSet<String> = resources().into_iter().collect();
    assert_eq!(listed.len(), resources().len(), "no resource listed twice");

    // Every CRD file of deploy/crds, by file, and nothing else from there.
    let crd_dir = deploy_dir().join("crds");
    let on_disk: BTreeSet<String> = std::fs::read_dir(&crd_dir)
        .expect("deploy/crds")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".yaml") && f != "kustomization.yaml")
        .map(|f| format!("crds/{f}"))
        .collect();
    let generated: BTreeSet<String> = kube_nft_crds::manifests::crd_files()
        .into_iter()
        .map(|(f, _)| format!("crds/{f}"))
        .collect();
    assert_eq!(
        on_disk, generated,
        "deploy/crds is what `kube-nft crds` writes"
    );
    let listed_crds: BTreeSet<String> = listed
        .iter()
        .filter(|r| r.starts_with("crds/"))
        .cloned()
        .collect();
    assert_eq!(
        listed_crds, on_disk,
        "the CRD files listed in deploy/kustomization.yaml"
    );

    // Every manifest of deploy/ itself is listed (none forgotten).
    let top: BTreeSet<String> = std::fs::read_dir(deploy_dir())
        .expect("deploy/")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".yaml") && f != "kustomization.yaml")
        .collect();
    let listed_top: BTreeSet<String> = listed
        .iter()
        .filter(|r| !r.contains('/'))
        .cloned()
        .collect();
    assert_eq!(
        listed_top, top,
        "the manifests of deploy/ in its kustomization"
    );

    // One CRD object per file, named as its file.
    let objects = objects();
    let crds: BTreeSet<String> = objects
        .iter()
        .filter(|o| kind(o) == "CustomResourceDefinition")
        .map(|o| format!("crds/{}.yaml", name(o)))
        .collect();
    assert_eq!(crds, on_disk);
}

#[test]
fn namespaced_objects_live_in_kube_nft() {
    let objects = objects();
    assert_eq!(
        objects
            .iter()
            .filter(|o| kind(o) == "Namespace")
            .map(name)
            .collect::<Vec<_>>(),
        [NAMESPACE]
    );
    for o in &objects {
        let ns = &o["metadata"]["namespace"];
        if cluster_scoped(kind(o)) {
            assert!(ns.is_null(), "{} {} is cluster-scoped", kind(o), name(o));
        } else {
            assert_eq!(ns, NAMESPACE, "namespace of {} {}", kind(o), name(o));
        }
        for subject in o["subjects"].as_array().into_iter().flatten() {
            assert_eq!(subject["kind"], "ServiceAccount", "{} {}", kind(o), name(o));
            assert_eq!(subject["namespace"], NAMESPACE, "{} {}", kind(o), name(o));
        }
    }
}

#[test]
fn rbac_never_reads_secrets_nor_grants_wildcards() {
    let objects = objects();
    let roles: Vec<&Value> = objects
        .iter()
        .filter(|o| matches!(kind(o), "ClusterRole" | "Role"))
        .collect();
    assert_eq!(
        roles.len(),
        3,
        "two ClusterRoles and the leader-election Role"
    );
    for role in roles {
        assert!(role.get("aggregationRule").is_none(), "{}", name(role));
        for (group, resource, _, verb) in grants(role) {
            let what = format!("{} {}: {group}/{resource} {verb}", kind(role), name(role));
            assert!(!resource.starts_with("secrets"), "{what}");
            assert!(!resource.contains('*'), "{what}");
            assert!(group != "*", "{what}");
            assert!(verb != "*", "{what}");
            // Escalation verbs and nonResourceURLs have no business here.
            assert!(
                !matches!(verb.as_str(), "escalate" | "bind" | "impersonate"),
                "{what}"
            );
        }
        for rule in role["rules"].as_array().unwrap() {
            assert!(rule.get("nonResourceURLs").is_none(), "{}", name(role));
        }
    }
}

#[test]
fn agent_cluster_role_is_exactly_what_the_agent_needs() {
    let objects = objects();
    let role = find(&objects, "ClusterRole", "kube-nft-agent");
    let want = expected(&[
        (
            &["kubenft.io"],
            &["nodepolicyshares", "addresssetshards"],
            &[],
            READ,
        ),
        (
            &["kubenft.io"],
            &["nodepolicyshares/status"],
            &[],
            // Server-side apply of the status only; the agent posts no Events.
            &["patch"],
        ),
        (&[""], &["services", "nodes"], &[], READ),
        (&["discovery.k8s.io"], &["endpointslices"], &[], READ),
    ]);
    assert_eq!(grants(role), want);
}

#[test]
fn operator_roles_are_exactly_what_the_operator_needs() {
    let objects = objects();
    let role = find(&objects, "ClusterRole", "kube-nft-operator");
    let want = expected(&[
        (&[""], &["namespaces", "pods", "nodes"], &[], READ),
        (&["networking.k8s.io"], &["networkpolicies"], &[], READ),
        (
            &["kubenft.io"],
            &["nodepolicyshares", "addresssetshards"],
            &[],
            // Server-side apply (patch; create for an object not there yet).
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        EVENTS,
    ]);
    assert_eq!(grants(role), want);

    // Leader election: its own Lease, in its own namespace only.
    let leader = find(&objects, "Role", "kube-nft-operator-leader");
    let want = expected(&[
        (
            &["coordination.k8s.io"],
            &["leases"],
            &["kube-nft-operator"],
            &["get", "update"],
        ),
        (&["coordination.k8s.io"], &["leases"], &[], &["create"]),
    ]);
    assert_eq!(grants(leader), want);
}

#[test]
fn every_crd_is_readable_by_both_roles() {
    let objects = objects();
    let plurals: BTreeSet<String> = kube_nft_crds::resources::crds()
        .iter()
        .map(|crd| crd.spec.names.plural.clone())
        .collect();
    for role in ["kube-nft-operator", "kube-nft-agent"] {
        let readable: BTreeSet<String> = grants(find(&objects, "ClusterRole", role))
            .into_iter()
            .filter(|(g, _, _, v)| g == "kubenft.io" && v == "watch")
            .map(|(_, r, _, _)| r)
            .collect();
        assert_eq!(readable, plurals, "{role} watches every kube-nft CRD");
    }
}

#[test]
fn each_service_account_is_bound_to_its_roles() {
    let objects = objects();
    let bindings = [
        (
            "ClusterRoleBinding",
            "kube-nft-operator",
            "ClusterRole",
            "kube-nft-operator",
        ),
        (
            "ClusterRoleBinding",
            "kube-nft-agent",
            "ClusterRole",
            "kube-nft-agent",
        ),
        (
            "RoleBinding",
            "kube-nft-operator-leader",
            "Role",
            "kube-nft-operator-leader",
        ),
    ];
    let all: Vec<&Value> = objects
        .iter()
        .filter(|o| kind(o).ends_with("Binding"))
        .collect();
    assert_eq!(all.len(), bindings.len(), "no other bindings");
    for (binding_kind, binding, role_kind, role) in bindings {
        let b = find(&objects, binding_kind, binding);
        assert_eq!(
            b["roleRef"],
            json!({"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role})
        );
        let account = if binding.starts_with("kube-nft-agent") {
            "kube-nft-agent"
        } else {
            "kube-nft-operator"
        };
        assert_eq!(
            b["subjects"],
            json!([{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]),
            "{binding_kind} {binding}"
        );
        find(&objects, "ServiceAccount", account);
    }
}

#[test]
fn agent_daemonset_runs_on_every_node_with_net_admin_only() {
    let objects = objects();
    let ds = find(&objects, "DaemonSet", "kube-nft-agent");
    let spec = pod_spec(ds);
    assert_eq!(spec["serviceAccountName"], "kube-nft-agent");
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(spec["dnsPolicy"], "ClusterFirstWithHostNet");
    assert_eq!(spec["priorityClassName"], "system-node-critical");
    assert_eq!(
        spec["tolerations"],
        json!([{"operator": "Exists"}]),
        "tolerates every taint"
    );
    assert!(
        spec["volumes"].is_null(),
        "no host paths (no iptables lock)"
    );
    for host in ["hostPID", "hostIPC"] {
        assert_ne!(spec[host], true, "{host}");
    }
    assert_eq!(
        ds["spec"]["updateStrategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}})
    );

    let c = only_container(ds);
    assert_eq!(c["image"], IMAGE);
    assert_eq!(c["command"], json!(["kube-nft", "agent", "run"]));
    assert_eq!(
        c["args"],
        json!(["--node=$(NODE_NAME)", "--metrics-addr=0.0.0.0:9473"])
    );
    assert_eq!(
        c["env"],
        json!([{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}])
    );
    assert_eq!(
        c["ports"],
        json!([{"name": "metrics", "containerPort": 9473, "protocol": "TCP"}])
    );
    let sc = &c["securityContext"];
    assert_ne!(sc["privileged"], true, "not privileged");
    assert_eq!(sc["capabilities"]["add"], json!(["NET_ADMIN"]));
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["runAsUser"], 0, "netlink needs root with CAP_NET_ADMIN");
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(
        spec["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
}

#[test]
fn operator_deployment_is_replicated_non_root_and_read_only() {
    let objects = objects();
    let d = find(&objects, "Deployment", "kube-nft-operator");
    assert_eq!(d["spec"]["replicas"], 2);
    let spec = pod_spec(d);
    assert_eq!(spec["serviceAccountName"], "kube-nft-operator");
    assert_eq!(spec["automountServiceAccountToken"], true);
    assert_eq!(spec["priorityClassName"], "system-cluster-critical");
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        assert_ne!(spec[host], true, "{host}");
    }
    for volume in spec["volumes"].as_array().into_iter().flatten() {
        assert!(volume["hostPath"].is_null(), "no hostPath: {volume}");
    }
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        spec["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let anti =
        &spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"];
    assert_eq!(
        anti[0]["podAffinityTerm"]["topologyKey"], "kubernetes.io/hostname",
        "replicas spread across nodes"
    );
    assert_eq!(
        anti[0]["podAffinityTerm"]["labelSelector"]["matchLabels"],
        d["spec"]["selector"]["matchLabels"]
    );

    let c = only_container(d);
    assert_eq!(c["image"], IMAGE);
    assert_eq!(c["command"], json!(["kube-nft", "operator"]));
    assert_eq!(
        c["args"],
        json!([
            "--namespace=$(POD_NAMESPACE)",
            "--identity=$(POD_NAME)",
            "--metrics-addr=0.0.0.0:8080"
        ])
    );
    let env: Vec<(&str, &str)> = c["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap(),
                e["valueFrom"]["fieldRef"]["fieldPath"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        env,
        [
            ("POD_NAME", "metadata.name"),
            ("POD_NAMESPACE", "metadata.namespace")
        ]
    );
    assert_eq!(
        c["ports"],
        json!([{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}])
    );
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["runAsUser"], 65532);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"], json!({"drop": ["ALL"]}));
    assert_ne!(sc["privileged"], true);
}

#[test]
fn every_container_has_resources_and_probes_on_a_declared_port() {
    let objects = objects();
    let workloads = workloads(&objects);
    assert_eq!(
        workloads.len(),
        2,
        "the operator Deployment and the agent DaemonSet"
    );
    for w in workloads {
        // Selectors match the pod template (and no more than the workload's labels).
        let selector = w["spec"]["selector"]["matchLabels"]
            .as_object()
            .expect("matchLabels");
        let labels = &w["spec"]["template"]["metadata"]["labels"];
        for (k, v) in selector {
            assert_eq!(&labels[k], v, "{}: template label {k}", name(w));
        }
        assert!(!selector.contains_key(PART_OF), "{}: selector", name(w));
        for c in containers(w) {
            let what = format!("{} {}/{}", kind(w), name(w), c["name"]);
            for bound in ["requests", "limits"] {
                let r = &c["resources"][bound];
                assert!(r["memory"].is_string(), "{what}: {bound}.memory");
            }
            assert!(
                c["resources"]["requests"]["cpu"].is_string(),
                "{what}: requests.cpu"
            );
            let ports: Vec<&Value> = c["ports"].as_array().into_iter().flatten().collect();
            for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
                let get = &c[probe]["httpGet"];
                assert_eq!(get["path"], path, "{what}: {probe}");
                assert!(
                    ports
                        .iter()
                        .any(|p| p["name"] == get["port"] || p["containerPort"] == get["port"]),
                    "{what}: {probe} port {} is declared",
                    get["port"]
                );
            }
            assert!(
                ports.iter().any(|p| p["name"] == "metrics"),
                "{what}: a port named metrics"
            );
        }
    }
}

/// `kubectl kustomize deploy/` renders the files as they are, plus the
/// part-of label. Skipped without kubectl (scripts/setup does not install it).
#[test]
fn kubectl_kustomize_renders_the_files_plus_labels() {
    let out = match Command::new("kubectl")
        .args(["kustomize", "deploy/"])
        .current_dir(common::workspace_root())
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("skipped: kubectl is not installed, `kubectl kustomize deploy/` not checked");
            return;
        }
        Err(e) => panic!("running kubectl: {e}"),
    };
    assert!(
        out.status.success(),
        "kubectl kustomize deploy/ failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = parse_yaml_stream(&String::from_utf8_lossy(&out.stdout), "kubectl kustomize");

    let key = |o: &Value| {
        (
            kind(o).to_string(),
            o["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            name(o).to_string(),
        )
    };
    let mut files = objects();
    files.sort_by_key(key);
    let mut rendered: Vec<Value> = rendered
        .into_iter()
        .map(|mut o| {
            let ctx = format!("{} {}", kind(&o), name(&o));
            let labels = o
                .pointer_mut("/metadata/labels")
                .and_then(Value::as_object_mut)
                .unwrap_or_else(|| panic!("{ctx}: no labels"));
            assert_eq!(labels.remove(PART_OF), Some(json!("kube-nft")), "{ctx}");
            if labels.is_empty() {
                o["metadata"].as_object_mut().unwrap().remove("labels");
            }
            // (pointer_mut: indexing a Value mutably would add the keys.)
            let template = o.pointer_mut("/spec/template/metadata/labels");
            if let Some(t) = template.and_then(Value::as_object_mut) {
                assert_eq!(
                    t.remove(PART_OF),
                    Some(json!("kube-nft")),
                    "{ctx}: template"
                );
            }
            o
        })
        .collect();
    rendered.sort_by_key(key);
    // The generated CRDs write `minimum: 0.0`; kustomize writes `0`.
    files.iter_mut().for_each(integral_floats_as_integers);
    rendered.iter_mut().for_each(integral_floats_as_integers);
    assert_eq!(
        rendered.iter().map(key).collect::<Vec<_>>(),
        files.iter().map(key).collect::<Vec<_>>()
    );
    for (r, f) in rendered.iter().zip(&files) {
        assert_eq!(
            r,
            f,
            "{} {}: kustomize changed more than labels",
            kind(f),
            name(f)
        );
    }
}

fn integral_floats_as_integers(v: &mut Value) {
    match v {
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|f| n.is_f64() && f.fract() == 0.0) {
                *v = json!(f as i64);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(integral_floats_as_integers),
        Value::Object(o) => o.values_mut().for_each(integral_floats_as_integers),
        _ => {}
    }
}
