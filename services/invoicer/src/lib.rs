//! Meters usage per tenant and closes billing periods into idempotent invoices.
//!
//! Consumes `events.enriched.v1` and keeps, per input partition, the usage derived from it up to
//! an offset; after each batch that state is published to the compacted `billing.usage.v1`
//! (acknowledged) before the offsets are committed, and a restart resumes from it, so every input
//! record is counted exactly once. Duplicate event ids within `dedup_window_ms` are dropped, also
//! across restarts (the window is re-read from the log). Periods are closed on a schedule and on
//! demand (`POST /v1/billing/close` on the admin port) into invoices on `billing.invoice.v1`,
//! priced by the tenant's plan; see README.md for the design.

mod api;
mod close;
mod period;
mod pricing;
mod stage;
mod usage;
mod views;

pub use api::{Api, CloseRequest, router};
pub use close::{
    CloseError, CloseSettings, Closer, InvoiceInput, Totals, build_invoice, invoice_envelope,
    invoice_id,
};
pub use period::{Period, rfc3339};
pub use pricing::{Band, Meter, MeterPrice, Plan, PriceBook, Tier, TierMode, amount};
pub use stage::{INGEST_BYTES, MeterSettings, Meterer, metered};
pub use usage::{Dedup, Metered, PartitionState, Usage};
pub use views::{
    Billed, FollowTask, Followed, InvoiceBook, Issued, STATE_KIND, UsageView, billed_attribute,
    follow, state_envelope,
};

use std::time::Duration;

use serde::Deserialize;
use ve_kafka::{CompactedTable, KafkaConfig, Producer, TopicSpec};
use ve_schema::{Body, Codec, RegistryConfig, Tenant};
use ve_service::{AdminConfig, Context, Harness, ServiceConfig, ServiceError, deps};
use ve_telemetry::LogConfig;

/// Built-in defaults; every key is documented there.
pub const DEFAULTS: &str = include_str!("../config/default.toml");

/// `[topics]`: what the invoicer reads and writes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsConfig {
    /// Enriched events to meter.
    pub input: String,
    /// Compacted tenant records (plan, currency).
    pub tenants: String,
    /// Issued invoices, keyed by invoice id.
    pub invoices: String,
    /// Compacted metering state, one record per input partition.
    pub usage: String,
}

/// `[billing]`: periods, closing, dedup and the price book.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BillingConfig {
    pub period: Period,
    /// Grace delay after a period's end before the scheduled close, for events in flight.
    pub close_after_ms: u64,
    /// Run the scheduled close on this instance (exactly one instance should).
    pub schedule: bool,
    /// How often the schedule looks for periods to close.
    pub tick_ms: u64,
    /// Duplicates of an event id (by ingest time) are dropped within this window.
    pub dedup_window_ms: u64,
    /// Closed periods kept in the usage state for late events, besides the current one.
    pub retain_periods: u32,
    /// Plan of tenants whose plan (or whose record) the price book lacks.
    pub default_plan: String,
    /// Currency of tenants whose record names none.
    pub default_currency: String,
    pub plans: PriceBook,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub log: LogConfig,
    pub admin: AdminConfig,
    pub kafka: KafkaConfig,
    pub registry: RegistryConfig,
    pub topics: TopicsConfig,
    pub billing: BillingConfig,
}

impl ServiceConfig for Config {
    fn log(&self) -> &LogConfig {
        &self.log
    }

    fn admin(&self) -> &AdminConfig {
        &self.admin
    }
}

impl BillingConfig {
    /// Checks what the types cannot: the default plan exists, prices and tiers make sense.
    pub fn validate(&self) -> Result<(), String> {
        if !self.plans.contains_key(&self.default_plan) {
            return Err(format!(
                "billing.default_plan `{}` is not in billing.plans",
                self.default_plan
            ));
        }
        if self.dedup_window_ms == 0 {
            return Err("billing.dedup_window_ms must be positive".into());
        }
        self.plans
            .iter()
            .try_for_each(|(name, plan)| plan.validate(name))
    }
}

async fn prepare(config: &Config, codec: &Codec) -> Result<(), ServiceError> {
    let topics = &config.topics;
    // The state topic has one partition: the follower then knows it caught up from one
    // watermark, and its volume (one small record per input partition per batch) needs no more.
    ve_kafka::ensure_topics(
        &config.kafka,
        &[
            TopicSpec::compacted(&topics.tenants),
            TopicSpec::compacted(&topics.usage).partitions(1),
        ],
    )
    .await
    .map_err(|e| ServiceError::startup("topics", e))?;
    deps::prepare(
        &config.kafka,
        codec,
        &[topics.invoices.as_str(), topics.usage.as_str()],
        &[topics.input.as_str(), topics.tenants.as_str()],
    )
    .await
}

