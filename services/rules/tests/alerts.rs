//! Against the real local stack: rules written with the ve-ctl library, enriched samples in,
//! `firing` / `resolved` alerts out on the compacted alerts topic; absence on a silent series;
//! rule changes and deletions applied live; a restart keeps a firing alert firing.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed assertion

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use ve_kafka::{KafkaConfig, OutRecord, Producer, Record, TailEvent, tail_topic};
use ve_rules::{Config, DEFAULTS, TopicsConfig, now_micros};
use ve_schema::{Alert, AlertRule, Body, Codec, Envelope, MetricSample, Source};
use ve_testkit::{Stack, unique};

const TENANT: &str = "acme";

struct Setup {
    kafka: KafkaConfig,
    codec: Codec,
    producer: Producer,
    topics: TopicsConfig,
    alerts: mpsc::UnboundedReceiver<Record>,
    tail_stop: CancellationToken,
}

struct Service {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), ve_service::ServiceError>>,
}

async fn setup() -> Setup {
    let stack = Stack::require();
    let kafka = stack.kafka(&unique("rules"));
    let codec = Codec::new(&stack.registry()).unwrap();
    let topics = TopicsConfig {
        inputs: vec![unique("enriched")],
        rules: unique("rules"),
        alerts: unique("alerts"),
    };
    ve_kafka::ensure_topics(
        &kafka,
        &[
            ve_kafka::TopicSpec::new(&topics.inputs[0]),
            ve_kafka::TopicSpec::compacted(&topics.rules),
            ve_kafka::TopicSpec::compacted(&topics.alerts),
        ],
    )
    .await
    .unwrap();
    // The alerts topic is tailed from before the service starts: every transition is seen.
    let tail_stop = CancellationToken::new();
    Setup {
        alerts: collect(&kafka, &topics.alerts, tail_stop.clone()),
        tail_stop,
        producer: Producer::new(&kafka, "rules-test").unwrap(),
        codec,
        topics,
        kafka,
    }
}

/// Every record of `topic`, in order (each transition, not only the latest per key).
fn collect(
    kafka: &KafkaConfig,
    topic: &str,
    stop: CancellationToken,
) -> mpsc::UnboundedReceiver<Record> {
    let (tx, rx) = mpsc::unbounded_channel();
    let handler = move |event: TailEvent| {
        if let TailEvent::Record(record) = event {
            let _ = tx.send(record);
        }
        std::future::ready(())
    };
    let (kafka, topic) = (kafka.clone(), topic.to_owned());
    drop(tokio::spawn(async move {
        tail_topic(&kafka, "rules-test", &topic, handler, stop).await
    }));
    rx
}

