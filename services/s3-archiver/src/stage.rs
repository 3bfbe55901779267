//! The archiving stage: decode each record, merge raw events into their segment objects (cached
//! from earlier batches, else read back from the store), PUT every object the batch changed
//! concurrently (bounded), and return only once every PUT has completed, so the consumer loop
//! commits nothing that is not in the store.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use ve_kafka::{Outcome, Record, Stage, StageError};
use ve_schema::{Body, Codec, SchemaError};

use crate::layout::{InvoiceDocument, Position, invoice_key, object_path, segment_key};
use crate::recent::{RecentIds, WindowLimits};
use crate::segment::{Line, Merged, Segment};
use crate::{ArchiveConfig, ArchiverError};

impl From<SchemaError> for ArchiverError {
    fn from(e: SchemaError) -> Self {
        match e {
            SchemaError::Unavailable(reason) => Self::Retryable(reason),
            other => Self::Poison(other.to_string()),
        }
    }
}

/// The archiver's own counters (deploy/metrics.md), registered at 0 on creation so the series
/// exist (and alerts see their first increase) from start-up.
#[derive(Debug, Clone)]
pub(crate) struct ArchiverMetrics {
    objects_written: metrics::Counter,
    events_archived: metrics::Counter,
    duplicates_skipped: metrics::Counter,
}

impl ArchiverMetrics {
    pub(crate) fn register() -> Self {
        // The names are a contract: spelled out, not derived.
        let this = Self {
            objects_written: metrics::counter!("s3_archiver_objects_written_total"),
            events_archived: metrics::counter!("s3_archiver_events_archived_total"),
            duplicates_skipped: metrics::counter!("s3_archiver_duplicates_skipped_total"),
        };
        this.objects_written.increment(0);
        this.events_archived.increment(0);
        this.duplicates_skipped.increment(0);
        this
    }
}

/// A segment object: where it is and which partition / segment of the input it holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SegmentKey {
    partition: i32,
    start: i64,
    path: Path,
}

/// A raw event ready to merge.
#[derive(Debug)]
struct RawEvent {
    key: SegmentKey,
    offset: i64,
    line: Line,
}

enum Decoded {
    Raw(RawEvent),
    Invoice(Path, Bytes),
}

/// Segments written recently, so the steady state merges without reading the object back.
/// Holds only what is durable in the store: a batch takes its segments out and puts them back
/// once all of its PUTs succeeded.
#[derive(Debug)]
struct SegmentCache {
    max: usize,
    tick: u64,
    entries: HashMap<SegmentKey, (Segment, u64)>,
}

impl SegmentCache {
    fn take(&mut self, key: &SegmentKey) -> Option<Segment> {
        self.entries.remove(key).map(|(segment, _)| segment)
    }

    fn put(&mut self, key: SegmentKey, segment: Segment) {
        if self.max == 0 {
            return;
        }
        self.tick += 1;
        let _ = self.entries.insert(key, (segment, self.tick));
        while self.entries.len() > self.max {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(key, _)| key.clone())
            else {
                break;
            };
            let _ = self.entries.remove(&oldest);
        }
    }

    /// Drops the segments of `partition` that start before `start`, or all of them.
    fn drop_partition(&mut self, partition: i32, before: Option<i64>) {
        self.entries
            .retain(|key, _| key.partition != partition || before.is_some_and(|s| key.start >= s));
    }
}

/// Writes raw events (in segments) and invoices to the object store.
#[derive(Debug)]
pub(crate) struct Archiver {
    codec: Codec,
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    raw_topic: String,
    max_in_flight: usize,
    segment_offsets: i64,
    cache: SegmentCache,
    recent: RecentIds,
    /// Per partition of the raw topic, the offset after the last batch this instance archived.
    next_offsets: HashMap<i32, i64>,
    metrics: ArchiverMetrics,
}

impl Archiver {
    pub(crate) fn new(
        codec: Codec,
        store: Arc<dyn ObjectStore>,
        prefix: Path,
        raw_topic: String,
        config: &ArchiveConfig,
        metrics: ArchiverMetrics,
    ) -> Self {
        Self {
            codec,
            store,
            prefix,
            raw_topic,
            max_in_flight: config.max_in_flight.max(1),
            segment_offsets: config.segment_offsets.max(1),
            cache: SegmentCache {
                max: config.cache_segments,
                tick: 0,
                entries: HashMap::new(),
            },
            recent: RecentIds::new(WindowLimits {
                max_ids: config.dedup_window_events,
                max_age_micros: i64::try_from(config.dedup_window_secs)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(1_000_000),
            }),
            next_offsets: HashMap::new(),
            metrics,
        }
    }