/// Waits for the tables the closer and the stage read, logging while waiting.
async fn wait_loaded(usage: &UsageView, invoices: &InvoiceBook, tenants: &CompactedTable<Tenant>) {
    let started = tokio::time::Instant::now();
    loop {
        let step = Duration::from_secs(10);
        if usage.wait_ready(step).await
            && invoices.wait_ready(step).await
            && tenants.wait_ready(step).await
        {
            tracing::info!(
                partitions = usage.snapshot().len(),
                invoices = invoices.list(None).len(),
                tenants = tenants.len(),
                "usage, invoices and tenants loaded"
            );
            return;
        }
        tracing::warn!(
            waited_s = started.elapsed().as_secs(),
            "still loading usage state, invoices and tenants"
        );
    }
}

/// Registers the contract's always-present series at 0 (deploy/metrics.md).
fn register_metrics() {
    for name in [
        "invoicer_events_metered_total",
        "invoicer_duplicates_dropped_total",
        "invoicer_invoices_issued_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    for outcome in ["adjustment", "expired"] {
        metrics::counter!("invoicer_late_events_total", "outcome" => outcome).increment(0);
    }
}

pub async fn run(config: Config, ctx: Context) -> Result<(), ServiceError> {
    config
        .billing
        .validate()
        .map_err(|e| ServiceError::startup("configuration", e))?;
    let service = ctx.service;
    let drain = Duration::from_millis(config.admin.drain_timeout_ms);
    let api = Api::default();
    let mut harness = Harness::start_with_routes(ctx, router(api.clone()))?;
    register_metrics();
    deps::check_broker(&mut harness, &config.kafka);
    deps::check_registry(&mut harness, &config.registry);
    let codec =
        Codec::new(&config.registry).map_err(|e| ServiceError::startup("registry client", e))?;
    match harness.until_shutdown(prepare(&config, &codec)).await {
        Some(prepared) => prepared?,
        None => return harness.run(drain).await,
    }

    let token = harness.token();
    let topics = &config.topics;
    let Followed {
        usage,
        invoices,
        tasks,
    } = follow(
        &config.kafka,
        service,
        &codec,
        &topics.usage,
        &topics.invoices,
        &token,
    )
    .map_err(|e| ServiceError::startup("followers", e))?;
    for (name, task) in tasks {
        harness.spawn(name, task);
    }
    let (tenants, follow_tenants) = CompactedTable::follow(
        config.kafka.clone(),
        service.to_owned(),
        topics.tenants.clone(),
        {
            let codec = codec.clone();
            move |payload: Vec<u8>| {
                let codec = codec.clone();
                async move {
                    match codec
                        .decode(&payload)
                        .await
                        .map_err(|e| e.to_string())?
                        .body
                    {
                        Body::Tenant(tenant) => Ok(tenant),
                        other => Err(format!("{} is not a tenant", other.schema_name())),
                    }
                }
            }
        },
        token.clone(),
    );
    harness.spawn("follow-tenants", follow_tenants);
    if harness
        .until_shutdown(wait_loaded(&usage, &invoices, &tenants))
        .await
        .is_none()
    {
        return harness.run(drain).await;
    }

    let producer =
        Producer::new(&config.kafka, service).map_err(|e| ServiceError::startup("producer", e))?;
    let billing = &config.billing;
    let closer = Closer::new(
        CloseSettings {
            service,
            invoice_topic: topics.invoices.clone(),
            period: billing.period,
            close_after_micros: i64::try_from(billing.close_after_ms)
                .unwrap_or(i64::MAX / 1000)
                .saturating_mul(1000),
            plans: billing.plans.clone(),
            default_plan: billing.default_plan.clone(),
            default_currency: billing.default_currency.clone(),
        },
        codec.clone(),
        producer.clone(),
        usage.clone(),
        invoices.clone(),
        tenants,
    );
    api.set(closer.clone());
    if billing.schedule {
        let tick = Duration::from_millis(billing.tick_ms.max(100));
        let token = token.clone();
        harness.spawn("schedule", async move {
            schedule(closer, tick, token).await;
            Ok::<(), std::convert::Infallible>(())
        });
    }

    let stage = Meterer::new(
        MeterSettings {
            service,
            kafka: config.kafka.clone(),
            input: topics.input.clone(),
            usage_topic: topics.usage.clone(),
            period: billing.period,
            retain_periods: billing.retain_periods,
            dedup_window_micros: i64::try_from(billing.dedup_window_ms)
                .unwrap_or(i64::MAX / 1000)
                .saturating_mul(1000),
        },
        codec,
        producer.clone(),
        usage,
        invoices,
    );
    let kafka: KafkaConfig = config.kafka;
    let input = topics.input.clone();
    harness.spawn("meter", async move {
        ve_kafka::run_stage(&kafka, service, &[input.as_str()], stage, &producer, token).await
    });
    harness.started();
    harness.run(drain).await
}

/// The scheduled close; a failed round (broker down) is logged and tried again next tick.
async fn schedule(closer: Closer, tick: Duration, shutdown: ve_runtime::CancellationToken) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        let now = chrono::Utc::now().timestamp_micros();
        match closer.close_due(now).await {
            Ok(0) => {}
            Ok(issued) => tracing::info!(issued, "scheduled close issued invoices"),
            Err(e) => {
                metrics::counter!("invoicer_close_errors_total").increment(1);
                tracing::warn!(error = %e, "scheduled close failed; retrying next tick");
            }
        }
    }
}
