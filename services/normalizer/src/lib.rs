//! Flattens and standardizes raw events into normalized events and metric signals.
//!
//! Consumes `ingest.raw.v1` (one `RawPayload` per event, as the gateway accepted it), parses the
//! payload with `ve_schema::ingest` and produces the typed body: metric samples to
//! `signals.metric.v1` keyed `{tenant}/{host}/{metric}`, everything else to
//! `events.normalized.v1` keyed by event id. Timestamps become UTC micros, tag keys lowercase,
//! units canonical, spans carry their service as `service_name` and a `service` tag. A record that
//! cannot be decoded or is invalid is dead-lettered to `<raw>.dlq` with the reason.

use std::time::Duration;

use serde::Deserialize;
use ve_kafka::{KafkaConfig, OutRecord, Outcome, Producer, Record, Stage, StageError, run_stage};
use ve_schema::{Codec, RegistryConfig};
use ve_service::{AdminConfig, Context, Harness, ServiceConfig, ServiceError, deps};
use ve_telemetry::LogConfig;

mod normalize;

pub use normalize::{INGEST_BYTES, Normalized, Output, RAW_OFFSET, RAW_PARTITION, normalize};

/// Built-in defaults; every key is documented there.
pub const DEFAULTS: &str = include_str!("../config/default.toml");

/// Service name: config prefix, metric prefix, client id.
pub const SERVICE: &str = "normalizer";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsConfig {
    /// Raw events from the gateway.
    pub raw: String,
    /// Normalized web, app, span, run, step and decision events.
    pub normalized: String,
    /// Normalized metric samples.
    pub metric: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub log: LogConfig,
    pub admin: AdminConfig,
    pub topics: TopicsConfig,
    pub kafka: KafkaConfig,
    pub registry: RegistryConfig,
}

impl ServiceConfig for Config {
    fn log(&self) -> &LogConfig {
        &self.log
    }

    fn admin(&self) -> &AdminConfig {
        &self.admin
    }
}

pub async fn run(config: Config, ctx: Context) -> Result<(), ServiceError> {
    let drain = Duration::from_millis(config.admin.drain_timeout_ms);
    let mut harness = Harness::start(ctx)?;
    deps::check_broker(&mut harness, &config.kafka);
    deps::check_registry(&mut harness, &config.registry);
    let codec =
        Codec::new(&config.registry).map_err(|e| ServiceError::startup("registry client", e))?;
    let producer = Producer::new(&config.kafka, SERVICE)
        .map_err(|e| ServiceError::startup("kafka producer", e))?;
    let topics = config.topics.clone();
    let prepared = harness
        .until_shutdown(deps::prepare(
            &config.kafka,
            &codec,
            &[topics.normalized.as_str(), topics.metric.as_str()],
            &[topics.raw.as_str()],
        ))
        .await;
    let Some(prepared) = prepared else {
        return harness.run(drain).await;
    };
    prepared?;

    let stage = Normalizer {
        codec,
        producer: producer.clone(),
        topics: topics.clone(),
    };
    let kafka = config.kafka.clone();
    let token = harness.token();
    harness.spawn("normalize", async move {
        run_stage(
            &kafka,
            SERVICE,
            &[topics.raw.as_str()],
            stage,
            &producer,
            token,
        )
        .await
    });
    harness.started();
    harness.run(drain).await
}

/// The stage: decode, normalize and encode every record of a batch, then produce all outputs
/// and wait for their acknowledgements before the loop commits.
#[derive(Debug)]
pub struct Normalizer {
    pub codec: Codec,
    pub producer: Producer,
    pub topics: TopicsConfig,
}

/// What went wrong with one record.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// The record can never be normalized: dead-letter it.
    #[error("{0}")]
    Poison(String),
    /// A dependency failed: retry the whole batch.
    #[error("{0}")]
    Retry(String),
}

impl Normalizer {
    async fn one(&self, record: &Record) -> Result<OutRecord, Failure> {
        let Some(bytes) = record.payload.as_deref().filter(|b| !b.is_empty()) else {
            return Err(Failure::Poison("empty record".into()));
        };
        let envelope = self.codec.decode(bytes).await.map_err(|e| {
            if e.is_retryable() {
                Failure::Retry(e.to_string())
            } else {
                Failure::Poison(e.to_string())
            }
        })?;
        let mut normalized = normalize(&envelope).map_err(Failure::Poison)?;
        let attributes = &mut normalized.envelope.attributes;
        let _ = attributes.insert(RAW_PARTITION.to_owned(), record.partition.to_string());
        let _ = attributes.insert(RAW_OFFSET.to_owned(), record.offset.to_string());
        let topic = match normalized.output {
            Output::Events => &self.topics.normalized,
            Output::Metrics => &self.topics.metric,
        };
        let encoded = self
            .codec
            .encode(topic, &normalized.envelope)
            .await
            .map_err(|e| {
                if e.is_retryable() {
                    Failure::Retry(e.to_string())
                } else {
                    Failure::Poison(format!("cannot encode the normalized event: {e}"))
                }
            })?;
        Ok(OutRecord::new(topic.as_str(), normalized.key, encoded)
            .with_trace(record.trace_context().as_ref()))
    }
}

impl Stage for Normalizer {
    async fn process(&mut self, batch: &[Record]) -> Result<Vec<Outcome>, StageError> {
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut out = Vec::with_capacity(batch.len());
        for record in batch {
            match self.one(record).await {
                Ok(produced) => {
                    out.push(produced);
                    outcomes.push(Outcome::Done);
                }
                Err(Failure::Poison(reason)) => outcomes.push(Outcome::Poison(reason)),
                Err(Failure::Retry(reason)) => return Err(StageError::Retryable(reason)),
            }
        }
        if !out.is_empty() {
            let _ = self
                .producer
                .send_all(&out)
                .await
                .map_err(|e| StageError::Retryable(e.to_string()))?;
        }
        Ok(outcomes)
    }
}
