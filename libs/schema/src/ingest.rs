//! The JSON shape of ONE ingested event of each kind, as SDKs, apps, agents and pipelines send it
//! and as `ingest.raw.v1` carries it (`RawPayload.payload`). The gateway parses and validates with
//! these types before it accepts an event; the normalizer parses the same bytes with the same
//! types, so whatever the gateway accepted the normalizer can read.
//!
//! No IO here. Unknown top-level fields are ignored (web events keep them as properties), and a
//! `tenant_id` in a body is never read: the API key decides the tenant.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, NaiveDateTime};
use serde::{Deserialize, Serialize};
use serde_json::{Map as JsonMap, Value as Json};
use sha2::{Digest, Sha256};

/// The kinds `RawPayload.kind` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Web,
    App,
    Metric,
    Span,
    Run,
    Step,
    Decision,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Web,
        Kind::App,
        Kind::Metric,
        Kind::Span,
        Kind::Run,
        Kind::Step,
        Kind::Decision,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Web => "web",
            Kind::App => "app",
            Kind::Metric => "metric",
            Kind::Span => "span",
            Kind::Run => "run",
            Kind::Step => "step",
            Kind::Decision => "decision",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The envelope's `source.type` for events of this kind.
    pub fn source_type(self) -> &'static str {
        match self {
            Kind::Web => "sdk",
            Kind::App => "app",
            Kind::Metric => "agent",
            Kind::Span => "otlp",
            Kind::Run | Kind::Step | Kind::Decision => "pipeline",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The web event types of seed 001.
pub const WEB_TYPES: [&str; 5] = ["pageview", "click", "scroll", "performance", "custom"];
/// Span kinds as the flattened span carries them (OTLP `SPAN_KIND_*`, lowercase).
pub const SPAN_KINDS: [&str; 6] = [
    "unspecified",
    "internal",
    "server",
    "client",
    "producer",
    "consumer",
];
/// Span status codes (OTLP `STATUS_CODE_*`, lowercase).
pub const SPAN_STATUSES: [&str; 3] = ["unset", "ok", "error"];
/// What a pipeline step decided about an item (seed 002).
pub const DECISION_OUTCOMES: [&str; 3] = ["kept", "eliminated", "scored"];

/// Longest client-supplied event id; it becomes a Kafka key and a ClickHouse sort key.
pub const MAX_ID_LEN: usize = 128;

/// Browser / SDK analytics event (seed 001).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebEventIn {
    /// Client event id (a UUID in seed 001); the idempotency key when given.
    #[serde(default)]
    pub id: Option<String>,
    pub session_id: String,
    /// ISO 8601 / RFC 3339.
    pub timestamp: String,
    /// pageview, click, scroll, performance or custom.
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub referrer: Option<String>,
    #[serde(default)]
    pub user_agent: Option<String>,
    /// Click target.
    #[serde(default)]
    pub selector: Option<String>,
    /// 0..=1 of the page (a percentage 0..=100 is accepted and scaled by the normalizer).
    #[serde(default)]
    pub scroll_depth: Option<f64>,
    /// Custom event name.
    #[serde(default)]
    pub name: Option<String>,
    /// Performance timings in ms (ttfb, fcp, lcp, ...).
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    #[serde(default)]
    pub properties: Option<JsonMap<String, Json>>,
    /// Event-specific fields not named above; the normalizer folds them into `properties`.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Json>,
}

/// Application event (seed 004).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppEventIn {
    #[serde(default)]
    pub id: Option<String>,
    pub app_id: String,
    pub event_name: String,
    pub user_id: String,
    pub timestamp: String,
    /// Free-form; stays a JSON string downstream.
    #[serde(default)]
    pub properties: Option<JsonMap<String, Json>>,
}

/// Agent metric sample (seed 003).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricIn {
    #[serde(default)]
    pub id: Option<String>,
    pub host: String,
    pub metric: String,
    pub value: f64,
    #[serde(default)]
    pub unit: Option<String>,
    /// Seed 003 spells the sample time `ts_event`; `timestamp` is accepted too.
    #[serde(default)]
    pub ts_event: Option<String>,
    #[serde(default)]
    pub timestamp: Option<String>,
    /// Series tags; scalar values (strings, numbers, booleans) only.
    #[serde(default)]
    pub tags: BTreeMap<String, Json>,
}