    /// What a record becomes: a line of a segment or an invoice document.
    async fn decode(&self, record: &Record) -> Result<Decoded, ArchiverError> {
        let payload = record
            .payload
            .as_deref()
            .ok_or_else(|| ArchiverError::Poison("record without a payload".into()))?;
        let envelope = self.codec.decode(payload).await?;
        match envelope.body {
            Body::Raw(raw) => {
                // The key names a partition and offsets of the raw topic: from anywhere else
                // they would collide with real ones.
                if record.topic != self.raw_topic {
                    return Err(ArchiverError::Poison(format!(
                        "raw event on {}; only {} is archived",
                        record.topic, self.raw_topic
                    )));
                }
                let position = Position {
                    partition: record.partition,
                    offset: record.offset,
                    segment_offsets: self.segment_offsets,
                };
                let key = segment_key(
                    &envelope.tenant_id,
                    &raw.kind,
                    envelope.event_time,
                    position,
                )
                .map_err(ArchiverError::Poison)?;
                // The payload moves into the line: no extra copy of the event's bytes.
                let (line, offset) = Line::new(
                    record.offset,
                    &envelope.event_id,
                    envelope.event_time,
                    envelope.ingest_time,
                    raw.payload,
                )
                .map_err(ArchiverError::Poison)?;
                Ok(Decoded::Raw(RawEvent {
                    key: SegmentKey {
                        partition: record.partition,
                        start: position.segment_start(),
                        path: object_path(&self.prefix, &key),
                    },
                    offset,
                    line,
                }))
            }
            Body::Invoice(invoice) => {
                let key = invoice_key(&envelope.tenant_id, &invoice);
                let document = serde_json::to_vec(&InvoiceDocument {
                    tenant_id: &envelope.tenant_id,
                    invoice: &invoice,
                })
                .map_err(|e| ArchiverError::Poison(format!("invoice as JSON: {e}")))?;
                Ok(Decoded::Invoice(
                    object_path(&self.prefix, &key),
                    Bytes::from(document),
                ))
            }
            other => Err(ArchiverError::Poison(format!(
                "{} is neither a raw event nor an invoice",
                other.schema_name()
            ))),
        }
    }

    /// Offsets (min, max) of each raw-topic partition in the batch.
    fn spans(&self, batch: &[Record]) -> HashMap<i32, (i64, i64)> {
        let mut spans: HashMap<i32, (i64, i64)> = HashMap::new();
        for record in batch.iter().filter(|r| r.topic == self.raw_topic) {
            let span = spans
                .entry(record.partition)
                .or_insert((record.offset, record.offset));
            span.0 = span.0.min(record.offset);
            span.1 = span.1.max(record.offset);
        }
        spans
    }

    /// The current content of segments not in the cache. A missing object is an empty segment;
    /// an unreadable one stops the batch, as overwriting it would lose what it holds.
    async fn load(
        &self,
        keys: Vec<SegmentKey>,
    ) -> Result<Vec<(SegmentKey, Segment)>, ArchiverError> {
        let store = &self.store;
        stream::iter(keys)
            .map(|key| async move {
                let bytes = match store.get(&key.path).await {
                    Ok(found) => found.bytes().await,
                    Err(object_store::Error::NotFound { .. }) => {
                        return Ok((key, Segment::default()));
                    }
                    Err(e) => Err(e),
                }
                .map_err(|e| {
                    ArchiverError::Retryable(format!("object store: {}: {e}", key.path))
                })?;
                let segment = Segment::parse(&bytes).map_err(|e| {
                    ArchiverError::Retryable(format!(
                        "segment {} is not readable ({e}); it is left as it is",
                        key.path
                    ))
                })?;
                Ok((key, segment))
            })
            .buffer_unordered(self.max_in_flight)
            .try_collect()
            .await
    }

    /// PUTs every object, bounded; `Err` names the first that failed.
    async fn put_all(&self, objects: Vec<(Path, Bytes)>) -> Result<(), String> {
        let store = &self.store;
        let results: Vec<Result<(), String>> = stream::iter(objects)
            .map(|(path, bytes)| async move {
                store
                    .put(&path, bytes.into())
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("{path}: {e}"))
            })
            .buffer_unordered(self.max_in_flight)
            .collect()
            .await;
        let written = results.iter().filter(|r| r.is_ok()).count();
        self.metrics.objects_written.increment(written as u64);
        results.into_iter().collect()
    }
}

