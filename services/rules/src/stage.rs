//! The IO around the engine: the consumer stage, the wall-clock ticker, and publishing alert
//! transitions to `ops.alert.v1`, acknowledged before the input offsets are committed.
//!
//! Transitions wait in an outbox until the broker acknowledged them. A batch whose alerts could
//! not be delivered is retried by the consumer loop; the engine skips the records it already
//! evaluated (by partition offset) and only the outbox is sent again, so a retry neither loses an
//! alert nor counts an event twice.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use ve_kafka::{CompactedTable, OutRecord, Outcome, Producer, Record, Stage, StageError};
use ve_schema::{Body, Codec, Envelope, SchemaError, Source};

use crate::eval::{Census, DROP_REASONS, Engine, FIRING, RESOLVED, Transition};
use crate::rule::Rule;

/// Wall-clock now, UTC micros.
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

fn stage_error(e: SchemaError) -> StageError {
    if e.is_retryable() {
        StageError::Retryable(e.to_string())
    } else {
        // Our own alert envelope refused or unencodable: every alert would fail the same way.
        StageError::Fatal(e.to_string())
    }
}

/// Registers the service's own metrics at zero so they exist from start-up.
pub(crate) fn register_metrics() {
    for state in [FIRING, RESOLVED] {
        metrics::counter!("rules_alerts_published_total", "state" => state).absolute(0);
    }
    for reason in DROP_REASONS {
        metrics::counter!("rules_events_dropped_total", "reason" => reason).absolute(0);
    }
    set_gauges(Census::default());
    let _ = metrics::histogram!("rules_evaluation_seconds");
}

fn set_gauges(census: Census) {
    metrics::gauge!("rules_active_rules").set(census.rules as f64);
    metrics::gauge!("rules_series").set(census.series as f64);
    metrics::gauge!("rules_firing_alerts").set(census.firing as f64);
}

/// Produces alert transitions, keyed `{tenant}/{rule_id}/{series}`.
#[derive(Debug, Clone)]
pub struct Publisher {
    pub producer: Producer,
    pub codec: Codec,
    pub topic: String,
}

impl Publisher {
    /// Sends the whole outbox and waits for the acknowledgements; empties it only then.
    pub async fn publish(&self, outbox: &mut Vec<Transition>) -> Result<(), StageError> {
        if outbox.is_empty() {
            return Ok(());
        }
        let ingest_time = now_micros();
        let mut records = Vec::with_capacity(outbox.len());
        for transition in outbox.iter() {
            let envelope = Envelope {
                event_id: transition.event_id(),
                event_time: transition.event_time(),
                ingest_time,
                tenant_id: transition.tenant.clone(),
                source: Source {
                    kind: "rules".into(),
                    id: transition.alert.rule_id.clone(),
                },
                schema_name: String::new(),
                schema_version: 1,
                attributes: Default::default(),
                tags: Default::default(),
                body: Body::Alert(transition.alert.clone()),
            };
            let envelope = Envelope {
                schema_name: envelope.body.schema_name().into(),
                ..envelope
            };
            let payload = self
                .codec
                .encode(&self.topic, &envelope)
                .await
                .map_err(stage_error)?;
            records.push(
                OutRecord::new(&self.topic, transition.key.as_bytes(), payload).with_trace(None),
            );
        }
        let _ = self
            .producer
            .send_all(&records)
            .await
            .map_err(|e| StageError::Retryable(e.to_string()))?;
        for transition in outbox.drain(..) {
            tracing::info!(key = %transition.key, state = %transition.alert.state, value = transition.alert.value, "alert {}", transition.alert.state);
            metrics::counter!("rules_alerts_published_total", "state" => if transition.alert.state == FIRING { FIRING } else { RESOLVED })
                .increment(1);
        }
        Ok(())
    }
}

/// The engine and what has not been published yet, shared by the stage and the ticker.
#[derive(Debug)]
pub struct Evaluator {
    pub engine: Engine,
    pub outbox: Vec<Transition>,
    /// Highest offset evaluated per (topic, partition): a retried batch is not evaluated twice.
    applied: HashMap<(String, i32), i64>,
}

impl Evaluator {
    pub fn new(engine: Engine) -> Self {
        Self {
            engine,
            outbox: Vec::new(),
            applied: HashMap::new(),
        }
    }

    /// Applies the current rule table (cheap when nothing changed: entries compare by pointer).
    pub fn sync(&mut self, rules: &CompactedTable<Arc<Rule>>, now: i64) {
        let snapshot = rules.snapshot();
        self.engine.sync(&snapshot, now, &mut self.outbox);
    }

    fn evaluate(&mut self, record: &Record, envelope: &Envelope, now: i64) {
        let slot = self
            .applied
            .entry((record.topic.clone(), record.partition))
            .or_insert(-1);
        if record.offset <= *slot {
            return;
        }
        *slot = record.offset;
        self.engine.observe(envelope, now, &mut self.outbox);
    }
}