/// A pipeline run (seed 002).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunIn {
    #[serde(default)]
    pub id: Option<String>,
    pub run_id: String,
    pub pipeline_id: String,
    pub status: String,
    pub started_at: String,
    #[serde(default)]
    pub finished_at: Option<String>,
    #[serde(default)]
    pub metadata: Option<JsonMap<String, Json>>,
}

/// One step of a pipeline run with its counts (seed 002).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepIn {
    #[serde(default)]
    pub id: Option<String>,
    pub step_id: String,
    pub run_id: String,
    pub pipeline_id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub position: i32,
    pub input_count: i64,
    pub output_count: i64,
    #[serde(default)]
    pub kept_count: i64,
    #[serde(default)]
    pub eliminated_count: i64,
    #[serde(default)]
    pub scored_count: i64,
    /// When the step ran; the ingest time when absent.
    #[serde(default)]
    pub timestamp: Option<String>,
}

/// One decision a pipeline step took about one item (seed 002).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionIn {
    #[serde(default)]
    pub id: Option<String>,
    /// Seed 002 calls it `event_id`.
    #[serde(alias = "event_id")]
    pub decision_id: String,
    pub step_id: String,
    pub run_id: String,
    pub pipeline_id: String,
    pub item_id: String,
    /// kept, eliminated or scored.
    pub outcome: String,
    #[serde(default)]
    pub score: Option<f64>,
    #[serde(default)]
    pub reason: String,
    /// Any JSON; stays a JSON string downstream.
    #[serde(default)]
    pub payload: Option<Json>,
    #[serde(default)]
    pub timestamp: Option<String>,
}

/// One OTLP span, flattened: ids as lowercase hex, times as Unix nanoseconds, attributes and
/// resource attributes as string maps. The gateway writes this shape for every span of an OTLP
/// export; clients may also send it directly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpanIn {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    #[serde(default)]
    pub parent_span_id: Option<String>,
    pub name: String,
    /// One of [`SPAN_KINDS`].
    #[serde(default = "default_span_kind")]
    pub kind: String,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    /// One of [`SPAN_STATUSES`].
    #[serde(default = "default_span_status")]
    pub status_code: String,
    #[serde(default)]
    pub status_message: String,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    #[serde(default)]
    pub resource: BTreeMap<String, String>,
    /// The resource's `service.name`.
    #[serde(default)]
    pub service_name: String,
}

fn default_span_kind() -> String {
    "internal".to_owned()
}

fn default_span_status() -> String {
    "unset".to_owned()
}

/// One parsed and validated event of any kind.
#[derive(Debug, Clone, PartialEq)]
pub enum IngestEvent {
    Web(WebEventIn),
    App(AppEventIn),
    Metric(MetricIn),
    Span(SpanIn),
    Run(RunIn),
    Step(StepIn),
    Decision(DecisionIn),
}

impl IngestEvent {
    /// Parses one event's JSON as `kind` and validates it; the error is the reason to report.
    pub fn parse(kind: Kind, json: &[u8]) -> Result<Self, String> {
        fn de<'a, T: Deserialize<'a>>(json: &'a [u8]) -> Result<T, String> {
            serde_json::from_slice(json).map_err(|e| format!("malformed event: {e}"))
        }
        let event = match kind {
            Kind::Web => Self::Web(de(json)?),
            Kind::App => Self::App(de(json)?),
            Kind::Metric => Self::Metric(de(json)?),
            Kind::Span => Self::Span(de(json)?),
            Kind::Run => Self::Run(de(json)?),
            Kind::Step => Self::Step(de(json)?),
            Kind::Decision => Self::Decision(de(json)?),
        };
        event.validate()?;
        Ok(event)
    }