impl Stage for Archiver {
    async fn process(&mut self, batch: &[Record]) -> Result<Vec<Outcome>, StageError> {
        let mut outcomes = Vec::with_capacity(batch.len());
        // Keyed by path: an invoice delivered twice in one batch is written once.
        let mut invoices: HashMap<Path, Bytes> = HashMap::new();
        let mut events = Vec::with_capacity(batch.len());
        for record in batch {
            match self.decode(record).await {
                Ok(Decoded::Raw(event)) => {
                    events.push(event);
                    outcomes.push(Outcome::Done);
                }
                Ok(Decoded::Invoice(path, bytes)) => {
                    let _ = invoices.insert(path, bytes);
                    outcomes.push(Outcome::Done);
                }
                Err(ArchiverError::Poison(reason)) => outcomes.push(Outcome::Poison(reason)),
                Err(ArchiverError::Retryable(reason)) => return Err(StageError::Retryable(reason)),
                Err(ArchiverError::Fatal(reason)) => return Err(StageError::Fatal(reason)),
            }
        }

        // A partition that does not continue where this instance left it was (or may have been)
        // archived by another instance meanwhile: its cached segments may be stale.
        let spans = self.spans(batch);
        for (partition, (first, _)) in &spans {
            if self
                .next_offsets
                .get(partition)
                .is_some_and(|next| next != first)
            {
                self.cache.drop_partition(*partition, None);
            }
        }

        let mut working: HashMap<SegmentKey, Segment> = HashMap::new();
        let mut missing = Vec::new();
        for event in &events {
            if working.contains_key(&event.key) || missing.contains(&event.key) {
                continue;
            }
            match self.cache.take(&event.key) {
                Some(segment) => {
                    let _ = working.insert(event.key.clone(), segment);
                }
                None => missing.push(event.key.clone()),
            }
        }
        let loaded = match self.load(missing).await {
            Ok(loaded) => loaded,
            Err(ArchiverError::Retryable(reason)) => return Err(StageError::Retryable(reason)),
            Err(other) => return Err(StageError::Fatal(other.to_string())),
        };
        for (key, segment) in loaded {
            // Read back from the store: these ids are archived, whatever happened before a
            // restart, so a retry of one of them is recognised.
            for (offset, line) in segment.lines() {
                self.recent
                    .remember(key.partition, &line.event_id, offset, line.ingest_time);
            }
            let _ = working.insert(key, segment);
        }

        let (mut archived, mut duplicates) = (0_u64, 0_u64);
        let mut changed: HashSet<SegmentKey> = HashSet::new();
        for event in events {
            let (partition, ingest_time) = (event.key.partition, event.line.ingest_time);
            if self
                .recent
                .archived_elsewhere(partition, &event.line.event_id, event.offset)
            {
                duplicates += 1;
                continue;
            }
            let id = event.line.event_id.clone();
            let Some(segment) = working.get_mut(&event.key) else {
                return Err(StageError::Fatal(format!(
                    "segment {} not loaded",
                    event.key.path
                )));
            };
            match segment.merge(event.offset, event.line) {
                Merged::Added => {
                    archived += 1;
                    self.recent
                        .remember(partition, &id, event.offset, ingest_time);
                    let _ = changed.insert(event.key);
                }
                Merged::Duplicate => duplicates += 1,
            }
        }

        // An unchanged segment is already in the store as it is: no PUT.
        let objects: Vec<(Path, Bytes)> = working
            .iter()
            .filter(|(key, _)| changed.contains(*key))
            .map(|(key, segment)| (key.path.clone(), segment.to_bytes()))
            .chain(invoices)
            .collect();
        // Any failed PUT retries the whole batch, and the segments it merged are not cached, so
        // the retry starts again from what the store holds: rewriting an object is harmless,
        // skipping one is loss.
        self.put_all(objects)
            .await
            .map_err(|reason| StageError::Retryable(format!("object store: {reason}")))?;

        for (key, segment) in working {
            self.cache.put(key, segment);
        }
        for (partition, (_, last)) in spans {
            let _ = self.next_offsets.insert(partition, last + 1);
            // Offsets only grow: earlier segments of the partition are complete.
            let current = last - last.rem_euclid(self.segment_offsets);
            self.cache.drop_partition(partition, Some(current));
        }
        self.metrics.events_archived.increment(archived);
        self.metrics.duplicates_skipped.increment(duplicates);
        Ok(outcomes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_unreachable_registry_is_retried() {
        assert!(matches!(
            ArchiverError::from(SchemaError::Unavailable("down".into())),
            ArchiverError::Retryable(_)
        ));
        assert!(matches!(
            ArchiverError::from(SchemaError::Decode("bad".into())),
            ArchiverError::Poison(_)
        ));
    }

    fn key(partition: i32, start: i64) -> SegmentKey {
        SegmentKey {
            partition,
            start,
            path: Path::from(format!("p{partition}-{start}")),
        }
    }

    #[test]
    fn the_cache_keeps_the_most_recently_used_segments_and_forgets_complete_ones() {
        let mut cache = SegmentCache {
            max: 2,
            tick: 0,
            entries: HashMap::new(),
        };
        cache.put(key(0, 0), Segment::default());
        cache.put(key(1, 0), Segment::default());
        let reused = cache.take(&key(0, 0)).expect("cached");
        cache.put(key(0, 0), reused);
        cache.put(key(2, 0), Segment::default());
        assert!(cache.take(&key(1, 0)).is_none(), "least recently used");
        assert!(cache.take(&key(0, 0)).is_some());

        let mut cache = SegmentCache {
            max: 10,
            tick: 0,
            entries: HashMap::new(),
        };
        for start in [0, 1000, 2000] {
            cache.put(key(0, start), Segment::default());
        }
        cache.put(key(1, 0), Segment::default());
        cache.drop_partition(0, Some(2000));
        assert!(cache.take(&key(0, 1000)).is_none());
        assert!(cache.take(&key(0, 2000)).is_some());
        assert!(
            cache.take(&key(1, 0)).is_some(),
            "other partitions untouched"
        );
        cache.put(key(0, 3000), Segment::default());
        cache.drop_partition(0, None);
        assert!(cache.entries.is_empty());
    }
}
