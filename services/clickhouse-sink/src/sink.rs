//! The stage: decode a batch, group its rows per table, skip what already landed, insert each
//! table's rows in one INSERT with a deduplication token, and only then report the batch done.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use clickhouse::RowWrite;
use ve_kafka::{Outcome, Record, Stage, StageError};
use ve_schema::Codec;

use crate::SinkError;
use crate::rows::{DeadLetterRow, Origin, Routed, Sourced, Table, route};

/// The highest source offset known to have landed, per table, for one topic-partition.
type Marks = [i64; Table::ALL.len()];
const NONE_LANDED: Marks = [-1; Table::ALL.len()];

/// Per topic, then partition: looked up by `&str` for every row, so no key is allocated there.
#[derive(Debug, Default)]
struct PerPartition<T>(HashMap<String, HashMap<i32, T>>);

impl<T: Copy> PerPartition<T> {
    fn get(&self, topic: &str, partition: i32) -> Option<T> {
        self.0.get(topic)?.get(&partition).copied()
    }

    /// Allocates the topic's key when missing: call it per topic-partition, not per row.
    fn slot(&mut self, topic: &str, partition: i32, initial: T) -> &mut T {
        self.0
            .entry(topic.to_owned())
            .or_default()
            .entry(partition)
            .or_insert(initial)
    }
}

/// The highest offset per topic-partition among `origins`.
fn highest<'a>(origins: impl IntoIterator<Item = Origin<'a>>) -> BTreeMap<(&'a str, i32), i64> {
    let mut highest = BTreeMap::new();
    for o in origins {
        let slot = highest.entry((o.topic, o.partition)).or_insert(o.offset);
        *slot = (*slot).max(o.offset);
    }
    highest
}

/// `{table}:{topic}:{partition}:{first}-{last}` for every topic-partition of the rows, in a
/// stable order: the same records give the same token, so a replayed INSERT is dropped.
pub(crate) fn dedup_token<'a>(
    table: &str,
    origins: impl IntoIterator<Item = Origin<'a>>,
) -> String {
    let mut ranges: BTreeMap<(&str, i32), (i64, i64)> = BTreeMap::new();
    for o in origins {
        let range = ranges
            .entry((o.topic, o.partition))
            .or_insert((o.offset, o.offset));
        range.0 = range.0.min(o.offset);
        range.1 = range.1.max(o.offset);
    }
    let mut token = String::new();
    for ((topic, partition), (first, last)) in ranges {
        if !token.is_empty() {
            token.push(',');
        }
        token.push_str(&format!("{table}:{topic}:{partition}:{first}-{last}"));
    }
    token
}

/// Rows of one batch, per table.
#[derive(Debug, Default)]
struct Tables<'a> {
    events: Vec<crate::rows::EventRow<'a>>,
    metrics: Vec<crate::rows::MetricRow<'a>>,
    spans: Vec<crate::rows::SpanRow<'a>>,
    runs: Vec<crate::rows::RunRow<'a>>,
    steps: Vec<crate::rows::StepRow<'a>>,
    decisions: Vec<crate::rows::DecisionRow<'a>>,
    alerts: Vec<crate::rows::AlertRow<'a>>,
    invoices: Vec<crate::rows::InvoiceRow<'a>>,
    dead_letters: Vec<DeadLetterRow<'a>>,
}

impl<'a> Tables<'a> {
    fn push(&mut self, routed: Routed<'a>) {
        match routed {
            Routed::Event(r) => self.events.push(r),
            Routed::Metric(r) => self.metrics.push(r),
            Routed::Span(r) => self.spans.push(r),
            Routed::Run(r) => self.runs.push(r),
            Routed::Step(r) => self.steps.push(r),
            Routed::Decision(r) => self.decisions.push(r),
            Routed::Alert(r) => self.alerts.push(r),
            Routed::Invoice(r) => self.invoices.push(r),
        }
    }
}

