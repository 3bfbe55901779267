//! The protocol-independent part of ingestion: limits, validation, one raw record per accepted
//! event, and the all-or-nothing wait for the broker's acknowledgements.

use std::borrow::Cow;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use ve_kafka::{OutRecord, Producer};
use ve_schema::ingest::{IngestEvent, Kind};
use ve_schema::{Body, Codec, Envelope, Map, RawPayload, Source};
use ve_telemetry::TraceContext;

use crate::limit::RateLimiter;
use crate::{Config, GatewayError, Tenants};
use ve_auth::TenantAuth;

/// How an event reached the gateway (`RawPayload.channel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Http,
    Grpc,
    Otlp,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Grpc => "grpc",
            Self::Otlp => "otlp",
        }
    }
}

/// One event of a request: its kind (or why it has none) and its JSON bytes as received.
#[derive(Debug)]
pub struct Item<'a> {
    pub kind: Result<Kind, String>,
    pub json: Cow<'a, [u8]>,
}

impl<'a> Item<'a> {
    pub fn new(kind: Kind, json: impl Into<Cow<'a, [u8]>>) -> Self {
        Self {
            kind: Ok(kind),
            json: json.into(),
        }
    }
}

/// What the request says about its sender, copied into every envelope of it.
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    /// `source.id`; when absent the event's natural source (agent host, service) or "unknown".
    pub source_id: Option<String>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    /// The caller's trace (`traceparent`), continued on every record; a new root when absent.
    pub trace: Option<TraceContext>,
}

/// The answer to an ingest request (seed 001's response, plus the per-event reasons).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BatchReport {
    /// `success` (all accepted), `partial` (some rejected) or `rejected` (none accepted).
    pub status: &'static str,
    pub batch_id: String,
    pub events_accepted: usize,
    pub events_rejected: usize,
    pub ingest_latency_ms: u64,
    pub rejected: Vec<Rejected>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Rejected {
    /// Position of the event in the request.
    pub index: usize,
    pub reason: String,
}

const ACCEPTED: &str = "gateway_events_accepted_total";
const REJECTED: &str = "gateway_events_rejected_total";
/// Every `reason` label value, registered at start so the first rejection is visible to rate().
const REASONS: &[&str] = &[
    "invalid",
    "unauthorized",
    "payload_too_large",
    "too_many_events",
    "malformed_request",
    "unsupported_media_type",
    "rate_limited",
    "unavailable",
];

pub(crate) fn register_metrics() {
    metrics::counter!(ACCEPTED).increment(0);
    for reason in REASONS {
        metrics::counter!(REJECTED, "reason" => *reason).increment(0);
    }
}

/// Counts `events` refused for `error`'s reason (a request refused before its events were
/// counted, e.g. unauthorized, counts as one).
pub(crate) fn count_rejected(error: &GatewayError, events: usize) {
    metrics::counter!(REJECTED, "reason" => error.reason()).increment(events.max(1) as u64);
}

#[derive(Debug)]
pub struct Ingestor {
    tenants: Tenants,
    codec: Codec,
    producer: Producer,
    limiter: RateLimiter,
    raw_topic: String,
    max_events: usize,
}

impl Ingestor {
    pub fn new(tenants: Tenants, codec: Codec, producer: Producer, config: &Config) -> Self {
        Self::with_limits(
            tenants,
            codec,
            producer,
            config.topics.raw.clone(),
            config.limits.max_events_per_batch,
        )
    }

    pub fn with_limits(
        tenants: Tenants,
        codec: Codec,
        producer: Producer,
        raw_topic: String,
        max_events: usize,
    ) -> Self {
        Self {
            tenants,
            codec,
            producer,
            limiter: RateLimiter::default(),
            raw_topic,
            max_events,
        }
    }

    pub fn authenticate(
        &self,
        header: Option<&str>,
    ) -> Result<std::sync::Arc<TenantAuth>, GatewayError> {
        Ok(self.tenants.authenticate(header)?)
    }

    /// Batch-size and rate limits for a request of `count` events.
    pub fn admit(&self, tenant: &TenantAuth, count: usize) -> Result<(), GatewayError> {
        if count > self.max_events {
            return Err(GatewayError::TooManyEvents {
                count,
                max: self.max_events,
            });
        }
        self.limiter
            .take(&tenant.tenant, count, Instant::now())
            .map_err(|retry_after| GatewayError::RateLimited { retry_after })
    }