    pub fn kind(&self) -> Kind {
        match self {
            Self::Web(_) => Kind::Web,
            Self::App(_) => Kind::App,
            Self::Metric(_) => Kind::Metric,
            Self::Span(_) => Kind::Span,
            Self::Run(_) => Kind::Run,
            Self::Step(_) => Kind::Step,
            Self::Decision(_) => Kind::Decision,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        match self {
            Self::Web(e) => e.validate(),
            Self::App(e) => e.validate(),
            Self::Metric(e) => e.validate(),
            Self::Span(e) => e.validate(),
            Self::Run(e) => e.validate(),
            Self::Step(e) => e.validate(),
            Self::Decision(e) => e.validate(),
        }
    }

    /// The client's own event id, if it sent one.
    pub fn client_id(&self) -> Option<&str> {
        let id = match self {
            Self::Web(e) => &e.id,
            Self::App(e) => &e.id,
            Self::Metric(e) => &e.id,
            Self::Span(e) => &e.id,
            Self::Run(e) => &e.id,
            Self::Step(e) => &e.id,
            Self::Decision(e) => &e.id,
        };
        id.as_deref().map(str::trim).filter(|s| !s.is_empty())
    }

    /// When the event happened (UTC micros), if it says; validated events always parse.
    pub fn event_time(&self) -> Option<i64> {
        let ts = match self {
            Self::Web(e) => Some(e.timestamp.as_str()),
            Self::App(e) => Some(e.timestamp.as_str()),
            Self::Metric(e) => e.ts_event.as_deref().or(e.timestamp.as_deref()),
            Self::Span(e) => return Some(nanos_to_micros(e.start_time_unix_nano)),
            Self::Run(e) => Some(e.started_at.as_str()),
            Self::Step(e) => e.timestamp.as_deref(),
            Self::Decision(e) => e.timestamp.as_deref(),
        };
        ts.and_then(|t| parse_timestamp(t).ok())
    }

    /// A natural identifier of the sender when the kind has one (agent host, traced service).
    pub fn source_hint(&self) -> Option<&str> {
        match self {
            Self::Metric(e) => Some(e.host.trim()),
            Self::Span(e) => Some(e.service_name.as_str()),
            Self::Run(e) => Some(e.pipeline_id.as_str()),
            Self::Step(e) => Some(e.pipeline_id.as_str()),
            Self::Decision(e) => Some(e.pipeline_id.as_str()),
            Self::Web(_) | Self::App(_) => None,
        }
        .filter(|s| !s.is_empty())
    }
}

fn required(field: &str, value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        Err(format!("missing or empty required field `{field}`"))
    } else {
        Ok(())
    }
}

fn valid_id(id: &Option<String>) -> Result<(), String> {
    match id {
        Some(id) if id.len() > MAX_ID_LEN => {
            Err(format!("`id` is longer than {MAX_ID_LEN} characters"))
        }
        Some(id) if id.chars().any(char::is_control) => {
            Err("`id` contains control characters".into())
        }
        _ => Ok(()),
    }
}

fn valid_time(field: &str, value: &str) -> Result<i64, String> {
    required(field, value)?;
    parse_timestamp(value).map_err(|e| format!("bad timestamp in `{field}`: {e}"))
}

fn non_negative(field: &str, value: i64) -> Result<(), String> {
    if value < 0 {
        Err(format!("`{field}` is negative ({value})"))
    } else {
        Ok(())
    }
}

fn finite(field: &str, value: f64) -> Result<(), String> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(format!("`{field}` is not a finite number"))
    }
}

impl WebEventIn {
    pub fn validate(&self) -> Result<(), String> {
        valid_id(&self.id)?;
        required("session_id", &self.session_id)?;
        let _ = valid_time("timestamp", &self.timestamp)?;
        if !WEB_TYPES.contains(&self.event_type.as_str()) {
            return Err(format!(
                "unknown web event type `{}` (expected one of {})",
                self.event_type,
                WEB_TYPES.join(", ")
            ));
        }
        if let Some(depth) = self.scroll_depth {
            finite("scroll_depth", depth)?;
            if !(0.0..=100.0).contains(&depth) {
                return Err(format!(
                    "`scroll_depth` {depth} is outside 0..=1 (or 0..=100 %)"
                ));
            }
        }
        for (name, value) in &self.metrics {
            finite(&format!("metrics.{name}"), *value)?;
        }
        match self.event_type.as_str() {
            "custom" if self.name.as_deref().is_none_or(|n| n.trim().is_empty()) => {
                Err("a custom event needs a `name`".into())
            }
            "scroll" if self.scroll_depth.is_none() => {
                Err("a scroll event needs a `scroll_depth`".into())
            }
            _ => Ok(()),
        }
    }
}

impl AppEventIn {
    pub fn validate(&self) -> Result<(), String> {
        valid_id(&self.id)?;
        required("app_id", &self.app_id)?;
        required("event_name", &self.event_name)?;
        required("user_id", &self.user_id)?;
        let _ = valid_time("timestamp", &self.timestamp)?;
        Ok(())
    }
}

