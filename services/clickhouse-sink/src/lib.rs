//! Lands enriched events, alerts, invoices and dead letters in ClickHouse, idempotently.
//!
//! One consumer loop (`ve_kafka::run_stage`) over all input topics; each batch is decoded,
//! grouped per table and inserted with one INSERT per table before its offsets are committed.
//! Replays insert nothing twice: rows at or below the per-table watermark in `sink_offsets` are
//! skipped, each INSERT carries a deduplication token derived from its offset ranges, and every
//! table is a ReplacingMergeTree on the record's identity. The README explains the layers.

mod rows;
pub mod schema;
mod sink;

use std::time::Duration;

use serde::Deserialize;
use ve_kafka::{KafkaConfig, Producer, StageError, TopicSpec};
use ve_schema::{Codec, RegistryConfig};
use ve_service::{AdminConfig, Context, Harness, ServiceConfig, ServiceError, deps};
use ve_store::{ClickHouseConfig, StoreError};
use ve_telemetry::LogConfig;

pub use sink::{FLUSH_FAILURES, ROWS_INSERTED};

/// Built-in defaults; every key is documented there.
pub const DEFAULTS: &str = include_str!("../config/default.toml");

/// The service name: metric prefix, consumer client id, dead-letter `stage` header.
pub const SERVICE: &str = "clickhouse-sink";

/// Topics whose envelope schema this service registers at start (it produces only dead letters,
/// which carry the original bytes).
pub const PRODUCES: &[&str] = &[];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub log: LogConfig,
    pub admin: AdminConfig,
    pub kafka: KafkaConfig,
    pub registry: RegistryConfig,
    pub clickhouse: ClickHouseConfig,
    pub topics: TopicsConfig,
    pub sink: SinkConfig,
}

/// `[topics]`: what the sink consumes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsConfig {
    /// Enriched events: web, app, metric, span, run, step and decision bodies.
    pub enriched: String,
    /// Alert states (compacted).
    pub alerts: String,
    /// Issued invoices.
    pub invoices: String,
    /// Dead-letter topics landed in `dead_letters` as they are (never decoded as input).
    pub dead_letters: Vec<String>,
}

impl TopicsConfig {
    /// Every topic the consumer loop subscribes to.
    pub fn all(&self) -> Vec<String> {
        let mut all = vec![
            self.enriched.clone(),
            self.alerts.clone(),
            self.invoices.clone(),
        ];
        for topic in &self.dead_letters {
            if !all.contains(topic) {
                all.push(topic.clone());
            }
        }
        all
    }
}

/// `[sink]`: how inserts behave.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Bound on sending one INSERT and on waiting for its answer; past it the batch is retried.
    pub insert_timeout_ms: u64,
    /// Pause between attempts to apply the migrations while ClickHouse is unreachable at start.
    pub migrate_retry_ms: u64,
    /// The s3-archiver's `[archive] segment_offsets`: `decision_events.s3_key` names the archive
    /// object holding the raw payload, which depends on it.
    pub archive_segment_offsets: i64,
}

impl ServiceConfig for Config {
    fn log(&self) -> &LogConfig {
        &self.log
    }

    fn admin(&self) -> &AdminConfig {
        &self.admin
    }
}

/// Everything that can go wrong in the sink, classified for the consumer loop.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// ClickHouse refused or did not answer: retry the batch, commit nothing.
    #[error("clickhouse {what}: {reason}")]
    ClickHouse { what: String, reason: String },
    /// The registry could not be reached to decode a record: retry the batch.
    #[error("schema registry unavailable: {0}")]
    Registry(String),
    /// A decoding task panicked: a bug that a retry would only repeat.
    #[error("decoder task failed: {0}")]
    Decoder(String),
}

impl SinkError {
    fn clickhouse(what: &str, e: impl std::fmt::Display) -> Self {
        Self::ClickHouse {
            what: what.to_owned(),
            reason: e.to_string(),
        }
    }

    /// Poison records never become a `SinkError`: they are outcomes of the batch.
    fn into_stage(self) -> StageError {
        match self {
            Self::ClickHouse { .. } | Self::Registry(_) => StageError::Retryable(self.to_string()),
            Self::Decoder(_) => StageError::Fatal(self.to_string()),
        }
    }
}

pub async fn run(config: Config, ctx: Context) -> Result<(), ServiceError> {
    let drain = Duration::from_millis(config.admin.drain_timeout_ms);
    let mut harness = Harness::start(ctx)?;
    deps::check_broker(&mut harness, &config.kafka);
    deps::check_registry(&mut harness, &config.registry);
    deps::check_clickhouse(&mut harness, &config.clickhouse);
    let codec =
        Codec::new(&config.registry).map_err(|e| ServiceError::startup("registry client", e))?;
    let client = config
        .clickhouse
        .client()
        .map_err(|e| ServiceError::startup("clickhouse client", e))?;
    // Built before start-up work so its metric series exist from the start (deploy/metrics.md).
    let stage = sink::Sink::new(
        client,
        codec.clone(),
        &config.topics.dead_letters,
        &config.topics.alerts,
        Duration::from_millis(config.sink.insert_timeout_ms),
        config.sink.archive_segment_offsets,
    );
    let topics = config.topics.all();
    let token = harness.token();
    let prepare = async {
        let primary = [
            config.topics.enriched.as_str(),
            config.topics.alerts.as_str(),
            config.topics.invoices.as_str(),
        ];
        // Creates the primaries and their `.dlq` topics (where this stage's poison goes).
        deps::prepare(&config.kafka, &codec, PRODUCES, &primary).await?;
        // Dead-letter inputs are created plainly: no `.dlq.dlq`, nothing read there is poison.
        let dead: Vec<TopicSpec> = config
            .topics
            .dead_letters
            .iter()
            .map(TopicSpec::new)
            .collect();
        ve_kafka::ensure_topics(&config.kafka, &dead)
            .await
            .map_err(|e| ServiceError::startup("dead-letter topics", e))?;
        migrate(
            &config.clickhouse,
            Duration::from_millis(config.sink.migrate_retry_ms),
        )
        .await
    };
    let Some(prepared) = harness.until_shutdown(prepare).await else {
        return harness.run(drain).await;
    };
    prepared?;

    let producer = Producer::new(&config.kafka, SERVICE)
        .map_err(|e| ServiceError::startup("dead-letter producer", e))?;
    let kafka = config.kafka;
    harness.spawn("consumer", async move {
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        ve_kafka::run_stage(&kafka, SERVICE, &topics, stage, &producer, token).await
    });
    harness.started();
    harness.run(drain).await
}

/// Applies the migrations, waiting for ClickHouse while it is unreachable; a statement that the
/// server rejects is a bug and stops the start.
async fn migrate(config: &ClickHouseConfig, retry: Duration) -> Result<(), ServiceError> {
    loop {
        match ve_store::migrate(config, schema::MIGRATIONS).await {
            Ok(applied) => {
                tracing::info!(applied, database = %config.database, "clickhouse schema ready");
                return Ok(());
            }
            Err(e @ StoreError::Migration { .. }) => {
                return Err(ServiceError::startup("clickhouse migration", e));
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_ms = retry.as_millis() as u64, "clickhouse not ready for migrations, retrying");
                tokio::time::sleep(retry).await;
            }
        }
    }
}
