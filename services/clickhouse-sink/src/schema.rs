//! The sink's ClickHouse schema, as forward-only migrations applied at start.
//!
//! Every statement is idempotent (`IF NOT EXISTS`) because two instances may start together and
//! both find a version unapplied. A change to a table is a new migration (`ALTER TABLE ... ADD
//! COLUMN IF NOT EXISTS`), never an edit of an applied one. The README explains the choices.

use ve_store::Migration;

/// Columns every event table starts with: the envelope, where the row came from (for the
/// replay watermark) and its retention.
macro_rules! envelope_columns {
    () => {
        "event_id String CODEC(ZSTD(1)),
    tenant_id LowCardinality(String),
    event_time DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1)),
    ingest_time DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1)),
    source_type LowCardinality(String),
    source_id LowCardinality(String),
    schema_version Int32,
    tags Map(String, String) CODEC(ZSTD(1)),
    attributes Map(String, String) CODEC(ZSTD(1)),
    retention_days UInt16,
    src_topic LowCardinality(String),
    src_partition Int32,
    src_offset Int64 CODEC(Delta, ZSTD(1)),"
    };
}

/// Per-row retention (free 1 day, paid 90, enterprise what the tenant record says).
macro_rules! retention_ttl {
    ($time:literal) => {
        concat!(
            "TTL toDateTime(",
            $time,
            ") + toIntervalDay(retention_days)"
        )
    };
}

/// Lets `insert_deduplication_token` work on non-replicated tables (Replicated ones dedup
/// natively); also needed on materialized-view targets, which dedup their own blocks.
macro_rules! dedup_window {
    () => {
        "SETTINGS non_replicated_deduplication_window = 10000"
    };
}

/// Feeds `sink_offsets` from a table: the highest source offset landed per topic/partition,
/// written by the same INSERT as the rows (see README, "replays").
macro_rules! offsets_view {
    ($table:literal) => {
        concat!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS ",
            $table,
            "_offsets_mv TO sink_offsets AS SELECT '",
            $table,
            "' AS table_name, src_topic AS topic, src_partition AS topic_partition, \
             max(src_offset) AS max_offset FROM ",
            $table,
            " GROUP BY src_topic, src_partition"
        )
    };
}

/// Feeds `events_1m` from an event table: events per tenant, kind and minute.
macro_rules! events_1m_view {
    ($table:literal, $kind:literal, $event_type:literal) => {
        concat!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS ",
            $table,
            "_events_1m_mv TO events_1m AS SELECT tenant_id, ",
            $kind,
            " AS kind, ",
            $event_type,
            " AS event_type, toStartOfMinute(event_time) AS minute, count() AS count, \
             max(retention_days) AS retention_days FROM ",
            $table,
            " GROUP BY tenant_id, kind, event_type, minute"
        )
    };
}

const SINK_OFFSETS: &str = concat!(
    "CREATE TABLE IF NOT EXISTS sink_offsets (
    table_name LowCardinality(String),
    topic LowCardinality(String),
    topic_partition Int32,
    max_offset SimpleAggregateFunction(max, Int64)
) ENGINE = AggregatingMergeTree
ORDER BY (table_name, topic, topic_partition)
",
    dedup_window!()
);

const EVENTS: &str = concat!(
    "CREATE TABLE IF NOT EXISTS events (
    ",
    envelope_columns!(),
    "
    kind LowCardinality(String),
    event_type LowCardinality(String),
    event_name String CODEC(ZSTD(1)),
    app_id LowCardinality(String),
    session_id String CODEC(ZSTD(1)),
    user_id String CODEC(ZSTD(1)),
    url String CODEC(ZSTD(1)),
    path String CODEC(ZSTD(1)),
    title String CODEC(ZSTD(1)),
    referrer String CODEC(ZSTD(1)),
    selector String CODEC(ZSTD(1)),
    scroll_depth Nullable(Float64),
    web_metrics Map(String, Float64),
    user_agent String CODEC(ZSTD(1)),
    browser LowCardinality(String),
    os LowCardinality(String),
    device LowCardinality(String),
    properties String CODEC(ZSTD(3))
) ENGINE = ReplacingMergeTree(ingest_time)
PARTITION BY toYYYYMM(event_time)
ORDER BY (tenant_id, kind, event_type, toDate(event_time), event_id)
",
    retention_ttl!("event_time"),
    "\n",
    dedup_window!()
);

const METRIC_SAMPLES: &str = concat!(
    "CREATE TABLE IF NOT EXISTS metric_samples (
    ",
    envelope_columns!(),
    "
    host LowCardinality(String),
    metric LowCardinality(String),
    value Float64 CODEC(Gorilla, ZSTD(1)),
    unit LowCardinality(String)
) ENGINE = ReplacingMergeTree(ingest_time)
PARTITION BY toYYYYMM(event_time)
ORDER BY (tenant_id, host, metric, event_time, event_id)
",
    retention_ttl!("event_time"),
    "\n",
    dedup_window!()
);

