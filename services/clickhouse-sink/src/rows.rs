//! One row type per table, built by moving the decoded envelope's fields (no copies of the
//! payload strings). Row fields are in the order of the table's columns; times are UTC
//! microseconds (`DateTime64(6)`) or milliseconds (`DateTime64(3)`).

use base64::Engine as _;
use clickhouse::Row;
use serde::Serialize;
use ve_kafka::{DLQ_HEADERS, Record};
use ve_schema::{Body, Envelope, Map};

/// The tables the sink writes, in the order of [`crate::schema::TABLES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Table {
    Events,
    MetricSamples,
    Spans,
    Runs,
    Steps,
    DecisionEvents,
    Alerts,
    Invoices,
    DeadLetters,
}

impl Table {
    pub(crate) const ALL: [Table; 9] = [
        Table::Events,
        Table::MetricSamples,
        Table::Spans,
        Table::Runs,
        Table::Steps,
        Table::DecisionEvents,
        Table::Alerts,
        Table::Invoices,
        Table::DeadLetters,
    ];

    pub(crate) fn name(self) -> &'static str {
        crate::schema::TABLES[self as usize]
    }

    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// Retention of a row when the enricher did not tag one: the free tier's 24 hours.
pub(crate) const DEFAULT_RETENTION_DAYS: u16 = 1;

/// `tags.retention_days` as set by the enricher from the tenant record.
pub(crate) fn retention_days(tags: &Map) -> u16 {
    tags.get("retention_days")
        .and_then(|v| v.trim().parse::<u16>().ok())
        .filter(|d| *d > 0)
        .unwrap_or(DEFAULT_RETENTION_DAYS)
}

/// The archive object holding an event's raw payload, as the s3-archiver writes it:
/// `raw/{tenant}/{kind}/{yyyy}/{mm}/{dd}/p{partition}-{segment_start:020}.jsonl` (date =
/// event_time UTC; partition and offset of the raw record, stamped by the normalizer as
/// attributes; `segment_start` = offset rounded down to `segment_offsets`). The payload is the
/// line with the event's id. Empty when the record does not say where its raw record was.
pub(crate) fn archive_key(
    tenant: &str,
    kind: &str,
    event_time_micros: i64,
    attributes: &Map,
    segment_offsets: i64,
) -> String {
    let position = |name: &str| attributes.get(name).and_then(|v| v.parse::<i64>().ok());
    let (Some(partition), Some(offset)) = (position("raw_partition"), position("raw_offset"))
    else {
        return String::new();
    };
    let start = offset - offset.rem_euclid(segment_offsets.max(1));
    let date = chrono::DateTime::from_timestamp_micros(event_time_micros)
        .unwrap_or_default()
        .format("%Y/%m/%d");
    format!("raw/{tenant}/{kind}/{date}/p{partition}-{start:020}.jsonl")
}

/// Where a row came from: the watermark and the deduplication token are computed from these.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Origin<'a> {
    pub(crate) topic: &'a str,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
}

impl<'a> Origin<'a> {
    pub(crate) fn of(record: &'a Record) -> Self {
        Self {
            topic: &record.topic,
            partition: record.partition,
            offset: record.offset,
        }
    }
}

/// The rows of a row type that say where they came from.
pub(crate) trait Sourced {
    fn origin(&self) -> Origin<'_>;
}

macro_rules! event_row {
    ($(#[$meta:meta])* $name:ident { $($field:ident : $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Row, Serialize)]
        pub(crate) struct $name<'a> {
            event_id: String,
            tenant_id: String,
            event_time: i64,
            ingest_time: i64,
            source_type: String,
            source_id: String,
            schema_version: i32,
            tags: Map,
            attributes: Map,
            retention_days: u16,
            src_topic: &'a str,
            src_partition: i32,
            src_offset: i64,
            $($field: $ty,)*
        }

        impl<'a> $name<'a> {
            #[allow(clippy::too_many_arguments)]
            fn build(common: Common<'a>, $($field: $ty,)*) -> Self {
                let Common { event_id, tenant_id, event_time, ingest_time, source_type, source_id,
                    schema_version, tags, attributes, retention_days, origin } = common;
                Self {
                    event_id, tenant_id, event_time, ingest_time, source_type, source_id,
                    schema_version, tags, attributes, retention_days,
                    src_topic: origin.topic,
                    src_partition: origin.partition,
                    src_offset: origin.offset,
                    $($field,)*
                }
            }
        }

        impl Sourced for $name<'_> {
            fn origin(&self) -> Origin<'_> {
                Origin { topic: self.src_topic, partition: self.src_partition, offset: self.src_offset }
            }
        }
    };
}

