//! Reading a whole topic from the beginning and following it live, without a consumer group:
//! how control data (tenants, CMDB tags, rules) and the registry's `_schemas` log are loaded into
//! memory at start and kept current.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{KafkaConfig, KafkaError, Record};

/// What a tail hands to its handler.
#[derive(Debug)]
pub enum TailEvent {
    Record(Record),
    /// Every record that existed when the tail started has been handed over.
    CaughtUp,
}

/// The tailing consumer's context: partition-EOF is how it knows it caught up, so librdkafka
/// reporting each one as a "global error" is noise, not an error.
struct TailContext;

impl rdkafka::ClientContext for TailContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF) {
            return;
        }
        tracing::error!(error = %error, reason, "librdkafka error");
    }
}

impl rdkafka::consumer::ConsumerContext for TailContext {}

/// Hands every record of `topic` (all partitions, from the beginning) to `handler`, in offset order
/// per partition, then follows new records until `shutdown`.
pub async fn tail_topic<F, Fut>(
    config: &KafkaConfig,
    service: &str,
    topic: &str,
    mut handler: F,
    shutdown: CancellationToken,
) -> Result<(), KafkaError>
where
    F: FnMut(TailEvent) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut client = config.client(service);
    let _ = client
        // Required by librdkafka even without subscribing; nothing is ever committed under it.
        .set("group.id", format!("{service}-tail-{}", uuid_like()))
        .set("enable.auto.commit", "false")
        // "Caught up" is the consumer reaching the end of every partition it fetched. Listed
        // watermarks are not used for this: some brokers (Tansu 0.6) under-report them for
        // multi-record batches.
        .set("enable.partition.eof", "true");
    KafkaConfig::bound_prefetch(&mut client);
    config.apply_extra(&mut client);
    let consumer: Arc<StreamConsumer<TailContext>> = Arc::new(
        client
            .create_with_context(TailContext)
            .map_err(|e| KafkaError::Config(e.to_string()))?,
    );

    let (partitions, mut pending) = {
        let consumer = Arc::clone(&consumer);
        let name = topic.to_owned();
        let brokers = config.brokers.clone();
        tokio::task::spawn_blocking(move || -> Result<_, KafkaError> {
            let unreachable = |e: rdkafka::error::KafkaError| KafkaError::Unreachable {
                brokers: brokers.clone(),
                reason: e.to_string(),
            };
            // A topic created a moment ago may not be in every broker's metadata yet.
            let mut partitions: Vec<i32> = Vec::new();
            for _ in 0..50 {
                let metadata = consumer
                    .fetch_metadata(Some(&name), Duration::from_secs(10))
                    .map_err(unreachable)?;
                partitions = metadata
                    .topics()
                    .iter()
                    .filter(|t| t.name() == name && t.error().is_none())
                    .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                    .collect();
                if !partitions.is_empty() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            if partitions.is_empty() {
                return Err(KafkaError::Consume {
                    topics: name,
                    reason: "topic does not exist".into(),
                });
            }
            let pending: HashSet<i32> = partitions.iter().copied().collect();
            Ok((partitions, pending))
        })
        .await
        .map_err(|e| KafkaError::Consume {
            topics: topic.to_owned(),
            reason: e.to_string(),
        })??
    };

    let mut assignment = TopicPartitionList::new();
    for p in &partitions {
        assignment
            .add_partition_offset(topic, *p, Offset::Beginning)
            .map_err(|e| KafkaError::Consume {
                topics: topic.to_owned(),
                reason: e.to_string(),
            })?;
    }
    consumer
        .assign(&assignment)
        .map_err(|e| KafkaError::Consume {
            topics: topic.to_owned(),
            reason: e.to_string(),
        })?;

    let mut caught_up = false;
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            message = consumer.recv() => message,
        };
        let record = match message {
            Ok(message) => Record::from_message(&message),
            Err(rdkafka::error::KafkaError::PartitionEOF(partition)) => {
                if !caught_up && pending.remove(&partition) && pending.is_empty() {
                    caught_up = true;
                    handler(TailEvent::CaughtUp).await;
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(topic, error = %e, "tail poll failed, retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        handler(TailEvent::Record(record)).await;
    }
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{}-{nanos}", std::process::id())
}

/// An in-memory view of a compacted topic: latest value per key, tombstones remove the key.
#[derive(Debug)]
pub struct CompactedTable<V> {
    entries: Arc<RwLock<HashMap<String, V>>>,
    ready: watch::Receiver<bool>,
}

impl<V> Clone for CompactedTable<V> {
    fn clone(&self) -> Self {
        Self {
            entries: Arc::clone(&self.entries),
            ready: self.ready.clone(),
        }
    }
}

impl<V: Clone + Send + Sync + 'static> CompactedTable<V> {
    /// The table and the task that fills it; spawn the task under the service's supervisor.
    /// `decode` turns a record's payload into a value; records it rejects are logged and skipped
    /// (a control topic must not take a service down).
    pub fn follow<D, DF>(
        config: KafkaConfig,
        service: String,
        topic: String,
        decode: D,
        shutdown: CancellationToken,
    ) -> (Self, impl Future<Output = Result<(), KafkaError>> + Send)
    where
        D: Fn(Vec<u8>) -> DF + Send + Sync + 'static,
        DF: Future<Output = Result<V, String>> + Send,
    {
        let entries: Arc<RwLock<HashMap<String, V>>> = Arc::default();
        let (ready_tx, ready) = watch::channel(false);
        let table = Self {
            entries: Arc::clone(&entries),
            ready,
        };
        let task = async move {
            let decode = &decode;
            let entries = &entries;
            let ready_tx = &ready_tx;
            let topic_name = topic.clone();
            tail_topic(
                &config,
                &service,
                &topic,
                move |event| {
                    let topic = topic_name.clone();
                    async move {
                        match event {
                            TailEvent::CaughtUp => {
                                let _ = ready_tx.send(true);
                            }
                            TailEvent::Record(record) => {
                                apply(entries, decode, &topic, &record).await
                            }
                        }
                    }
                },
                shutdown,
            )
            .await
        };
        (table, task)
    }

    pub fn get(&self, key: &str) -> Option<V> {
        self.entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn snapshot(&self) -> Vec<(String, V)> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Waits until the table holds everything the topic held at start.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let mut ready = self.ready.clone();
        tokio::time::timeout(timeout, ready.wait_for(|r| *r))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

async fn apply<V, D, DF>(
    entries: &RwLock<HashMap<String, V>>,
    decode: &D,
    topic: &str,
    record: &Record,
) where
    D: Fn(Vec<u8>) -> DF,
    DF: Future<Output = Result<V, String>>,
{
    let Some(key) = record.key_str().map(str::to_owned) else {
        tracing::warn!(
            topic,
            offset = record.offset,
            "control record without a key skipped"
        );
        return;
    };
    match &record.payload {
        None => {
            let _ = entries
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
        }
        Some(payload) => match decode(payload.clone()).await {
            Ok(value) => {
                let _ = entries
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, value);
            }
            Err(reason) => {
                metrics::counter!("ve_control_records_rejected_total", "topic" => topic.to_owned())
                    .increment(1);
                tracing::warn!(topic, key = %key, offset = record.offset, reason = %reason, "control record rejected");
            }
        },
    }
}

/// Reads the records of one partition with offsets in `from..until`, in order, without a consumer
/// group: how a stage rebuilds in-memory state (e.g. a dedup window) from the log after a
/// restart. Stops early at the partition's end if fewer records exist.
pub async fn read_range(
    config: &KafkaConfig,
    service: &str,
    topic: &str,
    partition: i32,
    from: i64,
    until: i64,
) -> Result<Vec<Record>, KafkaError> {
    let mut records = Vec::new();
    if from >= until {
        return Ok(records);
    }
    let fail = |reason: String| KafkaError::Consume {
        topics: format!("{topic}/{partition}"),
        reason,
    };
    let mut client = config.client(service);
    let _ = client
        // Required by librdkafka even without subscribing; nothing is ever committed under it.
        .set("group.id", format!("{service}-range-{}", uuid_like()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true");
    KafkaConfig::bound_prefetch(&mut client);
    config.apply_extra(&mut client);
    let consumer: StreamConsumer<TailContext> = client
        .create_with_context(TailContext)
        .map_err(|e| KafkaError::Config(e.to_string()))?;
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, Offset::Offset(from))
        .map_err(|e| fail(e.to_string()))?;
    consumer
        .assign(&assignment)
        .map_err(|e| fail(e.to_string()))?;
    let mut failures = 0;
    loop {
        match consumer.recv().await {
            Ok(message) => {
                let record = Record::from_message(&message);
                if record.offset >= until {
                    return Ok(records);
                }
                let last = record.offset + 1 >= until;
                records.push(record);
                if last {
                    return Ok(records);
                }
            }
            Err(rdkafka::error::KafkaError::PartitionEOF(_)) => return Ok(records),
            Err(e) => {
                failures += 1;
                if failures > 20 {
                    return Err(fail(e.to_string()));
                }
                tracing::warn!(topic, partition, error = %e, "range read failed, retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}
