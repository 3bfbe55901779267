use rdkafka::message::{BorrowedMessage, Headers, Message};

/// A consumed record, detached from the consumer so a stage can hold it across awaits.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// Broker or producer timestamp, milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
}

impl Record {
    pub(crate) fn from_message(message: &BorrowedMessage<'_>) -> Self {
        let headers = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|header| {
                        (
                            header.key.to_owned(),
                            header.value.unwrap_or_default().to_vec(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers,
            timestamp_ms: message.timestamp().to_millis(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The record's W3C trace context, if it carried a valid one.
    pub fn trace_context(&self) -> Option<ve_telemetry::TraceContext> {
        self.header_str(ve_telemetry::TRACEPARENT)
            .and_then(ve_telemetry::TraceContext::parse)
    }

    pub fn key_str(&self) -> Option<&str> {
        self.key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
    }
}

/// A record to produce.
#[derive(Debug, Clone)]
pub struct OutRecord {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    /// `None` is a tombstone (deletes the key from a compacted topic).
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl OutRecord {
    pub fn new(topic: impl Into<String>, key: impl Into<Vec<u8>>, payload: Vec<u8>) -> Self {
        Self {
            topic: topic.into(),
            key: Some(key.into()),
            payload: Some(payload),
            headers: Vec::new(),
        }
    }

    pub fn tombstone(topic: impl Into<String>, key: impl Into<Vec<u8>>) -> Self {
        Self {
            topic: topic.into(),
            key: Some(key.into()),
            payload: None,
            headers: Vec::new(),
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    /// Continues `parent`'s trace (or starts one) in the `traceparent` header.
    pub fn with_trace(self, parent: Option<&ve_telemetry::TraceContext>) -> Self {
        let context = parent.map_or_else(ve_telemetry::TraceContext::new_root, |p| p.child());
        self.header(ve_telemetry::TRACEPARENT, context.to_string())
    }
}

/// Names of the headers a dead letter carries, as documented in the README.
pub const DLQ_HEADERS: [&str; 6] = [
    "ve.dlq.reason",
    "ve.dlq.source.topic",
    "ve.dlq.source.partition",
    "ve.dlq.source.offset",
    "ve.dlq.stage",
    "ve.dlq.time",
];

/// The dead-letter topic of a consumed topic.
pub fn dlq_topic(topic: &str) -> String {
    format!("{topic}.dlq")
}

impl Record {
    /// The dead letter for this record: original key, bytes and headers, plus why and where from.
    pub fn to_dead_letter(&self, stage: &str, reason: &str, now_ms: i64) -> OutRecord {
        let mut headers = self.headers.clone();
        let values = [
            reason.to_owned(),
            self.topic.clone(),
            self.partition.to_string(),
            self.offset.to_string(),
            stage.to_owned(),
            now_ms.to_string(),
        ];
        headers.extend(
            DLQ_HEADERS
                .iter()
                .zip(values)
                .map(|(k, v)| ((*k).to_owned(), v.into_bytes())),
        );
        OutRecord {
            topic: dlq_topic(&self.topic),
            key: self.key.clone(),
            payload: Some(self.payload.clone().unwrap_or_default()),
            headers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_keeps_the_original_and_says_why() {
        let record = Record {
            topic: "ingest.raw.v1".into(),
            partition: 3,
            offset: 42,
            key: Some(b"k".to_vec()),
            payload: Some(b"\xffgarbage".to_vec()),
            headers: vec![("traceparent".into(), b"00-x".to_vec())],
            timestamp_ms: None,
        };
        let dead = record.to_dead_letter("normalizer", "not avro", 7);
        assert_eq!(dead.topic, "ingest.raw.v1.dlq");
        assert_eq!(dead.payload.as_deref(), Some(&b"\xffgarbage"[..]));
        assert_eq!(dead.key.as_deref(), Some(&b"k"[..]));
        let get = |k: &str| {
            dead.headers
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("ve.dlq.reason"), Some(b"not avro".to_vec()));
        assert_eq!(get("ve.dlq.source.partition"), Some(b"3".to_vec()));
        assert_eq!(get("ve.dlq.source.offset"), Some(b"42".to_vec()));
        assert_eq!(get("traceparent"), Some(b"00-x".to_vec()));
    }
}