/// Lands records in ClickHouse; one per consumer loop.
#[derive(Debug)]
pub(crate) struct Sink {
    client: clickhouse::Client,
    codec: Codec,
    dead_letter_topics: HashSet<String>,
    /// Compacted: a tombstone there is a deleted key, not a broken record.
    alerts_topic: String,
    insert_timeout: Duration,
    /// What has landed, per (topic, partition); lower than the truth is safe (ReplacingMergeTree
    /// absorbs the re-insert), higher never happens (only confirmed inserts raise it).
    landed: PerPartition<Marks>,
    /// The offset after the last batch this instance finished, per (topic, partition). A batch
    /// that does not continue there is a replay or a partition that moved: reload `landed`.
    next_offset: PerPartition<i64>,
    rows_inserted: [metrics::Counter; Table::ALL.len()],
    flush_failures: metrics::Counter,
    parallelism: usize,
    archive_segment_offsets: i64,
}

/// Metric names (deploy/metrics.md).
pub const ROWS_INSERTED: &str = "clickhouse_sink_rows_inserted_total";
pub const FLUSH_FAILURES: &str = "clickhouse_sink_flush_failures_total";

impl Sink {
    pub(crate) fn new(
        client: clickhouse::Client,
        codec: Codec,
        dead_letter_topics: &[String],
        alerts_topic: &str,
        insert_timeout: Duration,
        archive_segment_offsets: i64,
    ) -> Self {
        let rows_inserted =
            Table::ALL.map(|t| metrics::counter!(ROWS_INSERTED, "table" => t.name()));
        // Registered at zero so the series exist before the first insert (the alerts use rate()).
        for counter in &rows_inserted {
            counter.increment(0);
        }
        let flush_failures = metrics::counter!(FLUSH_FAILURES);
        flush_failures.increment(0);
        Self {
            client,
            codec,
            dead_letter_topics: dead_letter_topics.iter().cloned().collect(),
            alerts_topic: alerts_topic.to_owned(),
            insert_timeout,
            landed: PerPartition::default(),
            next_offset: PerPartition::default(),
            rows_inserted,
            flush_failures,
            parallelism: std::thread::available_parallelism().map_or(1, usize::from),
            archive_segment_offsets,
        }
    }

    /// Reloads the landed watermarks of the topics whose partitions in `batch` do not continue
    /// where this instance left off.
    async fn refresh_landed(&mut self, batch: &[Record]) -> Result<(), SinkError> {
        let mut first: HashMap<(&str, i32), i64> = HashMap::new();
        for r in batch {
            let slot = first.entry((&r.topic, r.partition)).or_insert(r.offset);
            *slot = (*slot).min(r.offset);
        }
        let stale: HashSet<&str> = first
            .iter()
            .filter(|((topic, partition), offset)| {
                self.next_offset.get(topic, *partition) != Some(**offset)
            })
            .map(|((topic, _), _)| *topic)
            .collect();
        for topic in stale {
            let query = self
                .client
                .query(
                    "SELECT table_name, topic_partition, max(max_offset) FROM sink_offsets \
                     WHERE topic = ? GROUP BY table_name, topic_partition",
                )
                .bind(topic)
                .fetch_all::<(String, i32, i64)>();
            let marks = tokio::time::timeout(self.insert_timeout, query)
                .await
                .map_err(|_| SinkError::clickhouse("reading sink_offsets", "timed out"))?
                .map_err(|e| SinkError::clickhouse("reading sink_offsets", e))?;
            for (table, partition, offset) in marks {
                let Some(table) = Table::from_name(&table) else {
                    continue;
                };
                let slot = &mut self.landed.slot(topic, partition, NONE_LANDED)[table as usize];
                *slot = (*slot).max(offset);
            }
            tracing::debug!(topic, "landed watermarks reloaded");
        }
        Ok(())
    }

    fn landed(&self, table: Table, origin: Origin<'_>) -> i64 {
        self.landed
            .get(origin.topic, origin.partition)
            .map_or(-1, |marks| marks[table as usize])
    }

    /// Drops the rows at or below the table's watermark: they landed before (a replay).
    fn unlanded<R: Sourced>(&self, table: Table, rows: Vec<R>) -> Vec<R> {
        if rows.is_empty() {
            return rows;
        }
        let before = rows.len();
        let kept: Vec<R> = rows
            .into_iter()
            .filter(|r| r.origin().offset > self.landed(table, r.origin()))
            .collect();
        if kept.len() < before {
            tracing::info!(
                table = table.name(),
                skipped = before - kept.len(),
                "rows already landed, not inserted again"
            );
        }
        kept
    }

