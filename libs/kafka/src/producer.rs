use std::time::Duration;

use futures::future::join_all;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;

use crate::{KafkaConfig, KafkaError, OutRecord};

/// Idempotent producer with `acks=all`: a send resolves only once every in-sync replica has the
/// record, which is what lets callers acknowledge their own input.
#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer,
    delivery_timeout: Duration,
    service: String,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl Producer {
    pub fn new(config: &KafkaConfig, service: &str) -> Result<Self, KafkaError> {
        let mut client = config.client(service);
        let _ = client
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", &config.compression)
            .set("linger.ms", config.linger_ms.to_string())
            .set("message.timeout.ms", config.delivery_timeout_ms.to_string())
            // Bounded like the consumers' prefetch (default 1 GiB); a full queue makes `send`
            // wait, which is the back-pressure callers want.
            .set("queue.buffering.max.kbytes", "32768");
        config.apply_extra(&mut client);
        let inner: FutureProducer = client
            .create()
            .map_err(|e| KafkaError::Config(e.to_string()))?;
        Ok(Self {
            inner,
            delivery_timeout: Duration::from_millis(config.delivery_timeout_ms),
            service: service.to_owned(),
        })
    }

    /// Produces one record and waits for the broker's acknowledgement: (partition, offset).
    pub async fn send(&self, record: &OutRecord) -> Result<(i32, i64), KafkaError> {
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (key, value) in &record.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_slice()),
            });
        }
        let mut out: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&record.topic).headers(headers);
        if let Some(key) = &record.key {
            out = out.key(key.as_slice());
        }
        if let Some(payload) = &record.payload {
            out = out.payload(payload.as_slice());
        }
        let delivery = self
            .inner
            .send(out, Timeout::After(self.delivery_timeout))
            .await;
        match delivery {
            Ok(delivered) => {
                metrics::counter!(format!("{}_records_produced_total", metric_prefix(&self.service)), "topic" => record.topic.clone())
                    .increment(1);
                Ok((delivered.partition, delivered.offset))
            }
            Err((error, _)) => {
                metrics::counter!(format!("{}_produce_errors_total", metric_prefix(&self.service)), "topic" => record.topic.clone())
                    .increment(1);
                Err(KafkaError::Delivery {
                    topic: record.topic.clone(),
                    reason: error.to_string(),
                })
            }
        }
    }

    /// Produces every record and waits for all acknowledgements; fails if any one failed, so the
    /// caller never acknowledges a batch that is only partly durable.
    pub async fn send_all(&self, records: &[OutRecord]) -> Result<Vec<(i32, i64)>, KafkaError> {
        join_all(records.iter().map(|r| self.send(r)))
            .await
            .into_iter()
            .collect()
    }

    /// Waits for everything queued to be delivered (shutdown).
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.inner
            .flush(Timeout::After(timeout))
            .map_err(|e| KafkaError::Delivery {
                topic: "*".into(),
                reason: format!("flush: {e}"),
            })
    }
}

/// `clickhouse-sink` -> `clickhouse_sink`: metric names use underscores.
pub(crate) fn metric_prefix(service: &str) -> String {
    service.replace('-', "_")
}
