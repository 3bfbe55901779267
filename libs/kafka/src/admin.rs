use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

use crate::{KafkaConfig, KafkaError};

/// A topic a service needs, created if missing.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub name: String,
    /// `None` uses the configured default.
    pub partitions: Option<i32>,
    /// Compacted topics keep the latest record per key (control data, alerts, `_schemas`).
    pub compacted: bool,
}

impl TopicSpec {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            partitions: None,
            compacted: false,
        }
    }

    pub fn compacted(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            partitions: None,
            compacted: true,
        }
    }

    pub fn partitions(mut self, partitions: i32) -> Self {
        self.partitions = Some(partitions);
        self
    }
}

/// Creates the topics that do not exist yet; existing ones are left as they are.
pub async fn ensure_topics(config: &KafkaConfig, topics: &[TopicSpec]) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = config
        .client("ve-admin")
        .create()
        .map_err(|e| KafkaError::Config(e.to_string()))?;
    let specs: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            let topic = NewTopic::new(
                &t.name,
                t.partitions.unwrap_or(config.partitions),
                TopicReplication::Fixed(config.replication_factor),
            );
            if t.compacted {
                topic.set("cleanup.policy", "compact")
            } else {
                topic
            }
        })
        .collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(15)));
    let results = admin
        .create_topics(&specs, &options)
        .await
        .map_err(|e| KafkaError::Admin {
            topic: topics
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(","),
            reason: e.to_string(),
        })?;
    for result in results {
        match result {
            Ok(name) => tracing::info!(topic = %name, "topic created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(KafkaError::Admin {
                    topic: name,
                    reason: code.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// Readiness: the broker answers a metadata request.
pub async fn ping(config: &KafkaConfig) -> Result<(), KafkaError> {
    let client = config.client("ve-ping");
    let brokers = config.brokers.clone();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = client
            .create()
            .map_err(|e| KafkaError::Config(e.to_string()))?;
        let metadata = consumer
            .fetch_metadata(None, Duration::from_secs(2))
            .map_err(|e| KafkaError::Unreachable {
                brokers: brokers.clone(),
                reason: e.to_string(),
            })?;
        if metadata.brokers().is_empty() {
            return Err(KafkaError::Unreachable {
                brokers,
                reason: "no brokers in metadata".into(),
            });
        }
        Ok(())
    })
    .await
    .map_err(|e| KafkaError::Unreachable {
        brokers: config.brokers.clone(),
        reason: e.to_string(),
    })?
}

/// Queries partition watermarks over one long-lived client (for read-your-writes checks).
#[derive(Clone)]
pub struct Watermarks {
    consumer: std::sync::Arc<BaseConsumer>,
    brokers: String,
}

impl std::fmt::Debug for Watermarks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watermarks")
            .field("brokers", &self.brokers)
            .finish_non_exhaustive()
    }
}

impl Watermarks {
    pub fn new(config: &KafkaConfig, service: &str) -> Result<Self, KafkaError> {
        let consumer: BaseConsumer = config
            .client(service)
            .create()
            .map_err(|e| KafkaError::Config(e.to_string()))?;
        Ok(Self {
            consumer: std::sync::Arc::new(consumer),
            brokers: config.brokers.clone(),
        })
    }

    /// Offset one past the last record of the partition.
    pub async fn high(&self, topic: &str, partition: i32) -> Result<i64, KafkaError> {
        let consumer = std::sync::Arc::clone(&self.consumer);
        let topic = topic.to_owned();
        let brokers = self.brokers.clone();
        tokio::task::spawn_blocking(move || {
            consumer
                .fetch_watermarks(&topic, partition, Duration::from_secs(10))
                .map(|(_, high)| high)
                .map_err(|e| KafkaError::Unreachable {
                    brokers,
                    reason: e.to_string(),
                })
        })
        .await
        .map_err(|e| KafkaError::Unreachable {
            brokers: self.brokers.clone(),
            reason: e.to_string(),
        })?
    }
}
