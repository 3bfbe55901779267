//! The staged consumer loop: poll a batch (size or time bound), hand it to the stage, dead-letter
//! what the stage calls poison, and only then commit. A crash anywhere before the commit means the
//! batch is delivered again, so stages must be idempotent; nothing acknowledged is ever lost.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::producer::metric_prefix;
use crate::{KafkaConfig, KafkaError, OutRecord, Producer, Record, dlq_topic};

/// What became of one record of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Processed; its output (if any) is durable.
    Done,
    /// Can never be processed (undecodable, invalid): goes to `<topic>.dlq` with this reason.
    Poison(String),
}

/// Why a whole batch could not be processed.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// A dependency is down (broker, store, registry): back off and retry the same batch.
    #[error("retryable: {0}")]
    Retryable(String),
    /// A bug or a configuration that cannot work: stop the process cleanly, commit nothing.
    #[error("fatal: {0}")]
    Fatal(String),
}

/// A processing stage. `process` returns one outcome per record, in order, and must have made
/// its output durable (produced and acknowledged, inserted, written) before it returns.
pub trait Stage: Send {
    fn process(
        &mut self,
        batch: &[Record],
    ) -> impl Future<Output = Result<Vec<Outcome>, StageError>> + Send;
}

struct LoopContext {
    service: String,
}

impl ClientContext for LoopContext {
    fn stats(&self, statistics: Statistics) {
        let name = format!("{}_consumer_lag", metric_prefix(&self.service));
        for (topic, stats) in statistics.topics {
            for (partition, p) in stats.partitions {
                // -1 is librdkafka's "unknown" (partition not assigned here); skip it.
                if partition >= 0 && p.consumer_lag >= 0 {
                    metrics::gauge!(name.clone(), "topic" => topic.clone(), "partition" => partition.to_string())
                        .set(p.consumer_lag as f64);
                }
            }
        }
    }
}