    fn mark_landed<R: Sourced>(&mut self, table: Table, rows: &[R]) {
        for ((topic, partition), offset) in highest(rows.iter().map(Sourced::origin)) {
            let slot = &mut self.landed.slot(topic, partition, NONE_LANDED)[table as usize];
            *slot = (*slot).max(offset);
        }
    }

    /// Decodes and routes every record; `Err` only for a retryable condition (registry down).
    async fn decode<'a>(
        &self,
        batch: &'a [Record],
        outcomes: &mut [Outcome],
    ) -> Result<Tables<'a>, SinkError> {
        let decoded = self.decode_envelopes(batch).await?;
        let mut tables = Tables::default();
        for ((record, outcome), envelope) in batch.iter().zip(outcomes.iter_mut()).zip(decoded) {
            if self.dead_letter_topics.contains(&record.topic) {
                let envelope = self.best_effort_envelope(record).await;
                tables
                    .dead_letters
                    .push(DeadLetterRow::new(record, envelope.as_ref()));
                continue;
            }
            let envelope = match envelope {
                None if record.topic == self.alerts_topic => continue,
                None => {
                    *outcome = Outcome::Poison("record has no payload (tombstone)".into());
                    continue;
                }
                Some(Ok(envelope)) => envelope,
                Some(Err(e)) if e.is_retryable() => {
                    return Err(SinkError::Registry(e.to_string()));
                }
                Some(Err(e)) => {
                    *outcome = Outcome::Poison(e.to_string());
                    continue;
                }
            };
            match route(envelope, Origin::of(record), self.archive_segment_offsets) {
                Ok(routed) => tables.push(routed),
                Err(reason) => *outcome = Outcome::Poison(reason),
            }
        }
        Ok(tables)
    }

    /// The envelope of every record that carries one to land (`None`: a dead letter or a
    /// tombstone). Avro decoding is the sink's main CPU cost, so a large batch is decoded in
    /// chunks on as many tasks as there are cores.
    async fn decode_envelopes(&self, batch: &[Record]) -> Result<Vec<Decoded>, SinkError> {
        let payload = |r: &Record| {
            r.payload
                .clone()
                .filter(|_| !self.dead_letter_topics.contains(&r.topic))
        };
        let chunk = batch.len().div_ceil(self.parallelism).max(MIN_DECODE_CHUNK);
        if batch.len() <= chunk {
            let mut out = Vec::with_capacity(batch.len());
            for record in batch {
                out.push(decode_one(&self.codec, payload(record)).await);
            }
            return Ok(out);
        }
        let tasks: Vec<_> = batch
            .chunks(chunk)
            .map(|records| {
                let payloads: Vec<Option<Vec<u8>>> = records.iter().map(payload).collect();
                let codec = self.codec.clone();
                tokio::spawn(async move {
                    let mut out = Vec::with_capacity(payloads.len());
                    for p in payloads {
                        out.push(decode_one(&codec, p).await);
                    }
                    out
                })
            })
            .collect();
        let mut out = Vec::with_capacity(batch.len());
        for task in futures::future::join_all(tasks).await {
            out.extend(task.map_err(|e| SinkError::Decoder(e.to_string()))?);
        }
        Ok(out)
    }

    /// The tenant and event id of a dead letter whose payload is still an envelope; what does
    /// not decode is stored without them.
    async fn best_effort_envelope(&self, record: &Record) -> Option<ve_schema::Envelope> {
        let payload = record.payload.as_deref()?;
        let _ = Codec::schema_id(payload)?;
        self.codec.decode(payload).await.ok()
    }
}

type Decoded = Option<Result<ve_schema::Envelope, ve_schema::SchemaError>>;

/// Below this many records per task, spawning costs more than it saves.
const MIN_DECODE_CHUNK: usize = 128;

async fn decode_one(codec: &Codec, payload: Option<Vec<u8>>) -> Decoded {
    Some(codec.decode(&payload?).await)
}

