//! Against the real local stack: enriched events go in, invoices come out. Totals match exactly
//! what was sent; closing twice (also after a restart) yields the identical invoice; a late event
//! is an adjustment line on the next invoice; a duplicate event id is counted once; crashes
//! mid-stream change no count.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed assertion

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use ve_invoicer::{Config, DEFAULTS, Period, rfc3339};
use ve_kafka::{OutRecord, Producer, TopicSpec};
use ve_schema::{Body, Codec, Envelope, MetricSample, Source, Span, Tenant, WebEvent};
use ve_testkit::{Stack, service_config, unique};

const PERIOD: i64 = 60_000_000;

fn web() -> Body {
    Body::Web(WebEvent {
        event_type: "pageview".into(),
        session_id: "s1".into(),
        user_id: None,
        url: None,
        path: Some("/".into()),
        title: None,
        referrer: None,
        user_agent: None,
        selector: None,
        scroll_depth: None,
        name: None,
        metrics: BTreeMap::new(),
        properties: "{}".into(),
    })
}

fn span() -> Body {
    Body::Span(Span {
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        span_id: "00f067aa0ba902b7".into(),
        parent_span_id: None,
        name: "GET /".into(),
        kind: "server".into(),
        service_name: "web".into(),
        start_time: 1,
        end_time: 2,
        status_code: "ok".into(),
        status_message: String::new(),
        attributes: BTreeMap::new(),
        resource: BTreeMap::new(),
    })
}

fn sample(host: &str) -> Body {
    Body::Metric(MetricSample {
        host: host.into(),
        metric: "cpu_load".into(),
        value: 1.0,
        unit: "percent".into(),
    })
}

fn event(id: &str, tenant: &str, ingest_time: i64, bytes: u64, body: Body) -> Envelope {
    Envelope {
        event_id: id.into(),
        event_time: ingest_time,
        ingest_time,
        tenant_id: tenant.into(),
        source: Source {
            kind: "sdk".into(),
            id: "test".into(),
        },
        schema_name: body.schema_name().into(),
        schema_version: 1,
        attributes: BTreeMap::from([("ingest_bytes".into(), bytes.to_string())]),
        tags: BTreeMap::new(),
        body,
    }
}

/// A test's own topics, producer and invoicer configuration.
struct Fixture {
    codec: Codec,
    producer: Producer,
    input: String,
    tenants: String,
    group: String,
    invoices: String,
    usage: String,
}

impl Fixture {
    async fn new() -> Self {
        let stack = Stack::require();
        let kafka = stack.kafka(&unique("unused"));
        let codec = Codec::new(&stack.registry()).unwrap();
        let fixture = Self {
            producer: Producer::new(&kafka, "invoicer-test").unwrap(),
            codec,
            input: unique("events_enriched"),
            tenants: unique("control_tenants"),
            group: unique("invoicer"),
            invoices: unique("billing_invoice"),
            usage: unique("billing_usage"),
        };
        ve_kafka::ensure_topics(
            &kafka,
            &[
                TopicSpec::new(&fixture.input),
                TopicSpec::compacted(&fixture.tenants),
            ],
        )
        .await
        .unwrap();
        fixture
    }

    fn config(&self) -> Config {
        let env = [
            ("TOPICS__INPUT", self.input.as_str()),
            ("TOPICS__TENANTS", &self.tenants),
            ("TOPICS__INVOICES", &self.invoices),
            ("TOPICS__USAGE", &self.usage),
            ("KAFKA__GROUP_ID", &self.group),
            ("KAFKA__PARTITIONS", "3"),
            ("KAFKA__FLUSH_INTERVAL_MS", "200"),
            ("BILLING__PERIOD", "60s"),
            ("BILLING__SCHEDULE", "false"),
            ("BILLING__RETAIN_PERIODS", "30"),
        ];
        let mut config: Config = service_config(
            "invoicer",
            DEFAULTS,
            env.iter()
                .map(|(k, v)| (format!("VE_INVOICER__{k}"), (*v).to_owned()))
                .collect(),
        );
        // A plan with prices low enough that small test volumes cost something.
        let paid = config.billing.plans.get_mut("paid").unwrap();
        paid.events = toml::from_str("included = 10\nper = 1\nunit_price_micros = 1000").unwrap();
        paid.metric_series = toml::from_str("included = 1\nunit_price_micros = 50000").unwrap();
        paid.spans = toml::from_str("unit_price_micros = 300").unwrap();
        paid.ingest_bytes = toml::from_str("per = 1000\nunit_price_micros = 7").unwrap();
        config
    }