/// The envelope columns every event table starts with.
#[derive(Debug)]
struct Common<'a> {
    event_id: String,
    tenant_id: String,
    event_time: i64,
    ingest_time: i64,
    source_type: String,
    source_id: String,
    schema_version: i32,
    tags: Map,
    attributes: Map,
    retention_days: u16,
    origin: Origin<'a>,
}

event_row!(EventRow {
    kind: &'static str,
    event_type: String,
    event_name: String,
    app_id: String,
    session_id: String,
    user_id: String,
    url: String,
    path: String,
    title: String,
    referrer: String,
    selector: String,
    scroll_depth: Option<f64>,
    web_metrics: std::collections::BTreeMap<String, f64>,
    user_agent: String,
    browser: String,
    os: String,
    device: String,
    properties: String,
});

event_row!(MetricRow {
    host: String,
    metric: String,
    value: f64,
    unit: String,
});

event_row!(SpanRow {
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    kind: String,
    service_name: String,
    start_time: i64,
    end_time: i64,
    duration_us: i64,
    status_code: String,
    status_message: String,
    span_attributes: Map,
    resource: Map,
});

event_row!(RunRow {
    run_id: String,
    pipeline_id: String,
    status: String,
    started_at: i64,
    finished_at: Option<i64>,
    metadata: String,
});

event_row!(StepRow {
    step_id: String,
    run_id: String,
    pipeline_id: String,
    name: String,
    position: i32,
    input_count: i64,
    output_count: i64,
    kept_count: i64,
    eliminated_count: i64,
    scored_count: i64,
    elimination_ratio: f64,
});

event_row!(DecisionRow {
    decision_id: String,
    step_id: String,
    run_id: String,
    pipeline_id: String,
    item_id: String,
    outcome: String,
    score: Option<f64>,
    reason: String,
    payload_bytes: u32,
    s3_key: String,
});

event_row!(AlertRow {
    rule_id: String,
    series: String,
    state: String,
    value: f64,
    threshold: f64,
    started_at: i64,
    resolved_at: Option<i64>,
    message: String,
    labels: Map,
});

event_row!(InvoiceRow {
    invoice_id: String,
    period_start: i64,
    period_end: i64,
    plan: String,
    currency: String,
    lines: String,
    subtotal_micros: i64,
    total_micros: i64,
    issued_at: i64,
});

/// A dead letter as it sits in a `<topic>.dlq` topic.
#[derive(Debug, Row, Serialize)]
pub(crate) struct DeadLetterRow<'a> {
    src_topic: &'a str,
    src_partition: i32,
    src_offset: i64,
    key: String,
    payload: String,
    payload_bytes: u32,
    reason: String,
    stage: String,
    source_topic: String,
    source_partition: i32,
    source_offset: i64,
    dead_at: i64,
    tenant_id: String,
    event_id: String,
    headers: Map,
}

impl Sourced for DeadLetterRow<'_> {
    fn origin(&self) -> Origin<'_> {
        Origin {
            topic: self.src_topic,
            partition: self.src_partition,
            offset: self.src_offset,
        }
    }
}

