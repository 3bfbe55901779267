//! Against the real local stack: normalized records go in, enriched records come out under the
//! same key with tenant, CMDB and user-agent tags; poison is dead-lettered; a CMDB change made
//! while the enricher runs shows on later events.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed assertion

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use ve_enricher::{Config, DEFAULTS, TopicsConfig};
use ve_kafka::{KafkaConfig, OutRecord, Producer, Record, TailEvent, dlq_topic, tail_topic};
use ve_schema::{Body, Codec, Envelope, MetricSample, Source, WebEvent};
use ve_testkit::{Stack, unique};

const CHROME_WINDOWS: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";

fn envelope(event_id: &str, tenant: &str, body: Body) -> Envelope {
    Envelope {
        event_id: event_id.into(),
        event_time: 1_700_000_000_000_000,
        ingest_time: 1_700_000_000_100_000,
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

fn web(user_agent: &str) -> Body {
    Body::Web(WebEvent {
        event_type: "pageview".into(),
        session_id: "s1".into(),
        user_id: None,
        url: Some("https://example.com/".into()),
        path: Some("/".into()),
        title: None,
        referrer: None,
        user_agent: Some(user_agent.into()),
        selector: None,
        scroll_depth: None,
        name: None,
        metrics: BTreeMap::new(),
        properties: "{}".into(),
    })
}

fn metric(host: &str) -> Body {
    Body::Metric(MetricSample {
        host: host.into(),
        metric: "cpu_load".into(),
        value: 42.0,
        unit: "percent".into(),
    })
}

struct Running {
    kafka: KafkaConfig,
    codec: Codec,
    producer: Producer,
    topics: TopicsConfig,
    shutdown: CancellationToken,
    service: tokio::task::JoinHandle<Result<(), ve_service::ServiceError>>,
    output: mpsc::UnboundedReceiver<Record>,
    tail_stop: CancellationToken,
}

/// Collects every record of `topic` into a channel.
fn collect(
    kafka: &KafkaConfig,
    topic: &str,
    stop: CancellationToken,
) -> mpsc::UnboundedReceiver<Record> {
    let (tx, rx) = mpsc::unbounded_channel();
    let kafka = kafka.clone();
    let topic = topic.to_owned();
    drop(tokio::spawn(async move {
        tail_topic(
            &kafka,
            "enricher-test",
            &topic,
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
    }));
    rx
}

/// Tenant `acme` (paid) and host `web-1` (env=prod) exist before the enricher starts.
async fn start() -> Running {
    let stack = Stack::require();
    let kafka = stack.kafka(&unique("enricher"));
    let codec = Codec::new(&stack.registry()).unwrap();
    let topics = TopicsConfig {
        inputs: vec![unique("normalized"), unique("metric")],
        output: unique("enriched"),
        tenants: unique("tenants"),
        cmdb: unique("cmdb"),
    };
    let _ = ve_ctl::create_tenant(
        &kafka,
        &codec,
        &topics.tenants,
        ve_ctl::TenantSpec::new("acme", "Acme", ve_ctl::Plan::Paid),
    )
    .await
    .unwrap();
    let tags = BTreeMap::from([("env".to_owned(), "prod".to_owned())]);
    let _ = ve_ctl::set_cmdb_host(&kafka, &codec, &topics.cmdb, "acme", "web-1", tags, false)
        .await
        .unwrap();

    let mut config: Config = ve_config::Sources::new("enricher", DEFAULTS)
        .load()
        .unwrap();
    config.kafka = kafka.clone();
    config.registry = stack.registry();
    config.topics = topics.clone();
    let ctx = ve_service::Context::ephemeral("enricher").await.unwrap();
    let shutdown = ctx.shutdown.clone();
    let service = tokio::spawn(ve_enricher::run(config, ctx));

    // Created here rather than waiting for the service to create it, so the tail can start now.
    ve_kafka::ensure_topics(&kafka, &[ve_kafka::TopicSpec::new(&topics.output)])
        .await
        .unwrap();
    let tail_stop = CancellationToken::new();
    let output = collect(&kafka, &topics.output, tail_stop.clone());
    Running {
        producer: Producer::new(&kafka, "enricher-test").unwrap(),
        kafka,
        codec,
        topics,
        shutdown,
        service,
        output,
        tail_stop,
    }
}

impl Running {
    async fn send(&self, topic: &str, key: &str, envelope: &Envelope) {
        let payload = self.codec.encode(topic, envelope).await.unwrap();
        let _ = self
            .producer
            .send(&OutRecord::new(topic, key, payload))
            .await
            .unwrap();
    }

    /// Enriched envelopes by event id until `ids` are all there.
    async fn receive(&mut self, ids: &[&str]) -> HashMap<String, (Record, Envelope)> {
        let mut seen = HashMap::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !ids.iter().all(|id| seen.contains_key(*id)) {
            let record = tokio::time::timeout_at(deadline, self.output.recv())
                .await
                .unwrap_or_else(|_| panic!("enriched records missing; have {:?}", seen.keys()))
                .unwrap();
            let envelope = self
                .codec
                .decode(record.payload.as_deref().unwrap())
                .await
                .unwrap();
            let _ = seen.insert(envelope.event_id.clone(), (record, envelope));
        }
        seen
    }

    async fn stop(self) {
        self.tail_stop.cancel();
        self.shutdown.cancel();
        let outcome = tokio::time::timeout(Duration::from_secs(30), self.service)
            .await
            .unwrap()
            .unwrap();
        assert!(outcome.is_ok(), "{outcome:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn normalized_records_come_out_enriched_under_the_same_key() {
    let mut running = start().await;
    let events = running.topics.inputs[0].clone();
    let metrics = running.topics.inputs[1].clone();

    let parent = ve_telemetry::TraceContext::new_root();
    let payload = running
        .codec
        .encode(&events, &envelope("w1", "acme", web(CHROME_WINDOWS)))
        .await
        .unwrap();
    let _ = running
        .producer
        .send(&OutRecord::new(&events, "w1", payload).with_trace(Some(&parent)))
        .await
        .unwrap();
    running
        .send(
            &metrics,
            "acme/web-1/cpu_load",
            &envelope("m1", "acme", metric("web-1")),
        )
        .await;
    running
        .send(
            &metrics,
            "ghost/h/cpu_load",
            &envelope("u1", "ghost", metric("h")),
        )
        .await;
    // Not an envelope at all: dead-lettered, and it must not hold the others back.
    let _ = running
        .producer
        .send(&OutRecord::new(&events, "bad", b"not avro".to_vec()))
        .await
        .unwrap();

    let out = running.receive(&["w1", "m1", "u1"]).await;

    let (record, web) = &out["w1"];
    assert_eq!(record.key_str(), Some("w1"));
    assert_eq!(web.tags["plan"], "paid");
    assert_eq!(web.tags["retention_days"], "90");
    assert_eq!(web.tags["browser"], "Chrome");
    assert_eq!(web.tags["os"], "Windows");
    assert_eq!(web.tags["device"], "desktop");
    assert!(matches!(web.body, Body::Web(_)), "the body is unchanged");
    let trace = record.trace_context().expect("trace context continued");
    assert_eq!(trace.trace_id_hex(), parent.trace_id_hex());

    let (record, sample) = &out["m1"];
    assert_eq!(record.key_str(), Some("acme/web-1/cpu_load"));
    assert_eq!(sample.tags["host.env"], "prod");
    assert_eq!(sample.tags["plan"], "paid");
    assert!(!sample.tags.contains_key("browser"));

    let (_, unknown) = &out["u1"];
    assert_eq!(
        unknown.tags["plan"], "unknown",
        "unknown tenants are tagged, not dropped"
    );
    assert_eq!(unknown.tags["retention_days"], "90");

    let stop = CancellationToken::new();
    let mut dead = collect(&running.kafka, &dlq_topic(&events), stop.clone());
    let letter = tokio::time::timeout(Duration::from_secs(30), dead.recv())
        .await
        .expect("dead letter")
        .unwrap();
    stop.cancel();
    assert_eq!(letter.payload.as_deref(), Some(&b"not avro"[..]));
    assert_eq!(letter.key_str(), Some("bad"));
    assert!(letter.header_str("ve.dlq.reason").is_some());

    running.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cmdb_change_shows_on_later_events_without_a_restart() {
    let mut running = start().await;
    let metrics = running.topics.inputs[1].clone();

    running
        .send(
            &metrics,
            "acme/web-1/cpu_load",
            &envelope("before", "acme", metric("web-1")),
        )
        .await;
    let out = running.receive(&["before"]).await;
    assert_eq!(out["before"].1.tags["host.env"], "prod");
    assert!(!out["before"].1.tags.contains_key("host.team"));

    let tags = BTreeMap::from([
        ("env".to_owned(), "staging".to_owned()),
        ("team".to_owned(), "payments".to_owned()),
    ]);
    let _ = ve_ctl::set_cmdb_host(
        &running.kafka,
        &running.codec,
        &running.topics.cmdb,
        "acme",
        "web-1",
        tags,
        false,
    )
    .await
    .unwrap();

    // The change travels through the broker to the enricher's follower; events sent from now on
    // must pick it up within a bounded time.
    let mut changed = None;
    for attempt in 0..40 {
        let id = format!("after-{attempt}");
        running
            .send(
                &metrics,
                "acme/web-1/cpu_load",
                &envelope(&id, "acme", metric("web-1")),
            )
            .await;
        let out = running.receive(&[&id]).await;
        let tags = &out[&id].1.tags;
        if tags["host.env"] == "staging" {
            changed = Some(tags.clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let tags = changed.expect("the CMDB change never reached the enricher");
    assert_eq!(tags["host.team"], "payments");
    assert_eq!(tags["plan"], "paid");

    running.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_batch_is_split_across_workers_and_keeps_its_order() {
    let mut running = start().await;
    let metrics = running.topics.inputs[1].clone();
    // One key, so one partition: the output must come out in exactly the input order, with the
    // poison record in the middle dead-lettered and not shifting any outcome.
    let mut records = Vec::new();
    let mut ids = Vec::new();
    for i in 0..400 {
        if i == 200 {
            records.push(OutRecord::new(&metrics, "same", b"poison".to_vec()));
            continue;
        }
        let id = format!("bulk-{i:03}");
        let payload = running
            .codec
            .encode(&metrics, &envelope(&id, "acme", metric("web-1")))
            .await
            .unwrap();
        records.push(OutRecord::new(&metrics, "same", payload));
        ids.push(id);
    }
    let _ = running.producer.send_all(&records).await.unwrap();

    let mut order = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while order.len() < ids.len() {
        let record = tokio::time::timeout_at(deadline, running.output.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {} enriched", order.len(), ids.len()))
            .unwrap();
        let envelope = running
            .codec
            .decode(record.payload.as_deref().unwrap())
            .await
            .unwrap();
        assert_eq!(envelope.tags["host.env"], "prod");
        order.push(envelope.event_id);
    }
    // Redelivery after a retry may repeat a prefix; the first occurrence order must match.
    let mut first_seen = Vec::new();
    for id in order {
        if !first_seen.contains(&id) {
            first_seen.push(id);
        }
    }
    assert_eq!(first_seen, ids);

    let stop = CancellationToken::new();
    let mut dead = collect(&running.kafka, &dlq_topic(&metrics), stop.clone());
    let letter = tokio::time::timeout(Duration::from_secs(30), dead.recv())
        .await
        .expect("dead letter")
        .unwrap();
    stop.cancel();
    assert_eq!(letter.payload.as_deref(), Some(&b"poison"[..]));

    running.stop().await;
}
