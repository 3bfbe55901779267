//! Evaluates threshold, rate and absence rules into firing and resolved alerts.
//!
//! Follows `control.rules.v1` (read whole at start, then live: a rule set, changed, disabled or
//! deleted applies without a restart), consumes `events.enriched.v1`, and publishes every alert
//! state change to the compacted `ops.alert.v1` under `{tenant}/{rule_id}/{series}`, acknowledged
//! before the input offsets are committed. At start it reads `ops.alert.v1` to the end so what
//! was firing keeps firing (same `started_at`) and is resolved later. Semantics are in
//! `README.md` and [`eval`].

pub mod eval;
pub mod rule;
mod stage;

pub use stage::{
    DecodeFuture, Evaluator, Publisher, RulesStage, alert_of, decoder, now_micros, rule_of,
    tick_loop,
};

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::Mutex;
use ve_kafka::{CompactedTable, KafkaConfig, Producer, StageError, TopicSpec};
use ve_schema::{Alert, Codec, RegistryConfig};
use ve_service::{AdminConfig, Context, Harness, ServiceConfig, ServiceError, deps};
use ve_telemetry::LogConfig;

use crate::eval::{Engine, Limits, Transition};

/// Built-in defaults; every key is documented there.
pub const DEFAULTS: &str = include_str!("../config/default.toml");

/// `[topics]`: what the service reads, follows and writes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsConfig {
    /// Enriched events and metric samples to evaluate.
    pub inputs: Vec<String>,
    /// Compacted alert rules, keyed `{tenant}/{rule_id}`.
    pub rules: String,
    /// Compacted alert states, keyed `{tenant}/{rule_id}/{series}`.
    pub alerts: String,
}

/// `[evaluation]`: timing and bounds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluationConfig {
    /// Wall-clock tick: absence checks, idle rate windows, rule changes without traffic.
    pub tick_interval_ms: u64,
    /// Series kept per rule; events of further series are dropped and counted.
    pub max_series_per_rule: usize,
    /// How long past a rate window's end (and its series' last event) the tick closes it.
    pub rate_close_grace_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub log: LogConfig,
    pub admin: AdminConfig,
    pub kafka: KafkaConfig,
    pub registry: RegistryConfig,
    pub topics: TopicsConfig,
    pub evaluation: EvaluationConfig,
}

impl ServiceConfig for Config {
    fn log(&self) -> &LogConfig {
        &self.log
    }

    fn admin(&self) -> &AdminConfig {
        &self.admin
    }
}

/// Creates the topics (rules and alerts compacted), registers the alert schema.
async fn prepare(config: &Config, codec: &Codec) -> Result<(), ServiceError> {
    let topics = &config.topics;
    // `deps::prepare` only knows the standard names as compacted; configured ones are created
    // compacted here first (existing topics are left alone).
    ve_kafka::ensure_topics(
        &config.kafka,
        &[
            TopicSpec::compacted(&topics.rules),
            TopicSpec::compacted(&topics.alerts),
        ],
    )
    .await
    .map_err(|e| ServiceError::startup("compacted topics", e))?;
    let consumes: Vec<&str> = topics
        .inputs
        .iter()
        .map(String::as_str)
        .chain([topics.rules.as_str()])
        .collect();
    deps::prepare(&config.kafka, codec, &[topics.alerts.as_str()], &consumes).await
}

/// Waits until `table` holds what its topic held at start, logging while waiting.
async fn wait_loaded<V: Clone + Send + Sync + 'static>(table: &CompactedTable<V>, what: &str) {
    let started = tokio::time::Instant::now();
    while !table.wait_ready(Duration::from_secs(10)).await {
        tracing::warn!(
            waited_s = started.elapsed().as_secs(),
            topic = what,
            "still loading"
        );
    }
    tracing::info!(entries = table.len(), topic = what, "loaded");
}