impl MetricIn {
    pub fn validate(&self) -> Result<(), String> {
        valid_id(&self.id)?;
        required("host", &self.host)?;
        required("metric", &self.metric)?;
        finite("value", self.value)?;
        if self.host.contains('/') || self.metric.contains('/') {
            // `/` separates the parts of the signals.metric.v1 key.
            return Err("`host` and `metric` must not contain `/`".into());
        }
        for field in ["ts_event", "timestamp"] {
            let value = if field == "ts_event" {
                &self.ts_event
            } else {
                &self.timestamp
            };
            if let Some(ts) = value {
                let _ = valid_time(field, ts)?;
            }
        }
        for (key, value) in &self.tags {
            if key.trim().is_empty() {
                return Err("empty tag key".into());
            }
            if matches!(value, Json::Array(_) | Json::Object(_)) {
                return Err(format!("tag `{key}` is not a scalar"));
            }
        }
        Ok(())
    }
}

impl RunIn {
    pub fn validate(&self) -> Result<(), String> {
        valid_id(&self.id)?;
        required("run_id", &self.run_id)?;
        required("pipeline_id", &self.pipeline_id)?;
        required("status", &self.status)?;
        let started = valid_time("started_at", &self.started_at)?;
        if let Some(finished) = &self.finished_at {
            let finished = valid_time("finished_at", finished)?;
            if finished < started {
                return Err("`finished_at` is before `started_at`".into());
            }
        }
        Ok(())
    }
}

impl StepIn {
    pub fn validate(&self) -> Result<(), String> {
        valid_id(&self.id)?;
        required("step_id", &self.step_id)?;
        required("run_id", &self.run_id)?;
        required("pipeline_id", &self.pipeline_id)?;
        non_negative("position", i64::from(self.position))?;
        non_negative("input_count", self.input_count)?;
        non_negative("output_count", self.output_count)?;
        non_negative("kept_count", self.kept_count)?;
        non_negative("eliminated_count", self.eliminated_count)?;
        non_negative("scored_count", self.scored_count)?;
        if self.output_count > self.input_count {
            return Err(format!(
                "`output_count` ({}) is greater than `input_count` ({})",
                self.output_count, self.input_count
            ));
        }
        for (field, count) in [
            ("kept_count", self.kept_count),
            ("eliminated_count", self.eliminated_count),
        ] {
            if count > self.input_count {
                return Err(format!(
                    "`{field}` ({count}) is greater than `input_count` ({})",
                    self.input_count
                ));
            }
        }
        if let Some(ts) = &self.timestamp {
            let _ = valid_time("timestamp", ts)?;
        }
        Ok(())
    }
}

impl DecisionIn {
    pub fn validate(&self) -> Result<(), String> {
        valid_id(&self.id)?;
        required("decision_id", &self.decision_id)?;
        required("step_id", &self.step_id)?;
        required("run_id", &self.run_id)?;
        required("pipeline_id", &self.pipeline_id)?;
        required("item_id", &self.item_id)?;
        if !DECISION_OUTCOMES.contains(&self.outcome.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "unknown decision outcome `{}` (expected one of {})",
                self.outcome,
                DECISION_OUTCOMES.join(", ")
            ));
        }
        if let Some(score) = self.score {
            finite("score", score)?;
        }
        if let Some(ts) = &self.timestamp {
            let _ = valid_time("timestamp", ts)?;
        }
        Ok(())
    }
}

fn hex_id(field: &str, value: &str, len: usize) -> Result<(), String> {
    if value.len() != len || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("`{field}` must be {len} hex digits"));
    }
    if value.bytes().all(|b| b == b'0') {
        return Err(format!("`{field}` is all zeroes"));
    }
    Ok(())
}

impl SpanIn {
    pub fn validate(&self) -> Result<(), String> {
        valid_id(&self.id)?;
        hex_id("trace_id", &self.trace_id, 32)?;
        hex_id("span_id", &self.span_id, 16)?;
        if let Some(parent) = self.parent_span_id.as_deref().filter(|p| !p.is_empty()) {
            hex_id("parent_span_id", parent, 16)?;
        }
        required("name", &self.name)?;
        if !SPAN_KINDS.contains(&self.kind.as_str()) {
            return Err(format!("unknown span kind `{}`", self.kind));
        }
        if !SPAN_STATUSES.contains(&self.status_code.as_str()) {
            return Err(format!("unknown span status `{}`", self.status_code));
        }
        if self.start_time_unix_nano == 0 {
            return Err("missing `start_time_unix_nano`".into());
        }
        if self.end_time_unix_nano < self.start_time_unix_nano {
            return Err("span ends before it starts".into());
        }
        Ok(())
    }
}

/// Unix nanoseconds to micros (what the envelope's timestamps are in).
pub fn nanos_to_micros(nanos: u64) -> i64 {
    i64::try_from(nanos / 1000).unwrap_or(i64::MAX)
}

