//! The query API on the real local stack: a ClickHouse database of the test's own with the
//! sink's schema, two tenants with known rows, a tenants topic and an alerts topic of its own.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)] // shared by several test binaries

use std::net::SocketAddr;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use ve_auth::hash_api_key;
use ve_kafka::{KafkaConfig, OutRecord, Producer, TopicSpec};
use ve_query_api::grpc::proto::query_service_client::QueryServiceClient;
use ve_query_api::{Config, DEFAULTS, Listeners};
use ve_schema::{Alert, ApiKey, Body, Codec, Envelope, Map, Source, Tenant};
use ve_store::ClickHouseConfig;
use ve_testkit::{Stack, unique};

pub const SECRET: &str = "query-secret";

pub struct Api {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    /// The tenant whose rows the tests look at, and the one whose rows must never show.
    pub mine: String,
    pub other: String,
    /// The hour the known rows lie in (event times are relative to now: retention TTLs apply).
    pub base_micros: i64,
    pub clickhouse: ClickHouseConfig,
    pub kafka: KafkaConfig,
    pub codec: Codec,
    pub alerts_topic: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), ve_service::ServiceError>>,
}

fn tenant(id: &str) -> Tenant {
    Tenant {
        tenant_id: id.into(),
        name: id.into(),
        plan: "paid".into(),
        retention_days: 90,
        rate_limit_eps: 0,
        burst: 0,
        api_keys: vec![ApiKey {
            key_id: "k".into(),
            sha256: hash_api_key(SECRET),
            revoked: false,
        }],
        currency: "USD".into(),
    }
}

pub fn envelope(tenant: &str, event_id: &str, body: Body) -> Envelope {
    let now = chrono::Utc::now().timestamp_micros();
    Envelope {
        event_id: event_id.into(),
        event_time: now,
        ingest_time: now,
        tenant_id: tenant.into(),
        source: Source {
            kind: "service".into(),
            id: "query-api-test".into(),
        },
        schema_name: body.schema_name().into(),
        schema_version: 1,
        attributes: Map::new(),
        tags: Map::new(),
        body,
    }
}

pub fn alert(rule: &str) -> Alert {
    Alert {
        rule_id: rule.into(),
        series: "host=h1".into(),
        state: "firing".into(),
        value: 95.0,
        threshold: 90.0,
        started_at: chrono::Utc::now().timestamp_micros(),
        resolved_at: None,
        message: format!("{rule} fired"),
        labels: Map::new(),
    }
}

impl Api {
    pub async fn start() -> Self {
        let stack = Stack::require();
        let kafka = stack.kafka(&unique("query_api"));
        let registry = stack.registry();
        let database = unique("qapi");
        let clickhouse = stack.clickhouse(&database);
        let _ = ve_store::migrate(&clickhouse, ve_clickhouse_sink::schema::MIGRATIONS)
            .await
            .unwrap();
        let mine = unique("alpha");
        let other = unique("beta");
        let base_micros = (chrono::Utc::now().timestamp() / 3600 - 2) * 3600 * 1_000_000;
        seed(&clickhouse, &mine, &other, base_micros).await;

        let tenants_topic = unique("control_tenants");
        let alerts_topic = unique("ops_alert");
        ve_kafka::ensure_topics(
            &kafka,
            &[
                TopicSpec::compacted(&tenants_topic),
                TopicSpec::compacted(&alerts_topic),
            ],
        )
        .await
        .unwrap();
        let codec = Codec::new(&registry).unwrap();
        let producer = Producer::new(&kafka, "query-api-test").unwrap();
        for id in [&mine, &other] {
            let envelope = envelope(id, id, Body::Tenant(tenant(id)));
            let bytes = codec.encode(&tenants_topic, &envelope).await.unwrap();
            let _ = producer
                .send(&OutRecord::new(&tenants_topic, id.clone(), bytes))
                .await
                .unwrap();
        }

        let prefix = ve_config::env_prefix("query-api");
        let env: Vec<(String, String)> = vec![
            ("KAFKA__BROKERS".into(), kafka.brokers.clone()),
            ("REGISTRY__URL".into(), registry.url.clone()),
            ("CLICKHOUSE__URL".into(), clickhouse.url.clone()),
            ("CLICKHOUSE__DATABASE".into(), database.clone()),
            (
                "CLICKHOUSE__COMPRESSION".into(),
                clickhouse.compression.clone(),
            ),
            ("TOPICS__TENANTS".into(), tenants_topic),
            ("TOPICS__ALERTS".into(), alerts_topic.clone()),
            (
                "SQL__SANDBOX_DATABASE".into(),
                format!("{database}_sandbox"),
            ),
            ("LIMITS__MAX_RESULT_ROWS".into(), "50".into()),
            ("STREAM__KEEP_ALIVE_MS".into(), "1000".into()),
        ];
        let config: Config = ve_config::Sources::new("query-api", DEFAULTS)
            .env(env.into_iter().map(|(k, v)| (format!("{prefix}{k}"), v)))
            .load()
            .unwrap();
        let listeners = Listeners {
            http: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            grpc: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        };
        let http = listeners.http.local_addr().unwrap();
        let grpc = listeners.grpc.local_addr().unwrap();
        let ctx = ve_service::Context::ephemeral("query-api").await.unwrap();
        let admin = ctx.admin.local_addr().unwrap();
        let shutdown = ctx.shutdown.clone();
        let task = tokio::spawn(ve_query_api::run_with(config, ctx, listeners));
        let api = Self {
            http,
            grpc,
            mine,
            other,
            base_micros,
            clickhouse,
            kafka,
            codec,
            alerts_topic,
            shutdown,
            task,
        };
        api.wait_ready(admin).await;
        api
    }

