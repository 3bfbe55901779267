//! Against the real local stack with a temporary directory as the object store: raw events land
//! once each in the JSON Lines segment of their partition and offsets, holding the original JSON;
//! a client retry does not add a copy, a second consumption of the whole topic (another consumer
//! group, as after a crash before the commit) leaves every object byte for byte as it was;
//! invoices land as JSON documents; poison is dead-lettered.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed assertion

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use ve_kafka::{KafkaConfig, OutRecord, Producer, TailEvent, dlq_topic, tail_topic};
use ve_s3_archiver::{Config, DEFAULTS, TopicsConfig};
use ve_schema::{Body, Codec, Envelope, Invoice, InvoiceLine, RawPayload, Source};
use ve_testkit::{Stack, unique};

/// 2026-11-22T10:00:00Z
const EVENT_TIME: i64 = 1_795_341_600_000_000;

fn raw_envelope(event_id: &str, tenant: &str, kind: &str, payload: &[u8]) -> Envelope {
    let body = Body::Raw(RawPayload {
        kind: kind.into(),
        content_type: "application/json".into(),
        channel: "http".into(),
        payload: payload.to_vec(),
    });
    Envelope {
        event_id: event_id.into(),
        event_time: EVENT_TIME,
        ingest_time: EVENT_TIME + 1000,
        tenant_id: tenant.into(),
        source: Source {
            kind: "sdk".into(),
            id: "test".into(),
        },
        schema_name: body.schema_name().into(),
        schema_version: 1,
        attributes: BTreeMap::new(),
        tags: BTreeMap::new(),
        body,
    }
}

fn invoice_envelope(tenant: &str, invoice_id: &str) -> Envelope {
    let body = Body::Invoice(Invoice {
        invoice_id: invoice_id.into(),
        period_start: 1,
        period_end: 2,
        plan: "paid".into(),
        currency: "USD".into(),
        lines: vec![InvoiceLine {
            kind: "events".into(),
            description: "events".into(),
            quantity: 10,
            unit_price_micros: 100,
            amount_micros: 1000,
        }],
        subtotal_micros: 1000,
        total_micros: 1000,
        issued_at: 3,
    });
    Envelope {
        schema_name: body.schema_name().into(),
        body,
        ..raw_envelope(invoice_id, tenant, "", b"")
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else {
            found.push(path);
        }
    }
    found.sort();
    found
}