const SPANS: &str = concat!(
    "CREATE TABLE IF NOT EXISTS spans (
    ",
    envelope_columns!(),
    "
    trace_id String CODEC(ZSTD(1)),
    span_id String CODEC(ZSTD(1)),
    parent_span_id String CODEC(ZSTD(1)),
    name LowCardinality(String),
    kind LowCardinality(String),
    service_name LowCardinality(String),
    start_time DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1)),
    end_time DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1)),
    duration_us Int64 CODEC(T64, ZSTD(1)),
    status_code LowCardinality(String),
    status_message String CODEC(ZSTD(1)),
    span_attributes Map(String, String) CODEC(ZSTD(1)),
    resource Map(String, String) CODEC(ZSTD(1)),
    INDEX trace_idx trace_id TYPE bloom_filter(0.01) GRANULARITY 4
) ENGINE = ReplacingMergeTree(ingest_time)
PARTITION BY toYYYYMM(event_time)
ORDER BY (tenant_id, service_name, toDate(event_time), event_id)
",
    retention_ttl!("event_time"),
    "\n",
    dedup_window!()
);

// Runs are entities reported more than once (started, then finished): one row per run, the
// latest report wins. Partitioned by start so every report of a run lands in one partition.
const RUNS: &str = concat!(
    "CREATE TABLE IF NOT EXISTS runs (
    ",
    envelope_columns!(),
    "
    run_id String,
    pipeline_id LowCardinality(String),
    status LowCardinality(String),
    started_at DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1)),
    finished_at Nullable(DateTime64(6, 'UTC')),
    metadata String CODEC(ZSTD(3))
) ENGINE = ReplacingMergeTree(ingest_time)
PARTITION BY toYYYYMM(started_at)
ORDER BY (tenant_id, pipeline_id, run_id)
",
    retention_ttl!("started_at"),
    "\n",
    dedup_window!()
);

const STEPS: &str = concat!(
    "CREATE TABLE IF NOT EXISTS steps (
    ",
    envelope_columns!(),
    "
    step_id String,
    run_id String,
    pipeline_id LowCardinality(String),
    name LowCardinality(String),
    position Int32,
    input_count Int64,
    output_count Int64,
    kept_count Int64,
    eliminated_count Int64,
    scored_count Int64,
    elimination_ratio Float64
) ENGINE = ReplacingMergeTree(ingest_time)
PARTITION BY toYYYYMM(event_time)
ORDER BY (tenant_id, pipeline_id, run_id, step_id)
",
    retention_ttl!("event_time"),
    "\n",
    dedup_window!()
);

const DECISION_EVENTS: &str = concat!(
    "CREATE TABLE IF NOT EXISTS decision_events (
    ",
    envelope_columns!(),
    "
    decision_id String,
    step_id String,
    run_id String,
    pipeline_id LowCardinality(String),
    item_id String CODEC(ZSTD(1)),
    outcome LowCardinality(String),
    score Nullable(Float64),
    reason String CODEC(ZSTD(1)),
    payload_bytes UInt32,
    s3_key String CODEC(ZSTD(1))
) ENGINE = ReplacingMergeTree(ingest_time)
PARTITION BY toYYYYMM(event_time)
ORDER BY (tenant_id, pipeline_id, run_id, step_id, event_id)
",
    retention_ttl!("event_time"),
    "\n",
    dedup_window!()
);

// The latest state per alert series (ops.alert.v1 is compacted: its latest record is the state).
const ALERTS: &str = concat!(
    "CREATE TABLE IF NOT EXISTS alerts (
    ",
    envelope_columns!(),
    "
    rule_id String,
    series String,
    state LowCardinality(String),
    value Float64,
    threshold Float64,
    started_at DateTime64(6, 'UTC'),
    resolved_at Nullable(DateTime64(6, 'UTC')),
    message String,
    labels Map(String, String)
) ENGINE = ReplacingMergeTree(event_time)
ORDER BY (tenant_id, rule_id, series)
",
    dedup_window!()
);

// Invoices are billing records: no retention TTL.
const INVOICES: &str = concat!(
    "CREATE TABLE IF NOT EXISTS invoices (
    ",
    envelope_columns!(),
    "
    invoice_id String,
    period_start DateTime64(6, 'UTC'),
    period_end DateTime64(6, 'UTC'),
    plan LowCardinality(String),
    currency LowCardinality(String),
    lines String,
    subtotal_micros Int64,
    total_micros Int64,
    issued_at DateTime64(6, 'UTC')
) ENGINE = ReplacingMergeTree(issued_at)
PARTITION BY toYYYYMM(period_start)
ORDER BY (tenant_id, invoice_id)
",
    dedup_window!()
);

