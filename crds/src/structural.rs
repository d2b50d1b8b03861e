//! Schema fix-ups that make schemars output a *structural* Kubernetes schema
//! that a v1.20 API server accepts.
//!
//! kube's derive already runs its `StructuralSchemaRewriter` over the whole CRD
//! schema, but two things of ours get past it (or make it panic):
//!
//! * Internally tagged enums (`#[serde(tag = "kind")]`, e.g. [`IrPeer`]): schemars
//!   renders them as a `oneOf` of objects whose tag property differs per variant
//!   (`const: "any"`, `const: "cidr"`, …). The rewriter hoists variant properties
//!   and panics when the same property has different schemas. We flatten such a
//!   `oneOf` first: one object whose tag is a string `enum` of every variant and
//!   whose other properties are the union of the variants' (all optional). serde
//!   still rejects a peer whose variant fields are missing when an agent reads it.
//! * `format`s Kubernetes does not know (`ip` for `IpAddr`, `uint16` for `u16`,
//!   …). v1.20 ignores them, newer servers warn; they carry no information an
//!   API server can use, so they are dropped.
//! * `Option<SomeEnum>` comes out as an `enum` listing `null`; a v1.20.2 API
//!   server mishandles literal nulls in CRD schemas (kubernetes#104969, fixed
//!   in later patch releases), so `null` becomes `nullable: true`.
//!
//! It also turns rustdoc in descriptions into the plain text `kubectl explain`
//! shows: intra-doc links lose their brackets, wrapped lines are joined.
//!
//! [`for_kubernetes`] is applied with `#[schemars(transform = …)]` on the CRD
//! spec and status types, where the generator has inlined every subschema.
//!
//! [`IrPeer`]: crate::ir::IrPeer

use std::collections::BTreeSet;

use schemars::transform::transform_subschemas;
use schemars::Schema;
use serde_json::{json, Map, Value};

/// The `format` values the Kubernetes API server validates (apiextensions'
/// supported formats); any other format is dropped.
pub const KNOWN_FORMATS: &[&str] = &[
    "bsonobjectid",
    "uri",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "cidr",
    "mac",
    "uuid",
    "uuid3",
    "uuid4",
    "uuid5",
    "isbn",
    "isbn10",
    "isbn13",
    "creditcard",
    "ssn",
    "hexcolor",
    "rgbcolor",
    "byte",
    "password",
    "date",
    "duration",
    "datetime",
    "date-time",
    "int32",
    "int64",
    "float",
    "double",
];

/// Makes one type's (fully inlined) schema structural; see the module doc.
pub fn for_kubernetes(schema: &mut Schema) {
    transform_subschemas(&mut for_kubernetes, schema);
    let Some(obj) = schema.as_object_mut() else {
        return;
    };
    if let Some(Value::String(format)) = obj.get("format") {
        if !KNOWN_FORMATS.contains(&format.as_str()) {
            obj.remove("format");
        }
    }
    strip_null_from_enum(obj);
    flatten_tagged_union(obj);
    if let Some(Value::String(doc)) = obj.get_mut("description") {
        *doc = plain_doc(doc);
    }
}

/// ``[`Name`]`` → `` `Name` ``; one newline → a space (blank lines stay).
fn plain_doc(doc: &str) -> String {
    let mut text = String::with_capacity(doc.len());
    let mut rest = doc;
    while let Some(start) = rest.find("[`") {
        let link = rest[start + 1..].find("`]").map(|end| start + 1 + end);
        let Some(end) = link.filter(|&end| !rest[start + 2..end].contains('`')) else {
            text.push_str(&rest[..start + 2]);
            rest = &rest[start + 2..];
            continue;
        };
        text.push_str(&rest[..start]);
        text.push_str(&rest[start + 1..=end]);
        rest = &rest[end + 2..];
    }
    text.push_str(rest);
    let paragraphs: Vec<String> = text
        .split("\n\n")
        .map(|p| p.split('\n').map(str::trim).collect::<Vec<_>>().join(" "))
        .collect();
    paragraphs.join("\n\n")
}

/// `enum: [A, B, null]` → `enum: [A, B], nullable: true` (see the module doc).
fn strip_null_from_enum(obj: &mut Map<String, Value>) {
    let Some(Value::Array(values)) = obj.get_mut("enum") else {
        return;
    };
    if values.contains(&Value::Null) {
        values.retain(|v| !v.is_null());
        obj.insert("nullable".into(), true.into());
    }
}

