//! Test support: what a v1.20 API server would say about our CRD schemas, and
//! what it would prune or reject from our objects. No API server runs in the
//! tests, so the rules are written down here (from the Kubernetes docs on
//! structural schemas and apiextensions v1 validation).

use serde_json::{Map, Value};

use crate::structural::KNOWN_FORMATS;

/// The `JSONSchemaProps` fields a v1.20 API server knows. Anything else
/// (`const`, `$ref`, `x-kubernetes-validations`, …) it rejects or drops.
const ALLOWED_KEYS: &[&str] = &[
    "description",
    "type",
    "format",
    "title",
    "default",
    "maximum",
    "exclusiveMaximum",
    "minimum",
    "exclusiveMinimum",
    "maxLength",
    "minLength",
    "pattern",
    "maxItems",
    "minItems",
    "uniqueItems",
    "multipleOf",
    "enum",
    "maxProperties",
    "minProperties",
    "required",
    "items",
    "allOf",
    "oneOf",
    "anyOf",
    "not",
    "properties",
    "additionalProperties",
    "nullable",
    "example",
    "externalDocs",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-embedded-resource",
    "x-kubernetes-int-or-string",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-list-type",
    "x-kubernetes-map-type",
];

/// Keys a structural schema may not set inside `allOf`/`anyOf`/`oneOf`/`not`.
const NOT_IN_JUNCTORS: &[&str] = &[
    "type",
    "description",
    "default",
    "additionalProperties",
    "nullable",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-embedded-resource",
    "x-kubernetes-int-or-string",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-list-type",
    "x-kubernetes-map-type",
];

const JUNCTORS: &[&str] = &["allOf", "anyOf", "oneOf"];
const TYPES: &[&str] = &["object", "array", "string", "integer", "number", "boolean"];

/// Every reason the schema is not a structural v1.20 schema, with its path.
pub fn violations(root: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if root.get("type") != Some(&Value::from("object")) {
        out.push("root: type must be object".into());
    }
    if let Some(meta) = root.pointer("/properties/metadata") {
        if meta != &serde_json::json!({"type": "object"}) {
            out.push(format!(
                "metadata: only `type: object` is allowed, got {meta}"
            ));
        }
    }
    walk(root, "", false, &mut out);
    out
}

fn walk(node: &Value, path: &str, in_junctor: bool, out: &mut Vec<String>) {
    let Some(obj) = node.as_object() else {
        out.push(format!("{path}: schema is not an object: {node}"));
        return;
    };
    let mut local = Vec::new();
    let mut bad = |msg: String| local.push(msg);
    for key in obj.keys() {
        if !ALLOWED_KEYS.contains(&key.as_str()) {
            bad(format!("`{key}` is not allowed"));
        }
        if in_junctor && NOT_IN_JUNCTORS.contains(&key.as_str()) {
            bad(format!("`{key}` inside allOf/anyOf/oneOf/not"));
        }
    }
    let escape = flag(obj, "x-kubernetes-int-or-string")
        || flag(obj, "x-kubernetes-preserve-unknown-fields");
    match obj.get("type").and_then(Value::as_str) {
        Some(t) if TYPES.contains(&t) => {}
        Some(t) => bad(format!("unknown type {t:?}")),
        None if obj.contains_key("type") => bad("type must be one string".into()),
        None if !in_junctor && !escape => bad("no type".into()),
        None => {}
    }
    if obj.contains_key("properties") && obj.contains_key("additionalProperties") {
        bad("both properties and additionalProperties".into());
    }
    if obj.get("uniqueItems") == Some(&Value::Bool(true)) {
        bad("uniqueItems: true".into());
    }
    if let Some(f) = obj.get("format").and_then(Value::as_str) {
        if !KNOWN_FORMATS.contains(&f) {
            bad(format!("unknown format {f:?}"));
        }
    }
    check_enum(obj, &mut bad);
    check_list_map(obj, &mut bad);
    if !in_junctor {
        check_required(obj, &mut bad);
    }
    let mut members = Vec::new();
    for junctor in JUNCTORS {
        let list = obj.get(*junctor).and_then(Value::as_array);
        for (i, member) in list.into_iter().flatten().enumerate() {
            members.push((format!("{path}.{junctor}[{i}]"), member));
        }
    }
    if let Some(member) = obj.get("not") {
        members.push((format!("{path}.not"), member));
    }
    for (_, member) in &members {
        check_junctor_properties(obj, member, &mut bad);
    }
    out.extend(
        local
            .into_iter()
            .map(|msg| format!("{}: {msg}", display(path))),
    );
    for (sub, member) in members {
        walk(member, &sub, true, out);
    }
    for (name, prop) in obj
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        walk(prop, &format!("{path}.{name}"), in_junctor, out);
    }
    match obj.get("items") {
        Some(items @ Value::Object(_)) => walk(items, &format!("{path}[]"), in_junctor, out),
        Some(other) => out.push(format!(
            "{}: items must be one schema: {other}",
            display(path)
        )),
        None if obj.get("type") == Some(&Value::from("array")) => {
            out.push(format!("{}: array without items", display(path)))
        }
        None => {}
    }
    if let Some(extra @ Value::Object(_)) = obj.get("additionalProperties") {
        walk(extra, &format!("{path}.*"), in_junctor, out);
    }
}

fn display(path: &str) -> &str {
    if path.is_empty() {
        "root"
    } else {
        path
    }
}

fn flag(obj: &Map<String, Value>, key: &str) -> bool {
    obj.get(key) == Some(&Value::Bool(true))
}

