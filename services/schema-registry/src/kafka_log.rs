//! The production [`SchemaLog`]: a single-partition compacted Kafka topic (`_schemas` by default),
//! written with the idempotent producer and tailed from the beginning by every instance.

use std::sync::Arc;

use ve_kafka::{KafkaConfig, OutRecord, Producer, TailEvent, Watermarks};
use ve_runtime::CancellationToken;

use crate::error::LogError;
use crate::log::SchemaLog;
use crate::registry::Registry;

/// The registry's records live in partition 0 of one topic: a total order is the protocol.
const PARTITION: i32 = 0;

#[derive(Debug)]
pub struct KafkaLog {
    producer: Producer,
    watermarks: Watermarks,
    topic: String,
}

impl KafkaLog {
    pub fn new(config: &KafkaConfig, topic: &str) -> Result<Self, ve_kafka::KafkaError> {
        Ok(Self {
            producer: Producer::new(config, "schema-registry")?,
            watermarks: Watermarks::new(config, "schema-registry")?,
            topic: topic.to_owned(),
        })
    }
}

#[async_trait::async_trait]
impl SchemaLog for KafkaLog {
    async fn append(&self, key: Vec<u8>, value: Option<Vec<u8>>) -> Result<i64, LogError> {
        let record = OutRecord {
            topic: self.topic.clone(),
            key: Some(key),
            payload: value,
            headers: Vec::new(),
        };
        let (partition, offset) = self
            .producer
            .send(&record)
            .await
            .map_err(LogError::backend)?;
        if partition != PARTITION {
            return Err(LogError::message(format!(
                "{} has more than one partition; the registry needs exactly one",
                self.topic
            )));
        }
        Ok(offset)
    }

    async fn end_offset(&self) -> Result<i64, LogError> {
        self.watermarks
            .high(&self.topic, PARTITION)
            .await
            .map_err(LogError::backend)
    }
}

/// Feeds every record of the topic, in order, into `registry`, until `shutdown`.
pub async fn feed(
    config: KafkaConfig,
    topic: String,
    registry: Arc<Registry>,
    log: Arc<KafkaLog>,
    shutdown: CancellationToken,
) -> Result<(), ve_kafka::KafkaError> {
    ve_kafka::tail_topic(
        &config,
        "schema-registry",
        &topic,
        |event| {
            let registry = Arc::clone(&registry);
            let log = Arc::clone(&log);
            async move {
                match event {
                    TailEvent::Record(record) => {
                        registry.apply(
                            record.offset,
                            record.key.as_deref().unwrap_or_default(),
                            record.payload.as_deref(),
                        );
                    }
                    // Compaction can leave the log's end past the last record; writers wait for
                    // the end offset, so mark it reached.
                    TailEvent::CaughtUp => match log.end_offset().await {
                        Ok(end) => registry.advance(end),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot read the schema log's end offset")
                        }
                    },
                }
            }
        },
        shutdown,
    )
    .await
}
