//! The `Envelope` every topic carries: schemas (`schemas/*.avsc`), Rust types, and encoding in the
//! Confluent wire format (magic byte, 4-byte schema id, Avro body) through the schema registry.
//!
//! Each body kind has its own `.avsc` file; [`envelope_schema_json`] inlines them into the
//! envelope's body union, so the schema registered for every subject is self-contained and any
//! Confluent client can read it without schema references.

mod codec;
pub mod ingest;
pub mod topics;
mod types;
mod wire;

pub use codec::{Codec, RegistryConfig, ping_registry, subject_for};
pub use types::*;

use std::sync::LazyLock;

use apache_avro::Schema;

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The bytes are not a valid envelope (bad magic byte, unknown id, corrupt Avro): poison.
    #[error("undecodable record: {0}")]
    Decode(String),
    /// A value does not fit the schema: a bug or bad input upstream, never retried.
    #[error("record does not match the envelope schema: {0}")]
    Encode(String),
    /// The registry refused the schema (e.g. 409 incompatible): fatal at start-up.
    #[error("schema registry rejected {subject}: {reason}")]
    Rejected { subject: String, reason: String },
    /// The registry could not be reached: retry later.
    #[error("schema registry unavailable: {0}")]
    Unavailable(String),
}

impl SchemaError {
    /// Whether trying again later can succeed (as opposed to a poison record or a refusal).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// The body kinds, in union order, with their schema files.
pub(crate) const BODIES: &[(&str, &str)] = &[
    (
        "ve.v1.RawPayload",
        include_str!("../../../schemas/raw_payload.avsc"),
    ),
    (
        "ve.v1.WebEvent",
        include_str!("../../../schemas/web_event.avsc"),
    ),
    (
        "ve.v1.AppEvent",
        include_str!("../../../schemas/app_event.avsc"),
    ),
    (
        "ve.v1.MetricSample",
        include_str!("../../../schemas/metric_sample.avsc"),
    ),
    ("ve.v1.Span", include_str!("../../../schemas/span.avsc")),
    (
        "ve.v1.PipelineRun",
        include_str!("../../../schemas/pipeline_run.avsc"),
    ),
    (
        "ve.v1.PipelineStep",
        include_str!("../../../schemas/pipeline_step.avsc"),
    ),
    (
        "ve.v1.DecisionEvent",
        include_str!("../../../schemas/decision_event.avsc"),
    ),
    ("ve.v1.Tenant", include_str!("../../../schemas/tenant.avsc")),
    (
        "ve.v1.CmdbHost",
        include_str!("../../../schemas/cmdb_host.avsc"),
    ),
    (
        "ve.v1.AlertRule",
        include_str!("../../../schemas/alert_rule.avsc"),
    ),
    ("ve.v1.Alert", include_str!("../../../schemas/alert.avsc")),
    (
        "ve.v1.Invoice",
        include_str!("../../../schemas/invoice.avsc"),
    ),
];

const ENVELOPE: &str = include_str!("../../../schemas/envelope.avsc");

/// The envelope schema with every body kind inlined, as registered in the registry.
pub fn envelope_schema_json() -> &'static str {
    static JSON: LazyLock<String> = LazyLock::new(|| {
        compose(ENVELOPE, BODIES).unwrap_or_else(|e| panic!("schemas/ are inconsistent: {e}"))
    });
    &JSON
}

/// The parsed envelope schema.
pub fn envelope_schema() -> &'static Schema {
    static SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
        Schema::parse_str(envelope_schema_json())
            .unwrap_or_else(|e| panic!("composed envelope schema does not parse: {e}"))
    });
    &SCHEMA
}

/// The envelope schema's named types, built once: resolving a value against the schema without
/// them rebuilds this map on every call, which dominated encoding and decoding time.
pub(crate) fn envelope_names() -> &'static apache_avro::schema::NamesRef<'static> {
    static NAMES: LazyLock<apache_avro::schema::ResolvedSchema<'static>> = LazyLock::new(|| {
        apache_avro::schema::ResolvedSchema::try_from(envelope_schema())
            .unwrap_or_else(|e| panic!("composed envelope schema does not resolve: {e}"))
    });
    NAMES.get_names()
}

fn compose(envelope: &str, bodies: &[(&str, &str)]) -> Result<String, String> {
    let mut doc: serde_json::Value = serde_json::from_str(envelope).map_err(|e| e.to_string())?;
    let fields = doc["fields"]
        .as_array_mut()
        .ok_or("envelope has no fields")?;
    let body = fields
        .iter_mut()
        .find(|f| f["name"] == "body")
        .ok_or("envelope has no body field")?;
    let union = body["type"].as_array_mut().ok_or("body is not a union")?;
    if union.len() != bodies.len() {
        return Err(format!(
            "body union has {} kinds, {} schema files",
            union.len(),
            bodies.len()
        ));
    }
    for (slot, (name, text)) in union.iter_mut().zip(bodies) {
        if slot.as_str() != Some(name) {
            return Err(format!("body union lists {slot} where {name} was expected"));
        }
        *slot = serde_json::from_str(text).map_err(|e| format!("{name}: {e}"))?;
    }
    serde_json::to_string(&doc).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_body_file_is_in_the_union_in_order() {
        let schema = envelope_schema();
        let Schema::Record(record) = schema else {
            panic!("envelope is not a record")
        };
        let body = record.fields.iter().find(|f| f.name == "body").unwrap();
        let Schema::Union(union) = &body.schema else {
            panic!("body is not a union")
        };
        let names: Vec<String> = union
            .variants()
            .iter()
            .map(|v| match v {
                Schema::Record(r) => r.name.fullname(None),
                other => format!("{other:?}"),
            })
            .collect();
        let expected: Vec<&str> = BODIES.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, expected);
    }

    #[test]
    fn compose_rejects_a_missing_kind() {
        let err = compose(ENVELOPE, &BODIES[..3]).unwrap_err();
        assert!(err.contains("13 kinds, 3 schema files"), "{err}");
    }
}