/// Consumer stage over the enriched events.
#[derive(Debug)]
pub struct RulesStage {
    pub shared: Arc<Mutex<Evaluator>>,
    pub rules: CompactedTable<Arc<Rule>>,
    pub publisher: Publisher,
}

impl Stage for RulesStage {
    async fn process(&mut self, batch: &[Record]) -> Result<Vec<Outcome>, StageError> {
        let codec = &self.publisher.codec;
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut envelopes = Vec::with_capacity(batch.len());
        for record in batch {
            let Some(payload) = record.payload.as_deref() else {
                outcomes.push(Outcome::Poison("record without a payload".into()));
                envelopes.push(None);
                continue;
            };
            match codec.decode(payload).await {
                Ok(envelope) => {
                    outcomes.push(Outcome::Done);
                    envelopes.push(Some(envelope));
                }
                Err(e) if e.is_retryable() => return Err(StageError::Retryable(e.to_string())),
                Err(e) => {
                    outcomes.push(Outcome::Poison(e.to_string()));
                    envelopes.push(None);
                }
            }
        }
        let mut shared = self.shared.lock().await;
        let started = Instant::now();
        let now = now_micros();
        shared.sync(&self.rules, now);
        for (record, envelope) in batch.iter().zip(&envelopes) {
            if let Some(envelope) = envelope {
                shared.evaluate(record, envelope, now);
            }
        }
        metrics::histogram!("rules_evaluation_seconds").record(started.elapsed().as_secs_f64());
        set_gauges(shared.engine.census());
        let shared = &mut *shared;
        self.publisher.publish(&mut shared.outbox).await?;
        Ok(outcomes)
    }
}

/// Every `interval`: follow rule changes even without traffic, check absence, close idle rate
/// windows, publish. Undeliverable alerts stay in the outbox for the next tick or batch.
pub async fn tick_loop(
    shared: Arc<Mutex<Evaluator>>,
    rules: CompactedTable<Arc<Rule>>,
    publisher: Publisher,
    interval: Duration,
    shutdown: CancellationToken,
) -> Result<(), StageError> {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = ticker.tick() => {}
        }
        let mut shared = shared.lock().await;
        let started = Instant::now();
        let now = now_micros();
        shared.sync(&rules, now);
        let shared = &mut *shared;
        shared.engine.tick(now, &mut shared.outbox);
        metrics::histogram!("rules_evaluation_seconds").record(started.elapsed().as_secs_f64());
        set_gauges(shared.engine.census());
        match publisher.publish(&mut shared.outbox).await {
            Ok(()) => {}
            Err(StageError::Retryable(reason)) => {
                metrics::counter!("rules_pipeline_errors_total").increment(1);
                tracing::warn!(reason = %reason, pending = shared.outbox.len(), "alerts not delivered, retrying on the next tick");
            }
            Err(fatal) => return Err(fatal),
        }
    }
}

/// What [`decoder`] returns per record.
pub type DecodeFuture<V> = Pin<Box<dyn Future<Output = Result<V, String>> + Send>>;

/// Decodes, waiting out a registry outage with backoff until `shutdown`: a followed record
/// skipped for a transient reason would leave stale state until its key changes again.
async fn decode_waiting(
    codec: &Codec,
    bytes: &[u8],
    shutdown: &CancellationToken,
) -> Result<Envelope, SchemaError> {
    let mut backoff = Duration::from_millis(200);
    loop {
        let result = codec.decode(bytes).await;
        let transient = matches!(&result, Err(e) if e.is_retryable());
        if !transient || shutdown.is_cancelled() {
            return result;
        }
        tracing::warn!(
            backoff_ms = backoff.as_millis() as u64,
            "registry unavailable while decoding a followed record; waiting"
        );
        let _ = tokio::time::timeout(backoff, shutdown.cancelled()).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// Decoder for a followed compacted topic (`CompactedTable::follow`): the envelope mapped by
/// `extract`.
pub fn decoder<V: Send + 'static>(
    codec: Codec,
    shutdown: CancellationToken,
    extract: fn(Envelope) -> Result<V, String>,
) -> impl Fn(Vec<u8>) -> DecodeFuture<V> + Send + Sync + 'static {
    move |bytes: Vec<u8>| {
        let (codec, shutdown) = (codec.clone(), shutdown.clone());
        Box::pin(async move {
            let envelope = decode_waiting(&codec, &bytes, &shutdown)
                .await
                .map_err(|e| e.to_string())?;
            extract(envelope)
        })
    }
}

/// A `control.rules.v1` record, checked.
pub fn rule_of(envelope: Envelope) -> Result<Arc<Rule>, String> {
    match envelope.body {
        Body::Rule(rule) => Rule::parse(&rule).map(Arc::new),
        other => Err(format!(
            "expected an AlertRule, got {}",
            other.schema_name()
        )),
    }
}

/// An `ops.alert.v1` record.
pub fn alert_of(envelope: Envelope) -> Result<ve_schema::Alert, String> {
    match envelope.body {
        Body::Alert(alert) => Ok(alert),
        other => Err(format!("expected an Alert, got {}", other.schema_name())),
    }
}
