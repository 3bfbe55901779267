//! Alerts end to end on the real local stack: metric samples sent to the gateway over a threshold
//! fire an alert that arrives on the query API's live stream (SSE), a later sample resolves it;
//! a host that goes silent fires an absence alert. Every state also lands in ClickHouse.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed assertion

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use ve_e2e::Pipeline;
use ve_schema::AlertRule;

type Sse = std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

/// The tenant's live alert stream, once the server said it is subscribed.
async fn open_stream(p: &Pipeline) -> (Sse, String) {
    let response = reqwest::Client::new()
        .get(format!("http://{}/alerts/stream", p.query_http))
        .header("authorization", p.auth())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut stream: Sse = Box::pin(response.bytes_stream());
    let mut buffer = String::new();
    while !buffer.contains(": subscribed") {
        let chunk = stream.next().await.expect("stream open").unwrap();
        buffer.push_str(&String::from_utf8_lossy(&chunk));
    }
    buffer.clear();
    (stream, buffer)
}

/// The next `alert` event of the stream, within `within`.
async fn next_alert(stream: &mut Sse, buffer: &mut String, within: Duration) -> Value {
    let read = async {
        loop {
            while let Some(end) = buffer.find("\n\n") {
                let frame: String = buffer.drain(..end + 2).collect();
                if frame.lines().any(|l| l == "event: alert") {
                    let data = frame
                        .lines()
                        .find_map(|l| l.strip_prefix("data: "))
                        .expect("alert data");
                    return serde_json::from_str(data).unwrap();
                }
            }
            let chunk = stream.next().await.expect("stream open").unwrap();
            buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    tokio::time::timeout(within, read)
        .await
        .expect("no alert on the stream in time")
}

fn rule(id: &str, kind: &str, metric: &str, threshold: f64, for_seconds: i64) -> AlertRule {
    AlertRule {
        rule_id: id.into(),
        name: id.into(),
        kind: kind.into(),
        metric: Some(metric.into()),
        event_match: None,
        operator: ">".into(),
        threshold,
        for_seconds,
        group_by: vec!["host".into()],
        enabled: true,
    }
}

async fn sample(p: &Pipeline, host: &str, metric: &str, value: f64) {
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let answer = p
        .post(
            "/v1/metrics",
            json!({"samples": [{"host": host, "metric": metric, "value": value, "unit": "%", "timestamp": at}]}),
        )
        .await;
    assert_eq!(answer["events_accepted"], 1, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn threshold_and_absence_alerts_reach_the_live_stream_and_clickhouse() {
    let mut p = Pipeline::prepare().await;
    let (kafka, codec) = p.admin();
    let rules = p.topic("control.rules.v1");
    for r in [
        rule("cpu-high", "threshold", "cpu_load", 90.0, 0),
        rule("agent-silent", "absence", "heartbeat", 0.0, 3),
    ] {
        let _ = ve_ctl::set_rule(&kafka, &codec, &rules, &p.tenant, r)
            .await
            .unwrap();
    }
    for service in [
        "clickhouse-sink",
        "enricher",
        "normalizer",
        "rules",
        "query-api",
        "gateway",
    ] {
        p.start(service).await;
    }
    let (mut stream, mut buffer) = open_stream(&p).await;

    // Over the threshold: firing, with the sample's value and the host as its series.
    sample(&p, "web-1", "cpu_load", 50.0).await;
    let sent = Instant::now();
    sample(&p, "web-1", "cpu_load", 95.5).await;
    let firing = next_alert(&mut stream, &mut buffer, Duration::from_secs(30)).await;
    println!(
        "threshold alert on the SSE stream {} ms after its sample was accepted",
        sent.elapsed().as_millis()
    );
    assert_eq!(firing["rule_id"], "cpu-high", "{firing}");
    assert_eq!(firing["series"], "host=web-1", "{firing}");
    assert_eq!(firing["state"], "firing", "{firing}");
    assert_eq!(firing["value"], 95.5, "{firing}");
    assert_eq!(firing["threshold"], 90.0, "{firing}");

    // Back under: resolved, same firing (same start).
    sample(&p, "web-1", "cpu_load", 40.0).await;
    let resolved = next_alert(&mut stream, &mut buffer, Duration::from_secs(30)).await;
    assert_eq!(resolved["rule_id"], "cpu-high", "{resolved}");
    assert_eq!(resolved["state"], "resolved", "{resolved}");
    assert_eq!(resolved["started_at"], firing["started_at"], "{resolved}");

    // A host that reported heartbeats, then went silent for longer than 3 s: absence fires.
    sample(&p, "web-2", "heartbeat", 1.0).await;
    let silent_from = Instant::now();
    let absent = next_alert(&mut stream, &mut buffer, Duration::from_secs(30)).await;
    assert_eq!(absent["rule_id"], "agent-silent", "{absent}");
    assert_eq!(absent["series"], "host=web-2", "{absent}");
    assert_eq!(absent["state"], "firing", "{absent}");
    assert!(
        silent_from.elapsed() >= Duration::from_secs(3),
        "absence fired before the host was silent for 3 s"
    );

    // The clickhouse-sink lands each series' latest state.
    let client = p.clickhouse();
    let deadline = Instant::now() + Duration::from_secs(30);
    let rows: Vec<(String, String, String)> = loop {
        let rows = client
            .query(
                "SELECT rule_id, series, state FROM alerts FINAL WHERE tenant_id = ? ORDER BY rule_id",
            )
            .bind(&p.tenant)
            .fetch_all::<(String, String, String)>()
            .await
            .unwrap();
        if rows.len() == 2 || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(
        rows,
        vec![
            ("agent-silent".into(), "host=web-2".into(), "firing".into()),
            ("cpu-high".into(), "host=web-1".into(), "resolved".into()),
        ]
    );
    drop(stream);
    p.stop_all().await;
}
