//! The metering stage: applies each input record exactly once to its partition's usage state,
//! publishes the state of every partition the batch touched (acknowledged) before the consumer
//! loop commits, and resumes from the published state after a crash, replay or rebalance.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use ve_kafka::{KafkaConfig, OutRecord, Outcome, Producer, Record, Stage, StageError, read_range};
use ve_schema::{Body, Codec, Envelope, SchemaError};

use crate::period::Period;
use crate::usage::{Dedup, Metered, PartitionState};
use crate::views::{InvoiceBook, UsageView, state_envelope};

/// Attribute the normalizer sets to the event's size as accepted by the gateway.
pub const INGEST_BYTES: &str = "ingest_bytes";

/// How often a batch that starts after the known state of its partition is retried (waiting for
/// the state topic) before the gap is accepted as records lost to retention.
const GAP_RETRIES: u32 = 5;

/// What the stage needs besides the records.
#[derive(Debug, Clone)]
pub struct MeterSettings {
    pub service: &'static str,
    pub kafka: KafkaConfig,
    pub input: String,
    pub usage_topic: String,
    pub period: Period,
    pub retain_periods: u32,
    pub dedup_window_micros: i64,
}

#[derive(Debug)]
struct Partition {
    state: PartitionState,
    dedup: Dedup,
}

/// Meters `events.enriched.v1` into per-partition usage.
#[derive(Debug)]
pub struct Meterer {
    settings: MeterSettings,
    codec: Codec,
    producer: Producer,
    usage: UsageView,
    invoices: InvoiceBook,
    partitions: HashMap<i32, Partition>,
    gap_retries: HashMap<i32, u32>,
}

/// What metering an event needs from it: its kind and sizes.
pub fn metered(envelope: &Envelope, record_bytes: usize) -> Result<Metered, String> {
    // Without the normalizer's attribute (events from before it set one) the size of the
    // enriched record stands in: the closest figure left, and deterministic for the record.
    let bytes = envelope
        .attributes
        .get(INGEST_BYTES)
        .and_then(|b| b.parse().ok())
        .unwrap_or(record_bytes as u64);
    match &envelope.body {
        Body::Web(_) | Body::App(_) | Body::Run(_) | Body::Step(_) | Body::Decision(_) => {
            Ok(Metered::Event { bytes })
        }
        Body::Span(_) => Ok(Metered::Span { bytes }),
        Body::Metric(sample) => Ok(Metered::Sample {
            bytes,
            series: format!("{}/{}", sample.host, sample.metric),
        }),
        other => Err(format!(
            "{} is not a metered event kind",
            other.schema_name()
        )),
    }
}

fn decode_error(e: SchemaError) -> Result<String, StageError> {
    if e.is_retryable() {
        Err(StageError::Retryable(e.to_string()))
    } else {
        Ok(e.to_string())
    }
}

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

impl Meterer {
    pub fn new(
        settings: MeterSettings,
        codec: Codec,
        producer: Producer,
        usage: UsageView,
        invoices: InvoiceBook,
    ) -> Self {
        Self {
            settings,
            codec,
            producer,
            usage,
            invoices,
            partitions: HashMap::new(),
            gap_retries: HashMap::new(),
        }
    }

    /// Makes sure the partition's state is one `first` can be applied to: the in-memory one
    /// when it reaches `first`, else the latest published one (with its dedup window rebuilt).
    async fn ensure(&mut self, partition: i32, first: i64) -> Result<(), StageError> {
        if self
            .partitions
            .get(&partition)
            .is_some_and(|p| p.state.next_offset >= first)
        {
            return Ok(());
        }
        // Unknown here, or another instance went further while this one did not own it.
        let synced = self
            .usage
            .sync(Duration::from_secs(10))
            .await
            .map_err(|e| StageError::Retryable(e.to_string()))?;
        let mut state = self
            .usage
            .get(partition)
            .map_or_else(|| PartitionState::new(partition), |s| (*s).clone());
        if state.next_offset < first {
            let retries = self.gap_retries.entry(partition).or_default();
            if *retries < GAP_RETRIES || !synced {
                *retries += 1;
                return Err(StageError::Retryable(format!(
                    "usage state of partition {partition} ends at offset {}, the batch starts at {first}; waiting for the state topic",
                    state.next_offset
                )));
            }
            if state.next_offset > 0 || first > 0 {
                metrics::counter!("invoicer_offset_gaps_total").increment(1);
                tracing::error!(
                    partition,
                    state_offset = state.next_offset,
                    first,
                    "records between the usage state and the consumer position are gone (retention?); metering resumes at the consumer position"
                );
            }
            state.next_offset = first;
            state.dedup_from = first;
        }
        let _ = self.gap_retries.remove(&partition);
        let dedup = self.rebuild_dedup(&state).await?;
        tracing::info!(
            partition,
            next_offset = state.next_offset,
            dedup_ids = dedup.len(),
            "usage state loaded"
        );
        let _ = self
            .partitions
            .insert(partition, Partition { state, dedup });
        Ok(())
    }

