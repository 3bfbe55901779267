//! The log seam: where records go ([`SchemaLog`]), what they look like, and an in-memory log.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::avro::SchemaReference;
use crate::compat::CompatibilityLevel;
use crate::error::LogError;
use crate::registry::Registry;

/// An append-only, totally ordered log of registry records: a single-partition compacted Kafka
/// topic in production, memory in tests. Records are opaque key/value bytes; a `None` value is a
/// tombstone.
///
/// Implementations must not duplicate records (use an idempotent producer): a duplicate of an
/// accepted record would, after compaction, move that record later in the log and change which
/// of two racing records wins on replay.
#[async_trait::async_trait]
pub trait SchemaLog: Send + Sync + 'static {
    /// Appends one record; returns its offset once it is durable. Offsets of records appended
    /// one after another by the same caller must increase.
    async fn append(&self, key: Vec<u8>, value: Option<Vec<u8>>) -> Result<i64, LogError>;

    /// Offset one past the last durable record right now (the high watermark). A writer waits
    /// until the registry has applied up to here before deciding, for read-your-writes across
    /// replicas.
    async fn end_offset(&self) -> Result<i64, LogError>;
}

// Key types are prefixed so records of Confluent's or Redpanda's registry ("SCHEMA", "CONFIG",
// ...) that end up in the same topic are recognised as foreign and ignored.
/// Record key. Serialised with serde_json; field order is fixed, so equal keys are equal bytes
/// and compaction merges exactly the records meant to supersede each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "keytype")]
pub(crate) enum RecordKey {
    /// One registration attempt of a schema as `version` of `subject`. The nonce makes every
    /// attempt's key unique, so two racing attempts never compact into each other and a
    /// rejected attempt can be tombstoned without touching anything else.
    #[serde(rename = "VE_SCHEMA")]
    Schema {
        subject: String,
        version: i32,
        hash: String,
        nonce: String,
    },
    /// Deletion state of a subject version (soft or permanent). Last value wins.
    #[serde(rename = "VE_VERSION_STATE")]
    VersionState { subject: String, version: i32 },
    /// Compatibility level of a subject, or the global one for `None`. Last value wins;
    /// a tombstone removes the setting.
    #[serde(rename = "VE_COMPATIBILITY")]
    Compatibility { subject: Option<String> },
}

impl RecordKey {
    pub(crate) fn encode(&self) -> Vec<u8> {
        // Serialising a struct-like enum of strings and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

/// Value of a [`RecordKey::Schema`] record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SchemaValue {
    pub(crate) subject: String,
    pub(crate) version: i32,
    pub(crate) id: i32,
    pub(crate) schema: String,
    pub(crate) schema_type: String,
    #[serde(default)]
    pub(crate) references: Vec<SchemaReference>,
    /// Always false when written by this crate: deletion is recorded under a separate
    /// [`RecordKey::VersionState`] key, because rewriting this record would move it to a later
    /// offset after compaction and change the outcome of replaying racing registrations.
    #[serde(default)]
    pub(crate) deleted: bool,
}

/// Value of a [`RecordKey::VersionState`] record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct VersionStateValue {
    pub(crate) subject: String,
    pub(crate) version: i32,
    /// Identify the registration the marker applies to.
    pub(crate) id: i32,
    pub(crate) hash: String,
    pub(crate) deleted: bool,
    pub(crate) permanent: bool,
}

/// Value of a [`RecordKey::Compatibility`] record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CompatibilityValue {
    pub(crate) compatibility_level: CompatibilityLevel,
}

/// One record of a [`MemoryLog`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Position in the log.
    pub offset: i64,
    /// Opaque key.
    pub key: Vec<u8>,
    /// Opaque value; `None` is a tombstone.
    pub value: Option<Vec<u8>>,
}

#[derive(Debug, Default)]
struct MemoryLogInner {
    records: BTreeMap<i64, LogRecord>,
    next_offset: i64,
}

/// In-memory [`SchemaLog`] that also plays the consumer: [`MemoryLog::attach`] feeds every
/// record, in order, to a [`Registry`], the way the Kafka adapter feeds `_schemas`. Several
/// registries attached to one log behave like replicas sharing one topic.
#[derive(Debug)]
pub struct MemoryLog {
    inner: Mutex<MemoryLogInner>,
    end: watch::Sender<i64>,
}

