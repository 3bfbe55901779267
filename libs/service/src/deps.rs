//! Start-up steps and readiness checks every pipeline service repeats: topics exist, envelope
//! schemas are registered, and the broker, registry and stores answer.

use ve_kafka::{KafkaConfig, TopicSpec, dlq_topic};
use ve_schema::{Codec, RegistryConfig, topics};
use ve_store::{Archive, ClickHouseConfig};

use crate::{Harness, ServiceError};

/// Creates the topics a service touches (their dead-letter topics too) and registers the envelope
/// schema for the ones it produces, so an incompatible schema stops the service before it writes.
pub async fn prepare(
    kafka: &KafkaConfig,
    codec: &Codec,
    produces: &[&str],
    consumes: &[&str],
) -> Result<(), ServiceError> {
    let mut specs: Vec<TopicSpec> = Vec::new();
    for topic in produces.iter().chain(consumes) {
        if specs.iter().any(|s| s.name == *topic) {
            continue;
        }
        specs.push(if topics::COMPACTED.contains(topic) {
            TopicSpec::compacted(*topic)
        } else {
            TopicSpec::new(*topic)
        });
    }
    for topic in consumes {
        specs.push(TopicSpec::new(dlq_topic(topic)));
    }
    ve_kafka::ensure_topics(kafka, &specs)
        .await
        .map_err(|e| ServiceError::startup("topics", e))?;
    let _ = codec
        .register(produces)
        .await
        .map_err(|e| ServiceError::startup("schema registration", e))?;
    Ok(())
}

pub fn check_broker(harness: &mut Harness, kafka: &KafkaConfig) {
    let kafka = kafka.clone();
    harness.check("broker", move || {
        let kafka = kafka.clone();
        async move { ve_kafka::ping(&kafka).await }
    });
}

pub fn check_registry(harness: &mut Harness, registry: &RegistryConfig) {
    let registry = registry.clone();
    harness.check("registry", move || {
        let registry = registry.clone();
        async move { ve_schema::ping_registry(&registry).await }
    });
}

pub fn check_clickhouse(harness: &mut Harness, clickhouse: &ClickHouseConfig) {
    let clickhouse = clickhouse.clone();
    harness.check("clickhouse", move || {
        let clickhouse = clickhouse.clone();
        async move { clickhouse.ping().await }
    });
}

pub fn check_archive(harness: &mut Harness, archive: &Archive) {
    let archive = archive.clone();
    harness.check("object_store", move || {
        let archive = archive.clone();
        async move { archive.ping().await }
    });
}
