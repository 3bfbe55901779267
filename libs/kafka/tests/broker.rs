//! Against the real broker of the local stack: the staged loop's delivery guarantees, dead
//! letters, and compacted-table following.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed assertion

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use ve_kafka::{
    CompactedTable, KafkaConfig, OutRecord, Outcome, Producer, Record, Stage, StageError,
    TailEvent, TopicSpec, dlq_topic, ensure_topics, run_stage, tail_topic,
};
use ve_testkit::{Stack, unique};

/// Accepts every record except those whose payload is `poison`; can be told to fail.
#[derive(Clone, Default)]
struct Collect {
    seen: Arc<Mutex<Vec<String>>>,
    fail_fatally: bool,
    transient_failures: Arc<Mutex<u32>>,
}

impl Stage for Collect {
    async fn process(&mut self, batch: &[Record]) -> Result<Vec<Outcome>, StageError> {
        if self.fail_fatally {
            return Err(StageError::Fatal("store rejected the batch".into()));
        }
        {
            let mut left = self.transient_failures.lock().unwrap();
            if *left > 0 {
                *left -= 1;
                return Err(StageError::Retryable("store unavailable".into()));
            }
        }
        let mut seen = self.seen.lock().unwrap();
        Ok(batch
            .iter()
            .map(|r| {
                let text =
                    String::from_utf8_lossy(r.payload.as_deref().unwrap_or_default()).into_owned();
                if text == "poison" {
                    Outcome::Poison("payload is not an envelope".into())
                } else {
                    seen.push(text);
                    Outcome::Done
                }
            })
            .collect())
    }
}

async fn setup(prefix: &str) -> (KafkaConfig, String, Producer) {
    let stack = Stack::require();
    let topic = unique(prefix);
    let config = stack.kafka(&unique("group"));
    // One partition, so offsets and order are predictable.
    ensure_topics(
        &config,
        &[
            TopicSpec::new(&topic).partitions(1),
            TopicSpec::new(dlq_topic(&topic)),
        ],
    )
    .await
    .unwrap();
    let producer = Producer::new(&config, "test").unwrap();
    (config, topic, producer)
}

