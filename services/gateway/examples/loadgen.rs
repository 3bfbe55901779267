//! Load generator: starts a gateway on the local stack (its own topics and tenant), sends a
//! bounded number of batches over HTTP from concurrent clients, and prints the durable ingest
//! rate and latency. A benchmark, not a test: nothing here asserts a time.
//!
//! `cargo run --release -p ve-gateway --example loadgen -- [events] [batch] [concurrency]`
//! (defaults 200000 100 32).

#![allow(clippy::unwrap_used)] // a load tool: a failure is the answer

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use ve_gateway::{Config, DEFAULTS, Listeners, hash_api_key};
use ve_kafka::{OutRecord, Producer, TopicSpec};
use ve_schema::{ApiKey, Body, Codec, Envelope, Map, Source, Tenant};
use ve_testkit::{Stack, unique};

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numeric arguments"))
        .collect();
    let total = args.first().copied().unwrap_or(200_000);
    let batch = args.get(1).copied().unwrap_or(100);
    let concurrency = args.get(2).copied().unwrap_or(32);

    let stack = Stack::require();
    let kafka = stack.kafka(&unique("loadgen"));
    let registry = stack.registry();
    let tenants_topic = unique("control_tenants");
    let raw_topic = unique("ingest_raw");
    ve_kafka::ensure_topics(&kafka, &[TopicSpec::compacted(&tenants_topic)])
        .await
        .unwrap();
    let codec = Codec::new(&registry).unwrap();
    let tenant = Tenant {
        tenant_id: "load".into(),
        name: "load".into(),
        plan: "enterprise".into(),
        retention_days: 1,
        rate_limit_eps: 0,
        burst: 0,
        api_keys: vec![ApiKey {
            key_id: "k".into(),
            sha256: hash_api_key("secret"),
            revoked: false,
        }],
        currency: "USD".into(),
    };
    let envelope = Envelope {
        event_id: "load".into(),
        event_time: 0,
        ingest_time: 0,
        tenant_id: "load".into(),
        source: Source {
            kind: "service".into(),
            id: "loadgen".into(),
        },
        schema_name: "ve.v1.Tenant".into(),
        schema_version: 1,
        attributes: Map::new(),
        tags: Map::new(),
        body: Body::Tenant(tenant),
    };
    let bytes = codec.encode(&tenants_topic, &envelope).await.unwrap();
    let _ = Producer::new(&kafka, "loadgen")
        .unwrap()
        .send(&OutRecord::new(&tenants_topic, "load", bytes))
        .await
        .unwrap();

    let prefix = ve_config::env_prefix("gateway");
    let env = [
        ("KAFKA__BROKERS", kafka.brokers.clone()),
        ("REGISTRY__URL", registry.url.clone()),
        ("TOPICS__RAW", raw_topic.clone()),
        ("TOPICS__TENANTS", tenants_topic),
        ("LOG__LEVEL", "warn".into()),
    ];
    let config: Config = ve_config::Sources::new("gateway", DEFAULTS)
        .env(env.into_iter().map(|(k, v)| (format!("{prefix}{k}"), v)))
        .load()
        .unwrap();
    let listeners = Listeners {
        http: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        grpc: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    };
    let http = listeners.http.local_addr().unwrap();
    let ctx = ve_service::Context::ephemeral("gateway").await.unwrap();
    let admin = ctx.admin.local_addr().unwrap();
    let shutdown = ctx.shutdown.clone();
    let running = tokio::spawn(ve_gateway::run_with(config, ctx, listeners));
    let client = reqwest::Client::new();
    for _ in 0..600 {
        if let Ok(r) = client
            .get(format!("http://{admin}/health/ready"))
            .send()
            .await
            && r.status() == 200
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // ~300-byte events, as in the target.
    let events: Vec<_> = (0..batch)
        .map(|i| {
            json!({
                "id": uuid::Uuid::new_v4().to_string(),
                "session_id": "11111111-1111-1111-1111-111111111111",
                "timestamp": "2024-01-01T00:00:00Z",
                "type": "pageview",
                "title": "Home",
                "path": format!("/products/{i}"),
                "url": format!("https://shop.example.com/products/{i}?utm_source=newsletter"),
                "referrer": "https://www.example.org/",
                "user_id": "user_550e8400",
            })
        })
        .collect();
    let body = Arc::new(serde_json::to_vec(&json!({ "events": events })).unwrap());
    println!(
        "{total} events in batches of {batch} ({} bytes/request), {concurrency} clients",
        body.len()
    );

    let requests = total.div_ceil(batch);
    let cpu_before = cpu_seconds();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, body, next) = (client.clone(), Arc::clone(&body), Arc::clone(&next));
        let url = format!("http://{http}/ingest");
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < requests {
                let sent = Instant::now();
                let response = client
                    .post(&url)
                    .header("authorization", "Bearer load:secret")
                    .header("content-type", "application/json")
                    .body(body.as_ref().clone())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200, "{:?}", response.text().await);
                let _ = response.bytes().await.unwrap();
                latencies.push(sent.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let sent = requests * batch;
    println!(
        "{sent} events durable in {:.2}s: {:.0} events/s; request latency p50 {:?} p99 {:?}",
        elapsed.as_secs_f64(),
        sent as f64 / elapsed.as_secs_f64(),
        pct(0.5),
        pct(0.99)
    );
    // CPU time says more than wall time on a shared 2-core machine (the broker runs here too).
    let cpu = cpu_seconds() - cpu_before;
    println!(
        "process CPU (gateway + load clients): {cpu:.2}s, {:.1} µs per event",
        cpu * 1e6 / sent as f64
    );
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        for line in status
            .lines()
            .filter(|l| l.starts_with("VmHWM") || l.starts_with("VmRSS"))
        {
            println!("process (gateway + load clients) {line}");
        }
    }
    shutdown.cancel();
    let _ = running.await;
}

/// User + system CPU seconds of this process so far (Linux; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesized command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    // USER_HZ is 100 on every Linux we run on.
    ticks / 100.0
}