impl<'a> DeadLetterRow<'a> {
    /// From the dead letter's `ve.dlq.*` headers; a record without them (written by hand) is
    /// its own origin, so it still has a stable identity.
    pub(crate) fn new(record: &'a Record, envelope: Option<&Envelope>) -> Self {
        let header = |i: usize| record.header_str(DLQ_HEADERS[i]);
        let number = |i: usize| header(i).and_then(|v| v.parse::<i64>().ok());
        let payload = record.payload.as_deref().unwrap_or_default();
        let (source_topic, source_partition, source_offset) =
            match (header(1), number(2), number(3)) {
                (Some(topic), Some(partition), Some(offset)) => (
                    topic.to_owned(),
                    i32::try_from(partition).unwrap_or(-1),
                    offset,
                ),
                _ => (record.topic.clone(), record.partition, record.offset),
            };
        let headers = record
            .headers
            .iter()
            .filter(|(k, _)| !k.starts_with("ve.dlq."))
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
            .collect();
        Self {
            src_topic: &record.topic,
            src_partition: record.partition,
            src_offset: record.offset,
            key: record
                .key
                .as_deref()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default(),
            payload: base64::engine::general_purpose::STANDARD.encode(payload),
            payload_bytes: u32::try_from(payload.len()).unwrap_or(u32::MAX),
            reason: header(0).unwrap_or_default().to_owned(),
            stage: header(4).unwrap_or_default().to_owned(),
            source_topic,
            source_partition,
            source_offset,
            // Deterministic (a header, else the broker's timestamp): it is the version and the
            // partition key, so a replayed dead letter must get the same value.
            dead_at: number(5).or(record.timestamp_ms).unwrap_or_default(),
            tenant_id: envelope.map(|e| e.tenant_id.clone()).unwrap_or_default(),
            event_id: envelope.map(|e| e.event_id.clone()).unwrap_or_default(),
            headers,
        }
    }
}

