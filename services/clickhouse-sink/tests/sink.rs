//! The sink against the real local stack: every body kind lands in its table exactly once,
//! poison goes to the dead-letter topic and from there into `dead_letters`, rollups fill, TTLs
//! are in place, and replays (a new consumer group over the same topics, or the same events
//! produced again) change nothing that counts.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed assertion

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use clickhouse::Row;
use serde::Deserialize;
use tokio::task::JoinHandle;
use ve_clickhouse_sink::{Config, DEFAULTS, SERVICE, run};
use ve_kafka::{OutRecord, Producer, TopicSpec, ensure_topics};
use ve_runtime::CancellationToken;
use ve_schema::{
    Alert, AppEvent, Body, Codec, DecisionEvent, Envelope, Invoice, InvoiceLine, Map, MetricSample,
    PipelineRun, PipelineStep, Source, Span, Tenant, WebEvent,
};
use ve_service::{Context, ServiceError};
use ve_store::ClickHouseConfig;
use ve_testkit::{Stack, unique};

/// One test's private world: topics (one partition each, so "produced after" means "processed
/// after"), a database, a tenant, and a clock aligned to a minute so rollups are predictable.
struct World {
    stack: Stack,
    enriched: String,
    alerts: String,
    invoices: String,
    dead_letters: Vec<String>,
    clickhouse: ClickHouseConfig,
    client: clickhouse::Client,
    codec: Codec,
    producer: Producer,
    tenant: String,
    minute: i64,
}

struct Running {
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ServiceError>>,
    admin: SocketAddr,
}

const MINUTE_MICROS: i64 = 60_000_000;

impl World {
    async fn new() -> Self {
        let stack = Stack::require();
        let id = unique("sink");
        let kafka = stack.kafka(&unique("producer"));
        let enriched = format!("{id}.enriched");
        let alerts = format!("{id}.alert");
        let invoices = format!("{id}.invoice");
        let dead_letters = vec![format!("{enriched}.dlq"), format!("{id}.raw.dlq")];
        let mut specs = vec![TopicSpec::compacted(alerts.as_str()).partitions(1)];
        specs.extend(
            [
                enriched.clone(),
                invoices.clone(),
                format!("{alerts}.dlq"),
                format!("{invoices}.dlq"),
                dead_letters[0].clone(),
                dead_letters[1].clone(),
            ]
            .into_iter()
            .map(|t| TopicSpec::new(t).partitions(1)),
        );
        ensure_topics(&kafka, &specs).await.unwrap();
        let clickhouse = stack.clickhouse(&unique("ve_sink"));
        let client = clickhouse.client().unwrap();
        let codec = Codec::new(&stack.registry()).unwrap();
        let producer = Producer::new(&kafka, "sink-test").unwrap();
        let now = chrono::Utc::now().timestamp_micros();
        Self {
            stack,
            enriched,
            alerts,
            invoices,
            dead_letters,
            clickhouse,
            client,
            codec,
            producer,
            tenant: unique("tenant"),
            minute: now - now % MINUTE_MICROS,
        }
    }

    fn config(&self, group: &str) -> Config {
        let prefix = ve_config::env_prefix(SERVICE);
        let mut env = self.stack.service_env(SERVICE);
        // Keys the sink lacks (the archive) would be rejected.
        env.retain(|(key, _)| !key.starts_with(&format!("{prefix}OBJECT_STORE")));
        let ours = [
            ("KAFKA__GROUP_ID", group.to_owned()),
            ("KAFKA__FLUSH_INTERVAL_MS", "200".to_owned()),
            ("KAFKA__BATCH_SIZE", "500".to_owned()),
            ("CLICKHOUSE__DATABASE", self.clickhouse.database.clone()),
            ("TOPICS__ENRICHED", self.enriched.clone()),
            ("TOPICS__ALERTS", self.alerts.clone()),
            ("TOPICS__INVOICES", self.invoices.clone()),
            (
                "TOPICS__DEAD_LETTERS",
                format!("[{}]", self.dead_letters.join(", ")),
            ),
        ];
        env.extend(ours.map(|(k, v)| (format!("{prefix}{k}"), v)));
        ve_config::Sources::new(SERVICE, DEFAULTS)
            .env(env)
            .load()
            .unwrap()
    }