    async fn send(&self, topic: &str, key: &str, envelope: &Envelope) {
        let payload = self.codec.encode(topic, envelope).await.unwrap();
        let _ = self
            .producer
            .send(&OutRecord::new(topic, key, payload))
            .await
            .unwrap();
    }

    async fn send_events(&self, events: &[Envelope]) {
        for e in events {
            let key = match &e.body {
                Body::Metric(m) => format!("{}/{}/{}", e.tenant_id, m.host, m.metric),
                _ => e.event_id.clone(),
            };
            self.send(&self.input, &key, e).await;
        }
    }

    async fn tenant(&self, id: &str, plan: &str, currency: &str) {
        let body = Body::Tenant(Tenant {
            tenant_id: id.into(),
            name: id.into(),
            plan: plan.into(),
            retention_days: 90,
            rate_limit_eps: 0,
            burst: 0,
            api_keys: Vec::new(),
            currency: currency.into(),
        });
        self.send(&self.tenants, id, &event(id, id, 0, 0, body))
            .await;
    }
}

/// The invoicer running in this process.
struct Running {
    admin: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), ve_service::ServiceError>>,
    http: reqwest::Client,
}

impl Running {
    async fn start(config: Config) -> Self {
        let ctx = ve_service::Context::ephemeral("invoicer").await.unwrap();
        let admin = ctx.admin.local_addr().unwrap();
        let shutdown = ctx.shutdown.clone();
        let task = tokio::spawn(ve_invoicer::run(config, ctx));
        let running = Self {
            admin,
            shutdown,
            task,
            http: reqwest::Client::new(),
        };
        // The API answers 503 until the usage state and the invoices are loaded.
        running
            .until("the billing API answers", async |r| {
                r.get("/v1/billing/usage").await.0 == 200
            })
            .await;
        running
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        match self
            .http
            .get(format!("http://{}{path}", self.admin))
            .send()
            .await
        {
            Ok(response) => (
                response.status().as_u16(),
                response.json().await.unwrap_or(Value::Null),
            ),
            Err(_) => (0, Value::Null),
        }
    }