/// No literal `null` (v1.20.2 mishandles it), and values of the node's type.
fn check_enum(obj: &Map<String, Value>, bad: &mut impl FnMut(String)) {
    let Some(values) = obj.get("enum").and_then(Value::as_array) else {
        return;
    };
    for v in values {
        if !v.is_null() && type_matches(obj.get("type").and_then(Value::as_str), v) {
            continue;
        }
        bad(format!("enum value {v} does not fit the type"));
    }
}

fn check_list_map(obj: &Map<String, Value>, bad: &mut impl FnMut(String)) {
    let keys = obj
        .get("x-kubernetes-list-map-keys")
        .and_then(Value::as_array);
    let is_map = obj.get("x-kubernetes-list-type") == Some(&Value::from("map"));
    match (is_map, keys) {
        (false, None) => {}
        (true, Some(keys)) if !keys.is_empty() => {
            let required = obj
                .get("items")
                .and_then(|i| i.get("required"))
                .and_then(Value::as_array);
            for key in keys {
                if !required.is_some_and(|r| r.contains(key)) {
                    bad(format!("list-map key {key} is not required in items"));
                }
            }
        }
        _ => bad("x-kubernetes-list-type map needs x-kubernetes-list-map-keys".into()),
    }
}

/// A required field the schema does not declare would be pruned, and then the
/// object could never be valid.
fn check_required(obj: &Map<String, Value>, bad: &mut impl FnMut(String)) {
    let props = obj.get("properties").and_then(Value::as_object);
    for name in obj
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = name.as_str().unwrap_or_default();
        if !props.is_some_and(|p| p.contains_key(name)) {
            bad(format!("required {name:?} is not a property"));
        }
    }
}

/// Properties named inside a junctor must be declared outside it too.
fn check_junctor_properties(
    outer: &Map<String, Value>,
    member: &Value,
    bad: &mut impl FnMut(String),
) {
    let declared = outer.get("properties").and_then(Value::as_object);
    for name in member
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(n, _)| n)
    {
        if !declared.is_some_and(|d| d.contains_key(name)) {
            bad(format!(
                "junctor property {name:?} is not declared outside it"
            ));
        }
    }
}

fn type_matches(ty: Option<&str>, v: &Value) -> bool {
    match ty {
        Some("string") => v.is_string(),
        Some("integer") => v.is_i64() || v.is_u64(),
        Some("number") => v.is_number(),
        Some("boolean") => v.is_boolean(),
        Some("array") => v.is_array(),
        Some("object") => v.is_object(),
        _ => true,
    }
}

/// What the API server would prune from or reject in `value` (an object of
/// the CRD whose schema is `root`). `apiVersion`, `kind` and `metadata` are
/// the server's own business.
pub fn validate(value: &Value, root: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut value = value.clone();
    if let Some(obj) = value.as_object_mut() {
        for key in ["apiVersion", "kind", "metadata"] {
            obj.remove(key);
        }
    }
    check_value(&value, root, "", &mut out);
    out
}

fn check_value(value: &Value, schema: &Value, path: &str, out: &mut Vec<String>) {
    let path_shown = display(path).to_string();
    if value.is_null() {
        if !flag(schema.as_object().unwrap_or(&Map::new()), "nullable") {
            out.push(format!("{path_shown}: null but not nullable"));
        }
        return;
    }
    let ty = schema.get("type").and_then(Value::as_str);
    if !type_matches(ty, value) {
        out.push(format!("{path_shown}: {value} is not of type {ty:?}"));
        return;
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        if !values.contains(value) {
            out.push(format!("{path_shown}: {value} is not one of {values:?}"));
        }
    }
    if let (Some(n), Some(min)) = (
        value.as_f64(),
        schema.get("minimum").and_then(Value::as_f64),
    ) {
        if n < min {
            out.push(format!("{path_shown}: {n} < minimum {min}"));
        }
    }
    if let (Some(n), Some(max)) = (
        value.as_f64(),
        schema.get("maximum").and_then(Value::as_f64),
    ) {
        if n > max {
            out.push(format!("{path_shown}: {n} > maximum {max}"));
        }
    }
    match value {
        Value::Object(fields) => {
            let props = schema.get("properties").and_then(Value::as_object);
            for name in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if !fields.contains_key(name.as_str().unwrap_or_default()) {
                    out.push(format!("{path_shown}: required {name} missing"));
                }
            }
            for (name, field) in fields {
                let sub = format!("{path}.{name}");
                match (
                    props.and_then(|p| p.get(name)),
                    schema.get("additionalProperties"),
                ) {
                    (Some(prop), _) => check_value(field, prop, &sub, out),
                    (None, Some(extra @ Value::Object(_))) => check_value(field, extra, &sub, out),
                    _ if flag(
                        schema.as_object().unwrap(),
                        "x-kubernetes-preserve-unknown-fields",
                    ) => {}
                    _ => out.push(format!("{sub}: not in the schema, would be pruned")),
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check_value(item, item_schema, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

/// The schema a simple printer-column JSONPath (`.a.b`, `.a[?(@.x=="y")].b`)
/// ends at, or `None` when it leads nowhere the schema declares.
pub fn schema_at<'a>(root: &'a Value, json_path: &str) -> Option<&'a Value> {
    let mut node = root;
    let mut rest = json_path;
    while let Some(r) = rest.strip_prefix('.') {
        let end = r.find(['.', '[']).unwrap_or(r.len());
        node = node.get("properties")?.get(&r[..end])?;
        rest = &r[end..];
        if rest.starts_with('[') {
            // A filter such as `[?(@.type=="Enforced")]` selects list items.
            node = node.get("items")?;
            rest = &rest[rest.find(']')? + 1..];
        }
    }
    rest.is_empty().then_some(node)
}