impl ConsumerContext for LoopContext {
    fn post_rebalance(&self, _: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = tpl.count(), "partitions assigned")
            }
            Rebalance::Revoke(tpl) => {
                tracing::info!(partitions = tpl.count(), "partitions revoked")
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

fn consumer(
    config: &KafkaConfig,
    service: &str,
    topics: &[&str],
) -> Result<StreamConsumer<LoopContext>, KafkaError> {
    let mut client = config.client(service);
    let _ = client
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", config.session_timeout_ms.to_string())
        .set(
            "heartbeat.interval.ms",
            config.heartbeat_interval_ms.to_string(),
        )
        .set(
            "max.poll.interval.ms",
            config.max_poll_interval_ms.to_string(),
        )
        .set("statistics.interval.ms", "5000");
    KafkaConfig::bound_prefetch(&mut client);
    config.apply_extra(&mut client);
    let consumer: StreamConsumer<LoopContext> = client
        .create_with_context(LoopContext {
            service: service.to_owned(),
        })
        .map_err(|e| KafkaError::Config(e.to_string()))?;
    consumer
        .subscribe(topics)
        .map_err(|e| KafkaError::Consume {
            topics: topics.join(","),
            reason: e.to_string(),
        })?;
    Ok(consumer)
}

/// Runs `stage` over `topics` until `shutdown`, then finishes the batch in hand, commits and
/// returns. Returns an error only for fatal conditions; transient ones are retried with backoff.
pub async fn run_stage<S: Stage>(
    config: &KafkaConfig,
    service: &str,
    topics: &[&str],
    mut stage: S,
    producer: &Producer,
    shutdown: CancellationToken,
) -> Result<(), KafkaError> {
    let consumer = consumer(config, service, topics)?;
    let prefix = metric_prefix(service);
    let consumed = metrics::counter!(format!("{prefix}_events_consumed_total"));
    let dead_lettered = metrics::counter!(format!("{prefix}_dlq_records_total"));
    let errors = metrics::counter!(format!("{prefix}_pipeline_errors_total"));
    let flush_seconds = metrics::histogram!(format!("{prefix}_batch_flush_seconds"));
    let flush_interval = Duration::from_millis(config.flush_interval_ms);
    // The dead-letter series exist from the start at 0, so a DLQ rate is 0 rather than absent on
    // a healthy system (sinks produce nothing else).
    for topic in topics {
        metrics::counter!(format!("{prefix}_records_produced_total"), "topic" => dlq_topic(topic))
            .increment(0);
    }
    tracing::info!(topics = ?topics, group = %config.group_id, "consuming");

    loop {
        let batch = match next_batch(&consumer, config.batch_size, flush_interval, &shutdown).await
        {
            Ok(batch) => batch,
            Err(e) => {
                errors.increment(1);
                tracing::warn!(error = %e, "poll failed, retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        if batch.is_empty() {
            if shutdown.is_cancelled() {
                break;
            }
            continue;
        }
        consumed.increment(batch.len() as u64);
        let started = Instant::now();

        let Some(outcomes) = process_with_retry(&mut stage, &batch, &shutdown, &errors).await?
        else {
            // Shut down while a dependency was down: nothing committed, the batch is redelivered.
            tracing::info!(
                records = batch.len(),
                "stopping with an unprocessed batch; it will be redelivered"
            );
            return Ok(());
        };

        let dead: Vec<OutRecord> = batch
            .iter()
            .zip(&outcomes)
            .filter_map(|(record, outcome)| match outcome {
                Outcome::Poison(reason) => {
                    tracing::warn!(topic = %record.topic, partition = record.partition, offset = record.offset, reason = %reason, "record dead-lettered");
                    Some(record.to_dead_letter(service, reason, now_ms()))
                }
                Outcome::Done => None,
            })
            .collect();
        if !dead.is_empty() {
            if !send_with_retry(producer, &dead, &shutdown, &errors).await {
                return Ok(());
            }
            dead_lettered.increment(dead.len() as u64);
        }

        // Mid-stream the commit is asynchronous: the outputs are already acknowledged, so a commit
        // that is lost only means redelivery, which every stage absorbs, while waiting for it
        // would add a broker round trip to every batch. The last one before stopping is waited for.
        let mode = if shutdown.is_cancelled() {
            CommitMode::Sync
        } else {
            CommitMode::Async
        };
        commit(&consumer, &batch, mode)?;
        flush_seconds.record(started.elapsed().as_secs_f64());
        if shutdown.is_cancelled() {
            break;
        }
    }
    tracing::info!("consumer drained and committed");
    Ok(())
}

async fn next_batch(
    consumer: &StreamConsumer<LoopContext>,
    max: usize,
    interval: Duration,
    shutdown: &CancellationToken,
) -> Result<Vec<Record>, KafkaError> {
    let mut batch = Vec::with_capacity(max.min(10_000));
    let mut deadline: Option<Instant> = None;
    while batch.len() < max {
        // An idle consumer waits for the first record; the clock starts then.
        let wait = deadline.unwrap_or_else(|| Instant::now() + Duration::from_millis(200));
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            received = tokio::time::timeout_at(wait, consumer.recv()) => match received {
                Ok(Ok(message)) => {
                    batch.push(Record::from_message(&message));
                    if deadline.is_none() {
                        deadline = Some(Instant::now() + interval);
                    }
                }
                Ok(Err(e)) => {
                    if batch.is_empty() {
                        return Err(KafkaError::Consume { topics: String::new(), reason: e.to_string() });
                    }
                    break;
                }
                Err(_) if deadline.is_some() => break,
                Err(_) => return Ok(batch),
            }
        }
    }
    Ok(batch)
}

async fn process_with_retry<S: Stage>(
    stage: &mut S,
    batch: &[Record],
    shutdown: &CancellationToken,
    errors: &metrics::Counter,
) -> Result<Option<Vec<Outcome>>, KafkaError> {
    let mut backoff = Duration::from_millis(200);
    loop {
        match stage.process(batch).await {
            Ok(outcomes) if outcomes.len() == batch.len() => return Ok(Some(outcomes)),
            Ok(outcomes) => {
                return Err(KafkaError::Stage(format!(
                    "stage returned {} outcomes for {} records",
                    outcomes.len(),
                    batch.len()
                )));
            }
            Err(StageError::Fatal(reason)) => return Err(KafkaError::Stage(reason)),
            Err(StageError::Retryable(reason)) => {
                errors.increment(1);
                tracing::warn!(reason = %reason, backoff_ms = backoff.as_millis() as u64, "batch failed, retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

async fn send_with_retry(
    producer: &Producer,
    records: &[OutRecord],
    shutdown: &CancellationToken,
    errors: &metrics::Counter,
) -> bool {
    let mut backoff = Duration::from_millis(200);
    loop {
        match producer.send_all(records).await {
            Ok(_) => return true,
            Err(e) => {
                errors.increment(1);
                tracing::warn!(error = %e, "dead-letter delivery failed, retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return false,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Commits the next offset of every partition in the batch.
fn commit(
    consumer: &StreamConsumer<LoopContext>,
    batch: &[Record],
    mode: CommitMode,
) -> Result<(), KafkaError> {
    let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    for record in batch {
        let slot = next
            .entry((record.topic.as_str(), record.partition))
            .or_insert(0);
        *slot = (*slot).max(record.offset + 1);
    }
    let mut list = TopicPartitionList::new();
    for ((topic, partition), offset) in next {
        list.add_partition_offset(topic, partition, Offset::Offset(offset))
            .map_err(|e| KafkaError::Commit(e.to_string()))?;
    }
    match consumer.commit(&list, mode) {
        Ok(()) => Ok(()),
        // After a rebalance the partition may belong to another member; the records will be
        // processed again there, which idempotent stages absorb.
        Err(e) => {
            tracing::warn!(error = %e, "offset commit failed; records will be redelivered");
            Ok(())
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