    async fn close(&self, period_start: i64) -> (u16, Value) {
        let response = self
            .http
            .post(format!("http://{}/v1/billing/close", self.admin))
            .json(&json!({ "period_start": rfc3339(period_start) }))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    /// Metered usage of a tenant's period, as the next close would see it.
    async fn usage(&self, tenant: &str, period_start: i64) -> Value {
        let (_, body) = self.get("/v1/billing/usage").await;
        body["usage"][tenant][rfc3339(period_start)].clone()
    }

    async fn until<F>(&self, what: &str, check: F)
    where
        F: AsyncFn(&Self) -> bool,
    {
        for _ in 0..600 {
            assert!(
                !self.task.is_finished(),
                "invoicer stopped while waiting for {what}"
            );
            if check(self).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("gave up waiting for {what}");
    }

    async fn until_events(&self, tenant: &str, period_start: i64, events: u64) {
        self.until(&format!("{events} events metered"), async |r| {
            r.usage(tenant, period_start).await["events"] == json!(events)
        })
        .await;
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let outcome = tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("drains within 30 s")
            .unwrap();
        assert!(outcome.is_ok(), "{outcome:?}");
    }

    /// A crash: the task is dropped where it stands, nothing drained or committed.
    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

fn lines_of(invoice: &Value, kind: &str) -> Vec<Value> {
    invoice["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["kind"] == kind)
        .cloned()
        .collect()
}

fn quantity(invoice: &Value, kind: &str) -> i64 {
    lines_of(invoice, kind)
        .iter()
        .map(|l| l["quantity"].as_i64().unwrap())
        .sum()
}

/// A period that ended a while ago, so closing it is ordinary.
fn past_period(periods_ago: i64) -> i64 {
    let now = chrono::Utc::now().timestamp_micros();
    Period::Fixed(PERIOD).start_of(now) - periods_ago * PERIOD
}

#[tokio::test(flavor = "multi_thread")]
async fn invoices_match_what_was_sent_are_idempotent_and_bill_late_events_once() {
    let fixture = Fixture::new().await;
    let tenant = unique("acme");
    fixture.tenant(&tenant, "paid", "EUR").await;
    let p0 = past_period(10);
    let p1 = p0 + PERIOD;
    let at = |i: i64| p0 + 1_000_000 + i;

    let mut events = Vec::new();
    for i in 0..30 {
        events.push(event(&format!("{tenant}-w{i}"), &tenant, at(i), 100, web()));
    }
    // A client retry of two events: same ids, later ingest time.
    events.push(event(&format!("{tenant}-w3"), &tenant, at(40), 100, web()));
    events.push(event(&format!("{tenant}-w7"), &tenant, at(41), 100, web()));
    for i in 0..4 {
        events.push(event(
            &format!("{tenant}-s{i}"),
            &tenant,
            at(50 + i),
            250,
            span(),
        ));
    }
    for (i, host) in ["h1", "h2", "h3", "h1", "h2"].iter().enumerate() {
        events.push(event(
            &format!("{tenant}-m{i}"),
            &tenant,
            at(60 + i as i64),
            40,
            sample(host),
        ));
    }
    fixture.send_events(&events).await;

    let running = Running::start(fixture.config()).await;
    running.until_events(&tenant, p0, 30).await;
    running
        .until("spans and samples metered", async |r| {
            let u = r.usage(&tenant, p0).await;
            u["spans"] == json!(4) && u["ingest_bytes"] == json!(30 * 100 + 4 * 250 + 5 * 40)
        })
        .await;
    let usage = running.usage(&tenant, p0).await;
    assert_eq!(usage["metric_series"], json!(3), "{usage}");

    let (status, closed) = running.close(p0).await;
    assert_eq!(status, 200, "{closed}");
    let invoices = closed["invoices"].as_array().unwrap();
    assert_eq!(invoices.len(), 1, "{closed}");
    let first = invoices[0].clone();
    let label = Period::Fixed(PERIOD).label(p0);
    assert_eq!(first["invoice_id"], format!("inv-{tenant}-{label}"));
    assert_eq!(first["tenant_id"], json!(tenant));
    assert_eq!(
        (first["plan"].clone(), first["currency"].clone()),
        (json!("paid"), json!("EUR"))
    );
    assert_eq!(quantity(&first, "events"), 30);
    assert_eq!(quantity(&first, "spans"), 4);
    assert_eq!(quantity(&first, "ingest_bytes"), 4200);
    assert_eq!(quantity(&first, "metric_series"), 3);
    // events: 20 over the 10 included at 1000; spans 4 × 300; bytes 4.2 × 7 → 29;
    // series: 2 over 1 included at 50000.
    assert_eq!(
        first["total_micros"],
        json!(20_000 + 1200 + 29 + 100_000),
        "{first}"
    );
    assert_eq!(first["subtotal_micros"], first["total_micros"]);
    assert!(first["attributes"]["cut.p0"].is_string(), "{first}");

    let (status, again) = running.close(p0).await;
    assert_eq!(status, 200);
    assert_eq!(
        again["invoices"][0], first,
        "closing twice yields the same invoice"
    );

    // Late: two more events for the closed period, one for the next, and a retry of an
    // already billed id.
    fixture
        .send_events(&[
            event(&format!("{tenant}-late1"), &tenant, at(100), 100, web()),
            event(&format!("{tenant}-w9"), &tenant, at(101), 100, web()),
            event(&format!("{tenant}-late2"), &tenant, at(102), 100, web()),
            event(&format!("{tenant}-n1"), &tenant, p1 + 5, 100, web()),
        ])
        .await;
    running.until_events(&tenant, p0, 32).await;
    running.until_events(&tenant, p1, 1).await;

    // A restart: the closed invoice is read back, the counts are the published ones.
    running.stop().await;
    let running = Running::start(fixture.config()).await;
    assert_eq!(running.usage(&tenant, p0).await["events"], json!(32));
    let (_, again) = running.close(p0).await;
    assert_eq!(again["invoices"][0], first, "identical after a restart");

    // After the restart a retry of a counted id is still a duplicate (the dedup window was
    // rebuilt from the log); the fresh event behind it shows it has been metered.
    fixture
        .send_events(&[
            event(&format!("{tenant}-late2"), &tenant, p1 + 6, 100, web()),
            event(&format!("{tenant}-n2"), &tenant, p1 + 7, 100, web()),
        ])
        .await;
    running.until_events(&tenant, p1, 2).await;

    let (status, next) = running.close(p1).await;
    assert_eq!(status, 200, "{next}");
    let next = next["invoices"][0].clone();
    assert_eq!(
        next["invoice_id"],
        format!("inv-{tenant}-{}", Period::Fixed(PERIOD).label(p1))
    );
    let adjustment = lines_of(&next, "adjustment.events");
    assert_eq!(adjustment.len(), 1, "{next}");
    assert_eq!(adjustment[0]["quantity"], json!(2));
    assert_eq!(adjustment[0]["amount_micros"], json!(2000));
    assert!(
        adjustment[0]["description"]
            .as_str()
            .unwrap()
            .contains(&rfc3339(p0)),
        "{adjustment:?}"
    );
    assert_eq!(quantity(&next, "events"), 2);
    assert_eq!(
        next["attributes"][format!("billed.{p0}.events")],
        json!("32")
    );

    // Closing the next period again neither re-bills the late events nor issues a new invoice.
    let (_, again) = running.close(p1).await;
    assert_eq!(again["invoices"][0], next);
    let (_, listed) = running
        .get(&format!("/v1/billing/invoices?tenant={tenant}"))
        .await;
    assert_eq!(listed["invoices"].as_array().unwrap().len(), 2, "{listed}");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crashes_mid_stream_change_no_count() {
    let fixture = Fixture::new().await;
    let tenant = unique("crash");
    let p0 = past_period(5);
    let batch = |from: i64, to: i64| -> Vec<Envelope> {
        (from..to)
            .map(|i| event(&format!("{tenant}-{i}"), &tenant, p0 + i, 10, web()))
            .collect()
    };
    fixture.send_events(&batch(0, 300)).await;
    let running = Running::start(fixture.config()).await;
    running
        .until("some events metered", async |r| {
            r.usage(&tenant, p0).await["events"]
                .as_u64()
                .unwrap_or_default()
                > 0
        })
        .await;
    running.kill().await;

    fixture.send_events(&batch(300, 600)).await;
    // Replays of the first half, as an upstream stage restarting would produce.
    fixture.send_events(&batch(100, 200)).await;
    let running = Running::start(fixture.config()).await;
    fixture.send_events(&batch(600, 800)).await;
    running.kill().await;

    let running = Running::start(fixture.config()).await;
    running.until_events(&tenant, p0, 800).await;
    let (status, closed) = running.close(p0).await;
    assert_eq!(status, 200);
    assert_eq!(quantity(&closed["invoices"][0], "events"), 800, "{closed}");
    assert_eq!(quantity(&closed["invoices"][0], "ingest_bytes"), 8000);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_close_request_must_name_a_period_start() {
    let fixture = Fixture::new().await;
    let running = Running::start(fixture.config()).await;
    let (status, body) = running.close(past_period(3) + 1_000_000).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("not the start"),
        "{body}"
    );
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/billing/close", running.admin))
        .json(&json!({ "period": "yesterday" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let (status, closed) = running.close(past_period(3)).await;
    assert_eq!(
        (status, closed["invoices"].clone()),
        (200, json!([])),
        "nothing to bill"
    );
    running.stop().await;
}

/// Runs another service of the pipeline in this process until the returned token is cancelled.
fn spawn_service<F>(
    service: &'static str,
    run: impl FnOnce(ve_service::Context) -> F + Send + 'static,
) -> CancellationToken
where
    F: std::future::Future<Output = Result<(), ve_service::ServiceError>> + Send + 'static,
{
    let stop = CancellationToken::new();
    let token = stop.clone();
    drop(tokio::spawn(async move {
        let mut ctx = ve_service::Context::ephemeral(service).await.unwrap();
        ctx.shutdown = token;
        let _ = run(ctx).await;
    }));
    stop
}

#[tokio::test(flavor = "multi_thread")]
async fn invoices_land_in_clickhouse_and_the_archive() {
    let fixture = Fixture::new().await;
    let tenant = unique("landing");
    let p0 = past_period(4);
    fixture
        .send_events(&[
            event(&format!("{tenant}-1"), &tenant, p0 + 1, 100, web()),
            event(&format!("{tenant}-2"), &tenant, p0 + 2, 100, span()),
        ])
        .await;
    let running = Running::start(fixture.config()).await;
    running.until_events(&tenant, p0, 1).await;
    let (_, closed) = running.close(p0).await;
    let invoice = closed["invoices"][0].clone();
    let id = invoice["invoice_id"].as_str().unwrap().to_owned();

    let database = unique("invoicer_landing");
    let mut sink: ve_clickhouse_sink::Config =
        service_config("clickhouse-sink", ve_clickhouse_sink::DEFAULTS, Vec::new());
    sink.kafka.group_id = unique("sink");
    sink.clickhouse.database = database.clone();
    sink.topics.invoices = fixture.invoices.clone();
    sink.topics.enriched = unique("unused_enriched");
    sink.topics.alerts = unique("unused_alerts");
    sink.topics.dead_letters = vec![unique("unused_dlq")];
    let clickhouse_url = sink.clickhouse.url.clone();
    let stop_sink = spawn_service("clickhouse-sink", move |ctx| {
        ve_clickhouse_sink::run(sink, ctx)
    });

    let mut archiver: ve_s3_archiver::Config =
        service_config("s3-archiver", ve_s3_archiver::DEFAULTS, Vec::new());
    archiver.kafka.group_id = unique("archiver");
    archiver.topics.invoices = fixture.invoices.clone();
    archiver.topics.raw = unique("unused_raw");
    let archive = archiver
        .object_store
        .url
        .strip_prefix("file://")
        .unwrap()
        .to_owned();
    let stop_archiver = spawn_service("s3-archiver", move |ctx| ve_s3_archiver::run(archiver, ctx));

    let document = std::path::Path::new(&archive)
        .join("invoices")
        .join(&tenant)
        .join(format!("{id}.json"));
    let query = format!(
        "SELECT invoice_id, total_micros, JSONLength(lines) AS lines FROM {database}.invoices FINAL \
         WHERE tenant_id = '{tenant}' FORMAT JSONEachRow"
    );
    let http = reqwest::Client::new();
    let mut rows = String::new();
    let mut stored = None;
    for _ in 0..600 {
        if rows.is_empty()
            && let Ok(response) = http.post(&clickhouse_url).body(query.clone()).send().await
            && response.status().is_success()
        {
            rows = response.text().await.unwrap_or_default();
        }
        if stored.is_none() {
            stored = std::fs::read(&document).ok();
        }
        if !rows.is_empty() && stored.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop_sink.cancel();
    stop_archiver.cancel();
    running.stop().await;

    let row: Value = serde_json::from_str(rows.trim()).expect("one invoice row in ClickHouse");
    assert_eq!(row["invoice_id"], json!(id));
    assert_eq!(
        row["total_micros"].as_i64(),
        invoice["total_micros"].as_i64(),
        "{row}"
    );
    assert_eq!(
        row["lines"].as_u64(),
        Some(invoice["lines"].as_array().unwrap().len() as u64)
    );
    let stored: Value =
        serde_json::from_slice(&stored.expect("invoice document archived")).unwrap();
    assert_eq!(stored["invoice_id"], json!(id));
    assert_eq!(stored["total_micros"], invoice["total_micros"]);
    assert_eq!(stored["lines"], invoice["lines"]);
}
