//! `ve-load`: drives the gateway like a fleet of SDKs and reports what a user would measure.
//!
//! ```text
//! ve-load --gateway http://127.0.0.1:8080 --tenant acme --key SECRET \
//!         [--rate 5000 | --rate 0 (flat out)] [--duration 30] [--batch 100] [--concurrency 16]
//!         [--mix web=70,app=20,metric=10] [--size 300]
//!         [--clickhouse http://127.0.0.1:8123 --database value_engine --compression none]
//! ```
//!
//! Throughput counts only events the gateway acknowledged (2xx, `events_accepted`), i.e. durable
//! in the broker. With `--clickhouse`, it then waits until the run's events are visible in
//! ClickHouse and reports end-to-end latency (event timestamp, set at send time, to the row's
//! `inserted_at`) as p50/p95/p99.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::{Mutex, mpsc};

#[derive(Debug, Clone)]
struct Args {
    gateway: String,
    tenant: String,
    key: String,
    rate: u64,
    duration: Duration,
    batch: usize,
    concurrency: usize,
    mix: Vec<(Kind, u32)>,
    size: usize,
    clickhouse: Option<String>,
    database: String,
    compression: String,
    wait: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Web,
    App,
    Metric,
}

impl Kind {
    fn route(self) -> &'static str {
        match self {
            Self::Web => "/ingest",
            Self::App => "/v1/app-events",
            Self::Metric => "/v1/metrics",
        }
    }

    fn field(self) -> &'static str {
        if self == Self::Metric {
            "samples"
        } else {
            "events"
        }
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: ve-load --gateway URL --tenant ID --key SECRET [--rate EVENTS_PER_S|0] [--duration S] \
         [--batch N] [--concurrency N] [--mix web=70,app=20,metric=10] [--size BYTES] \
         [--clickhouse URL [--database DB] [--compression none|lz4] [--wait S]]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let mut map = BTreeMap::new();
    let mut it = raw.iter();
    while let Some(flag) = it.next() {
        let Some(name) = flag.strip_prefix("--") else {
            usage()
        };
        let Some(value) = it.next() else { usage() };
        let _ = map.insert(name.to_owned(), value.clone());
    }
    let get = |k: &str, d: &str| map.get(k).cloned().unwrap_or_else(|| d.to_owned());
    let num = |k: &str, d: &str| get(k, d).parse::<u64>().unwrap_or_else(|_| usage());
    let mix = get("mix", "web=100")
        .split(',')
        .map(|part| {
            let (kind, weight) = part.split_once('=').unwrap_or_else(|| usage());
            let kind = match kind {
                "web" => Kind::Web,
                "app" => Kind::App,
                "metric" => Kind::Metric,
                _ => usage(),
            };
            (kind, weight.parse().unwrap_or_else(|_| usage()))
        })
        .collect();
    Args {
        gateway: get("gateway", "http://127.0.0.1:8080")
            .trim_end_matches('/')
            .to_owned(),
        tenant: map.get("tenant").cloned().unwrap_or_else(|| usage()),
        key: map.get("key").cloned().unwrap_or_else(|| usage()),
        rate: num("rate", "0"),
        duration: Duration::from_secs(num("duration", "30")),
        batch: num("batch", "100") as usize,
        concurrency: num("concurrency", "16") as usize,
        mix,
        size: num("size", "300") as usize,
        clickhouse: map.get("clickhouse").cloned(),
        database: get("database", "value_engine"),
        compression: get("compression", "none"),
        wait: Duration::from_secs(num("wait", "120")),
    }
}

/// One event of `kind`, padded to about `size` bytes of JSON, stamped with the send time.
fn event(kind: Kind, run: &str, seq: u64, size: usize) -> Value {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let mut value = match kind {
        Kind::Web => json!({
            "id": uuid::Uuid::new_v4().to_string(),
            "session_id": run,
            "timestamp": now,
            "type": "pageview",
            "title": "Load test",
            "path": format!("/page/{}", seq % 50),
            "url": format!("https://load.example/page/{}", seq % 50),
            "referrer": "https://search.example/",
            "properties": {},
        }),
        Kind::App => json!({
            "app_id": "ve-load",
            "event_name": "video_heartbeat",
            "user_id": format!("{run}-u{}", seq % 1000),
            "timestamp": now,
            "properties": {"watch_ms": 5000, "stream_id": format!("st-{}", seq % 100), "run": run},
        }),
        Kind::Metric => json!({
            "host": format!("load-{}", seq % 20),
            "metric": "cpu_load",
            "value": (seq % 100) as f64,
            "unit": "percent",
            "timestamp": now,
            "tags": {"run": run},
        }),
    };
    let current = value.to_string().len();
    if current < size {
        let pad = "x".repeat(size - current - 12);
        match kind {
            Kind::Metric => value["tags"]["pad"] = json!(pad),
            _ => value["properties"]["pad"] = json!(pad),
        }
    }
    value
}