    /// Re-reads the dedup window before the state's offset, remembering ids without counting.
    async fn rebuild_dedup(&self, state: &PartitionState) -> Result<Dedup, StageError> {
        let mut dedup = Dedup::new(self.settings.dedup_window_micros);
        let records = read_range(
            &self.settings.kafka,
            self.settings.service,
            &self.settings.input,
            state.partition,
            state.dedup_from,
            state.next_offset,
        )
        .await
        .map_err(|e| StageError::Retryable(e.to_string()))?;
        let mut max = i64::MIN;
        for record in records {
            let Some(payload) = &record.payload else {
                continue;
            };
            match self.codec.decode(payload).await {
                Ok(envelope) => {
                    max = max.max(envelope.ingest_time);
                    let _ = dedup.first_sighting(
                        &envelope.event_id,
                        envelope.ingest_time,
                        record.offset,
                        max,
                    );
                }
                Err(e) => {
                    let _ = decode_error(e)?;
                }
            }
        }
        dedup.evict(state.max_ingest_time);
        Ok(dedup)
    }

    /// Applies one record (at or past the partition's next offset) to its partition.
    async fn apply(&mut self, record: &Record) -> Result<Outcome, StageError> {
        let decoded = match &record.payload {
            None => Err("record without a payload".to_owned()),
            Some(payload) => match self.codec.decode(payload).await {
                Ok(envelope) => Ok(envelope),
                Err(e) => Err(decode_error(e)?),
            },
        };
        let settings = &self.settings;
        let Some(partition) = self.partitions.get_mut(&record.partition) else {
            return Err(StageError::Fatal(format!(
                "partition {} has no state",
                record.partition
            )));
        };
        let state = &mut partition.state;
        if record.offset < state.next_offset {
            // Already in the state (replayed after a crash between publish and commit). A poison
            // record may not have reached the dead-letter topic then: dead-letter it again.
            return Ok(match decoded {
                Ok(_) => Outcome::Done,
                Err(reason) => Outcome::Poison(reason),
            });
        }
        state.next_offset = record.offset + 1;
        let envelope = match decoded {
            Ok(envelope) => envelope,
            Err(reason) => return Ok(Outcome::Poison(reason)),
        };
        let metered = match metered(&envelope, record.payload.as_ref().map_or(0, Vec::len)) {
            Ok(metered) => metered,
            Err(reason) => return Ok(Outcome::Poison(reason)),
        };
        state.max_ingest_time = state.max_ingest_time.max(envelope.ingest_time);
        if !partition.dedup.first_sighting(
            &envelope.event_id,
            envelope.ingest_time,
            record.offset,
            state.max_ingest_time,
        ) {
            metrics::counter!("invoicer_duplicates_dropped_total").increment(1);
            return Ok(Outcome::Done);
        }
        let period_start = settings.period.start_of(envelope.ingest_time);
        if period_start < state.horizon(settings.period, settings.retain_periods) {
            metrics::counter!("invoicer_late_events_total", "outcome" => "expired").increment(1);
            return Ok(Outcome::Poison(format!(
                "ingest time {} is in a period older than the {} kept ones; it can no longer be billed",
                envelope.ingest_time, settings.retain_periods
            )));
        }
        if self.invoices.is_invoiced(&envelope.tenant_id, period_start) {
            metrics::counter!("invoicer_late_events_total", "outcome" => "adjustment").increment(1);
        }
        state.add(&envelope.tenant_id, period_start, &metered);
        metrics::counter!("invoicer_events_metered_total").increment(1);
        Ok(Outcome::Done)
    }

    /// Publishes the states of `touched` partitions and waits for the broker's acknowledgement.
    async fn publish(&mut self, touched: &[i32]) -> Result<(), StageError> {
        let now = now_micros();
        let mut records = Vec::with_capacity(touched.len());
        let mut states = Vec::with_capacity(touched.len());
        for partition in touched {
            let Some(p) = self.partitions.get_mut(partition) else {
                continue;
            };
            p.state.dedup_from = p.dedup.window_start(p.state.next_offset);
            p.state
                .prune(self.settings.period, self.settings.retain_periods);
            let envelope = state_envelope(&p.state, self.settings.service, now);
            let payload = self
                .codec
                .encode(&self.settings.usage_topic, &envelope)
                .await
                .map_err(|e| {
                    if e.is_retryable() {
                        StageError::Retryable(e.to_string())
                    } else {
                        StageError::Fatal(e.to_string())
                    }
                })?;
            records.push(OutRecord::new(
                self.settings.usage_topic.clone(),
                PartitionState::key(*partition),
                payload,
            ));
            states.push(Arc::new(p.state.clone()));
        }
        let _ = self
            .producer
            .send_all(&records)
            .await
            .map_err(|e| StageError::Retryable(e.to_string()))?;
        for state in states {
            self.usage.offer(state);
        }
        Ok(())
    }
}

impl Stage for Meterer {
    async fn process(&mut self, batch: &[Record]) -> Result<Vec<Outcome>, StageError> {
        let mut by_partition: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
        for (i, record) in batch.iter().enumerate() {
            by_partition.entry(record.partition).or_default().push(i);
        }
        let mut outcomes = vec![Outcome::Done; batch.len()];
        let touched: Vec<i32> = by_partition.keys().copied().collect();
        for (partition, indexes) in by_partition {
            let first = indexes
                .iter()
                .map(|i| batch[*i].offset)
                .min()
                .unwrap_or_default();
            self.ensure(partition, first).await?;
            for i in indexes {
                outcomes[i] = self.apply(&batch[i]).await?;
            }
        }
        self.publish(&touched).await?;
        Ok(outcomes)
    }
}
