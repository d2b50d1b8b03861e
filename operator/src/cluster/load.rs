//! Loading the cluster model from manifest files: YAML (multi-document) or JSON,
//! files or directories (recursively: `*.yaml`, `*.yml`, `*.json`), `kind: List`.
//!
//! A bad document is reported with file, document number, object and field, and
//! the rest still loads; [`LoadOptions::strict`] makes any problem fatal.
//! Unknown kinds are skipped with a warning.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use super::{Cluster, Object};

#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Any problem (bad document, invalid object, unknown kind) fails the load.
    pub strict: bool,
}

/// Where a document came from and what it is, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    /// 1-based document number in the file.
    pub document: usize,
    /// Index inside a `kind: List`, if the object came from one.
    pub item: Option<usize>,
    /// `Kind namespace/name` as far as the document tells.
    pub object: String,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.file.display(), self.document)?;
        if let Some(i) = self.item {
            write!(f, " item {i}")?;
        }
        if !self.object.is_empty() {
            write!(f, ": {}", self.object)?;
        }
        Ok(())
    }
}

/// A document that did not load, or loaded with a caveat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub origin: Origin,
    /// Field path, when known.
    pub field: Option<String>,
    pub message: String,
    /// Warnings (unknown kinds) are skipped objects that are not errors.
    pub warning: bool,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(field) = &self.field {
            write!(f, ": field {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Strict(Box<Problem>),
}

/// The loaded cluster plus everything that was skipped.
#[derive(Debug, Default)]
pub struct Loaded {
    pub cluster: Cluster,
    pub problems: Vec<Problem>,
}

/// Loads every manifest under `paths` into one cluster.
pub fn load_paths(paths: &[PathBuf], options: LoadOptions) -> Result<Loaded, LoadError> {
    let mut loaded = Loaded::default();
    for path in paths {
        for file in manifest_files(path)? {
            let text = std::fs::read_to_string(&file).map_err(|source| LoadError::Io {
                path: file.clone(),
                source,
            })?;
            load_str(&mut loaded, &file, &text);
        }
    }
    if options.strict {
        if let Some(p) = loaded.problems.first() {
            return Err(LoadError::Strict(Box::new(p.clone())));
        }
    }
    Ok(loaded)
}

/// The manifest files of one path: the file itself, or the directory's
/// `*.yaml`/`*.yml`/`*.json` files recursively, sorted for a stable load order.
fn manifest_files(path: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let io = |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io)?;
    entries.sort();
    for entry in entries {
        if entry.is_dir() {
            out.extend(manifest_files(&entry)?);
        } else if matches!(
            entry.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(entry);
        }
    }
    Ok(out)
}

/// Loads the documents of one file's text into `loaded`.
pub fn load_str(loaded: &mut Loaded, file: &Path, text: &str) {
    let is_json = file.extension().and_then(|e| e.to_str()) == Some("json");
    let documents: Vec<Result<Value, String>> = if is_json {
        vec![serde_json::from_str(text).map_err(|e| e.to_string())]
    } else {
        // The document iterator does not end after a syntax error; stop at the
        // first one (the rest of the file cannot be trusted anyway).
        let mut docs = Vec::new();
        for doc in serde_norway::Deserializer::from_str(text) {
            let parsed = Value::deserialize(doc).map_err(|e| e.to_string());
            let failed = parsed.is_err();
            docs.push(parsed);
            if failed {
                break;
            }
        }
        docs
    };
    for (i, doc) in documents.into_iter().enumerate() {
        let origin = Origin {
            file: file.to_path_buf(),
            document: i + 1,
            item: None,
            object: String::new(),
        };
        match doc {
            Ok(Value::Null) => {}
            Ok(value) => load_value(loaded, origin, value),
            Err(message) => loaded.problems.push(Problem {
                origin,
                field: None,
                message: format!("not valid YAML/JSON: {message}"),
                warning: false,
            }),
        }
    }
}

fn load_value(loaded: &mut Loaded, mut origin: Origin, value: Value) {
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
    if kind == "List" || kind.ends_with("List") && value.get("items").is_some() {
        let items = match value {
            Value::Object(mut m) => m.remove("items"),
            _ => None,
        };
        for (i, item) in items
            .and_then(|v| match v {
                Value::Array(a) => Some(a),
                _ => None,
            })
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let mut o = origin.clone();
            o.item = Some(i);
            load_value(loaded, o, item);
        }
        return;
    }
    origin.object = describe(&value);
    let problem = |field: Option<String>, message: String, warning: bool| Problem {
        origin: origin.clone(),
        field,
        message,
        warning,
    };
    let object = match kind {
        "Namespace" => typed(value).map(Object::Namespace),
        "Pod" => typed(value).map(Object::Pod),
        "Service" => typed(value).map(Object::Service),
        "EndpointSlice" => typed(value).map(Object::EndpointSlice),
        "NetworkPolicy" => typed(value).map(Object::NetworkPolicy),
        "Node" => typed(value).map(Object::Node),
        "" => {
            loaded
                .problems
                .push(problem(Some("kind".into()), "missing kind".into(), false));
            return;
        }
        other => {
            loaded.problems.push(problem(
                None,
                format!("kind {other} is not used by kube-nft; skipped"),
                true,
            ));
            return;
        }
    };
    match object {
        Ok(object) => {
            if let Err(e) = loaded.cluster.insert(object) {
                loaded
                    .problems
                    .push(problem(Some(e.field), e.message, false));
            }
        }
        Err((field, message)) => loaded.problems.push(problem(Some(field), message, false)),
    }
}

