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
    /// Topic -> id of this build's schema under the topic's subject.
    ids: Arc<RwLock<HashMap<String, u32>>>,
    /// Schema id -> whether it is this build's envelope schema.
    ours: Arc<RwLock<HashMap<u32, bool>>>,
    url: String,
}

/// This build's envelope schema in canonical form: a writer schema equal to it is read by the
/// direct reader in `wire.rs`, any other one is resolved.
static OURS: LazyLock<String> = LazyLock::new(|| envelope_schema().canonical_form());

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
            ids: Arc::default(),
            ours: Arc::default(),
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
            let id = self.id_for(topic).await?;
            let subject = subject_for(topic);
            tracing::info!(subject = %subject, id, "schema registered");
            ids.push((subject, id));
        }
        Ok(ids)
    }

    /// Confluent wire format: magic byte 0, big-endian schema id, Avro datum. The topic's schema
    /// id is looked up (registering this build's schema) once; after that encoding is local.
    pub async fn encode(&self, topic: &str, envelope: &Envelope) -> Result<Vec<u8>, SchemaError> {
        let id = self.id_for(topic).await?;
        let mut bytes = Vec::with_capacity(512);
        bytes.push(0);
        bytes.extend_from_slice(&id.to_be_bytes());
        crate::wire::write_envelope(&mut bytes, envelope)?;
        Ok(bytes)
    }

    async fn id_for(&self, topic: &str) -> Result<u32, SchemaError> {
        if let Some(id) = self.ids.read().ok().and_then(|m| m.get(topic).copied()) {
            return Ok(id);
        }
        let subject = subject_for(topic);
        let schema = self
            .encoder
            .get_schema_and_id(&subject, Self::strategy(topic))
            .await
            .map_err(|e| classify(&subject, &e))?;
        if let Ok(mut ids) = self.ids.write() {
            let _ = ids.insert(topic.to_owned(), schema.id);
            let _ = self
                .ours
                .write()
                .map(|mut ours| ours.insert(schema.id, true));
        }
        Ok(schema.id)
    }

    /// Decodes with the writer's schema (fetched by id, cached). A record written with this
    /// build's schema is read directly; one written with another (older or newer) schema is
    /// resolved to this build's envelope, so every writer reads as the current types.
    pub async fn decode(&self, bytes: &[u8]) -> Result<Envelope, SchemaError> {
        let Some(id) = Self::schema_id(bytes) else {
            return Err(SchemaError::Decode(
                "not in Confluent wire format (magic byte 0 + schema id)".into(),
            ));
        };
        if self.written_with_ours(id).await? {
            return crate::wire::read_envelope(&bytes[5..])
                .map_err(|e| SchemaError::Decode(format!("schema id {id}: {e}")));
        }
        // Another writer schema (older or newer): decode with it, resolve to ours.
        let decoded = self
            .decoder
            .decode(Some(bytes))
            .await
            .map_err(|e| decode_error(&e))?;
        let value = decoded
            .value
            .resolve_with_names(envelope_schema(), crate::envelope_names())
            .map_err(|e| {
                SchemaError::Decode(format!("cannot resolve to the envelope schema: {e}"))
            })?;
        Envelope::from_value(value)
    }

    /// Whether schema `id` is this build's envelope schema (compared in canonical form), asked of
    /// the registry once per id.
    async fn written_with_ours(&self, id: u32) -> Result<bool, SchemaError> {
        if let Some(same) = self.ours.read().ok().and_then(|m| m.get(&id).copied()) {
            return Ok(same);
        }
        let writer = self
            .decoder
            .get_schema(id)
            .await
            .map_err(|e| decode_error(&e))?;
        let same = writer.parsed.canonical_form() == *OURS;
        if let Ok(mut ours) = self.ours.write() {
            let _ = ours.insert(id, same);
        }
        Ok(same)
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

fn decode_error(e: &SRCError) -> SchemaError {
    if e.retriable {
        SchemaError::Unavailable(describe(e))
    } else {
        SchemaError::Decode(describe(e))
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