/// Every file under `root` with its bytes.
fn snapshot(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    files_under(root)
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

/// Polls `done` until it holds (the service works asynchronously); panics with `what` if it never
/// does within a minute.
async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    for _ in 0..240 {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("{what} never happened");
}

/// The lines of a segment object, parsed; empty if it does not exist yet.
fn lines(path: &Path) -> Vec<serde_json::Value> {
    let Ok(bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    assert!(bytes.ends_with(b"\n"), "{}", path.display());
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect()
}

/// Where the segment holding the record at `(partition, offset)` is (default 1000 offsets).
fn segment(root: &Path, tenant: &str, kind: &str, (partition, offset): (i32, i64)) -> PathBuf {
    root.join(format!(
        "raw/{tenant}/{kind}/2026/11/22/p{partition}-{:020}.jsonl",
        offset - offset % 1000
    ))
}

fn ids(lines: &[serde_json::Value]) -> Vec<&str> {
    lines
        .iter()
        .map(|l| l["event_id"].as_str().unwrap())
        .collect()
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await.unwrap();
    String::from_utf8_lossy(&response).into_owned()
}

async fn metric(admin: std::net::SocketAddr, name: &str) -> f64 {
    let metrics = http_get(admin, "/metrics").await;
    metrics
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {name} in {metrics}"))
}

/// Produces `envelope`; returns its partition and offset.
async fn send(
    producer: &Producer,
    codec: &Codec,
    topic: &str,
    key: &str,
    envelope: &Envelope,
) -> (i32, i64) {
    let payload = codec.encode(topic, envelope).await.unwrap();
    producer
        .send(&OutRecord::new(topic, key, payload))
        .await
        .unwrap()
}

/// An archiver on `topics` and `root`, consuming as `group`: its admin address, its shutdown and
/// its task.
fn start(
    stack: &Stack,
    kafka: &KafkaConfig,
    group: &str,
    topics: &TopicsConfig,
    root: &Path,
) -> impl Future<
    Output = (
        std::net::SocketAddr,
        CancellationToken,
        tokio::task::JoinHandle<Result<(), ve_service::ServiceError>>,
    ),
> {
    let mut config: Config = ve_config::Sources::new("s3-archiver", DEFAULTS)
        .load()
        .unwrap();
    config.kafka = kafka.clone();
    config.kafka.group_id = group.to_owned();
    config.registry = stack.registry();
    config.topics = topics.clone();
    config.object_store.url = format!("file://{}", root.display());
    async move {
        let ctx = ve_service::Context::ephemeral("s3-archiver").await.unwrap();
        let admin = ctx.admin.local_addr().unwrap();
        let shutdown = ctx.shutdown.clone();
        (
            admin,
            shutdown,
            tokio::spawn(ve_s3_archiver::run(config, ctx)),
        )
    }
}

async fn stop(
    shutdown: CancellationToken,
    service: tokio::task::JoinHandle<Result<(), ve_service::ServiceError>>,
) {
    shutdown.cancel();
    let outcome = tokio::time::timeout(Duration::from_secs(30), service)
        .await
        .unwrap()
        .unwrap();
    assert!(outcome.is_ok(), "{outcome:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn events_land_once_in_their_segment_and_a_second_consumption_changes_no_byte() {
    let stack = Stack::require();
    let kafka: KafkaConfig = stack.kafka(&unique("archiver"));
    let codec = Codec::new(&stack.registry()).unwrap();
    let topics = TopicsConfig {
        raw: unique("raw"),
        invoices: unique("invoices"),
    };
    let root = std::env::temp_dir().join(unique("ve-archive-test"));
    let (admin, shutdown, service) = start(&stack, &kafka, &kafka.group_id, &topics, &root).await;

    let producer = Producer::new(&kafka, "archiver-test").unwrap();
    ve_kafka::ensure_topics(
        &kafka,
        &[
            ve_kafka::TopicSpec::new(&topics.raw),
            ve_kafka::TopicSpec::new(&topics.invoices),
        ],
    )
    .await
    .unwrap();
    // JSON as a client sent it: spacing and key order must survive untouched; newlines (only
    // ever whitespace in JSON) become spaces so that one line stays one event.
    let events = [
        (
            "e1",
            "acme",
            "web",
            &br#"{"type":"pageview",  "path":"/" }"#[..],
            r#"{"type":"pageview",  "path":"/" }"#,
        ),
        (
            "e2",
            "acme",
            "metric",
            &b"{\"host\":\"h1\",\r\n\"metric\":\"cpu\",\"value\":1}\n"[..],
            r#"{"host":"h1",  "metric":"cpu","value":1}"#,
        ),
        (
            "e3",
            "globex",
            "app",
            &br#"{"app_id":"a","event_name":"x\ny"}"#[..],
            r#"{"app_id":"a","event_name":"x\ny"}"#,
        ),
    ];
    let mut at = Vec::new();
    for (id, tenant, kind, payload, _) in events {
        at.push(
            send(
                &producer,
                &codec,
                &topics.raw,
                id,
                &raw_envelope(id, tenant, kind, payload),
            )
            .await,
        );
    }
    let _ = send(
        &producer,
        &codec,
        &topics.invoices,
        "inv-1",
        &invoice_envelope("acme", "inv-1"),
    )
    .await;
    let _ = producer
        .send(&OutRecord::new(
            &topics.raw,
            "junk",
            b"not an envelope".to_vec(),
        ))
        .await
        .unwrap();

    for ((id, tenant, kind, _, archived), position) in events.iter().zip(&at) {
        let path = segment(&root, tenant, kind, *position);
        wait_until(&format!("{id} in {}", path.display()), async || {
            !lines(&path).is_empty()
        })
        .await;
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            format!(
                "{{\"offset\":{},\"event_id\":\"{id}\",\"event_time\":\"2026-11-22T10:00:00.000000Z\",\"ingest_time\":\"2026-11-22T10:00:00.001000Z\",\"payload\":{archived}}}\n",
                position.1
            ),
            "{}",
            path.display()
        );
    }
    let invoice = root.join("invoices/acme/inv-1.json");
    wait_until("the invoice archived", async || invoice.exists()).await;
    let document: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&invoice).unwrap()).unwrap();
    assert_eq!(document["tenant_id"], "acme");
    assert_eq!(document["invoice_id"], "inv-1");
    assert_eq!(document["total_micros"], 1000);

    // A client retry: the same event again at a new offset, then a marker with the same record
    // key (same partition, so processed after it) showing the retry was processed too.
    let (id, tenant, kind, payload, _) = events[0];
    let retry = send(
        &producer,
        &codec,
        &topics.raw,
        id,
        &raw_envelope(id, tenant, kind, payload),
    )
    .await;
    assert_eq!(retry.0, at[0].0, "same key, same partition");
    let marker = send(
        &producer,
        &codec,
        &topics.raw,
        id,
        &raw_envelope("marker", "acme", "web", b"{}"),
    )
    .await;
    let web = segment(&root, "acme", "web", marker);
    assert_eq!(web, segment(&root, "acme", "web", at[0]), "one segment");
    wait_until("the marker archived", async || {
        ids(&lines(&web)).contains(&"marker")
    })
    .await;
    assert_eq!(
        ids(&lines(&web)),
        ["e1", "marker"],
        "the retry is not a second copy"
    );
    let raw_files = files_under(&root.join("raw"));
    assert_eq!(raw_files.len(), 3, "{raw_files:?}");
    assert_eq!(files_under(&root.join("invoices")).len(), 1);

    // The junk record went to the dead-letter topic with its bytes.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stop_tail = CancellationToken::new();
    let dlq = dlq_topic(&topics.raw);
    let tail = {
        let kafka = kafka.clone();
        let stop_tail = stop_tail.clone();
        tokio::spawn(async move {
            tail_topic(
                &kafka,
                "archiver-test",
                &dlq,
                move |event| {
                    let tx = tx.clone();
                    async move {
                        if let TailEvent::Record(record) = event {
                            let _ = tx.send(record);
                        }
                    }
                },
                stop_tail,
            )
            .await
        })
    };
    let letter = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("dead letter")
        .unwrap();
    assert_eq!(letter.payload.as_deref(), Some(&b"not an envelope"[..]));
    stop_tail.cancel();
    let _ = tail.await;

    // This test is the only one in its process: the counters are exactly this test's.
    assert_eq!(
        metric(admin, "s3_archiver_events_archived_total").await,
        4.0
    );
    assert_eq!(
        metric(admin, "s3_archiver_duplicates_skipped_total").await,
        1.0
    );
    // Raw objects rewritten per batch plus the invoice: at least one PUT per object.
    assert!(metric(admin, "s3_archiver_objects_written_total").await >= 4.0);
    stop(shutdown, service).await;

    // Everything consumed a second time by a fresh instance (empty cache, empty retry window):
    // it reads the segments back, merges, and finds nothing new.
    let before = snapshot(&root);
    let (admin, shutdown, service) =
        start(&stack, &kafka, &unique("archiver-again"), &topics, &root).await;
    // e1, e2, e3, the retry of e1 and the marker: all five already archived.
    wait_until("the second consumption", async || {
        metric(admin, "s3_archiver_duplicates_skipped_total").await >= 6.0
    })
    .await;
    stop(shutdown, service).await;
    let after = snapshot(&root);
    assert_eq!(after, before, "a redelivery changes no object");
    let _ = std::fs::remove_dir_all(&root);
}