/// Deserializes into a k8s-openapi type, keeping the path of a failing field.
fn typed<T: DeserializeOwned>(value: Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "(object)".into() } else { path };
        (field, e.into_inner().to_string())
    })
}

/// `Kind namespace/name` (or `Kind name`) read from an untyped document.
fn describe(value: &Value) -> String {
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or("?");
    let meta = value.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("?");
    let namespaced = matches!(kind, "Pod" | "Service" | "EndpointSlice" | "NetworkPolicy");
    let cluster_scoped = matches!(kind, "Namespace" | "Node");
    match meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
    {
        Some(ns) if !cluster_scoped => format!("{kind} {ns}/{name}"),
        None if namespaced => format!("{kind} default/{name}"),
        _ => format!("{kind} {name}"),
    }
}

/// The model of one YAML text that must load without a problem (for tests
/// across the crate).
#[cfg(test)]
pub(crate) fn cluster_from_yaml(yaml: &str) -> Cluster {
    let mut loaded = Loaded::default();
    load_str(&mut loaded, Path::new("test.yaml"), yaml);
    assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
    loaded.cluster
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{ObjectKey, NAMESPACE_NAME_LABEL};

    fn load(text: &str) -> Loaded {
        let mut loaded = Loaded::default();
        load_str(&mut loaded, Path::new("m.yaml"), text);
        loaded
    }

    const MIXED: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: ok, namespace: x}
spec: {containers: [{name: c}]}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: broken, namespace: x}
spec:
  containers:
  - name: c
    ports:
    - containerPort: eighty
---
apiVersion: v1
kind: Pod
metadata: {name: badip, namespace: x}
spec: {containers: [{name: c}]}
status: {podIPs: [{ip: 10.0.0.300}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: z}
spec: {podSelector: {}}
---
apiVersion: example.com/v1
kind: Widget
metadata: {name: w}
"#;

    #[test]
    fn bad_document_names_file_document_object_and_field_and_rest_loads() {
        let l = load(MIXED);
        assert_eq!(l.problems.len(), 3, "{:#?}", l.problems);
        let p = &l.problems[0];
        assert_eq!(p.origin.document, 2);
        assert_eq!(p.origin.object, "Pod x/broken");
        assert_eq!(
            p.field.as_deref(),
            Some("spec.containers[0].ports[0].containerPort")
        );
        let text = p.to_string();
        assert!(text.starts_with("m.yaml: document 2: Pod x/broken: field spec.containers[0].ports[0].containerPort: "), "{text}");
        let p = &l.problems[1];
        assert_eq!(
            (p.origin.document, p.field.as_deref()),
            (3, Some("status.podIPs[0].ip"))
        );
        assert!(l.problems[2].warning, "unknown kind is a warning");
        assert!(l.cluster.pod(&ObjectKey::new("x", "ok")).is_some());
        assert_eq!(l.cluster.pods().len(), 1);
        assert_eq!(l.cluster.policies().len(), 1);
    }

    #[test]
    fn implicit_namespaces_carry_the_name_label() {
        let l = load(MIXED);
        for ns in ["x", "z"] {
            let labels = l.cluster.namespace_labels(ns);
            assert_eq!(
                labels.get(NAMESPACE_NAME_LABEL).map(String::as_str),
                Some(ns)
            );
        }
        // A declaration replaces the implicit namespace, and keeps the label.
        let l = load("kind: Pod\napiVersion: v1\nmetadata: {name: a, namespace: q}\n---\nkind: Namespace\napiVersion: v1\nmetadata: {name: q, labels: {team: t}}\n");
        let labels = l.cluster.namespace_labels("q");
        assert_eq!(labels.len(), 2, "{labels:?}");
    }

    #[test]
    fn list_items_load_and_errors_name_the_item() {
        let l = load(
            r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: a}}
- {apiVersion: v1, kind: Pod, metadata: {name: p, namespace: a}, spec: {containers: 3}}
"#,
        );
        assert!(l.cluster.namespace("a").is_some());
        assert_eq!(l.problems.len(), 1);
        assert_eq!(l.problems[0].origin.item, Some(1));
        assert_eq!(l.problems[0].field.as_deref(), Some("spec.containers"));
    }

    #[test]
    fn directories_load_recursively_and_strict_fails() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        let l = load_paths(&[dir.join("basic")], LoadOptions::default()).unwrap();
        assert!(l.problems.is_empty(), "{:#?}", l.problems);
        assert_eq!(l.cluster.pods().len(), 4);
        assert_eq!(l.cluster.policies().len(), 2);
        let err = load_paths(std::slice::from_ref(&dir), LoadOptions { strict: true }).unwrap_err();
        assert!(err.to_string().contains("bad"), "{err}");
        let l = load_paths(&[dir], LoadOptions::default()).unwrap();
        assert!(!l.problems.is_empty());
        assert_eq!(l.cluster.pods().len(), 5);
    }

    #[test]
    fn json_documents_load() {
        let mut loaded = Loaded::default();
        let text = r#"{"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "x"}}]}"#;
        load_str(&mut loaded, Path::new("m.json"), text);
        assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
        assert_eq!(loaded.cluster.pods().len(), 1);
    }

    #[test]
    fn invalid_yaml_is_reported() {
        let l = load("kind: Pod\n  bad: [\n");
        assert_eq!(l.problems.len(), 1);
        assert!(l.problems[0].message.contains("not valid YAML"));
    }
}