fn rule(id: &str, kind: &str, metric: &str, threshold: f64, for_seconds: i64) -> AlertRule {
    AlertRule {
        rule_id: id.into(),
        name: format!("{id} rule"),
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

impl Setup {
    async fn set_rule(&self, rule: AlertRule) {
        let _ = ve_ctl::set_rule(&self.kafka, &self.codec, &self.topics.rules, TENANT, rule)
            .await
            .unwrap();
    }

    async fn start(&self) -> Service {
        let mut config: Config = ve_config::Sources::new("rules", DEFAULTS).load().unwrap();
        config.kafka = self.kafka.clone();
        config.kafka.flush_interval_ms = 100;
        config.registry = Stack::require().registry();
        config.topics = self.topics.clone();
        config.evaluation.tick_interval_ms = 200;
        let ctx = ve_service::Context::ephemeral("rules").await.unwrap();
        let shutdown = ctx.shutdown.clone();
        Service {
            shutdown,
            task: tokio::spawn(ve_rules::run(config, ctx)),
        }
    }

    async fn sample(&self, host: &str, metric: &str, value: f64) {
        let topic = &self.topics.inputs[0];
        let envelope = Envelope {
            event_id: unique("sample"),
            event_time: now_micros(),
            ingest_time: now_micros(),
            tenant_id: TENANT.into(),
            source: Source {
                kind: "agent".into(),
                id: "test".into(),
            },
            schema_name: "ve.v1.MetricSample".into(),
            schema_version: 1,
            attributes: BTreeMap::new(),
            tags: BTreeMap::from([("plan".to_owned(), "paid".to_owned())]),
            body: Body::Metric(MetricSample {
                host: host.into(),
                metric: metric.into(),
                value,
                unit: "percent".into(),
            }),
        };
        let payload = self.codec.encode(topic, &envelope).await.unwrap();
        let key = format!("{TENANT}/{host}/{metric}");
        let _ = self
            .producer
            .send(&OutRecord::new(topic, key, payload))
            .await
            .unwrap();
    }

    /// The next alert published, within `wait`.
    async fn next_alert(&mut self, wait: Duration) -> Option<(String, Envelope, Alert)> {
        let record = tokio::time::timeout(wait, self.alerts.recv())
            .await
            .ok()??;
        let key = record.key_str().expect("alert key").to_owned();
        let payload = record
            .payload
            .as_deref()
            .expect("alerts are never tombstoned");
        let envelope = self.codec.decode(payload).await.unwrap();
        let Body::Alert(alert) = envelope.body.clone() else {
            panic!("not an alert: {envelope:?}");
        };
        Some((key, envelope, alert))
    }

    async fn expect_alert(&mut self) -> (String, Envelope, Alert) {
        self.next_alert(Duration::from_secs(60))
            .await
            .expect("an alert within 60 s")
    }
}

impl Service {
    async fn stop(self) {
        self.shutdown.cancel();
        match tokio::time::timeout(Duration::from_secs(30), self.task).await {
            Ok(Ok(Ok(()))) => {}
            other => panic!("the service did not drain cleanly: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_threshold_fires_with_its_value_and_labels_then_resolves() {
    let mut setup = setup().await;
    setup
        .set_rule(rule("cpu", "threshold", "cpu_load", 90.0, 0))
        .await;
    let service = setup.start().await;

    setup.sample("web-1", "cpu_load", 42.0).await;
    setup.sample("web-1", "cpu_load", 95.5).await;
    let (key, envelope, fired) = setup.expect_alert().await;
    assert_eq!(key, "acme/cpu/host=web-1");
    assert_eq!(envelope.tenant_id, TENANT);
    assert_eq!(envelope.schema_name, "ve.v1.Alert");
    assert_eq!(fired.state, "firing");
    assert_eq!(fired.rule_id, "cpu");
    assert_eq!(fired.series, "host=web-1");
    assert_eq!(fired.value, 95.5);
    assert_eq!(fired.threshold, 90.0);
    assert_eq!(fired.resolved_at, None);
    assert_eq!(fired.labels["host"], "web-1");
    assert_eq!(fired.labels["rule"], "cpu rule");
    assert_eq!(fired.labels["kind"], "threshold");
    assert_eq!(envelope.event_time, fired.started_at);

    setup.sample("web-1", "cpu_load", 12.0).await;
    let (key, envelope, resolved) = setup.expect_alert().await;
    assert_eq!(key, "acme/cpu/host=web-1");
    assert_eq!(resolved.state, "resolved");
    assert_eq!(resolved.value, 12.0);
    assert_eq!(resolved.started_at, fired.started_at);
    let resolved_at = resolved.resolved_at.expect("resolved_at");
    assert!(resolved_at >= fired.started_at);
    assert_eq!(envelope.event_time, resolved_at);

    service.stop().await;
    setup.tail_stop.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_absence_rule_fires_when_a_series_goes_silent_and_resolves_on_data() {
    let mut setup = setup().await;
    setup
        .set_rule(rule("beat", "absence", "heartbeat", 0.0, 1))
        .await;
    let service = setup.start().await;

    setup.sample("db-1", "heartbeat", 1.0).await;
    let (key, _, fired) = setup.expect_alert().await;
    assert_eq!(key, "acme/beat/host=db-1");
    assert_eq!(fired.state, "firing");
    assert!(fired.value >= 1.0, "silent for at least for_seconds");
    assert_eq!(fired.threshold, 1.0);
    assert_eq!(fired.labels["kind"], "absence");

    setup.sample("db-1", "heartbeat", 1.0).await;
    // Silence after this sample fires again; the first alert after it must be the resolution.
    let (key, _, resolved) = setup.expect_alert().await;
    assert_eq!(key, "acme/beat/host=db-1");
    assert_eq!(resolved.state, "resolved");
    assert_eq!(resolved.started_at, fired.started_at);

    service.stop().await;
    setup.tail_stop.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn rule_changes_and_deletions_apply_without_a_restart() {
    let mut setup = setup().await;
    setup
        .set_rule(rule("cpu", "threshold", "cpu_load", 90.0, 0))
        .await;
    let service = setup.start().await;

    setup.sample("web-2", "cpu_load", 95.0).await;
    let (_, _, fired) = setup.expect_alert().await;
    assert_eq!(fired.state, "firing");

    // Raised above the current value: the next sample evaluated under the new rule resolves.
    // The change reaches the service through the broker, so samples are sent until it has.
    setup
        .set_rule(rule("cpu", "threshold", "cpu_load", 99.0, 0))
        .await;
    let mut resolved = None;
    for _ in 0..30 {
        setup.sample("web-2", "cpu_load", 95.0).await;
        if let Some(alert) = setup.next_alert(Duration::from_secs(2)).await {
            resolved = Some(alert);
            break;
        }
    }
    let (_, _, resolved) = resolved.expect("the raised threshold never applied");
    assert_eq!(resolved.state, "resolved");
    assert_eq!(resolved.threshold, 99.0);
    assert_eq!(resolved.started_at, fired.started_at);

    setup.sample("web-2", "cpu_load", 99.5).await;
    let (_, _, fired) = setup.expect_alert().await;
    assert_eq!(fired.state, "firing");
    assert_eq!(fired.value, 99.5);

    // Deleted: what it had firing is resolved by the tick, without any further event.
    ve_ctl::delete_rule(&setup.kafka, &setup.topics.rules, TENANT, "cpu")
        .await
        .unwrap();
    let (key, _, deleted) = setup.expect_alert().await;
    assert_eq!(key, "acme/cpu/host=web-2");
    assert_eq!(deleted.state, "resolved");
    assert_eq!(deleted.started_at, fired.started_at);
    assert!(
        deleted.message.contains("rule deleted"),
        "{}",
        deleted.message
    );

    service.stop().await;
    setup.tail_stop.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_keeps_a_firing_alert_firing_and_resolves_it_later() {
    let mut setup = setup().await;
    setup
        .set_rule(rule("cpu", "threshold", "cpu_load", 90.0, 0))
        .await;
    let first = setup.start().await;
    setup.sample("web-3", "cpu_load", 97.0).await;
    let (_, _, fired) = setup.expect_alert().await;
    assert_eq!(fired.state, "firing");
    first.stop().await;

    let second = setup.start().await;
    // Still over the threshold, then under it: after the restart the next alert must be the
    // resolution of the same alert (a re-fire would come first, with a new started_at).
    setup.sample("web-3", "cpu_load", 98.0).await;
    setup.sample("web-3", "cpu_load", 10.0).await;
    let (key, _, resolved) = setup.expect_alert().await;
    assert_eq!(key, "acme/cpu/host=web-3");
    assert_eq!(resolved.state, "resolved");
    assert_eq!(resolved.started_at, fired.started_at);
    assert_eq!(resolved.value, 10.0);

    second.stop().await;
    setup.tail_stop.cancel();
}