// One row per (source record, stage): a record dead-lettered again on a replay is the same dead
// letter. `src_*` is where the dead letter itself sits (the DLQ topic), `source_*` where the
// rejected record came from.
const DEAD_LETTERS: &str = concat!(
    "CREATE TABLE IF NOT EXISTS dead_letters (
    src_topic LowCardinality(String),
    src_partition Int32,
    src_offset Int64 CODEC(Delta, ZSTD(1)),
    key String CODEC(ZSTD(1)),
    payload String CODEC(ZSTD(3)),
    payload_bytes UInt32,
    reason String CODEC(ZSTD(1)),
    stage LowCardinality(String),
    source_topic LowCardinality(String),
    source_partition Int32,
    source_offset Int64,
    dead_at DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
    tenant_id LowCardinality(String),
    event_id String,
    headers Map(String, String) CODEC(ZSTD(1)),
    landed_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree(dead_at)
PARTITION BY toYYYYMM(dead_at)
ORDER BY (source_topic, source_partition, source_offset, stage)
TTL toDateTime(dead_at) + INTERVAL 30 DAY
",
    dedup_window!()
);

const METRICS_1M: &str = concat!(
    "CREATE TABLE IF NOT EXISTS metrics_1m (
    tenant_id LowCardinality(String),
    host LowCardinality(String),
    metric LowCardinality(String),
    minute DateTime('UTC'),
    count SimpleAggregateFunction(sum, UInt64),
    sum SimpleAggregateFunction(sum, Float64),
    min SimpleAggregateFunction(min, Float64),
    max SimpleAggregateFunction(max, Float64),
    retention_days SimpleAggregateFunction(max, UInt16)
) ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (tenant_id, host, metric, minute)
TTL minute + toIntervalDay(retention_days)
",
    dedup_window!()
);

const METRICS_1M_VIEW: &str = "CREATE MATERIALIZED VIEW IF NOT EXISTS metric_samples_1m_mv \
    TO metrics_1m AS SELECT tenant_id, host, metric, toStartOfMinute(event_time) AS minute, \
    count() AS count, sum(value) AS sum, min(value) AS min, max(value) AS max, \
    max(retention_days) AS retention_days FROM metric_samples \
    GROUP BY tenant_id, host, metric, minute";

const EVENTS_1M: &str = concat!(
    "CREATE TABLE IF NOT EXISTS events_1m (
    tenant_id LowCardinality(String),
    kind LowCardinality(String),
    event_type LowCardinality(String),
    minute DateTime('UTC'),
    count SimpleAggregateFunction(sum, UInt64),
    retention_days SimpleAggregateFunction(max, UInt16)
) ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (tenant_id, kind, event_type, minute)
TTL minute + toIntervalDay(retention_days)
",
    dedup_window!()
);

const SPANS_1M: &str = concat!(
    "CREATE TABLE IF NOT EXISTS spans_1m (
    tenant_id LowCardinality(String),
    service_name LowCardinality(String),
    name LowCardinality(String),
    minute DateTime('UTC'),
    count SimpleAggregateFunction(sum, UInt64),
    errors SimpleAggregateFunction(sum, UInt64),
    duration_sum_us SimpleAggregateFunction(sum, Int64),
    duration_max_us SimpleAggregateFunction(max, Int64),
    duration_quantiles_us AggregateFunction(quantilesTDigest(0.5, 0.9, 0.99), Int64),
    retention_days SimpleAggregateFunction(max, UInt16)
) ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (tenant_id, service_name, name, minute)
TTL minute + toIntervalDay(retention_days)
",
    dedup_window!()
);

const SPANS_1M_VIEW: &str = "CREATE MATERIALIZED VIEW IF NOT EXISTS spans_1m_mv TO spans_1m AS \
    SELECT tenant_id, service_name, name, toStartOfMinute(event_time) AS minute, \
    count() AS count, countIf(status_code = 'error') AS errors, \
    sum(duration_us) AS duration_sum_us, max(duration_us) AS duration_max_us, \
    quantilesTDigestState(0.5, 0.9, 0.99)(duration_us) AS duration_quantiles_us, \
    max(retention_days) AS retention_days FROM spans \
    GROUP BY tenant_id, service_name, name, minute";

