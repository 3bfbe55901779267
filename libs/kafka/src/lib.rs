//! Everything that touches the broker: the producer (idempotent, `acks=all`), the staged consumer
//! loop that commits an offset only after the stage's output is durable and dead-letters poison
//! records, compacted-topic tailing for control data, and topic administration.
//!
//! No other crate depends on `rdkafka`.

mod admin;
mod config;
mod consumer;
mod producer;
mod record;
mod tail;

pub use admin::{TopicSpec, Watermarks, ensure_topics, ping};
pub use config::KafkaConfig;
pub use consumer::{Outcome, Stage, StageError, run_stage};
pub use producer::Producer;
pub use record::{DLQ_HEADERS, OutRecord, Record, dlq_topic};
pub use tail::{CompactedTable, TailEvent, read_range, tail_topic};

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("invalid kafka client configuration: {0}")]
    Config(String),
    #[error("broker {brokers} unreachable: {reason}")]
    Unreachable { brokers: String, reason: String },
    #[error("delivery to {topic} failed: {reason}")]
    Delivery { topic: String, reason: String },
    #[error("consumer error on {topics}: {reason}")]
    Consume { topics: String, reason: String },
    #[error("offset commit failed: {0}")]
    Commit(String),
    #[error("topic administration failed for {topic}: {reason}")]
    Admin { topic: String, reason: String },
    #[error("stage failed fatally: {0}")]
    Stage(String),
}
