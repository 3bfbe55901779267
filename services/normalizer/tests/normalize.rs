//! The normalizer on the real local stack: raw envelopes in, typed envelopes out on the right
//! topics with the right keys, and what cannot be normalized in the dead-letter topic with why.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed assertion

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use ve_kafka::{KafkaConfig, OutRecord, Producer, Record, TailEvent, TopicSpec, dlq_topic};
use ve_normalizer::{Config, DEFAULTS};
use ve_schema::{Body, Codec, Envelope, Map, RawPayload, Source};
use ve_testkit::{Stack, unique};

fn raw(event_id: &str, kind: &str, payload: &str) -> Envelope {
    Envelope {
        event_id: event_id.into(),
        event_time: 1_700_000_000_000_000,
        ingest_time: 1_700_000_000_000_001,
        tenant_id: "acme".into(),
        source: Source {
            kind: "sdk".into(),
            id: "test".into(),
        },
        schema_name: "ve.v1.RawPayload".into(),
        schema_version: 1,
        attributes: Map::from([("batch_id".into(), "b1".into())]),
        tags: Map::new(),
        body: Body::Raw(RawPayload {
            kind: kind.into(),
            content_type: "application/json".into(),
            channel: "http".into(),
            payload: payload.as_bytes().to_vec(),
        }),
    }
}