/// The alert states on `topic` at start, by key.
async fn read_alerts(
    config: &Config,
    service: &str,
    codec: &Codec,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<Vec<(String, Alert)>, ServiceError> {
    // Read once, not followed: from here on this service is the writer of what it needs.
    let stop = shutdown.child_token();
    let (alerts, follow) = CompactedTable::follow(
        config.kafka.clone(),
        service.to_owned(),
        config.topics.alerts.clone(),
        decoder(codec.clone(), stop.clone(), alert_of),
        stop.clone(),
    );
    let task = tokio::spawn(follow);
    wait_loaded(&alerts, &config.topics.alerts).await;
    stop.cancel();
    match task.await {
        Ok(Ok(())) => Ok(alerts.snapshot()),
        Ok(Err(e)) => Err(ServiceError::startup("reading alert states", e)),
        Err(e) => Err(ServiceError::startup("reading alert states", e)),
    }
}

/// Publishes the transitions start-up produced (alerts of deleted rules), retrying until they
/// are delivered or shutdown.
async fn publish_until_done(
    publisher: &Publisher,
    outbox: &mut Vec<Transition>,
) -> Result<(), ServiceError> {
    let mut backoff = Duration::from_millis(200);
    loop {
        match publisher.publish(outbox).await {
            Ok(()) => return Ok(()),
            Err(StageError::Retryable(reason)) => {
                tracing::warn!(reason = %reason, "start-up alerts not delivered, retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            Err(fatal) => return Err(ServiceError::startup("publishing alerts", fatal)),
        }
    }
}

/// Rules loaded, firing alerts taken back: the engine the stage starts with.
async fn restored_engine(
    config: &Config,
    service: &str,
    codec: &Codec,
    rules: &CompactedTable<Arc<rule::Rule>>,
    publisher: &Publisher,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<Evaluator, ServiceError> {
    wait_loaded(rules, &config.topics.rules).await;
    let alerts = read_alerts(config, service, codec, shutdown).await?;
    let evaluation = &config.evaluation;
    let mut evaluator = Evaluator::new(Engine::new(Limits {
        max_series_per_rule: evaluation.max_series_per_rule,
        rate_close_grace_micros: i64::try_from(evaluation.rate_close_grace_ms)
            .unwrap_or(i64::MAX / 1000)
            .saturating_mul(1000),
    }));
    let now = now_micros();
    evaluator.sync(rules, now);
    for (key, alert) in &alerts {
        evaluator
            .engine
            .restore(key, alert, now, &mut evaluator.outbox);
    }
    let census = evaluator.engine.census();
    tracing::info!(
        rules = census.rules,
        alert_states = alerts.len(),
        firing = census.firing,
        resolved_at_start = evaluator.outbox.len(),
        "alert states restored"
    );
    publish_until_done(publisher, &mut evaluator.outbox).await?;
    Ok(evaluator)
}

pub async fn run(config: Config, ctx: Context) -> Result<(), ServiceError> {
    let service = ctx.service;
    let drain = Duration::from_millis(config.admin.drain_timeout_ms);
    let mut harness = Harness::start(ctx)?;
    deps::check_broker(&mut harness, &config.kafka);
    deps::check_registry(&mut harness, &config.registry);
    stage::register_metrics();
    let codec =
        Codec::new(&config.registry).map_err(|e| ServiceError::startup("registry client", e))?;
    match harness.until_shutdown(prepare(&config, &codec)).await {
        Some(prepared) => prepared?,
        None => return harness.run(drain).await,
    }

    let token = harness.token();
    let (rules, follow_rules) = CompactedTable::follow(
        config.kafka.clone(),
        service.to_owned(),
        config.topics.rules.clone(),
        decoder(codec.clone(), token.clone(), rule_of),
        token.clone(),
    );
    harness.spawn("follow-rules", follow_rules);
    let producer =
        Producer::new(&config.kafka, service).map_err(|e| ServiceError::startup("producer", e))?;
    let publisher = Publisher {
        producer: producer.clone(),
        codec,
        topic: config.topics.alerts.clone(),
    };
    let restored = harness
        .until_shutdown(restored_engine(
            &config,
            service,
            &publisher.codec,
            &rules,
            &publisher,
            &token,
        ))
        .await;
    let evaluator = match restored {
        Some(evaluator) => evaluator?,
        None => return harness.run(drain).await,
    };

    let shared = Arc::new(Mutex::new(evaluator));
    harness.spawn(
        "tick",
        tick_loop(
            Arc::clone(&shared),
            rules.clone(),
            publisher.clone(),
            Duration::from_millis(config.evaluation.tick_interval_ms.max(10)),
            token.clone(),
        ),
    );
    let stage = RulesStage {
        shared,
        rules,
        publisher,
    };
    let kafka = config.kafka;
    let inputs = config.topics.inputs;
    harness.spawn("evaluate", async move {
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        ve_kafka::run_stage(&kafka, service, &inputs, stage, &producer, token).await
    });
    harness.started();
    harness.run(drain).await
}