/// A decoded record, ready for its table.
#[derive(Debug)]
pub(crate) enum Routed<'a> {
    Event(EventRow<'a>),
    Metric(MetricRow<'a>),
    Span(SpanRow<'a>),
    Run(RunRow<'a>),
    Step(StepRow<'a>),
    Decision(DecisionRow<'a>),
    Alert(AlertRow<'a>),
    Invoice(InvoiceRow<'a>),
}

fn tag(tags: &Map, key: &str) -> String {
    tags.get(key).cloned().unwrap_or_default()
}

/// The row an envelope becomes, or why it cannot become one (poison).
pub(crate) fn route(
    envelope: Envelope,
    origin: Origin<'_>,
    segment_offsets: i64,
) -> Result<Routed<'_>, String> {
    let Envelope {
        event_id,
        event_time,
        ingest_time,
        tenant_id,
        source,
        schema_name: _,
        schema_version,
        attributes,
        tags,
        body,
    } = envelope;
    let common = Common {
        retention_days: retention_days(&tags),
        event_id,
        tenant_id,
        event_time,
        ingest_time,
        source_type: source.kind,
        source_id: source.id,
        schema_version,
        tags,
        attributes,
        origin,
    };
    Ok(match body {
        Body::Web(web) => {
            let (browser, os, device) = (
                tag(&common.tags, "browser"),
                tag(&common.tags, "os"),
                tag(&common.tags, "device"),
            );
            Routed::Event(EventRow::build(
                common,
                "web",
                web.event_type,
                web.name.unwrap_or_default(),
                String::new(),
                web.session_id,
                web.user_id.unwrap_or_default(),
                web.url.unwrap_or_default(),
                web.path.unwrap_or_default(),
                web.title.unwrap_or_default(),
                web.referrer.unwrap_or_default(),
                web.selector.unwrap_or_default(),
                web.scroll_depth,
                web.metrics,
                web.user_agent.unwrap_or_default(),
                browser,
                os,
                device,
                web.properties,
            ))
        }
        Body::App(app) => {
            let (browser, os, device) = (
                tag(&common.tags, "browser"),
                tag(&common.tags, "os"),
                tag(&common.tags, "device"),
            );
            Routed::Event(EventRow::build(
                common,
                "app",
                app.event_name.clone(),
                app.event_name,
                app.app_id,
                String::new(),
                app.user_id,
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                None,
                Default::default(),
                String::new(),
                browser,
                os,
                device,
                app.properties,
            ))
        }
        Body::Metric(m) => {
            Routed::Metric(MetricRow::build(common, m.host, m.metric, m.value, m.unit))
        }
        Body::Span(s) => Routed::Span(SpanRow::build(
            common,
            s.trace_id,
            s.span_id,
            s.parent_span_id.unwrap_or_default(),
            s.name,
            s.kind,
            s.service_name,
            s.start_time,
            s.end_time,
            (s.end_time - s.start_time).max(0),
            s.status_code,
            s.status_message,
            s.attributes,
            s.resource,
        )),
        Body::Run(r) => {
            // started_at keys the run's partition and TTL: an unknown start (0) would put it in
            // 1970 and expire it at the next merge.
            let started_at = if r.started_at > 0 {
                r.started_at
            } else {
                common.event_time
            };
            Routed::Run(RunRow::build(
                common,
                r.run_id,
                r.pipeline_id,
                r.status,
                started_at,
                r.finished_at,
                r.metadata,
            ))
        }
        Body::Step(s) => {
            let ratio = s.elimination_ratio();
            Routed::Step(StepRow::build(
                common,
                s.step_id,
                s.run_id,
                s.pipeline_id,
                s.name,
                s.position,
                s.input_count,
                s.output_count,
                s.kept_count,
                s.eliminated_count,
                s.scored_count,
                ratio,
            ))
        }
        Body::Decision(d) => {
            let s3_key = archive_key(
                &common.tenant_id,
                "decision",
                common.event_time,
                &common.attributes,
                segment_offsets,
            );
            Routed::Decision(DecisionRow::build(
                common,
                d.decision_id,
                d.step_id,
                d.run_id,
                d.pipeline_id,
                d.item_id,
                d.outcome,
                d.score,
                d.reason,
                u32::try_from(d.payload.len()).unwrap_or(u32::MAX),
                s3_key,
            ))
        }
        Body::Alert(a) => Routed::Alert(AlertRow::build(
            common,
            a.rule_id,
            a.series,
            a.state,
            a.value,
            a.threshold,
            a.started_at,
            a.resolved_at,
            a.message,
            a.labels,
        )),
        Body::Invoice(i) => {
            let lines =
                serde_json::to_string(&i.lines).map_err(|e| format!("invoice lines: {e}"))?;
            Routed::Invoice(InvoiceRow::build(
                common,
                i.invoice_id,
                i.period_start,
                i.period_end,
                i.plan,
                i.currency,
                lines,
                i.subtotal_micros,
                i.total_micros,
                i.issued_at,
            ))
        }
        other @ (Body::Raw(_) | Body::Tenant(_) | Body::Cmdb(_) | Body::Rule(_)) => {
            return Err(format!(
                "{} has no table in the clickhouse sink",
                other.schema_name()
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_comes_from_the_enriched_tag_with_the_free_tier_as_default() {
        let mut tags = Map::new();
        assert_eq!(retention_days(&tags), 1);
        let _ = tags.insert("retention_days".into(), "90".into());
        assert_eq!(retention_days(&tags), 90);
        let _ = tags.insert("retention_days".into(), "0".into());
        assert_eq!(retention_days(&tags), 1);
        let _ = tags.insert("retention_days".into(), "forever".into());
        assert_eq!(retention_days(&tags), 1);
    }

    #[test]
    fn archive_key_follows_the_archiver_layout() {
        // 2023-11-14T22:13:20Z
        let at = Map::from([
            ("raw_partition".to_owned(), "3".to_owned()),
            ("raw_offset".to_owned(), "12345".to_owned()),
        ]);
        let key = archive_key("t1", "decision", 1_700_000_000_000_000, &at, 1000);
        assert_eq!(
            key,
            "raw/t1/decision/2023/11/14/p3-00000000000000012000.jsonl"
        );
        assert_eq!(
            archive_key("t1", "decision", 0, &Map::new(), 1000),
            "",
            "no position, no key"
        );
    }

    #[test]
    fn table_names_follow_the_schema_list() {
        for table in Table::ALL {
            assert_eq!(Table::from_name(table.name()), Some(table));
        }
    }
}