/// Reads `count` records from `topic` (failing after 60 s).
async fn read(kafka: &KafkaConfig, topic: &str, count: usize) -> Vec<Record> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let (kafka, name, token) = (kafka.clone(), topic.to_owned(), stop.clone());
    let tail = tokio::spawn(async move {
        ve_kafka::tail_topic(
            &kafka,
            "normalizer-test",
            &name,
            move |event| {
                let tx = tx.clone();
                async move {
                    if let TailEvent::Record(record) = event {
                        let _ = tx.send(record);
                    }
                }
            },
            token,
        )
        .await
    });
    let mut records = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while records.len() < count {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(record)) => records.push(record),
            _ => panic!("only {} of {count} records on {topic}", records.len()),
        }
    }
    stop.cancel();
    let _ = tail.await;
    records
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_events_come_out_typed_and_garbage_is_dead_lettered() {
    let stack = Stack::require();
    let group = unique("normalizer");
    let kafka = stack.kafka(&group);
    let registry = stack.registry();
    let (raw_topic, events_topic, metric_topic) = (
        unique("ingest_raw"),
        unique("events_normalized"),
        unique("signals_metric"),
    );
    ve_kafka::ensure_topics(
        &kafka,
        &[
            TopicSpec::new(&raw_topic),
            TopicSpec::new(dlq_topic(&raw_topic)),
        ],
    )
    .await
    .unwrap();

    let codec = Codec::new(&registry).unwrap();
    let producer = Producer::new(&kafka, "normalizer-test").unwrap();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let inputs = [
        raw(
            "w1",
            "web",
            r#"{"session_id":"s","timestamp":"2024-01-01T00:00:00Z","type":"pageview","path":"/"}"#,
        ),
        raw(
            "a1",
            "app",
            r#"{"app_id":"openstream","event_name":"play","user_id":"u","timestamp":"2026-02-02T12:00:00Z"}"#,
        ),
        raw(
            "m1",
            "metric",
            r#"{"host":"Host-A","metric":"cpu_load","value":92,"unit":"%","tags":{"Env":"prod"}}"#,
        ),
        raw(
            "s1",
            "span",
            r#"{"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7","name":"GET /","start_time_unix_nano":1700000000000000000,"end_time_unix_nano":1700000001000000000,"service_name":"checkout"}"#,
        ),
        raw(
            "r1",
            "run",
            r#"{"run_id":"r1","pipeline_id":"p1","status":"running","started_at":"2025-01-01T00:00:00Z"}"#,
        ),
        raw(
            "st1",
            "step",
            r#"{"step_id":"s1","run_id":"r1","pipeline_id":"p1","input_count":10,"output_count":4}"#,
        ),
        raw(
            "d1",
            "decision",
            r#"{"decision_id":"d1","step_id":"s1","run_id":"r1","pipeline_id":"p1","item_id":"i1","outcome":"kept"}"#,
        ),
        raw(
            "bad1",
            "metric",
            r#"{"host":"h","metric":"m","value":"high"}"#,
        ),
    ];
    let mut records = Vec::new();
    for envelope in &inputs {
        let bytes = codec.encode(&raw_topic, envelope).await.unwrap();
        records.push(
            OutRecord::new(&raw_topic, envelope.event_id.clone(), bytes)
                .header("traceparent", traceparent),
        );
    }
    records.push(OutRecord::new(
        &raw_topic,
        "garbage",
        b"\xffnot avro".to_vec(),
    ));
    // Framed like a Confluent record, but with a schema id the registry never issued.
    records.push(OutRecord::new(
        &raw_topic,
        "unknown-schema",
        b"\x00\x7f\xff\xff\x01xx".to_vec(),
    ));
    let _ = producer.send_all(&records).await.unwrap();

    let prefix = ve_config::env_prefix("normalizer");
    let env = [
        ("KAFKA__BROKERS", kafka.brokers.clone()),
        ("KAFKA__GROUP_ID", group.clone()),
        ("KAFKA__SESSION_TIMEOUT_MS", "6000".into()),
        ("KAFKA__MAX_POLL_INTERVAL_MS", "7000".into()),
        ("KAFKA__FLUSH_INTERVAL_MS", "200".into()),
        ("REGISTRY__URL", registry.url.clone()),
        ("TOPICS__RAW", raw_topic.clone()),
        ("TOPICS__NORMALIZED", events_topic.clone()),
        ("TOPICS__METRIC", metric_topic.clone()),
    ];
    let config: Config = ve_config::Sources::new("normalizer", DEFAULTS)
        .env(env.into_iter().map(|(k, v)| (format!("{prefix}{k}"), v)))
        .load()
        .unwrap();
    let ctx = ve_service::Context::ephemeral("normalizer").await.unwrap();
    let admin = ctx.admin.local_addr().unwrap();
    let shutdown = ctx.shutdown.clone();
    let running = tokio::spawn(ve_normalizer::run(config, ctx));

    let events = read(&kafka, &events_topic, 6).await;
    let mut by_key: HashMap<String, (Record, Envelope)> = HashMap::new();
    for record in events {
        let envelope = codec
            .decode(record.payload.as_deref().unwrap())
            .await
            .unwrap();
        let _ = by_key.insert(record.key_str().unwrap().to_owned(), (record, envelope));
    }
    let mut kinds: Vec<(&str, &str)> = by_key
        .iter()
        .map(|(k, (_, e))| (k.as_str(), e.schema_name.as_str()))
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            ("a1", "ve.v1.AppEvent"),
            ("d1", "ve.v1.DecisionEvent"),
            ("r1", "ve.v1.PipelineRun"),
            ("s1", "ve.v1.Span"),
            ("st1", "ve.v1.PipelineStep"),
            ("w1", "ve.v1.WebEvent"),
        ]
    );
    let (record, web) = &by_key["w1"];
    assert_eq!(web.event_time, 1_704_067_200_000_000);
    assert_eq!(web.tenant_id, "acme");
    assert_eq!(web.attributes["batch_id"], "b1");
    let trace = record.trace_context().unwrap();
    assert_eq!(trace.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_ne!(
        trace.span_id,
        [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7],
        "a child span"
    );
    assert_eq!(by_key["s1"].1.tags["service"], "checkout");

    let metrics = read(&kafka, &metric_topic, 1).await;
    assert_eq!(metrics[0].key_str(), Some("acme/host-a/cpu_load"));
    let sample = codec
        .decode(metrics[0].payload.as_deref().unwrap())
        .await
        .unwrap();
    let Body::Metric(m) = &sample.body else {
        panic!("{sample:?}")
    };
    assert_eq!(
        (m.host.as_str(), m.unit.as_str(), m.value),
        ("host-a", "percent", 92.0)
    );
    assert_eq!(sample.tags["env"], "prod");

    let dead = read(&kafka, &dlq_topic(&raw_topic), 3).await;
    let mut reasons: Vec<(String, String)> = dead
        .iter()
        .map(|r| {
            (
                r.key_str().unwrap().to_owned(),
                r.header_str("ve.dlq.reason").unwrap().to_owned(),
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(reasons[0].0, "bad1");
    assert!(reasons[0].1.contains("invalid metric event"), "{reasons:?}");
    assert_eq!(reasons[1].0, "garbage");
    assert!(
        reasons[1].1.contains("Confluent wire format"),
        "{reasons:?}"
    );
    assert_eq!(reasons[2].0, "unknown-schema");
    assert!(reasons[2].1.contains("undecodable record"), "{reasons:?}");
    assert_eq!(dead[0].header_str("ve.dlq.stage"), Some("normalizer"));
    let garbage = dead
        .iter()
        .find(|r| r.key_str() == Some("garbage"))
        .unwrap();
    assert_eq!(garbage.payload.as_deref(), Some(&b"\xffnot avro"[..]));

    let metrics_page = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "normalizer_events_consumed_total 10",
        "normalizer_dlq_records_total 3",
        "normalizer_records_produced_total",
    ] {
        assert!(
            metrics_page.contains(name),
            "missing {name} in\n{metrics_page}"
        );
    }

    shutdown.cancel();
    let outcome = tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .unwrap()
        .unwrap();
    assert!(outcome.is_ok(), "{outcome:?}");
}
