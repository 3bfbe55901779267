//! Against the real local stack with a temporary directory as the object store: raw events land
//! as exactly one object each at their deterministic key holding the original bytes, a
//! redelivered event does not add a copy, invoices land as JSON documents, poison is
//! dead-lettered.

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

async fn wait_for(path: &Path) {
    for _ in 0..120 {
        if path.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("{} never appeared", path.display());
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

async fn send(producer: &Producer, codec: &Codec, topic: &str, key: &str, envelope: &Envelope) {
    let payload = codec.encode(topic, envelope).await.unwrap();
    let _ = producer
        .send(&OutRecord::new(topic, key, payload))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn one_object_per_event_with_the_original_bytes_even_when_redelivered() {
    let stack = Stack::require();
    let kafka: KafkaConfig = stack.kafka(&unique("archiver"));
    let codec = Codec::new(&stack.registry()).unwrap();
    let topics = TopicsConfig {
        raw: unique("raw"),
        invoices: unique("invoices"),
    };
    let root = std::env::temp_dir().join(unique("ve-archive-test"));
    let mut config: Config = ve_config::Sources::new("s3-archiver", DEFAULTS)
        .load()
        .unwrap();
    config.kafka = kafka.clone();
    config.registry = stack.registry();
    config.topics = topics.clone();
    config.object_store.url = format!("file://{}", root.display());
    let ctx = ve_service::Context::ephemeral("s3-archiver").await.unwrap();
    let admin = ctx.admin.local_addr().unwrap();
    let shutdown = ctx.shutdown.clone();
    let service = tokio::spawn(ve_s3_archiver::run(config, ctx));

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
    // Bytes as a client sent them: spacing and key order must survive untouched.
    let events = [
        (
            "e1",
            "acme",
            "web",
            &br#"{"type":"pageview",  "path":"/" }"#[..],
        ),
        (
            "e2",
            "acme",
            "metric",
            &br#"{"host":"h1","metric":"cpu","value":1}"#[..],
        ),
        (
            "e3",
            "globex",
            "app",
            &br#"{"app_id":"a","event_name":"x"}"#[..],
        ),
    ];
    for (id, tenant, kind, payload) in events {
        send(
            &producer,
            &codec,
            &topics.raw,
            id,
            &raw_envelope(id, tenant, kind, payload),
        )
        .await;
    }
    send(
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

    let expected = |tenant: &str, kind: &str, id: &str| {
        root.join(format!("raw/{tenant}/{kind}/2026/11/22/{id}.json"))
    };
    for (id, tenant, kind, payload) in events {
        let path = expected(tenant, kind, id);
        wait_for(&path).await;
        assert_eq!(std::fs::read(&path).unwrap(), payload, "{}", path.display());
    }
    let invoice = root.join("invoices/acme/inv-1.json");
    wait_for(&invoice).await;
    let document: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&invoice).unwrap()).unwrap();
    assert_eq!(document["tenant_id"], "acme");
    assert_eq!(document["invoice_id"], "inv-1");
    assert_eq!(document["total_micros"], 1000);

    // Redelivery: the same event again (as after a crash before the commit), then a marker that
    // shows the redelivered one was processed too.
    let (id, tenant, kind, payload) = events[0];
    send(
        &producer,
        &codec,
        &topics.raw,
        id,
        &raw_envelope(id, tenant, kind, payload),
    )
    .await;
    // Same record key, so same partition: the marker is processed after the redelivered event.
    send(
        &producer,
        &codec,
        &topics.raw,
        id,
        &raw_envelope("marker", "acme", "web", b"{}"),
    )
    .await;
    wait_for(&expected("acme", "web", "marker")).await;
    let raw_files = files_under(&root.join("raw"));
    assert_eq!(
        raw_files.len(),
        events.len() + 1,
        "one object per event: {raw_files:?}"
    );
    assert_eq!(std::fs::read(expected(tenant, kind, id)).unwrap(), payload);
    assert_eq!(files_under(&root.join("invoices")).len(), 1);

    // The junk record went to the dead-letter topic with its bytes.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let dlq = dlq_topic(&topics.raw);
    let tail = {
        let kafka = kafka.clone();
        let stop = stop.clone();
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
                stop,
            )
            .await
        })
    };
    let letter = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("dead letter")
        .unwrap();
    assert_eq!(letter.payload.as_deref(), Some(&b"not an envelope"[..]));
    stop.cancel();
    let _ = tail.await;

    let metrics = http_get(admin, "/metrics").await;
    let written = metrics
        .lines()
        .find(|l| l.starts_with("s3_archiver_objects_written_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no s3_archiver_objects_written_total in {metrics}"));
    // Other tests in this process may write too; this one wrote at least 6 objects.
    assert!(written >= 6.0, "{written}");

    shutdown.cancel();
    let outcome = tokio::time::timeout(Duration::from_secs(30), service)
        .await
        .unwrap()
        .unwrap();
    assert!(outcome.is_ok(), "{outcome:?}");
    let _ = std::fs::remove_dir_all(&root);
}