// Per run, the latest input/output count of each step (maxMap keyed by step_id): a step reported
// twice, or landed twice, counts once, so the totals stay exact without FINAL.
const RUN_TOTALS: &str = concat!(
    "CREATE TABLE IF NOT EXISTS run_totals (
    tenant_id LowCardinality(String),
    pipeline_id LowCardinality(String),
    run_id String,
    step_inputs AggregateFunction(maxMap, Array(String), Array(Int64)),
    step_outputs AggregateFunction(maxMap, Array(String), Array(Int64)),
    last_event_time SimpleAggregateFunction(max, DateTime64(6, 'UTC')),
    retention_days SimpleAggregateFunction(max, UInt16)
) ENGINE = AggregatingMergeTree
ORDER BY (tenant_id, pipeline_id, run_id)
TTL toDateTime(last_event_time) + toIntervalDay(retention_days)
",
    dedup_window!()
);

const RUN_TOTALS_VIEW: &str = "CREATE MATERIALIZED VIEW IF NOT EXISTS steps_run_totals_mv \
    TO run_totals AS SELECT tenant_id, pipeline_id, run_id, \
    maxMapState([step_id], [input_count]) AS step_inputs, \
    maxMapState([step_id], [output_count]) AS step_outputs, \
    max(event_time) AS last_event_time, max(retention_days) AS retention_days FROM steps \
    GROUP BY tenant_id, pipeline_id, run_id";

/// The runs with their aggregate columns, as the query API reads them.
const RUNS_SUMMARY: &str = "CREATE VIEW IF NOT EXISTS runs_summary AS \
    SELECT r.tenant_id AS tenant_id, r.pipeline_id AS pipeline_id, r.run_id AS run_id, \
    r.status AS status, r.started_at AS started_at, r.finished_at AS finished_at, \
    r.metadata AS metadata, r.event_time AS event_time, \
    t.total_steps AS total_steps, t.total_input_count AS total_input_count, \
    t.total_output_count AS total_output_count, \
    t.overall_elimination_ratio AS overall_elimination_ratio \
    FROM runs AS r FINAL \
    LEFT JOIN (SELECT tenant_id, pipeline_id, run_id, \
        maxMapMerge(step_inputs) AS inputs, maxMapMerge(step_outputs) AS outputs, \
        toUInt64(length(inputs.1)) AS total_steps, \
        toInt64(arraySum(inputs.2)) AS total_input_count, \
        toInt64(arraySum(outputs.2)) AS total_output_count, \
        if(total_input_count > 0, 1 - total_output_count / total_input_count, 0) \
            AS overall_elimination_ratio \
        FROM run_totals GROUP BY tenant_id, pipeline_id, run_id) AS t \
    USING (tenant_id, pipeline_id, run_id)";

/// Every table the sink inserts into, in the order of the `rows_inserted_total` series.
pub const TABLES: &[&str] = &[
    "events",
    "metric_samples",
    "spans",
    "runs",
    "steps",
    "decision_events",
    "alerts",
    "invoices",
    "dead_letters",
];

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "sink_tables_rollups_offsets",
        statements: &[
            // Targets before the views that write into them.
            SINK_OFFSETS,
            EVENTS_1M,
            METRICS_1M,
            SPANS_1M,
            RUN_TOTALS,
            EVENTS,
            METRIC_SAMPLES,
            SPANS,
            RUNS,
            STEPS,
            DECISION_EVENTS,
            ALERTS,
            INVOICES,
            DEAD_LETTERS,
            offsets_view!("events"),
            offsets_view!("metric_samples"),
            offsets_view!("spans"),
            offsets_view!("runs"),
            offsets_view!("steps"),
            offsets_view!("decision_events"),
            offsets_view!("alerts"),
            offsets_view!("invoices"),
            offsets_view!("dead_letters"),
            events_1m_view!("events", "kind", "event_type"),
            events_1m_view!("metric_samples", "'metric'", "''"),
            events_1m_view!("spans", "'span'", "''"),
            events_1m_view!("runs", "'run'", "''"),
            events_1m_view!("steps", "'step'", "''"),
            events_1m_view!("decision_events", "'decision'", "outcome"),
            METRICS_1M_VIEW,
            SPANS_1M_VIEW,
            RUN_TOTALS_VIEW,
            RUNS_SUMMARY,
        ],
    },
    Migration {
        version: 2,
        name: "inserted_at",
        // When the row reached ClickHouse: end-to-end latency (event time -> queryable) is measured
        // from it by the load tool and by operators. Filled by the server, never by the sink.
        statements: &[
            "ALTER TABLE events ADD COLUMN IF NOT EXISTS inserted_at DateTime64(6, 'UTC') DEFAULT now64(6) CODEC(Delta, ZSTD(1))",
            "ALTER TABLE metric_samples ADD COLUMN IF NOT EXISTS inserted_at DateTime64(6, 'UTC') DEFAULT now64(6) CODEC(Delta, ZSTD(1))",
            "ALTER TABLE spans ADD COLUMN IF NOT EXISTS inserted_at DateTime64(6, 'UTC') DEFAULT now64(6) CODEC(Delta, ZSTD(1))",
        ],
    },
];
