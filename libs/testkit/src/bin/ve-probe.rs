//! `ve-probe consume`: a separate process that reads envelopes from a topic through the kafka
//! crate's consumer loop and decodes them with schemas fetched from the registry by id, printing
//! one JSON line per record. Used by the cross-process wire test and handy for debugging a topic.
//!
//! ve-probe consume --brokers HOST:PORT --registry URL --topic T --group G --count N

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio_util::sync::CancellationToken;
use ve_kafka::{Outcome, Producer, Record, Stage, StageError};
use ve_schema::{Body, Codec};

struct Print {
    codec: Codec,
    left: Arc<AtomicUsize>,
    done: CancellationToken,
}

impl Stage for Print {
    async fn process(&mut self, batch: &[Record]) -> Result<Vec<Outcome>, StageError> {
        let mut outcomes = Vec::with_capacity(batch.len());
        for record in batch {
            let bytes = record.payload.as_deref().unwrap_or_default();
            match self.codec.decode(bytes).await {
                Ok(envelope) => {
                    let kind = match &envelope.body {
                        Body::Web(w) => w.event_type.clone(),
                        other => other.schema_name().to_owned(),
                    };
                    let line = serde_json::json!({
                        "topic": record.topic,
                        "partition": record.partition,
                        "offset": record.offset,
                        "schema_id": Codec::schema_id(bytes),
                        "event_id": envelope.event_id,
                        "tenant_id": envelope.tenant_id,
                        "schema_name": envelope.schema_name,
                        "body_kind": kind,
                        "traceparent": record.header_str("traceparent"),
                    });
                    println!("{line}");
                    outcomes.push(Outcome::Done);
                }
                Err(e) if e.is_retryable() => return Err(StageError::Retryable(e.to_string())),
                Err(e) => outcomes.push(Outcome::Poison(e.to_string())),
            }
            if self.left.fetch_sub(1, Ordering::SeqCst) <= 1 {
                self.done.cancel();
            }
        }
        Ok(outcomes)
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some("consume"), Some(brokers), Some(registry), Some(topic), Some(group), Some(count)) = (
        args.get(1).map(String::as_str),
        arg(&args, "--brokers"),
        arg(&args, "--registry"),
        arg(&args, "--topic"),
        arg(&args, "--group"),
        arg(&args, "--count").and_then(|c| c.parse::<usize>().ok()),
    ) else {
        eprintln!(
            "usage: ve-probe consume --brokers B --registry URL --topic T --group G --count N"
        );
        return ExitCode::from(2);
    };
    let stack = ve_testkit::Stack {
        brokers,
        registry,
        clickhouse: String::new(),
    };
    let kafka = stack.kafka(&group);
    let codec = match Codec::new(&stack.registry()) {
        Ok(codec) => codec,
        Err(e) => {
            eprintln!("ve-probe: {e}");
            return ExitCode::FAILURE;
        }
    };
    let done = CancellationToken::new();
    let stage = Print {
        codec,
        left: Arc::new(AtomicUsize::new(count)),
        done: done.clone(),
    };
    let producer = match Producer::new(&kafka, "ve-probe") {
        Ok(p) => p,
        Err(e) => {
            eprintln!("ve-probe: {e}");
            return ExitCode::FAILURE;
        }
    };
    match ve_kafka::run_stage(&kafka, "ve-probe", &[&topic], stage, &producer, done).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ve-probe: {e}");
            ExitCode::FAILURE
        }
    }
}