/// One INSERT of `rows` into `table`, deduplicated by `token`.
async fn insert<T: RowWrite>(
    client: &clickhouse::Client,
    table: Table,
    rows: &[T::Value<'_>],
    token: String,
    timeout: Duration,
) -> Result<(), SinkError> {
    let error = |e| SinkError::clickhouse(&format!("inserting into {}", table.name()), e);
    let mut insert = client
        .insert::<T>(table.name())
        .await
        .map_err(error)?
        .with_setting("insert_deduplication_token", token)
        .with_timeouts(Some(timeout), Some(timeout));
    for row in rows {
        insert.write(row).await.map_err(error)?;
    }
    insert.end().await.map_err(error)
}

type InsertFuture<'f> =
    Pin<Box<dyn Future<Output = (Table, usize, Result<(), SinkError>)> + Send + 'f>>;

fn planned<'f, T: RowWrite>(
    client: &'f clickhouse::Client,
    table: Table,
    rows: &'f [T::Value<'f>],
    timeout: Duration,
) -> Option<InsertFuture<'f>>
where
    for<'x> T::Value<'x>: Sourced + Sync,
{
    if rows.is_empty() {
        return None;
    }
    let token = dedup_token(table.name(), rows.iter().map(Sourced::origin));
    Some(Box::pin(async move {
        let result = insert::<T>(client, table, rows, token, timeout).await;
        (table, rows.len(), result)
    }))
}