    async fn wait_ready(&self, admin: SocketAddr) {
        let client = reqwest::Client::new();
        let url = format!("http://{admin}/health/ready");
        for _ in 0..600 {
            assert!(
                !self.task.is_finished(),
                "query-api stopped during start-up"
            );
            if let Ok(response) = client.get(&url).send().await
                && response.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("query-api never became ready");
    }

    pub fn auth(&self, tenant: &str) -> String {
        format!("Bearer {tenant}:{SECRET}")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// `(status, JSON body)` of a REST call as `tenant`.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        tenant: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut request = reqwest::Client::new()
            .request(method, self.url(path))
            .header("authorization", self.auth(tenant));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        (status, json)
    }

    pub async fn get(&self, path: &str, tenant: &str) -> (u16, serde_json::Value) {
        self.call(reqwest::Method::GET, path, tenant, None).await
    }

    pub async fn post(
        &self,
        path: &str,
        tenant: &str,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        self.call(reqwest::Method::POST, path, tenant, Some(body))
            .await
    }

    pub async fn grpc(&self) -> QueryServiceClient<tonic::transport::Channel> {
        QueryServiceClient::connect(format!("http://{}", self.grpc))
            .await
            .unwrap()
    }

    pub fn grpc_request<T>(&self, tenant: &str, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let _ = request
            .metadata_mut()
            .insert("authorization", self.auth(tenant).parse().unwrap());
        request
    }

    /// The report range: the two hours around the known rows.
    pub fn range(&self) -> (String, String) {
        let iso = |m: i64| {
            chrono::DateTime::from_timestamp_micros(m)
                .unwrap()
                .to_rfc3339()
        };
        (
            iso(self.base_micros - 3_600_000_000),
            iso(self.base_micros + 3_600_000_000),
        )
    }

    pub async fn publish_alert(&self, tenant: &str, rule: &str) {
        let producer = Producer::new(&self.kafka, "query-api-test").unwrap();
        let envelope = envelope(tenant, &unique("alert"), Body::Alert(alert(rule)));
        let bytes = self
            .codec
            .encode(&self.alerts_topic, &envelope)
            .await
            .unwrap();
        let _ = producer
            .send(&OutRecord::new(
                &self.alerts_topic,
                format!("{tenant}/{rule}"),
                bytes,
            ))
            .await
            .unwrap();
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let outcome = tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("drains in time")
            .expect("service task");
        assert!(outcome.is_ok(), "{outcome:?}");
    }
}

/// Inserts the known rows. Event times are `base + seconds`.
async fn seed(clickhouse: &ClickHouseConfig, mine: &str, other: &str, base: i64) {
    let client = clickhouse.client().unwrap();
    let mut events = Vec::new();
    let mut n = 0;
    let mut event = |tenant: &str,
                     kind: &str,
                     event_type: &str,
                     user: &str,
                     session: &str,
                     path: &str,
                     properties: &str| {
        n += 1;
        let name = if kind == "app" { event_type } else { "" };
        events.push(format!(
            "('{tenant}-e{n}', '{tenant}', fromUnixTimestamp64Micro({t}), \
             fromUnixTimestamp64Micro({t}), '{kind}', '{event_type}', '{name}', 'app1', \
             '{session}', '{user}', '{path}', '{properties}', 90)",
            t = base + n * 1_000_000
        ));
    };
    // Mine: 4 pageviews (one path twice by one user), 3 video starts, 4 heartbeats of 15 s,
    // 3 searches: 14 events, users u1..u3, sessions s1, s2.
    for (user, session, path) in [
        ("u1", "s1", "/home"),
        ("u2", "s2", "/home"),
        ("u1", "s1", "/home"),
        ("u1", "s1", "/pricing"),
    ] {
        event(mine, "web", "pageview", user, session, path, "{}");
    }
    for (user, content) in [("u1", "c1"), ("u2", "c1"), ("u3", "c2")] {
        let props = format!(r#"{{"content_id":"{content}"}}"#);
        event(mine, "app", "video_start", user, "", "", &props);
    }
    for (user, content) in [("u1", "c1"), ("u1", "c1"), ("u3", "c2"), ("u3", "c2")] {
        let props = format!(r#"{{"content_id":"{content}","watch_seconds":15}}"#);
        event(mine, "app", "video_heartbeat", user, "", "", &props);
    }
    for (user, query, results) in [("u1", "Cats", 5), ("u2", " cats", 0), ("u1", "dogs", 2)] {
        let props = format!(r#"{{"query":"{query}","results_count":{results}}}"#);
        event(mine, "app", "search", user, "", "", &props);
    }
    // Other: rows that would change every number if they leaked.
    for _ in 0..5 {
        event(other, "web", "pageview", "x1", "sx", "/secret-beta", "{}");
    }
    event(
        other,
        "app",
        "video_heartbeat",
        "x1",
        "",
        "",
        r#"{"content_id":"secret-beta","watch_seconds":1000}"#,
    );
    event(
        other,
        "app",
        "search",
        "x1",
        "",
        "",
        r#"{"query":"secret-beta","results_count":0}"#,
    );
    let columns = "(event_id, tenant_id, event_time, ingest_time, kind, event_type, event_name, \
        app_id, session_id, user_id, path, properties, retention_days)";
    exec(
        &client,
        &format!("INSERT INTO events {columns} VALUES {}", events.join(", ")),
    )
    .await;
    // The first pageview again, as a replayed insert would land it: counted once.
    exec(
        &client,
        &format!("INSERT INTO events {columns} VALUES {}", events[0]),
    )
    .await;

    let minute = base / 60_000_000 * 60_000_000;
    let samples = [
        (mine, 0, 10.0),
        (mine, 10, 20.0),
        (mine, 70, 30.0),
        (other, 5, 999.0),
    ]
    .iter()
    .enumerate()
    .map(|(i, (tenant, secs, value))| {
        format!(
            "('{tenant}-m{i}', '{tenant}', fromUnixTimestamp64Micro({}), now64(6), 'h1', 'cpu', \
             {value}, 'percent', 90)",
            minute + secs * 1_000_000
        )
    })
    .collect::<Vec<_>>()
    .join(", ");
    exec(
        &client,
        &format!(
            "INSERT INTO metric_samples (event_id, tenant_id, event_time, ingest_time, host, \
             metric, value, unit, retention_days) VALUES {samples}"
        ),
    )
    .await;

    for (tenant, run) in [(mine, "r1"), (other, "r2")] {
        exec(
            &client,
            &format!(
                "INSERT INTO runs (event_id, tenant_id, event_time, ingest_time, run_id, \
                 pipeline_id, status, started_at, finished_at, metadata, retention_days) VALUES \
                 ('{tenant}-{run}', '{tenant}', fromUnixTimestamp64Micro({base}), now64(6), \
                 '{run}', 'p1', 'finished', fromUnixTimestamp64Micro({base}), \
                 fromUnixTimestamp64Micro({base}) + 60, '{{}}', 90)"
            ),
        )
        .await;
        exec(
            &client,
            &format!(
                "INSERT INTO steps (event_id, tenant_id, event_time, ingest_time, step_id, run_id, \
                 pipeline_id, name, position, input_count, output_count, kept_count, \
                 eliminated_count, scored_count, elimination_ratio, retention_days) VALUES \
                 ('{tenant}-s1', '{tenant}', fromUnixTimestamp64Micro({base}), now64(6), 's1', \
                 '{run}', 'p1', 'filter', 1, 100, 40, 40, 60, 0, 0.6, 90), \
                 ('{tenant}-s2', '{tenant}', fromUnixTimestamp64Micro({base}), now64(6), 's2', \
                 '{run}', 'p1', 'rank', 2, 40, 10, 10, 30, 40, 0.75, 90)"
            ),
        )
        .await;
        exec(
            &client,
            &format!(
                "INSERT INTO invoices (event_id, tenant_id, event_time, ingest_time, invoice_id, \
                 period_start, period_end, plan, currency, lines, subtotal_micros, total_micros, \
                 issued_at, retention_days) VALUES ('{tenant}-i', '{tenant}', now64(6), now64(6), \
                 'inv-{run}', fromUnixTimestamp64Micro({base}), fromUnixTimestamp64Micro({base}) \
                 + 3600, 'paid', 'USD', '[]', 1234000, 1234000, now64(6), 0)"
            ),
        )
        .await;
        exec(
            &client,
            &format!(
                "INSERT INTO alerts (event_id, tenant_id, event_time, ingest_time, rule_id, \
                 series, state, value, threshold, started_at, message, retention_days) VALUES \
                 ('{tenant}-a', '{tenant}', now64(6), now64(6), 'rule-{run}', 'host=h1', \
                 'firing', 95, 90, now64(6), 'hot', 90)"
            ),
        )
        .await;
        exec(
            &client,
            &format!(
                "INSERT INTO dead_letters (src_topic, src_partition, src_offset, key, payload, \
                 payload_bytes, reason, stage, source_topic, source_partition, source_offset, \
                 dead_at, tenant_id, event_id) VALUES ('t.dlq', 0, 1, '', 'x', 1, 'bad {run}', \
                 'normalizer', 'ingest.raw.v1', 0, {n}, now64(3), '{tenant}', '{run}-dead')",
                n = if tenant == mine { 1 } else { 2 }
            ),
        )
        .await;
    }
}

async fn exec(client: &clickhouse::Client, sql: &str) {
    client
        .query_raw(sql)
        .execute()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}