async fn produce(producer: &Producer, topic: &str, payloads: &[&str]) {
    let records: Vec<OutRecord> = payloads
        .iter()
        .map(|p| OutRecord::new(topic, p.as_bytes().to_vec(), p.as_bytes().to_vec()))
        .collect();
    let _ = producer.send_all(&records).await.unwrap();
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..300 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

fn spawn_stage(
    config: &KafkaConfig,
    topic: &str,
    stage: Collect,
    producer: &Producer,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<Result<(), ve_kafka::KafkaError>>,
) {
    let token = CancellationToken::new();
    let (config, topic, producer, t) = (
        config.clone(),
        topic.to_owned(),
        producer.clone(),
        token.clone(),
    );
    let handle =
        tokio::spawn(
            async move { run_stage(&config, "test", &[&topic], stage, &producer, t).await },
        );
    (token, handle)
}

#[tokio::test(flavor = "multi_thread")]
async fn commits_after_the_stage_and_dead_letters_poison_with_its_origin() {
    let (config, topic, producer) = setup("stage").await;
    produce(&producer, &topic, &["a", "b", "poison", "c"]).await;

    let first = Collect::default();
    let (token, handle) = spawn_stage(&config, &topic, first.clone(), &producer);
    wait_until("three good records", || {
        first.seen.lock().unwrap().len() == 3
    })
    .await;

    // The poison record is in the dead-letter topic with its reason and origin.
    let dead = Arc::new(Mutex::new(Vec::<Record>::new()));
    let tail_stop = CancellationToken::new();
    let tail = {
        let (config, dlq, dead, stop) = (
            config.clone(),
            dlq_topic(&topic),
            Arc::clone(&dead),
            tail_stop.clone(),
        );
        tokio::spawn(async move {
            tail_topic(
                &config,
                "test",
                &dlq,
                |e| {
                    if let TailEvent::Record(r) = e {
                        dead.lock().unwrap().push(r);
                    }
                    async {}
                },
                stop,
            )
            .await
        })
    };
    wait_until("the dead letter", || !dead.lock().unwrap().is_empty()).await;
    {
        let dead = dead.lock().unwrap();
        assert_eq!(dead.len(), 1);
        let letter = &dead[0];
        assert_eq!(
            letter.payload.as_deref(),
            Some(&b"poison"[..]),
            "original bytes kept"
        );
        assert_eq!(
            letter.header_str("ve.dlq.reason"),
            Some("payload is not an envelope")
        );
        assert_eq!(
            letter.header_str("ve.dlq.source.topic"),
            Some(topic.as_str())
        );
        assert_eq!(letter.header_str("ve.dlq.source.offset"), Some("2"));
        assert_eq!(letter.header_str("ve.dlq.stage"), Some("test"));
    }
    tail_stop.cancel();
    tail.await.unwrap().unwrap();

    token.cancel();
    handle.await.unwrap().unwrap();
    assert_eq!(*first.seen.lock().unwrap(), ["a", "b", "c"]);

    // Same group again: everything before was committed, only the new record arrives.
    produce(&producer, &topic, &["d"]).await;
    let second = Collect::default();
    let (token, handle) = spawn_stage(&config, &topic, second.clone(), &producer);
    wait_until("the new record", || !second.seen.lock().unwrap().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    token.cancel();
    handle.await.unwrap().unwrap();
    assert_eq!(
        *second.seen.lock().unwrap(),
        ["d"],
        "committed records are not redelivered"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_stage_commits_nothing_and_the_batch_comes_back() {
    let (config, topic, producer) = setup("fatal").await;
    produce(&producer, &topic, &["x", "y"]).await;

    let broken = Collect {
        fail_fatally: true,
        ..Collect::default()
    };
    let (_token, handle) = spawn_stage(&config, &topic, broken, &producer);
    let err = handle.await.unwrap().unwrap_err();
    assert!(
        err.to_string().contains("store rejected the batch"),
        "{err}"
    );

    // A stage that fails transiently twice, then works: the same records, none lost.
    let flaky = Collect {
        transient_failures: Arc::new(Mutex::new(2)),
        ..Collect::default()
    };
    let (token, handle) = spawn_stage(&config, &topic, flaky.clone(), &producer);
    wait_until("redelivery", || flaky.seen.lock().unwrap().len() == 2).await;
    token.cancel();
    handle.await.unwrap().unwrap();
    assert_eq!(*flaky.seen.lock().unwrap(), ["x", "y"]);
    assert_eq!(
        *flaky.transient_failures.lock().unwrap(),
        0,
        "both transient failures were retried"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn compacted_table_loads_history_then_follows_live() {
    let stack = Stack::require();
    let topic = unique("control");
    let config = stack.kafka(&unique("group"));
    ensure_topics(&config, &[TopicSpec::compacted(&topic)])
        .await
        .unwrap();
    let producer = Producer::new(&config, "test").unwrap();
    let _ = producer
        .send_all(&[
            OutRecord::new(&topic, "t1", b"free".to_vec()),
            OutRecord::new(&topic, "t2", b"paid".to_vec()),
            OutRecord::new(&topic, "t1", b"enterprise".to_vec()),
        ])
        .await
        .unwrap();

    let token = CancellationToken::new();
    let (table, task) = CompactedTable::follow(
        config.clone(),
        "test".into(),
        topic.clone(),
        |bytes: Vec<u8>| async move { String::from_utf8(bytes).map_err(|e| e.to_string()) },
        token.clone(),
    );
    let handle = tokio::spawn(task);
    assert!(
        table.wait_ready(Duration::from_secs(20)).await,
        "history loaded"
    );
    assert_eq!(
        table.get("t1").as_deref(),
        Some("enterprise"),
        "latest value per key"
    );
    assert_eq!(table.get("t2").as_deref(), Some("paid"));

    let _ = producer
        .send(&OutRecord::tombstone(&topic, "t2"))
        .await
        .unwrap();
    let _ = producer
        .send(&OutRecord::new(&topic, "t3", b"free".to_vec()))
        .await
        .unwrap();
    wait_until("live changes", || {
        table.get("t3").is_some() && table.get("t2").is_none()
    })
    .await;
    assert_eq!(table.len(), 2);
    token.cancel();
    handle.await.unwrap().unwrap();
}