    /// Validates every item, produces the valid ones and waits until the broker acknowledged all
    /// of them. `Err` means nothing of the request may be reported accepted.
    pub async fn ingest(
        &self,
        tenant: &TenantAuth,
        channel: Channel,
        items: Vec<Item<'_>>,
        meta: &RequestMeta,
        started: Instant,
    ) -> Result<BatchReport, GatewayError> {
        let tenant_id = tenant.tenant.tenant_id.as_str();
        let batch_id = uuid::Uuid::now_v7().to_string();
        let ingest_time = now_micros();
        // One span for the gateway's handling of the request, carried by all its records:
        // formatting a fresh child per record cost more than validating the event.
        let traceparent = meta
            .trace
            .map_or_else(TraceContext::new_root, |parent| parent.child())
            .to_string();
        let mut attributes = Map::new();
        let _ = attributes.insert("batch_id".into(), batch_id.clone());
        if let Some(ip) = &meta.client_ip {
            let _ = attributes.insert("client_ip".into(), ip.clone());
        }
        if let Some(agent) = &meta.user_agent {
            let _ = attributes.insert("user_agent".into(), agent.clone());
        }

        let total = items.len();
        let mut records = Vec::with_capacity(total);
        let mut rejected = Vec::new();
        for (index, item) in items.into_iter().enumerate() {
            let parsed = item
                .kind
                .and_then(|kind| IngestEvent::parse(kind, &item.json));
            let event = match parsed {
                Ok(event) => event,
                Err(reason) => {
                    rejected.push(Rejected { index, reason });
                    continue;
                }
            };
            let kind = event.kind();
            let event_id = ve_schema::ingest::event_id(tenant_id, &event, &item.json);
            let source_id = meta
                .source_id
                .as_deref()
                .or(event.source_hint())
                .unwrap_or("unknown")
                .to_owned();
            let envelope = Envelope {
                event_id: event_id.clone(),
                event_time: event.event_time().unwrap_or(ingest_time),
                ingest_time,
                tenant_id: tenant_id.to_owned(),
                source: Source {
                    kind: kind.source_type().to_owned(),
                    id: source_id,
                },
                schema_name: "ve.v1.RawPayload".to_owned(),
                schema_version: 1,
                attributes: attributes.clone(),
                tags: Map::new(),
                body: Body::Raw(RawPayload {
                    kind: kind.as_str().to_owned(),
                    content_type: "application/json".to_owned(),
                    channel: channel.as_str().to_owned(),
                    payload: item.json.into_owned(),
                }),
            };
            match self.codec.encode(&self.raw_topic, &envelope).await {
                Ok(bytes) => records.push(
                    OutRecord::new(self.raw_topic.as_str(), event_id, bytes)
                        .header(ve_telemetry::TRACEPARENT, traceparent.as_bytes()),
                ),
                Err(e) if e.is_retryable() => {
                    let error = GatewayError::Unavailable(format!("schema registry: {e}"));
                    count_rejected(&error, total);
                    return Err(error);
                }
                Err(e) => rejected.push(Rejected {
                    index,
                    reason: format!("cannot encode: {e}"),
                }),
            }
        }

        if !records.is_empty()
            && let Err(e) = self.producer.send_all(&records).await
        {
            tracing::warn!(error = %e, events = records.len(), "batch not acknowledged by the broker");
            let error = GatewayError::Unavailable(format!("broker: {e}"));
            count_rejected(&error, total);
            return Err(error);
        }

        let accepted = records.len();
        metrics::counter!(ACCEPTED).increment(accepted as u64);
        if !rejected.is_empty() {
            metrics::counter!(REJECTED, "reason" => "invalid").increment(rejected.len() as u64);
        }
        let status = match (accepted, rejected.len()) {
            (_, 0) => "success",
            (0, _) => "rejected",
            _ => "partial",
        };
        Ok(BatchReport {
            status,
            batch_id,
            events_accepted: accepted,
            events_rejected: rejected.len(),
            ingest_latency_ms: started.elapsed().as_millis() as u64,
            rejected,
        })
    }
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}
