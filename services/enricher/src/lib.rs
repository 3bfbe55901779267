//! Adds tenant plan, CMDB host tags and user-agent details to normalized events.
//!
//! Consumes the normalized topics, follows `control.tenants.v1` and `control.cmdb.v1` (read whole
//! at start, then live, so a change shows on later events without a restart), and produces every
//! event to `events.enriched.v1` under its input key. An event whose tenant is unknown is still
//! enriched, with the `[enrich] unknown_plan`: the gateway accepted it, so it must not be lost.
//! Undecodable records and kinds that do not belong on the input topics are dead-lettered.

mod enrich;
mod stage;
mod ua;

pub use enrich::{HostTags, TenantTags, enrich, host_of, user_agent_of};
pub use stage::{DecodeFuture, Enricher, Lookups, control_decoder, host_tags, tenant_tags};
pub use ua::{UaCache, UaTags, classify};

use std::time::Duration;

use serde::Deserialize;
use ve_kafka::{CompactedTable, KafkaConfig, Producer, TopicSpec};
use ve_schema::{Codec, RegistryConfig};
use ve_service::{AdminConfig, Context, Harness, ServiceConfig, ServiceError, deps};
use ve_telemetry::LogConfig;

/// Built-in defaults; every key is documented there.
pub const DEFAULTS: &str = include_str!("../config/default.toml");

/// Why a record or the service failed, by what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum EnricherError {
    /// This record can never be enriched: dead-letter it.
    #[error("poison record: {0}")]
    Poison(String),
    /// A dependency (registry, broker) is down: retry the batch later.
    #[error("retryable: {0}")]
    Retryable(String),
    /// Cannot work at all (configuration, schema refused): stop.
    #[error("fatal: {0}")]
    Fatal(String),
}

/// `[topics]`: what the enricher reads, follows and writes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsConfig {
    /// Normalized events and metric samples to enrich.
    pub inputs: Vec<String>,
    /// Where enriched events go, under their input key.
    pub output: String,
    /// Compacted tenant records (plan, retention).
    pub tenants: String,
    /// Compacted CMDB host tags, keyed `{tenant}/{host}`.
    pub cmdb: String,
}

/// `[enrich]`: enrichment behaviour.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrichConfig {
    /// `plan` tag of events whose tenant is not in the tenants topic.
    pub unknown_plan: String,
    /// `retention_days` tag of those events.
    pub unknown_retention_days: u32,
    /// Distinct user agents whose classification is kept in memory per worker (0 disables the
    /// cache).
    pub ua_cache_entries: usize,
    /// Tasks a large batch is split across (decoding and encoding use the CPU); 0 means one per
    /// CPU core.
    pub workers: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub log: LogConfig,
    pub admin: AdminConfig,
    pub kafka: KafkaConfig,
    pub registry: RegistryConfig,
    pub topics: TopicsConfig,
    pub enrich: EnrichConfig,
}

impl ServiceConfig for Config {
    fn log(&self) -> &LogConfig {
        &self.log
    }

    fn admin(&self) -> &AdminConfig {
        &self.admin
    }
}

/// Creates the topics (control topics compacted), registers the output schema.
async fn prepare(config: &Config, codec: &Codec) -> Result<(), ServiceError> {
    let topics = &config.topics;
    // `deps::prepare` only knows the standard control topic names as compacted; configured ones
    // must be created compacted here first (existing topics are left alone).
    ve_kafka::ensure_topics(
        &config.kafka,
        &[
            TopicSpec::compacted(&topics.tenants),
            TopicSpec::compacted(&topics.cmdb),
        ],
    )
    .await
    .map_err(|e| ServiceError::startup("control topics", e))?;
    let consumes: Vec<&str> = topics
        .inputs
        .iter()
        .map(String::as_str)
        .chain([topics.tenants.as_str(), topics.cmdb.as_str()])
        .collect();
    deps::prepare(&config.kafka, codec, &[topics.output.as_str()], &consumes).await
}

/// Waits until both control tables hold what their topics held at start, logging while waiting.
async fn wait_for_control(
    tenants: &CompactedTable<std::sync::Arc<TenantTags>>,
    hosts: &CompactedTable<std::sync::Arc<HostTags>>,
) {
    let started = tokio::time::Instant::now();
    loop {
        let step = Duration::from_secs(10);
        if tenants.wait_ready(step).await && hosts.wait_ready(step).await {
            tracing::info!(
                tenants = tenants.len(),
                hosts = hosts.len(),
                "control tables loaded"
            );
            return;
        }
        tracing::warn!(
            waited_s = started.elapsed().as_secs(),
            "still loading the control topics"
        );
    }
}

pub async fn run(config: Config, ctx: Context) -> Result<(), ServiceError> {
    let service = ctx.service;
    let drain = Duration::from_millis(config.admin.drain_timeout_ms);
    let mut harness = Harness::start(ctx)?;
    deps::check_broker(&mut harness, &config.kafka);
    deps::check_registry(&mut harness, &config.registry);
    let codec =
        Codec::new(&config.registry).map_err(|e| ServiceError::startup("registry client", e))?;
    match harness.until_shutdown(prepare(&config, &codec)).await {
        Some(prepared) => prepared?,
        None => return harness.run(drain).await,
    }

    let token = harness.token();
    let (tenants, follow_tenants) = CompactedTable::follow(
        config.kafka.clone(),
        service.to_owned(),
        config.topics.tenants.clone(),
        control_decoder(codec.clone(), token.clone(), tenant_tags),
        token.clone(),
    );
    harness.spawn("follow-tenants", follow_tenants);
    let (hosts, follow_cmdb) = CompactedTable::follow(
        config.kafka.clone(),
        service.to_owned(),
        config.topics.cmdb.clone(),
        control_decoder(codec.clone(), token.clone(), host_tags),
        token.clone(),
    );
    harness.spawn("follow-cmdb", follow_cmdb);
    // Enriching before the tables are loaded would tag known tenants' events as unknown.
    if harness
        .until_shutdown(wait_for_control(&tenants, &hosts))
        .await
        .is_none()
    {
        return harness.run(drain).await;
    }

    let producer =
        Producer::new(&config.kafka, service).map_err(|e| ServiceError::startup("producer", e))?;
    let lookups = Lookups {
        codec,
        output: config.topics.output.clone(),
        tenants,
        hosts,
        unknown: TenantTags {
            plan: config.enrich.unknown_plan.clone(),
            retention_days: config.enrich.unknown_retention_days.to_string(),
        },
    };
    let workers = match config.enrich.workers {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let stage = Enricher::new(
        producer.clone(),
        lookups,
        workers,
        config.enrich.ua_cache_entries,
    );
    let kafka = config.kafka;
    let inputs = config.topics.inputs;
    harness.spawn("enrich", async move {
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        ve_kafka::run_stage(&kafka, service, &inputs, stage, &producer, token).await
    });
    harness.started();
    harness.run(drain).await
}