#[derive(Debug, Default)]
struct Tally {
    accepted: AtomicU64,
    rejected: AtomicU64,
    statuses: Mutex<BTreeMap<u16, u64>>,
    latencies_us: Mutex<Vec<u64>>,
    per_kind: Mutex<BTreeMap<String, u64>>,
}

fn quantiles(mut v: Vec<u64>) -> Option<[u64; 3]> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    Some([at(0.50), at(0.95), at(0.99)])
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let run = format!("load-{}", uuid::Uuid::new_v4().simple());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(30))
        .no_proxy()
        .build()
        .unwrap_or_else(|e| panic!("http client: {e}"));
    let tally = Arc::new(Tally::default());
    let weights: u32 = args.mix.iter().map(|(_, w)| w).sum();

    // Tickets (one per batch) at the requested rate; flat out when rate is 0.
    let (tx, rx) = mpsc::channel::<u64>(args.concurrency * 2);
    let rx = Arc::new(Mutex::new(rx));
    let started = Instant::now();
    let ticker = {
        let args = args.clone();
        tokio::spawn(async move {
            let mut seq = 0u64;
            let mut interval = (args.rate > 0).then(|| {
                let period = Duration::from_secs_f64(args.batch as f64 / args.rate as f64);
                let mut i = tokio::time::interval(period);
                i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                i
            });
            while started.elapsed() < args.duration {
                if let Some(i) = interval.as_mut() {
                    let _ = i.tick().await;
                }
                if tx.send(seq).await.is_err() {
                    break;
                }
                seq += 1;
            }
        })
    };

    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (client, args, tally, rx, run) = (
            client.clone(),
            args.clone(),
            Arc::clone(&tally),
            Arc::clone(&rx),
            run.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let Some(batch_no) = rx.lock().await.recv().await else {
                    break;
                };
                // One kind per batch, in the mix's proportions and interleaved (a plain
                // `batch_no % weights` would send all of one kind first): batch numbers are
                // scattered by a multiplicative hash before taking the weighted slot.
                let scattered = batch_no.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
                let mut pick = (scattered % u64::from(weights.max(1))) as u32;
                let kind = args
                    .mix
                    .iter()
                    .find(|(_, w)| {
                        if pick < *w {
                            true
                        } else {
                            pick -= w;
                            false
                        }
                    })
                    .map_or(Kind::Web, |(k, _)| *k);
                let events: Vec<Value> = (0..args.batch as u64)
                    .map(|i| event(kind, &run, batch_no * args.batch as u64 + i, args.size))
                    .collect();
                let body = json!({ kind.field(): events });
                let sent = Instant::now();
                let response = client
                    .post(format!("{}{}", args.gateway, kind.route()))
                    .bearer_auth(format!("{}:{}", args.tenant, args.key))
                    .json(&body)
                    .send()
                    .await;
                let elapsed = sent.elapsed().as_micros() as u64;
                let (status, accepted, rejected) = match response {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let body: Value = r.json().await.unwrap_or(Value::Null);
                        let accepted = body["events_accepted"].as_u64().unwrap_or(0);
                        let rejected = body["events_rejected"]
                            .as_u64()
                            .unwrap_or(if status >= 300 { args.batch as u64 } else { 0 });
                        (status, accepted, rejected)
                    }
                    Err(_) => (0, 0, args.batch as u64),
                };
                let _ = tally.accepted.fetch_add(accepted, Ordering::Relaxed);
                let _ = tally.rejected.fetch_add(rejected, Ordering::Relaxed);
                *tally.statuses.lock().await.entry(status).or_default() += 1;
                tally.latencies_us.lock().await.push(elapsed);
                *tally
                    .per_kind
                    .lock()
                    .await
                    .entry(format!("{kind:?}").to_lowercase())
                    .or_default() += accepted;
            }
        }));
    }
    let _ = ticker.await;
    for w in workers {
        let _ = w.await;
    }
    let wall = started.elapsed();
    let accepted = tally.accepted.load(Ordering::Relaxed);
    let rejected = tally.rejected.load(Ordering::Relaxed);
    let http = quantiles(std::mem::take(&mut *tally.latencies_us.lock().await));

    println!("| run | {run} |\n|---|---|");
    println!(
        "| target rate | {} |",
        if args.rate == 0 {
            "flat out".to_owned()
        } else {
            format!("{} events/s", args.rate)
        }
    );
    println!(
        "| batch / concurrency / event size | {} / {} / ~{} B |",
        args.batch, args.concurrency, args.size
    );
    println!("| duration | {:.1} s |", wall.as_secs_f64());
    println!(
        "| accepted (durable) | {accepted} ({:.0} events/s) |",
        accepted as f64 / wall.as_secs_f64()
    );
    println!("| rejected | {rejected} |");
    println!("| by kind | {:?} |", tally.per_kind.lock().await);
    println!(
        "| HTTP statuses (batches) | {:?} |",
        tally.statuses.lock().await
    );
    if let Some([p50, p95, p99]) = http {
        println!(
            "| batch request latency p50/p95/p99 | {:.1} / {:.1} / {:.1} ms |",
            p50 as f64 / 1e3,
            p95 as f64 / 1e3,
            p99 as f64 / 1e3
        );
    }
    if let Some(url) = &args.clickhouse {
        end_to_end(&args, url, &run, &tally, started, wall).await;
    }
}