    async fn start(&self, group: &str) -> Running {
        let config = self.config(group);
        let ctx = Context::ephemeral(SERVICE).await.unwrap();
        let admin = ctx.admin.local_addr().unwrap();
        let shutdown = ctx.shutdown.clone();
        let task = tokio::spawn(run(config, ctx));
        Running {
            shutdown,
            task,
            admin,
        }
    }

    fn envelope(&self, id: &str, time: i64, body: Body) -> Envelope {
        Envelope {
            event_id: id.to_owned(),
            event_time: time,
            ingest_time: time + 1_000,
            tenant_id: self.tenant.clone(),
            source: Source {
                kind: "sdk".into(),
                id: "web-js/1.0".into(),
            },
            schema_name: body.schema_name().into(),
            schema_version: 1,
            attributes: Map::from([("batch_id".into(), "b1".into())]),
            tags: Map::from([
                ("plan".into(), "paid".into()),
                ("retention_days".into(), "90".into()),
                ("browser".into(), "Firefox".into()),
                ("os".into(), "Linux".into()),
                ("device".into(), "desktop".into()),
            ]),
            body,
        }
    }

    /// Produces envelopes (or raw bytes) and returns their offsets.
    async fn produce(&self, topic: &str, items: &[(String, Vec<u8>)]) -> Vec<i64> {
        let records: Vec<OutRecord> = items
            .iter()
            .map(|(key, payload)| OutRecord::new(topic, key.as_bytes().to_vec(), payload.clone()))
            .collect();
        self.producer
            .send_all(&records)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, offset)| offset)
            .collect()
    }

    async fn encode(&self, topic: &str, envelopes: &[Envelope]) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for e in envelopes {
            out.push((
                e.event_id.clone(),
                self.codec.encode(topic, e).await.unwrap(),
            ));
        }
        out
    }

    async fn count(&self, sql: &str) -> u64 {
        self.client.query(sql).fetch_one::<u64>().await.unwrap()
    }

    /// Polls `sql` (a count) until it returns `expected`; a table that does not exist yet
    /// counts as not there yet.
    async fn wait_count(&self, sql: &str, expected: u64) {
        let mut last = None;
        for _ in 0..300 {
            match self.client.query(sql).fetch_one::<u64>().await {
                Ok(n) if n == expected => return,
                Ok(n) => last = Some(n),
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("{sql}: expected {expected}, last saw {last:?}");
    }

    /// A sentinel on each input topic, twice: once the second round has landed, every record
    /// produced before the first round has been fully processed (batches run one after the
    /// other, and the second round cannot share a batch with the first).
    async fn sync(&self, label: &str, sentinels: &mut u64) {
        for round in ["a", "b"] {
            let id = format!("sentinel-{label}-{round}");
            let time = self.minute + 50_000_000;
            let web = self.envelope(&id, time, web_event("sentinel"));
            let alert = self.envelope(&id, time, alert(&id, "firing", 0));
            let invoice = self.envelope(&id, time, invoice(&id));
            let _ = self
                .produce(&self.enriched, &self.encode(&self.enriched, &[web]).await)
                .await;
            let _ = self
                .produce(&self.alerts, &self.encode(&self.alerts, &[alert]).await)
                .await;
            let _ = self
                .produce(
                    &self.invoices,
                    &self.encode(&self.invoices, &[invoice]).await,
                )
                .await;
            *sentinels += 1;
            for (table, column) in [
                ("events", "event_id"),
                ("alerts", "rule_id"),
                ("invoices", "invoice_id"),
            ] {
                self.wait_count(
                    &format!("SELECT count() FROM {table} WHERE {column} = '{id}'"),
                    1,
                )
                .await;
            }
        }
    }

    async fn stop(&self, running: Running) {
        running.shutdown.cancel();
        let outcome = tokio::time::timeout(Duration::from_secs(30), running.task)
            .await
            .expect("sink drains within 30 s")
            .unwrap();
        assert!(outcome.is_ok(), "sink stopped with {outcome:?}");
    }

    async fn drop_database(&self) {
        self.client
            .query(&format!(
                "DROP DATABASE IF EXISTS {}",
                self.clickhouse.database
            ))
            .execute()
            .await
            .unwrap();
    }
}

fn web_event(event_type: &str) -> Body {
    Body::Web(WebEvent {
        event_type: event_type.into(),
        session_id: "s1".into(),
        user_id: Some("u1".into()),
        url: Some("https://example.com/a".into()),
        path: Some("/a".into()),
        title: Some("A".into()),
        referrer: None,
        user_agent: Some("Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Firefox/120.0".into()),
        selector: None,
        scroll_depth: None,
        name: None,
        metrics: [("lcp".to_owned(), 1200.5)].into(),
        properties: "{}".into(),
    })
}

fn heartbeat(watch_ms: i64) -> Body {
    Body::App(AppEvent {
        app_id: "openstream".into(),
        event_name: "video_heartbeat".into(),
        user_id: "u1".into(),
        properties: format!(r#"{{"stream_id":"st-1","watch_ms":{watch_ms}}}"#),
    })
}

fn metric(value: f64) -> Body {
    Body::Metric(MetricSample {
        host: "h1".into(),
        metric: "cpu_load".into(),
        value,
        unit: "percent".into(),
    })
}

fn span(id: &str, status: &str, start: i64, duration_us: i64) -> Body {
    Body::Span(Span {
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        span_id: id.into(),
        parent_span_id: None,
        name: "GET /".into(),
        kind: "server".into(),
        service_name: "web".into(),
        start_time: start,
        end_time: start + duration_us,
        status_code: status.into(),
        status_message: String::new(),
        attributes: Map::from([("http.method".into(), "GET".into())]),
        resource: Map::new(),
    })
}

fn step(id: &str, position: i32, input: i64, output: i64) -> Body {
    Body::Step(PipelineStep {
        step_id: id.into(),
        run_id: "r1".into(),
        pipeline_id: "p1".into(),
        name: format!("step-{position}"),
        position,
        input_count: input,
        output_count: output,
        kept_count: output,
        eliminated_count: input - output,
        scored_count: input,
    })
}

fn decision(id: &str, outcome: &str) -> Body {
    Body::Decision(DecisionEvent {
        decision_id: id.into(),
        step_id: "s1".into(),
        run_id: "r1".into(),
        pipeline_id: "p1".into(),
        item_id: format!("item-{id}"),
        outcome: outcome.into(),
        score: Some(0.5),
        reason: "below threshold".into(),
        payload: r#"{"big":"payload"}"#.into(),
    })
}

fn alert(rule: &str, state: &str, resolved_at: i64) -> Body {
    Body::Alert(Alert {
        rule_id: rule.into(),
        series: "host=h1".into(),
        state: state.into(),
        value: 95.0,
        threshold: 90.0,
        started_at: 1_700_000_000_000_000,
        resolved_at: (resolved_at > 0).then_some(resolved_at),
        message: "cpu_load > 90 for 60s".into(),
        labels: Map::from([("host".into(), "h1".into())]),
    })
}

fn invoice(id: &str) -> Body {
    Body::Invoice(Invoice {
        invoice_id: id.into(),
        period_start: 1_700_000_000_000_000,
        period_end: 1_702_592_000_000_000,
        plan: "paid".into(),
        currency: "USD".into(),
        lines: vec![InvoiceLine {
            kind: "events".into(),
            description: "events over allowance".into(),
            quantity: 10,
            unit_price_micros: 100,
            amount_micros: 1000,
        }],
        subtotal_micros: 1000,
        total_micros: 1000,
        issued_at: 1_702_600_000_000_000,
    })
}

/// Everything the test sends, by topic; offsets of the poison records come back.
struct Sent {
    enriched: Vec<(String, Vec<u8>)>,
    alerts: Vec<(String, Vec<u8>)>,
    invoices: Vec<(String, Vec<u8>)>,
}

async fn fixtures(world: &World) -> Sent {
    let t = |seconds: i64| world.minute + seconds * 1_000_000;
    let w = world;
    let enriched = vec![
        w.envelope("web-1", t(1), web_event("pageview")),
        w.envelope("web-2", t(2), web_event("pageview")),
        w.envelope("web-3", t(3), web_event("pageview")),
        w.envelope("web-4", t(4), web_event("click")),
        w.envelope("app-1", t(5), heartbeat(5000)),
        w.envelope("app-2", t(6), heartbeat(7000)),
        w.envelope("metric-1", t(7), metric(10.0)),
        w.envelope("metric-2", t(8), metric(20.0)),
        w.envelope("metric-3", t(9), metric(30.0)),
        w.envelope("metric-4", t(10), metric(40.0)),
        w.envelope(
            "span-1",
            t(11),
            span("00f067aa0ba902b7", "ok", t(11), 250_000),
        ),
        w.envelope(
            "span-2",
            t(12),
            span("00f067aa0ba902b8", "error", t(12), 750_000),
        ),
        w.envelope(
            "run-1",
            t(13),
            Body::Run(PipelineRun {
                run_id: "r1".into(),
                pipeline_id: "p1".into(),
                status: "succeeded".into(),
                started_at: t(13),
                finished_at: Some(t(20)),
                metadata: r#"{"trigger":"cron"}"#.into(),
            }),
        ),
        w.envelope("step-1", t(14), step("s1", 1, 100, 50)),
        w.envelope("step-2", t(15), step("s2", 2, 50, 10)),
        {
            // Where the normalizer found its raw record on ingest.raw.v1.
            let mut e = w.envelope("decision-1", t(16), decision("d1", "kept"));
            let _ = e.attributes.insert("raw_partition".into(), "2".into());
            let _ = e.attributes.insert("raw_offset".into(), "4321".into());
            e
        },
        w.envelope("decision-2", t(17), decision("d2", "eliminated")),
    ];
    let alerts = vec![
        w.envelope("alert-1", t(18), alert("cpu", "firing", 0)),
        w.envelope("alert-2", t(19), alert("cpu", "resolved", t(19))),
    ];
    let invoices = vec![w.envelope("invoice-1", t(20), invoice("inv-1"))];
    Sent {
        enriched: w.encode(&w.enriched, &enriched).await,
        alerts: w.encode(&w.alerts, &alerts).await,
        invoices: w.encode(&w.invoices, &invoices).await,
    }
}

/// Base-table counts after the fixtures (and `sentinels` sync rounds) landed once.
async fn assert_counts(world: &World, final_: &str, sentinels: u64) {
    let expected = [
        ("events", 6 + sentinels),
        ("metric_samples", 4),
        ("spans", 2),
        ("runs", 1),
        ("steps", 2),
        ("decision_events", 2),
        ("invoices", 1 + sentinels),
    ];
    for (table, n) in expected {
        assert_eq!(
            world
                .count(&format!("SELECT count() FROM {table} {final_}"))
                .await,
            n,
            "{table} {final_}"
        );
    }
}

#[derive(Debug, Row, Deserialize)]
struct DeadLetter {
    src_topic: String,
    payload: String,
    reason: String,
    stage: String,
    source_topic: String,
    source_offset: i64,
    tenant_id: String,
}

#[tokio::test(flavor = "multi_thread")]
async fn lands_every_kind_once_and_replays_change_nothing() {
    let world = World::new().await;
    let sink = world.start(&unique("ve-clickhouse-sink")).await;
    let sent = fixtures(&world).await;

    let _ = world.produce(&world.enriched, &sent.enriched).await;
    let _ = world.produce(&world.alerts, &sent.alerts).await;
    let _ = world.produce(&world.invoices, &sent.invoices).await;
    // Poison: bytes that are no envelope, and an envelope of a kind that has no table.
    let tenant_record = world.envelope(
        "tenant-1",
        world.minute,
        Body::Tenant(Tenant {
            tenant_id: "t".into(),
            name: "Acme".into(),
            plan: "paid".into(),
            retention_days: 90,
            rate_limit_eps: 10,
            burst: 10,
            api_keys: vec![],
            currency: "USD".into(),
        }),
    );
    let mut poison = vec![("garbage".to_owned(), b"\x07not an envelope".to_vec())];
    poison.extend(world.encode(&world.enriched, &[tenant_record]).await);
    let poison_offsets = world.produce(&world.enriched, &poison).await;

    world.wait_count("SELECT count() FROM invoices", 1).await;
    // Both alert records may share one INSERT, which already collapses them (optimize_on_insert).
    world
        .wait_count(
            "SELECT count() FROM alerts FINAL WHERE rule_id = 'cpu' AND state = 'resolved'",
            1,
        )
        .await;
    world.wait_count("SELECT count() FROM events", 6).await;
    world
        .wait_count("SELECT count() FROM dead_letters", 2)
        .await;
    let mut sentinels = 0;
    world.sync("first", &mut sentinels).await;
    assert_counts(&world, "", sentinels).await;
    assert_counts(&world, "FINAL", sentinels).await;

    // Alerts: the latest state per rule and series.
    let state: String = world
        .client
        .query("SELECT state FROM alerts FINAL WHERE rule_id = 'cpu'")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(state, "resolved");

    // Dead letters: the original bytes, why, which stage, and where they came from.
    let mut dead: Vec<DeadLetter> = world
        .client
        .query("SELECT ?fields FROM dead_letters FINAL ORDER BY source_offset")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(dead.len(), 2, "{dead:?}");
    let garbage = dead.remove(0);
    assert_eq!(garbage.src_topic, world.dead_letters[0]);
    assert_eq!(garbage.source_topic, world.enriched);
    assert_eq!(garbage.source_offset, poison_offsets[0]);
    assert_eq!(garbage.stage, SERVICE);
    assert!(!garbage.reason.is_empty());
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(&garbage.payload)
            .unwrap(),
        b"\x07not an envelope"
    );
    let no_table = dead.remove(0);
    assert_eq!(no_table.source_offset, poison_offsets[1]);
    assert!(
        no_table.reason.contains("ve.v1.Tenant"),
        "{}",
        no_table.reason
    );
    assert_eq!(no_table.tenant_id, world.tenant, "decoded best-effort");

    // Columns derived on the way in.
    let (browser, retention, watch): (String, u16, i64) = world
        .client
        .query(
            "SELECT any(browser), min(retention_days), \
             sumIf(JSONExtractInt(properties, 'watch_ms'), event_name = 'video_heartbeat') \
             FROM events FINAL WHERE kind = 'app'",
        )
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(
        (browser.as_str(), retention, watch),
        ("Firefox", 90, 12_000)
    );
    let ratios: Vec<f64> = world
        .client
        .query("SELECT elimination_ratio FROM steps FINAL ORDER BY position")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(ratios, [0.5, 0.8]);
    let run: (u64, i64, i64, f64) = world
        .client
        .query(
            "SELECT total_steps, total_input_count, total_output_count, \
             overall_elimination_ratio FROM runs_summary WHERE run_id = 'r1'",
        )
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(run, (2, 150, 60, 0.6));
    let keys: Vec<String> = world
        .client
        .query("SELECT s3_key FROM decision_events FINAL ORDER BY decision_id")
        .fetch_all()
        .await
        .unwrap();
    let date = chrono::DateTime::from_timestamp_micros(world.minute + 16_000_000)
        .unwrap()
        .format("%Y/%m/%d")
        .to_string();
    assert_eq!(
        keys[0],
        format!(
            "raw/{}/decision/{date}/p2-00000000000000004000.jsonl",
            world.tenant
        )
    );

    // Rollups.
    let metrics_1m: (u64, f64, f64, f64) = world
        .client
        .query(
            "SELECT sum(count), sum(sum), min(min), max(max) FROM metrics_1m \
             WHERE metric = 'cpu_load' AND host = 'h1'",
        )
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(metrics_1m, (4, 100.0, 10.0, 40.0));
    let per_kind: Vec<(String, u64)> = world
        .client
        .query("SELECT kind, sum(count) FROM events_1m GROUP BY kind ORDER BY kind")
        .fetch_all()
        .await
        .unwrap();
    let per_kind: Vec<(&str, u64)> = per_kind.iter().map(|(k, n)| (k.as_str(), *n)).collect();
    assert_eq!(
        per_kind,
        [
            ("app", 2),
            ("decision", 2),
            ("metric", 4),
            ("run", 1),
            ("span", 2),
            ("step", 2),
            ("web", 4 + sentinels)
        ]
    );
    let spans_1m: (u64, u64, i64) = world
        .client
        .query("SELECT sum(count), sum(errors), max(duration_max_us) FROM spans_1m")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(spans_1m, (2, 1, 750_000));

    // Retention is a per-row TTL on every event table.
    for table in [
        "events",
        "metric_samples",
        "spans",
        "steps",
        "decision_events",
    ] {
        let ddl: String = world
            .client
            .query(&format!("SHOW CREATE TABLE {table}"))
            .fetch_one()
            .await
            .unwrap();
        assert!(
            ddl.contains("TTL toDateTime(event_time) + toIntervalDay(retention_days)"),
            "{ddl}"
        );
        assert!(
            ddl.contains("non_replicated_deduplication_window = 10000"),
            "{ddl}"
        );
    }

    // The service's own metrics.
    let metrics = http_get(sink.admin, "/metrics").await;
    for needle in [
        "clickhouse_sink_rows_inserted_total{table=\"events\"}",
        "clickhouse_sink_rows_inserted_total{table=\"dead_letters\"}",
        "clickhouse_sink_flush_failures_total",
        "clickhouse_sink_events_consumed_total",
    ] {
        assert!(metrics.contains(needle), "{needle} missing in\n{metrics}");
    }
    let alert_rows = world.count("SELECT count() FROM alerts").await;
    world.stop(sink).await;

    // Replay 1: a new consumer group reads every topic again from the start. Nothing is inserted
    // twice, not even without FINAL, and the rollups do not move.
    let sink = world.start(&unique("ve-clickhouse-sink-replay")).await;
    world.sync("replay", &mut sentinels).await;
    // The replay dead-letters the two poison records again: same origin, same dead letter.
    world
        .wait_count("SELECT count() FROM dead_letters", 4)
        .await;
    assert_counts(&world, "", sentinels).await;
    assert_eq!(
        world.count("SELECT count() FROM alerts").await,
        alert_rows + 2,
        "only the two new sentinels"
    );
    assert_eq!(
        world.count("SELECT count() FROM dead_letters FINAL").await,
        2
    );
    assert_eq!(
        world
            .count("SELECT sum(count) FROM metrics_1m WHERE metric = 'cpu_load'")
            .await,
        4
    );
    assert_eq!(
        world
            .count("SELECT toUInt64(sum(count)) FROM events_1m WHERE kind = 'app'")
            .await,
        2
    );

    // Replay 2: the same events produced again (an upstream stage replayed): new offsets, so
    // they are inserted, and ReplacingMergeTree keeps one row per event.
    let _ = world.produce(&world.enriched, &sent.enriched).await;
    let _ = world.produce(&world.invoices, &sent.invoices).await;
    world.sync("duplicates", &mut sentinels).await;
    assert_eq!(
        world.count("SELECT count() FROM metric_samples").await,
        8,
        "duplicates are stored until merged"
    );
    assert_counts(&world, "FINAL", sentinels).await;
    let run: (u64, i64) = world
        .client
        .query("SELECT total_steps, total_input_count FROM runs_summary WHERE run_id = 'r1'")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(run, (2, 150), "run totals count each step once");

    world.stop(sink).await;
    world.drop_database().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn migrations_apply_once_and_again_as_a_no_op() {
    let stack = Stack::require();
    let config = stack.clickhouse(&unique("ve_sink"));
    let applied = ve_store::migrate(&config, ve_clickhouse_sink::schema::MIGRATIONS)
        .await
        .unwrap();
    assert_eq!(applied, ve_clickhouse_sink::schema::MIGRATIONS.len());
    let again = ve_store::migrate(&config, ve_clickhouse_sink::schema::MIGRATIONS)
        .await
        .unwrap();
    assert_eq!(again, 0);
    let client = config.client().unwrap();
    let tables: Vec<String> = client
        .query("SELECT name FROM system.tables WHERE database = currentDatabase() ORDER BY name")
        .fetch_all()
        .await
        .unwrap();
    for table in ve_clickhouse_sink::schema::TABLES.iter().chain(&[
        "events_1m",
        "metrics_1m",
        "spans_1m",
        "run_totals",
        "runs_summary",
        "sink_offsets",
    ]) {
        assert!(
            tables.iter().any(|t| t == table),
            "{table} missing: {tables:?}"
        );
    }
    // Statements are idempotent on their own too: a second instance racing the first re-runs
    // them before the version is recorded.
    for migration in ve_clickhouse_sink::schema::MIGRATIONS {
        for statement in migration.statements {
            client.query(statement).execute().await.unwrap();
        }
    }
    client
        .query(&format!("DROP DATABASE {}", config.database))
        .execute()
        .await
        .unwrap();
}

/// Minimal HTTP/1.1 GET for the admin port.
async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await.unwrap();
    String::from_utf8_lossy(&response).into_owned()
}