impl MemoryLog {
    /// An empty log.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(MemoryLogInner::default()),
            end: watch::Sender::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, MemoryLogInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Snapshot of the records currently in the log.
    pub fn records(&self) -> Vec<LogRecord> {
        self.lock().records.values().cloned().collect()
    }

    /// Does what Kafka log compaction eventually does once `delete.retention.ms` has passed:
    /// keeps only the latest record of every key and drops tombstones. Offsets are kept, so the
    /// log gets gaps, like a compacted topic.
    pub fn compact(&self) {
        let mut inner = self.lock();
        let mut latest: HashMap<Vec<u8>, i64> = HashMap::new();
        for record in inner.records.values() {
            let _ = latest.insert(record.key.clone(), record.offset);
        }
        inner.records.retain(|offset, record| {
            record.value.is_some() && latest.get(&record.key) == Some(offset)
        });
    }

    /// Spawns the task that feeds this log's records to `registry` in order, starting at the
    /// beginning, and keeps tailing. The task ends when the registry is dropped.
    pub fn attach(self: &Arc<Self>, registry: &Arc<Registry>) -> tokio::task::JoinHandle<()> {
        let log = Arc::clone(self);
        let registry: Weak<Registry> = Arc::downgrade(registry);
        tokio::spawn(async move { log.feed(registry).await })
    }

    async fn feed(&self, weak: Weak<Registry>) {
        let mut end_rx = self.end.subscribe();
        let mut next = 0_i64;
        loop {
            // Read the end before the records, so records appended in between are picked up
            // by the next round instead of being skipped by `advance`.
            let end = *end_rx.borrow_and_update();
            let batch: Vec<LogRecord> = self
                .lock()
                .records
                .range(next..end)
                .map(|(_, r)| r.clone())
                .collect();
            for record in batch {
                let Some(registry) = weak.upgrade() else {
                    return;
                };
                registry.apply(record.offset, &record.key, record.value.as_deref());
                next = record.offset + 1;
                drop(registry);
                // Let other replicas' feeders and writers interleave, as with real consumers.
                tokio::task::yield_now().await;
            }
            let Some(registry) = weak.upgrade() else {
                return;
            };
            // Compaction gaps at the tail have no record to apply but still count as consumed.
            registry.advance(end);
            drop(registry);
            next = next.max(end);
            if end_rx.changed().await.is_err() {
                return;
            }
        }
    }
}

#[async_trait::async_trait]
impl SchemaLog for MemoryLog {
    async fn append(&self, key: Vec<u8>, value: Option<Vec<u8>>) -> Result<i64, LogError> {
        let offset = {
            let mut inner = self.lock();
            let offset = inner.next_offset;
            inner.next_offset += 1;
            let _ = inner
                .records
                .insert(offset, LogRecord { offset, key, value });
            offset
        };
        self.end.send_modify(|end| *end = (*end).max(offset + 1));
        Ok(offset)
    }

    async fn end_offset(&self) -> Result<i64, LogError> {
        Ok(*self.end.borrow())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_bytes() {
        let key = RecordKey::VersionState {
            subject: "s".into(),
            version: 3,
        };
        assert_eq!(
            String::from_utf8(key.encode()).ok().as_deref(),
            Some(r#"{"keytype":"VE_VERSION_STATE","subject":"s","version":3}"#)
        );
        assert_eq!(RecordKey::decode(&key.encode()), Some(key));
        // Confluent's own records are not ours.
        assert_eq!(
            RecordKey::decode(br#"{"keytype":"SCHEMA","subject":"s","version":1,"magic":1}"#),
            None
        );
        assert_eq!(
            RecordKey::decode(br#"{"keytype":"CONFIG","subject":null,"magic":0}"#),
            None
        );
    }

    #[tokio::test]
    async fn compaction_keeps_latest_per_key_and_drops_tombstones() {
        let log = MemoryLog::new();
        for (k, v) in [
            ("a", Some("1")),
            ("b", Some("1")),
            ("a", Some("2")),
            ("b", None),
        ] {
            let _ = log
                .append(k.as_bytes().to_vec(), v.map(|v| v.as_bytes().to_vec()))
                .await;
        }
        log.compact();
        let records = log.records();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].offset, 2);
        assert_eq!(log.end_offset().await.ok(), Some(4));
    }
}