/// Earliest and latest event time accepted: a year outside this is a client bug (seconds sent as
/// milliseconds, a zeroed clock), not an event.
const MIN_MICROS: i64 = 0; // 1970-01-01
const MAX_MICROS: i64 = 7_258_118_400_000_000; // 2200-01-01

/// Parses an ISO 8601 / RFC 3339 timestamp to UTC microseconds. An offset is applied; a time
/// without one is taken as UTC (many SDKs send `2024-01-01T00:00:00`).
pub fn parse_timestamp(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let micros = match DateTime::parse_from_rfc3339(text) {
        Ok(t) => t.timestamp_micros(),
        Err(rfc_error) => NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
            .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f"))
            .map(|t| t.and_utc().timestamp_micros())
            .map_err(|_| format!("`{text}` is not an ISO 8601 timestamp ({rfc_error})"))?,
    };
    if !(MIN_MICROS..MAX_MICROS).contains(&micros) {
        return Err(format!("`{text}` is outside 1970..2200"));
    }
    Ok(micros)
}

/// Canonical unit and value: percent synonyms become `percent`; durations become seconds (`s`);
/// byte sizes become `bytes` (KB/MB/GB decimal, KiB/MiB/GiB binary); anything else is kept,
/// lowercased and trimmed.
pub fn normalize_unit(unit: &str, value: f64) -> (String, f64) {
    let trimmed = unit.trim();
    let lower = trimmed.to_lowercase();
    let (canonical, factor): (&str, f64) = match lower.as_str() {
        "%" | "percent" | "percentage" | "pct" | "perc" => ("percent", 1.0),
        "ns" | "nanosecond" | "nanoseconds" => ("s", 1e-9),
        "us" | "µs" | "μs" | "microsecond" | "microseconds" => ("s", 1e-6),
        "ms" | "millisecond" | "milliseconds" | "msec" | "msecs" => ("s", 1e-3),
        "s" | "sec" | "secs" | "second" | "seconds" => ("s", 1.0),
        "min" | "mins" | "minute" | "minutes" => ("s", 60.0),
        "h" | "hr" | "hour" | "hours" => ("s", 3600.0),
        "b" | "byte" | "bytes" => ("bytes", 1.0),
        "kb" | "kilobyte" | "kilobytes" => ("bytes", 1e3),
        "mb" | "megabyte" | "megabytes" => ("bytes", 1e6),
        "gb" | "gigabyte" | "gigabytes" => ("bytes", 1e9),
        "tb" | "terabyte" | "terabytes" => ("bytes", 1e12),
        "kib" | "kibibyte" | "kibibytes" => ("bytes", 1024.0),
        "mib" | "mebibyte" | "mebibytes" => ("bytes", 1024.0 * 1024.0),
        "gib" | "gibibyte" | "gibibytes" => ("bytes", 1024.0 * 1024.0 * 1024.0),
        "tib" | "tebibyte" | "tebibytes" => ("bytes", 1024.0 * 1024.0 * 1024.0 * 1024.0),
        _ => return (lower, value),
    };
    (canonical.to_owned(), value * factor)
}

