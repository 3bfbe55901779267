//! One process produces an envelope through the kafka crate; another process (`ve-probe`)
//! consumes it through the broker and decodes it with the writer schema fetched from the registry
//! by the id in the record.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed assertion

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use ve_kafka::{OutRecord, Producer, TopicSpec, ensure_topics};
use ve_schema::{Body, Codec, Envelope, Source, WebEvent};
use ve_testkit::{Stack, unique};

fn page_view(id: &str) -> Envelope {
    Envelope {
        event_id: id.to_owned(),
        event_time: 1_767_225_600_000_000,
        ingest_time: 1_767_225_600_050_000,
        tenant_id: "acme".into(),
        source: Source {
            kind: "sdk".into(),
            id: "web-js/2.1".into(),
        },
        schema_name: "ve.v1.WebEvent".into(),
        schema_version: 1,
        attributes: Default::default(),
        tags: [("env".to_owned(), "prod".to_owned())].into(),
        body: Body::Web(WebEvent {
            event_type: "pageview".into(),
            session_id: "s-1".into(),
            user_id: None,
            url: Some("https://shop.example/cart".into()),
            path: Some("/cart".into()),
            title: Some("Cart".into()),
            referrer: None,
            user_agent: None,
            selector: None,
            scroll_depth: None,
            name: None,
            metrics: Default::default(),
            properties: "{}".into(),
        }),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn envelope_crosses_processes_and_is_decoded_with_the_registry_schema() {
    let stack = Stack::require();
    let kafka = stack.kafka(&unique("group"));
    let topic = unique("wire");
    ensure_topics(&kafka, &[TopicSpec::new(&topic).partitions(1)])
        .await
        .unwrap();

    let codec = Codec::new(&stack.registry()).unwrap();
    let ids = codec.register(&[&topic]).await.unwrap();
    let (subject, id) = ids[0].clone();
    assert_eq!(subject, format!("{topic}-value"));

    let producer = Producer::new(&kafka, "wire-test").unwrap();
    let trace = ve_telemetry::TraceContext::new_root();
    let mut sent = Vec::new();
    for n in 0..3 {
        let envelope = page_view(&format!("evt-{n}"));
        let bytes = codec.encode(&topic, &envelope).await.unwrap();
        assert_eq!(
            Codec::schema_id(&bytes),
            Some(id),
            "Confluent framing with the registered id"
        );
        sent.push(
            OutRecord::new(&topic, envelope.event_id.clone(), bytes).with_trace(Some(&trace)),
        );
    }
    let _ = producer.send_all(&sent).await.unwrap();

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ve-probe"))
        .args([
            "consume",
            "--brokers",
            &stack.brokers,
            "--registry",
            &stack.registry,
        ])
        .args([
            "--topic",
            &topic,
            "--group",
            &unique("probe"),
            "--count",
            "3",
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("the consumer process printed nothing within 60 s")
            .unwrap()
            .expect("the consumer process exited early");
        seen.push(serde_json::from_str::<serde_json::Value>(&line).unwrap());
    }
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "consumer process exit: {status}");

    for (n, record) in seen.iter().enumerate() {
        assert_eq!(record["event_id"], format!("evt-{n}"));
        assert_eq!(record["tenant_id"], "acme");
        assert_eq!(record["schema_name"], "ve.v1.WebEvent");
        assert_eq!(record["body_kind"], "pageview");
        assert_eq!(record["schema_id"], id);
        let traceparent = record["traceparent"].as_str().unwrap();
        let context = ve_telemetry::TraceContext::parse(traceparent).unwrap();
        assert_eq!(
            context.trace_id, trace.trace_id,
            "trace context travelled in the headers"
        );
    }
}

#[tokio::test]
async fn a_record_that_is_not_an_envelope_is_a_clear_decode_error() {
    let codec = Codec::new(&Stack::require().registry()).unwrap();
    let err = codec.decode(b"{\"json\":true}").await.unwrap_err();
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("Confluent wire format"), "{err}");
    // Right framing, id nobody registered.
    let err = codec
        .decode(&[0, 0x7f, 0xff, 0xff, 0xf0, 2, 3])
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err}");
}
