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
    Strict(Problem),
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
            return Err(LoadError::Strict(p.clone()));
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
        serde_norway::Deserializer::from_str(text)
            .map(|doc| Value::deserialize(doc).map_err(|e| e.to_string()))
            .collect()
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
            loaded.problems.push(problem(
                Some("kind".into()),
                "missing kind".into(),
                false,
            ));
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
    let cluster_scoped = matches!(kind, "Namespace" | "Node");
    match meta.and_then(|m| m.get("namespace")).and_then(Value::as_str) {
        _ if cluster_scoped => format!("{kind} {name}"),
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} default/{name}"),
    }
}