/// The event id of an event its client sent without one: a UUID (version 8, RFC 9562 layout)
/// from SHA-256 over tenant, kind and the event's bytes, so a client's retry of the same event is
/// the same event everywhere downstream.
pub fn derive_event_id(tenant: &str, kind: Kind, payload: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(tenant.as_bytes());
    // Separators keep ("ab","c") and ("a","bc") apart.
    hasher.update([0]);
    hasher.update(kind.as_str().as_bytes());
    hasher.update([0]);
    hasher.update(payload);
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    bytes[6] = (bytes[6] & 0x0f) | 0x80;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut out = String::with_capacity(36);
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The envelope event id of an accepted event: the client's `id` when given, else derived.
pub fn event_id(tenant: &str, event: &IngestEvent, payload: &[u8]) -> String {
    match event.client_id() {
        Some(id) => id.to_owned(),
        None => derive_event_id(tenant, event.kind(), payload),
    }
}

/// A tag value as a string: strings as they are, other scalars in their JSON spelling.
pub fn scalar_to_string(value: &Json) -> String {
    match value {
        Json::String(s) => s.clone(),
        Json::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(kind: Kind, json: &str) -> Result<IngestEvent, String> {
        IngestEvent::parse(kind, json.as_bytes())
    }

    const WEB: &str = r#"{"id":"550e8400-e29b-41d4-a716-446655440000","tenant_id":"00000000-0000-0000-0000-000000000000","session_id":"11111111-1111-1111-1111-111111111111","timestamp":"2024-01-01T00:00:00Z","type":"pageview","title":"Home","path":"/"}"#;
    const APP: &str = r#"{"app_id":"openstream","event_name":"video_buffering","user_id":"user_550e8400","timestamp":"2026-02-02T12:00:00.000Z","properties":{"stream_id":"st-998877","buffer_duration_ms":1500}}"#;
    const METRIC: &str = r#"{"tenant_id":"acme","host":"host-a","metric":"cpu_load","value":92,"ts_event":"2025-10-16T09:00:00Z","unit":"percent","tags":{"env":"prod"}}"#;
    const SPAN: &str = r#"{"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7","name":"GET /","kind":"server","start_time_unix_nano":1700000000000000000,"end_time_unix_nano":1700000000250000000,"status_code":"ok","service_name":"web"}"#;
    const RUN: &str = r#"{"run_id":"r1","pipeline_id":"p1","status":"running","started_at":"2025-01-01T00:00:00Z"}"#;
    const STEP: &str = r#"{"step_id":"s1","run_id":"r1","pipeline_id":"p1","name":"filter","input_count":100,"output_count":25,"kept_count":25,"eliminated_count":75,"scored_count":100}"#;
    const DECISION: &str = r#"{"event_id":"d1","step_id":"s1","run_id":"r1","pipeline_id":"p1","item_id":"i1","outcome":"kept","score":0.9}"#;

    #[test]
    fn seed_examples_parse() {
        for (kind, json) in [
            (Kind::Web, WEB),
            (Kind::App, APP),
            (Kind::Metric, METRIC),
            (Kind::Span, SPAN),
            (Kind::Run, RUN),
            (Kind::Step, STEP),
            (Kind::Decision, DECISION),
        ] {
            let event = parse(kind, json).unwrap_or_else(|e| panic!("{kind}: {e}"));
            assert_eq!(event.kind(), kind);
        }
    }

    #[test]
    fn web_extra_fields_are_kept_and_tenant_is_not_a_field() {
        let Ok(IngestEvent::Web(web)) = parse(Kind::Web, WEB) else {
            panic!()
        };
        assert_eq!(
            web.extra.get("tenant_id").and_then(Json::as_str),
            Some("00000000-0000-0000-0000-000000000000")
        );
        assert_eq!(web.title.as_deref(), Some("Home"));
    }

    /// (kind, json, substring of the reason)
    const INVALID: &[(Kind, &str, &str)] = &[
        (
            Kind::Web,
            r#"{"session_id":"s","timestamp":"2024-01-01T00:00:00Z"}"#,
            "missing field `type`",
        ),
        (
            Kind::Web,
            r#"{"session_id":"","timestamp":"2024-01-01T00:00:00Z","type":"click"}"#,
            "`session_id`",
        ),
        (
            Kind::Web,
            r#"{"session_id":"s","timestamp":"yesterday","type":"click"}"#,
            "bad timestamp",
        ),
        (
            Kind::Web,
            r#"{"session_id":"s","timestamp":"2024-01-01T00:00:00Z","type":"hover"}"#,
            "unknown web event type `hover`",
        ),
        (
            Kind::Web,
            r#"{"session_id":"s","timestamp":"2024-01-01T00:00:00Z","type":"custom"}"#,
            "needs a `name`",
        ),
        (
            Kind::Web,
            r#"{"session_id":"s","timestamp":"2024-01-01T00:00:00Z","type":"scroll"}"#,
            "needs a `scroll_depth`",
        ),
        (
            Kind::Web,
            r#"{"session_id":"s","timestamp":"2024-01-01T00:00:00Z","type":"scroll","scroll_depth":250}"#,
            "outside",
        ),
        (
            Kind::Web,
            r#"{"session_id":"s","timestamp":"1900-01-01T00:00:00Z","type":"click"}"#,
            "outside 1970",
        ),
        (
            Kind::Web,
            r#"{"session_id":5,"timestamp":"2024-01-01T00:00:00Z","type":"click"}"#,
            "malformed event",
        ),
        (Kind::Web, r#"[1,2]"#, "malformed event"),
        (
            Kind::App,
            r#"{"app_id":"a","event_name":"e","timestamp":"2024-01-01T00:00:00Z"}"#,
            "missing field `user_id`",
        ),
        (
            Kind::App,
            r#"{"app_id":"a","event_name":" ","user_id":"u","timestamp":"2024-01-01T00:00:00Z"}"#,
            "`event_name`",
        ),
        (
            Kind::App,
            r#"{"app_id":"a","event_name":"e","user_id":"u","timestamp":"2024-01-01T00:00:00Z","properties":[1]}"#,
            "malformed event",
        ),
        (
            Kind::Metric,
            r#"{"host":"h","metric":"m"}"#,
            "missing field `value`",
        ),
        (
            Kind::Metric,
            r#"{"host":"h","metric":"m","value":"high"}"#,
            "malformed event",
        ),
        (
            Kind::Metric,
            r#"{"host":"h","metric":"m","value":1e999}"#,
            "malformed event",
        ),
        (
            Kind::Metric,
            r#"{"host":"","metric":"m","value":1}"#,
            "`host`",
        ),
        (
            Kind::Metric,
            r#"{"host":"a/b","metric":"m","value":1}"#,
            "must not contain `/`",
        ),
        (
            Kind::Metric,
            r#"{"host":"h","metric":"m","value":1,"ts_event":"2025-13-01T00:00:00Z"}"#,
            "bad timestamp in `ts_event`",
        ),
        (
            Kind::Metric,
            r#"{"host":"h","metric":"m","value":1,"tags":{"x":{"y":1}}}"#,
            "not a scalar",
        ),
        (
            Kind::Span,
            r#"{"trace_id":"xyz","span_id":"00f067aa0ba902b7","name":"n","start_time_unix_nano":1,"end_time_unix_nano":2}"#,
            "`trace_id` must be 32 hex",
        ),
        (
            Kind::Span,
            r#"{"trace_id":"00000000000000000000000000000000","span_id":"00f067aa0ba902b7","name":"n","start_time_unix_nano":1,"end_time_unix_nano":2}"#,
            "all zeroes",
        ),
        (
            Kind::Span,
            r#"{"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7","name":"n","start_time_unix_nano":5,"end_time_unix_nano":2}"#,
            "ends before it starts",
        ),
        (
            Kind::Span,
            r#"{"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7","name":"n","kind":"weird","start_time_unix_nano":1,"end_time_unix_nano":2}"#,
            "unknown span kind",
        ),
        (
            Kind::Run,
            r#"{"run_id":"r","pipeline_id":"p","status":"ok","started_at":"2025-01-02T00:00:00Z","finished_at":"2025-01-01T00:00:00Z"}"#,
            "before `started_at`",
        ),
        (
            Kind::Step,
            r#"{"step_id":"s","run_id":"r","pipeline_id":"p","input_count":-1,"output_count":0}"#,
            "`input_count` is negative",
        ),
        (
            Kind::Step,
            r#"{"step_id":"s","run_id":"r","pipeline_id":"p","input_count":10,"output_count":11}"#,
            "greater than `input_count`",
        ),
        (
            Kind::Step,
            r#"{"step_id":"s","run_id":"r","pipeline_id":"p","input_count":10,"output_count":5,"eliminated_count":20}"#,
            "`eliminated_count` (20)",
        ),
        (
            Kind::Decision,
            r#"{"decision_id":"d","step_id":"s","run_id":"r","pipeline_id":"p","item_id":"i","outcome":"maybe"}"#,
            "unknown decision outcome",
        ),
    ];

    #[test]
    fn invalid_events_say_why() {
        for (kind, json, expected) in INVALID {
            let reason = parse(*kind, json).expect_err(json);
            assert!(
                reason.contains(expected),
                "{json}: `{reason}` lacks `{expected}`"
            );
        }
    }

    #[test]
    fn a_long_or_odd_client_id_is_refused() {
        let long = WEB.replace("550e8400-e29b-41d4-a716-446655440000", &"x".repeat(129));
        assert!(parse(Kind::Web, &long).unwrap_err().contains("longer than"));
    }

    #[test]
    fn timestamps_become_utc_micros() {
        let cases = [
            ("2024-01-01T00:00:00Z", 1_704_067_200_000_000),
            ("2024-01-01T01:00:00+01:00", 1_704_067_200_000_000),
            ("2024-01-01T00:00:00.123456Z", 1_704_067_200_123_456),
            ("2024-01-01T00:00:00.5", 1_704_067_200_500_000),
            ("2024-01-01 00:00:00", 1_704_067_200_000_000),
            (" 2024-01-01T00:00:00Z ", 1_704_067_200_000_000),
        ];
        for (text, micros) in cases {
            assert_eq!(parse_timestamp(text), Ok(micros), "{text}");
        }
        for bad in [
            "",
            "2024-01-01",
            "1704067200",
            "2024-02-30T00:00:00Z",
            "2300-01-01T00:00:00Z",
        ] {
            assert!(parse_timestamp(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn event_time_per_kind() {
        let t = |kind, json| parse(kind, json).unwrap().event_time();
        assert_eq!(t(Kind::Web, WEB), Some(1_704_067_200_000_000));
        assert_eq!(t(Kind::Metric, METRIC), Some(1_760_605_200_000_000));
        assert_eq!(t(Kind::Span, SPAN), Some(1_700_000_000_000_000));
        assert_eq!(t(Kind::Step, STEP), None);
    }

    #[test]
    fn units_are_canonical() {
        let cases: &[(&str, f64, &str, f64)] = &[
            ("%", 50.0, "percent", 50.0),
            ("Percent", 50.0, "percent", 50.0),
            ("pct", 5.0, "percent", 5.0),
            ("ms", 1500.0, "s", 1.5),
            ("MS", 250.0, "s", 0.25),
            ("us", 2_000_000.0, "s", 2.0),
            ("µs", 1000.0, "s", 0.001),
            ("ns", 1e9, "s", 1.0),
            ("seconds", 3.0, "s", 3.0),
            ("min", 2.0, "s", 120.0),
            ("KB", 2.0, "bytes", 2000.0),
            ("kB", 1.0, "bytes", 1000.0),
            ("MB", 1.0, "bytes", 1e6),
            ("GB", 1.0, "bytes", 1e9),
            ("KiB", 1.0, "bytes", 1024.0),
            ("MiB", 1.0, "bytes", 1_048_576.0),
            ("GiB", 2.0, "bytes", 2_147_483_648.0),
            ("B", 7.0, "bytes", 7.0),
            ("bytes", 7.0, "bytes", 7.0),
            ("Requests/S ", 3.0, "requests/s", 3.0),
            ("", 1.0, "", 1.0),
            ("°C", 21.5, "°c", 21.5),
        ];
        for (unit, value, want_unit, want_value) in cases {
            let (u, v) = normalize_unit(unit, *value);
            assert_eq!(&u, want_unit, "{unit}");
            assert!(
                (v - want_value).abs() <= want_value.abs() * 1e-12,
                "{unit}: {v} != {want_value}"
            );
        }
    }

    #[test]
    fn derived_ids_are_deterministic_uuids() {
        let a = derive_event_id("t1", Kind::Web, b"{}");
        assert_eq!(a, derive_event_id("t1", Kind::Web, b"{}"));
        assert_ne!(a, derive_event_id("t2", Kind::Web, b"{}"));
        assert_ne!(a, derive_event_id("t1", Kind::App, b"{}"));
        assert_ne!(a, derive_event_id("t1", Kind::Web, b"{ }"));
        assert_ne!(
            derive_event_id("ab", Kind::Web, b"c"),
            derive_event_id("a", Kind::Web, b"bc")
        );
        assert_eq!(a.len(), 36);
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('8'), "version 8: {a}");
        assert!(
            matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'),
            "variant: {a}"
        );
    }

    #[test]
    fn client_id_wins_over_the_derived_one() {
        let web = parse(Kind::Web, WEB).unwrap();
        assert_eq!(
            event_id("t", &web, WEB.as_bytes()),
            "550e8400-e29b-41d4-a716-446655440000"
        );
        let app = parse(Kind::App, APP).unwrap();
        assert_eq!(
            event_id("t", &app, APP.as_bytes()),
            derive_event_id("t", Kind::App, APP.as_bytes())
        );
    }

    #[test]
    fn kinds_round_trip_their_names() {
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(Kind::parse("log"), None);
        assert_eq!(Kind::Metric.source_type(), "agent");
    }

    #[test]
    fn span_serializes_to_what_it_parses() {
        let Ok(IngestEvent::Span(span)) = parse(Kind::Span, SPAN) else {
            panic!()
        };
        let json = serde_json::to_vec(&span).unwrap();
        assert_eq!(
            parse(Kind::Span, std::str::from_utf8(&json).unwrap()).unwrap(),
            IngestEvent::Span(span)
        );
    }

    #[test]
    fn scalars_stringify() {
        assert_eq!(scalar_to_string(&Json::from("x")), "x");
        assert_eq!(scalar_to_string(&Json::from(3)), "3");
        assert_eq!(scalar_to_string(&Json::from(true)), "true");
        assert_eq!(scalar_to_string(&Json::Null), "");
    }
}