impl Stage for Sink {
    async fn process(&mut self, batch: &[Record]) -> Result<Vec<Outcome>, StageError> {
        self.refresh_landed(batch).await.map_err(|e| {
            self.flush_failures.increment(1);
            e.into_stage()
        })?;
        let mut outcomes = vec![Outcome::Done; batch.len()];
        let tables = self
            .decode(batch, &mut outcomes)
            .await
            .map_err(SinkError::into_stage)?;
        let tables = Tables {
            events: self.unlanded(Table::Events, tables.events),
            metrics: self.unlanded(Table::MetricSamples, tables.metrics),
            spans: self.unlanded(Table::Spans, tables.spans),
            runs: self.unlanded(Table::Runs, tables.runs),
            steps: self.unlanded(Table::Steps, tables.steps),
            decisions: self.unlanded(Table::DecisionEvents, tables.decisions),
            alerts: self.unlanded(Table::Alerts, tables.alerts),
            invoices: self.unlanded(Table::Invoices, tables.invoices),
            dead_letters: self.unlanded(Table::DeadLetters, tables.dead_letters),
        };

        // Tables are independent: insert them concurrently, one INSERT each.
        let (client, timeout) = (&self.client, self.insert_timeout);
        let inserts: Vec<InsertFuture<'_>> = [
            planned::<crate::rows::EventRow<'_>>(client, Table::Events, &tables.events, timeout),
            planned::<crate::rows::MetricRow<'_>>(
                client,
                Table::MetricSamples,
                &tables.metrics,
                timeout,
            ),
            planned::<crate::rows::SpanRow<'_>>(client, Table::Spans, &tables.spans, timeout),
            planned::<crate::rows::RunRow<'_>>(client, Table::Runs, &tables.runs, timeout),
            planned::<crate::rows::StepRow<'_>>(client, Table::Steps, &tables.steps, timeout),
            planned::<crate::rows::DecisionRow<'_>>(
                client,
                Table::DecisionEvents,
                &tables.decisions,
                timeout,
            ),
            planned::<crate::rows::AlertRow<'_>>(client, Table::Alerts, &tables.alerts, timeout),
            planned::<crate::rows::InvoiceRow<'_>>(
                client,
                Table::Invoices,
                &tables.invoices,
                timeout,
            ),
            planned::<DeadLetterRow<'_>>(client, Table::DeadLetters, &tables.dead_letters, timeout),
        ]
        .into_iter()
        .flatten()
        .collect();
        let results = futures::future::join_all(inserts).await;

        let mut failure = None;
        for (table, count, result) in results {
            match result {
                Ok(()) => {
                    self.rows_inserted[table as usize].increment(count as u64);
                    match table {
                        Table::Events => self.mark_landed(table, &tables.events),
                        Table::MetricSamples => self.mark_landed(table, &tables.metrics),
                        Table::Spans => self.mark_landed(table, &tables.spans),
                        Table::Runs => self.mark_landed(table, &tables.runs),
                        Table::Steps => self.mark_landed(table, &tables.steps),
                        Table::DecisionEvents => self.mark_landed(table, &tables.decisions),
                        Table::Alerts => self.mark_landed(table, &tables.alerts),
                        Table::Invoices => self.mark_landed(table, &tables.invoices),
                        Table::DeadLetters => self.mark_landed(table, &tables.dead_letters),
                    }
                }
                Err(e) => {
                    self.flush_failures.increment(1);
                    tracing::warn!(table = table.name(), rows = count, error = %e, "insert failed");
                    failure = Some(e);
                }
            }
        }
        if let Some(e) = failure {
            // The tables that did land are marked: the retry skips them.
            return Err(e.into_stage());
        }
        for ((topic, partition), offset) in highest(batch.iter().map(Origin::of)) {
            let next = self.next_offset.slot(topic, partition, 0);
            *next = (*next).max(offset + 1);
        }
        Ok(outcomes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(topic: &str, partition: i32, offset: i64) -> Origin<'_> {
        Origin {
            topic,
            partition,
            offset,
        }
    }

    #[test]
    fn token_names_table_topic_partition_and_offset_range() {
        let token = dedup_token("events", [at("t", 0, 7), at("t", 0, 5), at("t", 0, 9)]);
        assert_eq!(token, "events:t:0:5-9");
    }

    #[test]
    fn token_is_independent_of_record_order_across_partitions() {
        let a = dedup_token("steps", [at("t", 1, 3), at("t", 0, 5), at("t", 1, 4)]);
        let b = dedup_token("steps", [at("t", 0, 5), at("t", 1, 4), at("t", 1, 3)]);
        assert_eq!(a, b);
        assert_eq!(a, "steps:t:0:5-5,steps:t:1:3-4");
    }

    fn unreachable_sink() -> Sink {
        let registry = ve_schema::RegistryConfig {
            url: "http://127.0.0.1:1".into(),
            username: String::new(),
            password: ve_config::Secret::default(),
            timeout_ms: 500,
        };
        Sink::new(
            clickhouse::Client::default().with_url("http://127.0.0.1:1"),
            Codec::new(&registry).unwrap(),
            &["x.dlq".to_owned()],
            "alerts",
            Duration::from_secs(1),
            1000,
        )
    }

    fn record(topic: &str, offset: i64) -> Record {
        Record {
            topic: topic.into(),
            partition: 0,
            offset,
            key: None,
            payload: Some(b"\x00\x00\x00\x00\x01".to_vec()),
            headers: Vec::new(),
            timestamp_ms: None,
        }
    }

    #[tokio::test]
    async fn an_unreachable_clickhouse_retries_the_batch() {
        let mut sink = unreachable_sink();
        let err = sink.process(&[record("t", 0)]).await.unwrap_err();
        assert!(matches!(err, StageError::Retryable(_)), "{err}");
        assert!(
            sink.next_offset.0.is_empty(),
            "a failed batch is not marked done"
        );
    }

    #[test]
    fn rows_at_or_below_the_watermark_are_skipped() {
        let mut sink = unreachable_sink();
        let batch = [record("x.dlq", 4), record("x.dlq", 5), record("x.dlq", 6)];
        let rows: Vec<DeadLetterRow<'_>> =
            batch.iter().map(|r| DeadLetterRow::new(r, None)).collect();
        sink.mark_landed(Table::DeadLetters, &rows[..2]);
        let left = sink.unlanded(Table::DeadLetters, rows);
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].origin().offset, 6);
        // Watermarks are per table: the same offsets are still to land elsewhere.
        assert_eq!(sink.landed(Table::Events, Origin::of(&batch[0])), -1);
    }

    #[test]
    fn a_different_batch_boundary_is_a_different_token() {
        let first = dedup_token("events", [at("t", 0, 0), at("t", 0, 1)]);
        let replay = dedup_token("events", [at("t", 0, 0), at("t", 0, 1), at("t", 0, 2)]);
        assert_ne!(first, replay);
    }
}
