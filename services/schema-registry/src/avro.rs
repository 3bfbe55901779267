//! Parsing submitted schemas and deriving their identity.
//!
//! Identity decides "is this the same schema": re-registering it returns the existing id, and the
//! SHA-256 of the identity is part of the log record key. It is the schema as apache-avro
//! understands it, re-serialised with object keys sorted, plus the schema type and the
//! references. That ignores whitespace, key order and `{"type":"int"}` vs `"int"`, but — unlike the
//! Avro Parsing Canonical Form — keeps defaults, docs, aliases and custom properties: two schemas
//! that differ only in a field default must get different ids, otherwise the newer default
//! would silently be dropped and readers resolving "latest" would never see it.

use std::fmt::Write as _;

use apache_avro::Schema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::RegistryError;

/// The only schema type this registry implements.
pub const AVRO: &str = "AVRO";

/// A reference from a schema to a named type registered under another subject.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SchemaReference {
    /// Full name of the referenced Avro type, as used inside the referencing schema.
    pub name: String,
    /// Subject the referenced schema is registered under.
    pub subject: String,
    /// Version of the referenced schema in that subject.
    pub version: i32,
}

/// A schema that parsed, with its identity.
#[derive(Debug)]
pub(crate) struct ParsedSchema {
    /// Self-contained: referenced types are inlined, so compatibility checks see everything.
    pub(crate) schema: Schema,
    /// Hex SHA-256 of the identity string.
    pub(crate) hash: String,
}

/// Parses `text` (of `schema_type`) whose `references` resolve to the schema texts
/// `referenced` (every schema reachable through the references, in any order).
pub(crate) fn parse(
    text: &str,
    schema_type: &str,
    references: &[SchemaReference],
    referenced: &[String],
) -> Result<ParsedSchema, RegistryError> {
    if schema_type != AVRO {
        return Err(RegistryError::InvalidSchema(format!(
            "of type {schema_type}: only AVRO schemas are supported"
        )));
    }
    if text.trim().is_empty() {
        return Err(RegistryError::InvalidSchema("(empty schema)".to_owned()));
    }
    let invalid = |e: apache_avro::Error| RegistryError::InvalidSchema(format!("{text}: {e}"));
    let (schema, self_contained) = if referenced.is_empty() {
        let schema = Schema::parse_str(text).map_err(invalid)?;
        (schema.clone(), schema)
    } else {
        let (schema, schemata) = Schema::parse_str_with_list(text, referenced).map_err(invalid)?;
        let mut self_contained = schema.clone();
        self_contained.denormalize(&schemata).map_err(invalid)?;
        (schema, self_contained)
    };
    Ok(ParsedSchema {
        hash: hash(&identity(&schema, schema_type, references)),
        schema: self_contained,
    })
}

fn identity(schema: &Schema, schema_type: &str, references: &[SchemaReference]) -> String {
    let mut out = String::new();
    out.push_str("{\"schemaType\":");
    write_sorted(&Value::String(schema_type.to_owned()), &mut out);
    out.push_str(",\"schema\":");
    match serde_json::to_value(schema) {
        Ok(value) => write_sorted(&value, &mut out),
        // Cannot happen for a schema apache-avro just parsed; the canonical form is still a
        // deterministic (if coarser) identity.
        Err(_) => write_sorted(&Value::String(schema.canonical_form()), &mut out),
    }
    out.push_str(",\"references\":[");
    for (i, reference) in references.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            "[{},{},{}]",
            Value::String(reference.name.clone()),
            Value::String(reference.subject.clone()),
            reference.version
        );
    }
    out.push_str("]}");
    out
}

/// JSON with object keys sorted at every level. Written by hand because whether
/// `serde_json::Map` sorts depends on a workspace-wide cargo feature (`preserve_order`).
fn write_sorted(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_sorted(value, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_sorted(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

fn hash(identity: &str) -> String {
    hex::encode(Sha256::digest(identity.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash_of(text: &str) -> String {
        parse(text, AVRO, &[], &[]).expect("valid schema").hash
    }

    #[test]
    fn identity_ignores_formatting_and_key_order() {
        let a = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"}]}"#;
        let b = r#"{ "fields": [ {"type": {"type": "int"}, "name": "a"} ],
                    "name": "R", "type": "record" }"#;
        assert_eq!(hash_of(a), hash_of(b));
    }

    #[test]
    fn identity_keeps_defaults_and_docs() {
        let plain = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"}]}"#;
        let default =
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int","default":1}]}"#;
        let doc = r#"{"type":"record","name":"R","doc":"d","fields":[{"name":"a","type":"int"}]}"#;
        assert_ne!(hash_of(plain), hash_of(default));
        assert_ne!(hash_of(plain), hash_of(doc));
    }

    #[test]
    fn identity_includes_references() {
        let referenced = vec![r#"{"type":"record","name":"B","fields":[]}"#.to_owned()];
        let text = r#"{"type":"record","name":"A","fields":[{"name":"b","type":"B"}]}"#;
        let r1 = [SchemaReference {
            name: "B".into(),
            subject: "b".into(),
            version: 1,
        }];
        let r2 = [SchemaReference {
            name: "B".into(),
            subject: "b".into(),
            version: 2,
        }];
        let p1 = parse(text, AVRO, &r1, &referenced).expect("parses");
        let p2 = parse(text, AVRO, &r2, &referenced).expect("parses");
        assert_ne!(p1.hash, p2.hash);
        // References are inlined for compatibility checks.
        assert!(
            p1.schema
                .canonical_form()
                .contains("\"name\":\"B\",\"type\":\"record\"")
        );
    }

    #[test]
    fn invalid_and_unsupported_schemas_are_rejected() {
        for (text, ty) in [
            ("{\"type\":\"recrod\"}", AVRO),
            ("not json", AVRO),
            ("", AVRO),
            ("{\"type\":\"string\"}", "PROTOBUF"),
            // A reference that was not supplied.
            (
                r#"{"type":"record","name":"A","fields":[{"name":"b","type":"B"}]}"#,
                AVRO,
            ),
        ] {
            let err = parse(text, ty, &[], &[]).expect_err(text);
            assert!(matches!(err, RegistryError::InvalidSchema(_)), "{err}");
        }
    }
}
