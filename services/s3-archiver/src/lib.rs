//! Archives raw payloads and invoices in the object store under deterministic keys.
//!
//! Consumes `ingest.raw.v1` and `billing.invoice.v1` and writes raw events in JSON Lines segment
//! objects (`raw/{tenant}/{kind}/{yyyy}/{mm}/{dd}/p{partition}-{segment_start}.jsonl`, each line
//! the event's JSON as accepted plus its offset, id and times) and one document per invoice
//! (`invoices/{tenant}/{invoice_id}.json`) to a local directory or any S3 endpoint
//! (`[object_store]`). Keys and contents depend only on the records, so redelivery rewrites the
//! same object instead of adding a copy, and the archive can be replayed by listing a prefix.
//! Layout and guarantees: `layout`, `segment`, `recent` and the crate's README.

mod layout;
mod recent;
mod segment;
mod stage;

pub use layout::{InvoiceDocument, Position, invoice_key, object_path, segment_key};

use stage::{Archiver, ArchiverMetrics};

use std::time::Duration;

use serde::Deserialize;
use ve_kafka::{KafkaConfig, Producer};
use ve_schema::{Codec, RegistryConfig};
use ve_service::{AdminConfig, Context, Harness, ServiceConfig, ServiceError, deps};
use ve_store::ObjectStoreConfig;
use ve_telemetry::LogConfig;

/// Built-in defaults; every key is documented there.
pub const DEFAULTS: &str = include_str!("../config/default.toml");

/// Why a record or the service failed, by what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ArchiverError {
    /// This record can never be archived: dead-letter it.
    #[error("poison record: {0}")]
    Poison(String),
    /// The registry or the object store is unavailable: retry the batch later.
    #[error("retryable: {0}")]
    Retryable(String),
    /// Cannot work at all: stop.
    #[error("fatal: {0}")]
    Fatal(String),
}

/// `[topics]`: what the archiver reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsConfig {
    /// Raw events as the gateway accepted them.
    pub raw: String,
    /// Issued invoices.
    pub invoices: String,
}

/// `[archive]`: how objects are written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    /// Object PUTs (and GETs) in flight at once within a batch.
    pub max_in_flight: usize,
    /// Offsets of an `ingest.raw.v1` partition per segment object.
    pub segment_offsets: i64,
    /// Segment objects kept in memory to merge without reading them back.
    pub cache_segments: usize,
    /// Recently archived event ids remembered per partition, to skip client retries.
    pub dedup_window_events: usize,
    /// How long (in the events' ingest time) an archived id is remembered.
    pub dedup_window_secs: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub log: LogConfig,
    pub admin: AdminConfig,
    pub kafka: KafkaConfig,
    pub registry: RegistryConfig,
    pub object_store: ObjectStoreConfig,
    pub topics: TopicsConfig,
    pub archive: ArchiveConfig,
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
    let service = ctx.service;
    let drain = Duration::from_millis(config.admin.drain_timeout_ms);
    let mut harness = Harness::start(ctx)?;
    deps::check_broker(&mut harness, &config.kafka);
    deps::check_registry(&mut harness, &config.registry);
    let archive = config
        .object_store
        .open()
        .map_err(|e| ServiceError::startup("object store", e))?;
    deps::check_archive(&mut harness, &archive);
    if config.archive.segment_offsets < 1 {
        return Err(ServiceError::startup(
            "archive.segment_offsets",
            format!("must be at least 1, not {}", config.archive.segment_offsets),
        ));
    }
    let metrics = ArchiverMetrics::register();
    let codec =
        Codec::new(&config.registry).map_err(|e| ServiceError::startup("registry client", e))?;
    let consumes = [config.topics.raw.as_str(), config.topics.invoices.as_str()];
    match harness
        .until_shutdown(deps::prepare(&config.kafka, &codec, &[], &consumes))
        .await
    {
        Some(prepared) => prepared?,
        None => return harness.run(drain).await,
    }

    // Only dead letters are produced.
    let producer =
        Producer::new(&config.kafka, service).map_err(|e| ServiceError::startup("producer", e))?;
    let stage = Archiver::new(
        codec,
        archive.store,
        archive.prefix,
        config.topics.raw.clone(),
        &config.archive,
        metrics,
    );
    let kafka = config.kafka;
    let topics = config.topics;
    let token = harness.token();
    harness.spawn("archive", async move {
        let inputs = [topics.raw.as_str(), topics.invoices.as_str()];
        ve_kafka::run_stage(&kafka, service, &inputs, stage, &producer, token).await
    });
    harness.started();
    harness.run(drain).await
}
