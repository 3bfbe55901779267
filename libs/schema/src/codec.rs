//! Confluent wire-format encoding of envelopes through `schema_registry_converter`: schema ids are
//! looked up (and registered) once per subject and cached; readers fetch writer schemas by id and
//! cache them too.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, RwLock};
use std::time::Duration;

use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};
use serde::Deserialize;
use ve_config::Secret;

use crate::{Envelope, SchemaError, envelope_schema, envelope_schema_json};

/// `[registry]` section: a Confluent-compatible schema registry (ours locally, Redpanda's in
/// production).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Base URL, e.g. `http://127.0.0.1:8081`.
    pub url: String,
    /// Basic-auth user; empty for none.
    pub username: String,
    pub password: Secret,
    /// Per-request timeout.
    pub timeout_ms: u64,
}

/// Subject under which a topic's values are registered (Confluent TopicNameStrategy).
pub fn subject_for(topic: &str) -> String {
    format!("{topic}-value")
}

/// Encodes and decodes envelopes; cheap to clone and share between tasks.
#[derive(Clone)]
pub struct Codec {
    encoder: Arc<AvroEncoder>,
    decoder: Arc<AvroDecoder>,
    /// Schema id -> whether it is this build's envelope schema.
    same_schema: Arc<RwLock<HashMap<u32, bool>>>,
    url: String,
}

static OUR_CANONICAL_FORM: LazyLock<String> = LazyLock::new(|| envelope_schema().canonical_form());

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("registry", &self.url)
            .finish_non_exhaustive()
    }
}

impl Codec {
    pub fn new(config: &RegistryConfig) -> Result<Self, SchemaError> {
        let mut builder = SrSettings::new_builder(config.url.trim_end_matches('/').to_owned());
        let _ = builder
            .set_timeout(Duration::from_millis(config.timeout_ms))
            .no_proxy();
        if !config.username.is_empty() {
            let _ =
                builder.set_basic_authorization(&config.username, Some(config.password.expose()));
        }
        let settings = builder
            .build()
            .map_err(|e| SchemaError::Unavailable(describe(&e)))?;
        Ok(Self {
            encoder: Arc::new(AvroEncoder::new(settings.clone())),
            decoder: Arc::new(AvroDecoder::new(settings)),
            same_schema: Arc::default(),
            url: config.url.clone(),
        })
    }

    fn strategy(topic: &str) -> SubjectNameStrategy {
        let schema = SuppliedSchema::new(
            Some("ve.v1.Envelope".to_owned()),
            SchemaType::Avro,
            envelope_schema_json().to_owned(),
        );
        SubjectNameStrategy::TopicNameStrategyWithSchema(topic.to_owned(), false, schema)
    }

    /// Registers the envelope schema for each topic's value subject and caches the ids; a
    /// service calls this at start for every topic it produces, so an incompatible schema stops
    /// it before it writes anything.
    pub async fn register(&self, topics: &[&str]) -> Result<Vec<(String, u32)>, SchemaError> {
        let mut ids = Vec::with_capacity(topics.len());
        for topic in topics {
            let subject = subject_for(topic);
            let schema = self
                .encoder
                .get_schema_and_id(&subject, Self::strategy(topic))
                .await
                .map_err(|e| classify(&subject, &e))?;
            tracing::info!(subject = %subject, id = schema.id, "schema registered");
            ids.push((subject, schema.id));
        }
        Ok(ids)
    }

    /// Confluent wire format: magic byte 0, big-endian schema id, Avro datum.
    pub async fn encode(&self, topic: &str, envelope: &Envelope) -> Result<Vec<u8>, SchemaError> {
        let value = envelope.to_value()?;
        self.encoder
            .encode_value(value, &Self::strategy(topic))
            .await
            .map_err(|e| {
                if e.retriable {
                    SchemaError::Unavailable(describe(&e))
                } else {
                    classify(&subject_for(topic), &e)
                }
            })
    }

    /// Decodes with the writer's schema (fetched by id, cached), then resolves to this build's
    /// envelope schema so older and newer writers both read as the current types.
    pub async fn decode(&self, bytes: &[u8]) -> Result<Envelope, SchemaError> {
        if bytes.len() < 5 || bytes[0] != 0 {
            return Err(SchemaError::Decode(
                "not in Confluent wire format (magic byte 0 + schema id)".into(),
            ));
        }
        let decoded = self.decoder.decode(Some(bytes)).await.map_err(|e| {
            if e.retriable {
                SchemaError::Unavailable(describe(&e))
            } else {
                SchemaError::Decode(describe(&e))
            }
        })?;
        let value = if self.written_with_ours(bytes).await {
            decoded.value
        } else {
            decoded
                .value
                .resolve_with_names(envelope_schema(), crate::envelope_names())
                .map_err(|e| {
                    SchemaError::Decode(format!("cannot resolve to the envelope schema: {e}"))
                })?
        };
        Envelope::from_value(value)
    }

    /// Whether the writer schema of a record is this build's envelope schema, in which case the
    /// decoded value already has the reader's shape and resolving it (as costly as decoding) is
    /// skipped. Answered once per schema id.
    async fn written_with_ours(&self, bytes: &[u8]) -> bool {
        let Some(id) = Self::schema_id(bytes) else {
            return false;
        };
        if let Some(same) = self
            .same_schema
            .read()
            .ok()
            .and_then(|m| m.get(&id).copied())
        {
            return same;
        }
        // The decoder has just fetched and cached this id, so this does not call the registry.
        let Ok(writer) = self.decoder.get_schema(id).await else {
            return false;
        };
        let same = writer.parsed.canonical_form() == *OUR_CANONICAL_FORM;
        if let Ok(mut known) = self.same_schema.write() {
            let _ = known.insert(id, same);
        }
        same
    }

    /// Schema id carried by a Confluent-framed record, without decoding it.
    pub fn schema_id(bytes: &[u8]) -> Option<u32> {
        match bytes {
            [0, a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
            _ => None,
        }
    }
}

fn describe(e: &SRCError) -> String {
    match &e.cause {
        Some(cause) => format!("{}: {cause}", e.error),
        None => e.error.clone(),
    }
}

fn classify(subject: &str, e: &SRCError) -> SchemaError {
    if e.retriable {
        SchemaError::Unavailable(describe(e))
    } else {
        SchemaError::Rejected {
            subject: subject.to_owned(),
            reason: describe(e),
        }
    }
}

/// Readiness: the registry answers `GET /config` (every Confluent-compatible registry serves it).
pub async fn ping_registry(config: &RegistryConfig) -> Result<(), SchemaError> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(config.timeout_ms))
        .no_proxy()
        .build()
        .map_err(|e| SchemaError::Unavailable(e.to_string()))?;
    let mut request = client.get(format!("{}/config", config.url.trim_end_matches('/')));
    if !config.username.is_empty() {
        request = request.basic_auth(&config.username, Some(config.password.expose()));
    }
    let response = request
        .send()
        .await
        .map_err(|e| SchemaError::Unavailable(format!("{}: {e}", config.url)))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(SchemaError::Unavailable(format!(
            "{}: HTTP {}",
            config.url,
            response.status()
        )))
    }
}
