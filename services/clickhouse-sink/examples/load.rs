//! Load figure for the sink on the local stack (a benchmark, not a test): pre-produces N enriched
//! web/app events (~300 B each) to a fresh topic, starts the sink, and reports how fast they land
//! in ClickHouse.
//!
//! `cargo run --release -p ve-clickhouse-sink --example load -- 100000`

#![allow(clippy::unwrap_used)] // a benchmark: a failed unwrap is a failed run

use std::time::{Duration, Instant};

use ve_clickhouse_sink::{Config, DEFAULTS, SERVICE, run};
use ve_kafka::{OutRecord, Producer, TopicSpec, ensure_topics};
use ve_schema::{AppEvent, Body, Codec, Envelope, Map, Source, WebEvent};
use ve_service::Context;
use ve_testkit::{Stack, unique};

#[tokio::main]
async fn main() {
    let total: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(50_000);
    let stack = Stack::require();
    let kafka = stack.kafka(&unique("load"));
    let topic = unique("load.enriched");
    let spec = [
        TopicSpec::new(&topic),
        TopicSpec::new(format!("{topic}.dlq")),
    ];
    ensure_topics(&kafka, &spec).await.unwrap();
    let codec = Codec::new(&stack.registry()).unwrap();
    let producer = Producer::new(&kafka, "load").unwrap();
    let now = chrono::Utc::now().timestamp_micros();

    let started = Instant::now();
    for chunk in (0..total).collect::<Vec<_>>().chunks(1000) {
        let mut records = Vec::with_capacity(chunk.len());
        for i in chunk {
            let body = if i % 2 == 0 {
                Body::Web(WebEvent {
                    event_type: "pageview".into(),
                    session_id: format!("s{}", i % 100),
                    user_id: Some(format!("u{}", i % 1000)),
                    url: Some("https://example.com/products/42".into()),
                    path: Some("/products/42".into()),
                    title: Some("Product 42".into()),
                    referrer: None,
                    user_agent: None,
                    selector: None,
                    scroll_depth: None,
                    name: None,
                    metrics: Default::default(),
                    properties: "{}".into(),
                })
            } else {
                Body::App(AppEvent {
                    app_id: "openstream".into(),
                    event_name: "video_heartbeat".into(),
                    user_id: format!("u{}", i % 1000),
                    properties: r#"{"stream_id":"st-998877","watch_ms":5000}"#.into(),
                })
            };
            let envelope = Envelope {
                event_id: format!("load-{i}"),
                event_time: now + *i as i64,
                ingest_time: now + *i as i64,
                tenant_id: "load".into(),
                source: Source {
                    kind: "sdk".into(),
                    id: "load".into(),
                },
                schema_name: body.schema_name().into(),
                schema_version: 1,
                attributes: Map::new(),
                tags: Map::from([("retention_days".into(), "1".into())]),
                body,
            };
            let bytes = codec.encode(&topic, &envelope).await.unwrap();
            records.push(OutRecord::new(&topic, envelope.event_id, bytes));
        }
        let _ = producer.send_all(&records).await.unwrap();
    }
    println!(
        "produced {total} events in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let database = unique("ve_load");
    let prefix = ve_config::env_prefix(SERVICE);
    let mut env = stack.service_env(SERVICE);
    env.retain(|(key, _)| !key.starts_with(&format!("{prefix}OBJECT_STORE")));
    env.extend(
        [
            ("KAFKA__GROUP_ID", unique("load")),
            ("CLICKHOUSE__DATABASE", database.clone()),
            ("TOPICS__ENRICHED", topic.clone()),
            ("TOPICS__DEAD_LETTERS", format!("[{topic}.dlq]")),
        ]
        .map(|(k, v)| (format!("{prefix}{k}"), v)),
    );
    let config: Config = ve_config::Sources::new(SERVICE, DEFAULTS)
        .env(env)
        .load()
        .unwrap();
    let client = stack.clickhouse(&database).client().unwrap();
    let ctx = Context::ephemeral(SERVICE).await.unwrap();
    let shutdown = ctx.shutdown.clone();
    let sink = tokio::spawn(run(config, ctx));

    let mut first: Option<Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let landed: u64 = client
            .query("SELECT count() FROM events")
            .fetch_one()
            .await
            .unwrap_or(0);
        if landed > 0 && first.is_none() {
            first = Some(Instant::now());
        }
        if landed as usize >= total {
            break;
        }
    }
    let elapsed = first.map(|f| f.elapsed()).unwrap_or_default();
    println!(
        "landed {total} events in {:.1} s after the first row: {:.0} events/s",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64().max(0.001)
    );
    // Peak RSS of this process (producer and sink together), the budget being 100 MiB a service.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if let Some(line) = status.lines().find(|l| l.starts_with("VmHWM")) {
        let peak = line.trim_start_matches("VmHWM:").trim();
        println!("peak RSS (producer + sink): {peak}");
    }
    shutdown.cancel();
    let _ = sink.await;
    client
        .query(&format!("DROP DATABASE {database}"))
        .execute()
        .await
        .unwrap();
}