/// Waits until every accepted web/app event of this run is in ClickHouse, then reports how fast
/// the whole path carried them (first send to last row visible) and the latency from send time to
/// insertion.
async fn end_to_end(
    args: &Args,
    url: &str,
    run: &str,
    tally: &Tally,
    started: Instant,
    sending: Duration,
) {
    let per_kind = tally.per_kind.lock().await.clone();
    let expected: u64 = per_kind
        .iter()
        .filter(|(k, _)| *k != "metric")
        .map(|(_, n)| n)
        .sum();
    let config = ve_store::ClickHouseConfig {
        url: url.to_owned(),
        database: args.database.clone(),
        user: "default".into(),
        password: ve_config::Secret::default(),
        compression: args.compression.clone(),
    };
    let client = match config.client() {
        Ok(c) => c,
        Err(e) => {
            println!("| end-to-end | cannot reach ClickHouse: {e} |");
            return;
        }
    };
    // Web events carry the run as session id; app events carry it in properties.
    let filter = "(session_id = ? OR JSONExtractString(properties, 'run') = ?)";
    let deadline = Instant::now() + args.wait;
    let mut seen = 0u64;
    while Instant::now() < deadline {
        seen = client
            .query(&format!(
                "SELECT count() FROM (SELECT event_id FROM events FINAL WHERE {filter})"
            ))
            .bind(run)
            .bind(run)
            .fetch_one()
            .await
            .unwrap_or(0);
        if seen >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let path = started.elapsed();
    println!("| visible in ClickHouse (web+app) | {seen} of {expected} accepted |");
    if seen >= expected && expected > 0 {
        println!(
            "| whole path (web+app, first send -> last row visible) | {:.1} s = {:.0} events/s; last row {:.1} s after sending ended |",
            path.as_secs_f64(),
            expected as f64 / path.as_secs_f64(),
            path.saturating_sub(sending).as_secs_f64()
        );
    }
    let q: Result<Vec<f64>, _> = client
        .query(&format!(
            "SELECT arrayJoin(quantiles(0.5, 0.95, 0.99)(dateDiff('microsecond', event_time, inserted_at))) \
             FROM events WHERE {filter}"
        ))
        .bind(run)
        .bind(run)
        .fetch_all()
        .await;
    match q {
        Ok(v) if v.len() == 3 => println!(
            "| end-to-end latency p50/p95/p99 (send -> row in ClickHouse) | {:.0} / {:.0} / {:.0} ms |",
            v[0] / 1e3,
            v[1] / 1e3,
            v[2] / 1e3
        ),
        Ok(_) => println!("| end-to-end latency | no rows |"),
        Err(e) => println!("| end-to-end latency | query failed: {e} |"),
    }
}
