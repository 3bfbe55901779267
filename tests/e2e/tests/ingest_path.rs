//! The ingest path end to end on the real local stack: every event kind, sent through the
//! gateway over HTTP, gRPC and OTLP, is found exactly once in ClickHouse and exactly once in the
//! archive, normalized and enriched — also when the clickhouse-sink and s3-archiver crash and
//! restart mid-stream.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed assertion

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message as _;
use serde_json::json;
use ve_e2e::{CHROME, Pipeline, pipeline};
use ve_gateway::grpc::proto::ingest_service_client::IngestServiceClient;
use ve_gateway::grpc::proto::{Event, IngestRequest};

/// A fixed timestamp per (round, n): re-sending a round sends byte-identical events, as a
/// client retry does.
fn ts(p: &Pipeline, round: u32, n: u32) -> String {
    let at = p.base
        + chrono::Duration::seconds(i64::from(round))
        + chrono::Duration::milliseconds(i64::from(n));
    at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn otlp(
    service: &str,
    trace: u8,
    spans: u8,
    start: chrono::DateTime<chrono::Utc>,
) -> ExportTraceServiceRequest {
    let text = |s: &str| {
        Some(AnyValue {
            value: Some(any_value::Value::StringValue(s.into())),
        })
    };
    let start = start.timestamp_nanos_opt().unwrap() as u64;
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: text(service),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: (1..=spans)
                    .map(|i| Span {
                        trace_id: vec![trace; 16],
                        span_id: vec![i; 8],
                        name: format!("GET /item/{i}"),
                        kind: 2,
                        start_time_unix_nano: start,
                        end_time_unix_nano: start + 25_000_000,
                        attributes: vec![KeyValue {
                            key: "HTTP.Method".into(),
                            value: text("GET"),
                            ..Default::default()
                        }],
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// What one `send_every_kind` call sends, per ClickHouse table.
const PER_ROUND: [(&str, u64); 6] = [
    ("events", 8),
    ("metric_samples", 2),
    ("spans", 5),
    ("runs", 1),
    ("steps", 2),
    ("decision_events", 2),
];

/// Sends every kind through every channel; ids are unique per `round`.
async fn send_every_kind(p: &Pipeline, round: u32) {
    let id = |n: u32| format!("{}-r{round}-{n}", p.prefix);
    // HTTP: the five web types (seed 001), one malformed event that must be refused alone.
    let web = p
        .post(
            "/ingest",
            json!({"events": [
                {"id": id(1), "session_id": "s1", "timestamp": ts(p, round, 1), "type": "pageview", "title": "Home", "path": "/", "user_agent": CHROME},
                {"id": id(2), "session_id": "s1", "timestamp": ts(p, round, 2), "type": "click", "selector": "#buy"},
                {"id": id(3), "session_id": "s1", "timestamp": ts(p, round, 3), "type": "scroll", "scroll_depth": 0.5},
                {"id": id(4), "session_id": "s1", "timestamp": ts(p, round, 4), "type": "performance", "metrics": {"lcp": 1200.0}},
                {"id": id(5), "session_id": "s1", "timestamp": ts(p, round, 5), "type": "custom", "name": "signup"},
                {"id": id(6), "session_id": "s1", "timestamp": "yesterday-ish", "type": "pageview"}
            ]}),
        )
        .await;
    assert_eq!(
        (
            web["events_accepted"].as_u64(),
            web["events_rejected"].as_u64()
        ),
        (Some(5), Some(1)),
        "{web}"
    );
    assert_eq!(web["rejected"][0]["index"], 5, "{web}");
    assert!(
        web["rejected"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("timestamp"),
        "{web}"
    );

    // HTTP: app events (seed 004), metric samples (seed 003), pipeline telemetry (seed 002).
    let app = p
        .post(
            "/v1/app-events",
            json!({"events": [
                {"app_id": "openstream", "event_name": "video_heartbeat", "user_id": format!("u-{round}"), "timestamp": ts(p, round, 6), "properties": {"watch_ms": 5000}}
            ]}),
        )
        .await;
    assert_eq!(app["events_accepted"], 1, "{app}");
    let metrics = p
        .post(
            "/v1/metrics",
            json!({"samples": [
                {"host": "web-1", "metric": "cpu_load", "value": 92.5, "unit": "%", "timestamp": ts(p, round, 7), "tags": {"Region": "eu"}},
                {"host": "web-1", "metric": "latency", "value": 250.0 + f64::from(round), "unit": "ms", "tags": {"Region": "eu"}, "timestamp": ts(p, round, 8)}
            ]}),
        )
        .await;
    assert_eq!(metrics["events_accepted"], 2, "{metrics}");
    let run = id(100);
    let pipeline = p
        .post(
            "/v1/pipeline",
            json!({
                "runs": [{"run_id": run, "pipeline_id": "ranker", "status": "succeeded", "started_at": ts(p, round, 9)}],
                "steps": [
                    {"step_id": id(101), "run_id": run, "pipeline_id": "ranker", "name": "filter", "position": 1, "input_count": 100, "output_count": 40, "kept_count": 40, "eliminated_count": 60},
                    {"step_id": id(102), "run_id": run, "pipeline_id": "ranker", "name": "score", "position": 2, "input_count": 40, "output_count": 10, "kept_count": 10, "eliminated_count": 30, "scored_count": 40}
                ],
                "decisions": [
                    {"decision_id": id(103), "step_id": id(101), "run_id": run, "pipeline_id": "ranker", "item_id": "i1", "outcome": "kept", "score": 0.9},
                    {"decision_id": id(104), "step_id": id(101), "run_id": run, "pipeline_id": "ranker", "item_id": "i2", "outcome": "eliminated"}
                ]
            }),
        )
        .await;
    assert_eq!(pipeline["events_accepted"], 5, "{pipeline}");

    // OTLP/HTTP protobuf (2 spans) and OTLP/HTTP JSON (1 span).
    let trace = (round % 200) as u8 + 1;
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/traces", p.http))
        .header("authorization", p.auth())
        .header("content-type", "application/x-protobuf")
        .body(otlp("checkout", trace, 2, p.base).encode_to_vec())
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/traces", p.http))
        .header("authorization", p.auth())
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&otlp("cart", trace.wrapping_add(100), 1, p.base)).unwrap())
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());

    // gRPC: the ingest service (a web and an app event) and OTLP TraceService (2 spans).
    let endpoint = format!("http://{}", p.grpc);
    let mut ingest = IngestServiceClient::connect(endpoint.clone())
        .await
        .unwrap();
    let mut request = tonic::Request::new(IngestRequest {
        events: vec![
            Event {
                kind: "web".into(),
                json: json!({"id": id(7), "session_id": "s2", "timestamp": ts(p, round, 10), "type": "pageview", "path": "/grpc"}).to_string().into_bytes(),
            },
            Event {
                kind: "app".into(),
                json: json!({"app_id": "openstream", "event_name": "play", "user_id": "u-grpc", "timestamp": ts(p, round, 11), "properties": {"round": round}}).to_string().into_bytes(),
            },
        ],
        source_id: "e2e-grpc".into(),
    });
    let _ = request
        .metadata_mut()
        .insert("authorization", p.auth().parse().unwrap());
    let answer = ingest.ingest(request).await.unwrap().into_inner();
    assert_eq!(answer.events_accepted, 2, "{answer:?}");
    let mut traces = TraceServiceClient::connect(endpoint).await.unwrap();
    let mut request = tonic::Request::new(otlp("search", trace.wrapping_add(50), 2, p.base));
    let _ = request
        .metadata_mut()
        .insert("authorization", p.auth().parse().unwrap());
    let _ = traces.export(request).await.unwrap();
}

async fn count(client: &clickhouse::Client, table: &str, tenant: &str, final_: bool) -> u64 {
    let sql = format!(
        "SELECT count() FROM {table} {} WHERE tenant_id = ?",
        if final_ { "FINAL" } else { "" }
    );
    client
        .query(&sql)
        .bind(tenant)
        .fetch_one()
        .await
        .unwrap_or(0)
}

/// Waits until every table holds `rounds` worth of rows, then checks there are no more.
async fn assert_exactly_once_in_clickhouse(p: &Pipeline, rounds: u64) {
    let client = p.clickhouse();
    for (table, per_round) in PER_ROUND {
        let expected = per_round * rounds;
        let mut seen = 0;
        for _ in 0..600 {
            seen = count(&client, table, &p.tenant, false).await;
            if seen >= expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Anything late would be a duplicate: give it a moment to show up.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let raw = count(&client, table, &p.tenant, false).await;
        let distinct: u64 = client
            .query(&format!(
                "SELECT uniqExact(event_id) FROM {table} WHERE tenant_id = ?"
            ))
            .bind(&p.tenant)
            .fetch_one()
            .await
            .unwrap();
        assert_eq!(
            (raw, distinct),
            (expected, expected),
            "{table}: rows / distinct events (saw {seen})"
        );
        assert_eq!(
            count(&client, table, &p.tenant, true).await,
            expected,
            "{table} FINAL"
        );
    }
}

/// What the archive holds for `tenant`: the lines of the JSON Lines segment objects under
/// `raw/{tenant}/`, counted per kind (the key's second part) and per event id.
#[derive(Debug, Default, PartialEq)]
struct Archived {
    per_kind: BTreeMap<String, u64>,
    per_event: BTreeMap<String, u64>,
}

fn archived(root: &Path, tenant: &str) -> Archived {
    let mut found = Archived::default();
    let base = root.join("raw").join(tenant);
    let Ok(kinds) = std::fs::read_dir(&base) else {
        return found;
    };
    for kind in kinds.flatten() {
        let mut n = 0;
        let mut stack = vec![kind.path()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(dir).unwrap().flatten() {
                let path = entry.path();
                if entry.file_type().unwrap().is_dir() {
                    stack.push(path);
                    continue;
                }
                assert!(
                    path.extension().is_some_and(|e| e == "jsonl"),
                    "only segment objects under raw/: {}",
                    path.display()
                );
                // PUTs replace objects atomically: a file is always a whole segment.
                let bytes = std::fs::read(&path).unwrap();
                for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    let line: serde_json::Value = serde_json::from_slice(line)
                        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    let id = line["event_id"].as_str().unwrap().to_owned();
                    *found.per_event.entry(id).or_default() += 1;
                    n += 1;
                }
            }
        }
        let _ = found
            .per_kind
            .insert(kind.file_name().to_string_lossy().into_owned(), n);
    }
    found
}

async fn assert_exactly_once_in_archive(p: &Pipeline, rounds: u64) {
    let expected = BTreeMap::from([
        ("app".to_owned(), 2 * rounds),
        ("decision".to_owned(), 2 * rounds),
        ("metric".to_owned(), 2 * rounds),
        ("run".to_owned(), rounds),
        ("span".to_owned(), 5 * rounds),
        ("step".to_owned(), 2 * rounds),
        ("web".to_owned(), 6 * rounds),
    ]);
    let mut seen = Archived::default();
    for _ in 0..300 {
        seen = archived(&p.archive, &p.tenant);
        if seen.per_kind == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        seen.per_kind, expected,
        "events per kind under raw/{}/",
        p.tenant
    );
    let copies: Vec<(&String, &u64)> = seen.per_event.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        copies.is_empty(),
        "events archived more than once: {copies:?}"
    );
    assert_eq!(
        seen.per_event.len() as u64,
        expected.values().sum::<u64>(),
        "distinct events under raw/{}/",
        p.tenant
    );
}

async fn assert_normalized_and_enriched(p: &Pipeline) {
    let client = p.clickhouse();
    let (browser, plan, retention): (String, String, u16) = client
        .query("SELECT browser, tags['plan'], retention_days FROM events FINAL WHERE tenant_id = ? AND event_type = 'pageview' AND path = '/' LIMIT 1")
        .bind(&p.tenant)
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(
        (browser.as_str(), plan.as_str(), retention),
        ("Chrome", "paid", 90)
    );
    let (unit, value, env, region): (String, f64, String, String) = client
        .query("SELECT unit, value, tags['host.env'], tags['region'] FROM metric_samples FINAL WHERE tenant_id = ? AND metric = 'latency' LIMIT 1")
        .bind(&p.tenant)
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(unit, "s", "ms normalized to seconds");
    assert!((0.25..0.5).contains(&value), "{value}");
    assert_eq!(
        (env.as_str(), region.as_str()),
        ("prod", "eu"),
        "CMDB host tags and lowercased tag keys"
    );
    let services: Vec<String> = client
        .query("SELECT DISTINCT service_name FROM spans FINAL WHERE tenant_id = ? ORDER BY service_name")
        .bind(&p.tenant)
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(services, ["cart", "checkout", "search"]);
    let ratio: f64 = client
        .query("SELECT elimination_ratio FROM steps FINAL WHERE tenant_id = ? AND name = 'filter' LIMIT 1")
        .bind(&p.tenant)
        .fetch_one()
        .await
        .unwrap();
    assert!((ratio - 0.6).abs() < 1e-9, "{ratio}");
    // A decision's `s3_key` names the archive object that holds its raw payload.
    let keys: Vec<(String, String)> = client
        .query("SELECT event_id, s3_key FROM decision_events FINAL WHERE tenant_id = ?")
        .bind(&p.tenant)
        .fetch_all()
        .await
        .unwrap();
    assert!(!keys.is_empty());
    for (event_id, key) in keys {
        let object = std::fs::read_to_string(p.archive.join(&key))
            .unwrap_or_else(|e| panic!("s3_key {key} of {event_id}: {e}"));
        assert!(
            object
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .any(|line| line["event_id"] == event_id.as_str()),
            "{key} does not hold {event_id}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_kind_lands_exactly_once_in_clickhouse_and_the_archive() {
    let p = pipeline().await;
    send_every_kind(&p, 0).await;
    assert_exactly_once_in_clickhouse(&p, 1).await;
    assert_exactly_once_in_archive(&p, 1).await;
    assert_normalized_and_enriched(&p).await;
    // Re-sending the same events (a client retry) changes nothing: same ids, same event.
    send_every_kind(&p, 0).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_exactly_once_in_archive(&p, 1).await;
    let client = p.clickhouse();
    for (table, n) in PER_ROUND {
        assert_eq!(
            count(&client, table, &p.tenant, true).await,
            n,
            "{table} after a client retry"
        );
    }
    p.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sink_and_archiver_crash_and_restart_mid_stream_without_loss_or_duplicates() {
    let mut p = pipeline().await;
    let rounds = 12;
    for round in 0..rounds {
        send_every_kind(&p, round).await;
        if round == 4 {
            p.kill("clickhouse-sink").await;
            p.kill("s3-archiver").await;
        }
        if round == 7 {
            p.start("clickhouse-sink").await;
            p.start("s3-archiver").await;
        }
        if round == 9 {
            // A second crash while catching up.
            p.kill("clickhouse-sink").await;
            p.start("clickhouse-sink").await;
        }
    }
    assert_exactly_once_in_clickhouse(&p, u64::from(rounds)).await;
    assert_exactly_once_in_archive(&p, u64::from(rounds)).await;
    p.stop_all().await;
}