/// Turns `oneOf: [{properties: {kind: {const: "a"}, …}}, …]` into one object
/// schema with `kind: {enum: [a, …]}` and the union of the variants' properties.
/// Leaves any other `oneOf` alone (the structural check in the tests reports it).
fn flatten_tagged_union(obj: &mut Map<String, Value>) {
    let Some(Value::Array(variants)) = obj.get("oneOf") else {
        return;
    };
    let Some(tag) = common_tag(variants) else {
        return;
    };
    let mut tags = Vec::new();
    let mut tag_doc = Vec::new();
    let mut properties = Map::new();
    // Which variants use each non-tag property, for its description.
    let mut users: Vec<(String, Vec<String>)> = Vec::new();
    for variant in variants {
        let value = tag_value(variant, &tag).expect("checked by common_tag");
        if let Some(doc) = variant.get("description").and_then(Value::as_str) {
            tag_doc.push(format!("`{value}`: {}", doc.trim()));
        }
        tags.push(Value::String(value.clone()));
        for (name, prop) in variant["properties"].as_object().into_iter().flatten() {
            if *name == tag {
                continue;
            }
            match properties.get(name) {
                None => {
                    properties.insert(name.clone(), prop.clone());
                    users.push((name.clone(), vec![value.clone()]));
                }
                Some(existing) if existing == prop => {
                    let entry = users.iter_mut().find(|(n, _)| n == name);
                    entry
                        .expect("inserted with the property")
                        .1
                        .push(value.clone());
                }
                Some(existing) => panic!(
                    "tagged union variants disagree on property {name:?}: {existing} vs {prop}"
                ),
            }
        }
    }
    for (name, kinds) in users {
        let prop = properties[&name].as_object_mut().expect("object schema");
        let used_by = format!("Only with {tag} {}.", kinds.join(", "));
        let doc = match prop.get("description").and_then(Value::as_str) {
            Some(d) => format!("{d} {used_by}"),
            None => used_by,
        };
        prop.insert("description".into(), doc.into());
    }
    let mut tag_schema = json!({ "type": "string", "enum": tags });
    if !tag_doc.is_empty() {
        tag_schema["description"] = tag_doc.join(" ").into();
    }
    properties.insert(tag.clone(), tag_schema);
    obj.remove("oneOf");
    obj.insert("type".into(), "object".into());
    obj.insert("properties".into(), Value::Object(properties));
    obj.insert("required".into(), json!([tag]));
}

/// The property every variant requires and pins to one string value.
fn common_tag(variants: &[Value]) -> Option<String> {
    let first = variants.first()?.get("properties")?.as_object()?;
    first
        .keys()
        .find(|key| {
            let mut seen = BTreeSet::new();
            variants.iter().all(|v| {
                let required = v["required"]
                    .as_array()
                    .is_some_and(|r| r.contains(&json!(key)));
                required && tag_value(v, key).is_some_and(|t| seen.insert(t))
            })
        })
        .cloned()
}

/// The single string a variant's `tag` property is pinned to (`const`, or a
/// one-element `enum` once schemars' openapi3 transforms have run).
fn tag_value(variant: &Value, tag: &str) -> Option<String> {
    let prop = variant.get("properties")?.get(tag)?;
    let value = match (prop.get("const"), prop.get("enum")) {
        (Some(c), _) => c,
        (None, Some(Value::Array(e))) if e.len() == 1 => &e[0],
        _ => return None,
    };
    value.as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flattens_internally_tagged_enum() {
        let mut schema: Schema = json!({
            "oneOf": [
                {"description": "Everything.", "type": "object",
                 "properties": {"kind": {"type": "string", "const": "any"}},
                 "required": ["kind"]},
                {"type": "object",
                 "properties": {"kind": {"type": "string", "const": "set"},
                                "name": {"type": "string"}},
                 "required": ["kind", "name"]},
                {"type": "object",
                 "properties": {"kind": {"type": "string", "enum": ["other"]},
                                "name": {"type": "string"},
                                "port": {"type": "integer", "format": "uint16"}},
                 "required": ["kind"]}
            ]
        })
        .try_into()
        .unwrap();
        for_kubernetes(&mut schema);
        let v = schema.as_value();
        assert!(v.get("oneOf").is_none(), "{v}");
        assert_eq!(v["type"], "object");
        assert_eq!(v["required"], json!(["kind"]));
        assert_eq!(
            v["properties"]["kind"]["enum"],
            json!(["any", "set", "other"])
        );
        assert_eq!(v["properties"]["kind"]["description"], "`any`: Everything.");
        assert_eq!(
            v["properties"]["name"]["description"],
            "Only with kind set, other."
        );
        assert!(v["properties"]["port"].get("format").is_none(), "{v}");
    }

    #[test]
    fn descriptions_become_plain_text() {
        let doc =
            "One [`AddressSet`] per\nline, see [`ir::IrPeer`].\n\nA `[code]` stays, [`unclosed.";
        assert_eq!(
            plain_doc(doc),
            "One `AddressSet` per line, see `ir::IrPeer`.\n\nA `[code]` stays, [`unclosed."
        );
    }

    #[test]
    fn leaves_other_one_of_alone() {
        let original = json!({"oneOf": [{"type": "string"}, {"type": "integer"}]});
        let mut schema: Schema = original.clone().try_into().unwrap();
        for_kubernetes(&mut schema);
        assert_eq!(schema.as_value(), &original);
    }
}
