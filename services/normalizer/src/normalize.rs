//! The mapping from a raw envelope to its normalized envelope: no IO, so every rule is unit
//! tested here.

use std::collections::BTreeMap;

use serde_json::Value as Json;
use ve_schema::ingest::{
    AppEventIn, DecisionIn, IngestEvent, Kind, MetricIn, RunIn, SpanIn, StepIn, WebEventIn,
    nanos_to_micros, normalize_unit, parse_timestamp, scalar_to_string,
};
use ve_schema::{
    AppEvent, Body, DecisionEvent, Envelope, Map, MetricSample, PipelineRun, PipelineStep, Span,
    WebEvent,
};

/// Which topic a normalized envelope goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// `events.normalized.v1`
    Events,
    /// `signals.metric.v1`
    Metrics,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Normalized {
    pub output: Output,
    pub key: String,
    pub envelope: Envelope,
}

/// Version of the normalized body contracts this build writes.
const SCHEMA_VERSION: i32 = 1;

/// Attribute carrying the size in bytes of the event as the gateway accepted it: the invoicer
/// meters ingested bytes from it, since later stages reshape (and so resize) the event.
pub const INGEST_BYTES: &str = "ingest_bytes";
/// Attributes carrying where the event's raw record sits on `ingest.raw.v1` (partition, offset):
/// the s3-archiver's object for it is derived from that position, so later stages (the
/// clickhouse-sink's `s3_key`) can point at the archived payload.
pub const RAW_PARTITION: &str = "raw_partition";
pub const RAW_OFFSET: &str = "raw_offset";

/// Normalizes one raw envelope; the error is the dead-letter reason.
pub fn normalize(raw: &Envelope) -> Result<Normalized, String> {
    let Body::Raw(payload) = &raw.body else {
        return Err(format!(
            "expected a RawPayload body, got {}",
            raw.body.schema_name()
        ));
    };
    let kind = Kind::parse(&payload.kind)
        .ok_or_else(|| format!("unknown raw payload kind `{}`", payload.kind))?;
    let event = IngestEvent::parse(kind, &payload.payload)
        .map_err(|reason| format!("invalid {kind} event: {reason}"))?;
    let event_time = event.event_time().unwrap_or(raw.event_time);
    let mut tags: Map = raw
        .tags
        .iter()
        .map(|(k, v)| (k.trim().to_lowercase(), v.clone()))
        .collect();
    let mut output = Output::Events;
    let mut key = raw.event_id.clone();
    let body = match event {
        IngestEvent::Web(web) => Body::Web(web_event(web, &raw.attributes)),
        IngestEvent::App(app) => Body::App(app_event(app)),
        IngestEvent::Metric(metric) => {
            let (sample, metric_tags) = metric_sample(metric);
            key = format!("{}/{}/{}", raw.tenant_id, sample.host, sample.metric);
            output = Output::Metrics;
            tags.extend(metric_tags);
            Body::Metric(sample)
        }
        IngestEvent::Span(span) => {
            let span = flat_span(span);
            if !span.service_name.is_empty() {
                let _ = tags.insert("service".into(), span.service_name.clone());
            }
            Body::Span(span)
        }
        IngestEvent::Run(run) => Body::Run(pipeline_run(run)?),
        IngestEvent::Step(step) => Body::Step(pipeline_step(step)),
        IngestEvent::Decision(decision) => Body::Decision(decision_event(decision)),
    };
    let mut attributes = raw.attributes.clone();
    let _ = attributes.insert(INGEST_BYTES.to_owned(), payload.payload.len().to_string());
    Ok(Normalized {
        output,
        key,
        envelope: Envelope {
            event_id: raw.event_id.clone(),
            event_time,
            ingest_time: raw.ingest_time,
            tenant_id: raw.tenant_id.clone(),
            source: raw.source.clone(),
            schema_name: body.schema_name().to_owned(),
            schema_version: SCHEMA_VERSION,
            attributes,
            tags,
            body,
        },
    })
}

fn trimmed(value: Option<String>) -> Option<String> {
    value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

/// Fields the body may carry that are not event data: never copied into properties.
const NOT_PROPERTIES: &[&str] = &["tenant_id", "kind"];

fn web_event(web: WebEventIn, attributes: &Map) -> WebEvent {
    let mut properties = web.properties.unwrap_or_default();
    for (key, value) in web.extra {
        if !NOT_PROPERTIES.contains(&key.as_str()) && !properties.contains_key(&key) {
            let _ = properties.insert(key, value);
        }
    }
    WebEvent {
        event_type: web.event_type,
        session_id: web.session_id.trim().to_owned(),
        user_id: trimmed(web.user_id),
        url: trimmed(web.url),
        path: trimmed(web.path),
        title: web.title,
        referrer: trimmed(web.referrer),
        // The SDK's own value wins; else what the HTTP request said.
        user_agent: trimmed(web.user_agent).or_else(|| attributes.get("user_agent").cloned()),
        selector: web.selector,
        // SDKs disagree on fraction vs percentage; the contract is 0..=1.
        scroll_depth: web
            .scroll_depth
            .map(|d| if d > 1.0 { d / 100.0 } else { d }),
        name: trimmed(web.name),
        metrics: web
            .metrics
            .into_iter()
            .map(|(k, v)| (k.trim().to_lowercase(), v))
            .collect(),
        properties: Json::Object(properties).to_string(),
    }
}

fn app_event(app: AppEventIn) -> AppEvent {
    AppEvent {
        app_id: app.app_id.trim().to_owned(),
        event_name: app.event_name.trim().to_owned(),
        user_id: app.user_id.trim().to_owned(),
        properties: Json::Object(app.properties.unwrap_or_default()).to_string(),
    }
}

/// The sample and its series tags (keys lowercased, values as strings).
fn metric_sample(metric: MetricIn) -> (MetricSample, BTreeMap<String, String>) {
    let (unit, value) = normalize_unit(metric.unit.as_deref().unwrap_or(""), metric.value);
    let tags = metric
        .tags
        .iter()
        .map(|(k, v)| (k.trim().to_lowercase(), scalar_to_string(v)))
        .collect();
    let sample = MetricSample {
        // Host names and metric names are case-insensitive in every agent we know; one spelling
        // keeps one series.
        host: metric.host.trim().to_lowercase(),
        metric: metric.metric.trim().to_lowercase(),
        value,
        unit,
    };
    (sample, tags)
}

fn flat_span(span: SpanIn) -> Span {
    let service_name = if span.service_name.trim().is_empty() {
        span.resource
            .get("service.name")
            .cloned()
            .unwrap_or_default()
    } else {
        span.service_name.trim().to_owned()
    };
    Span {
        trace_id: span.trace_id.to_ascii_lowercase(),
        span_id: span.span_id.to_ascii_lowercase(),
        parent_span_id: span
            .parent_span_id
            .filter(|p| !p.is_empty())
            .map(|p| p.to_ascii_lowercase()),
        name: span.name,
        kind: span.kind,
        service_name,
        start_time: nanos_to_micros(span.start_time_unix_nano),
        end_time: nanos_to_micros(span.end_time_unix_nano),
        status_code: span.status_code,
        status_message: span.status_message,
        attributes: span.attributes,
        resource: span.resource,
    }
}

fn pipeline_run(run: RunIn) -> Result<PipelineRun, String> {
    let started_at = parse_timestamp(&run.started_at)?;
    let finished_at = run
        .finished_at
        .as_deref()
        .map(parse_timestamp)
        .transpose()?;
    Ok(PipelineRun {
        run_id: run.run_id.trim().to_owned(),
        pipeline_id: run.pipeline_id.trim().to_owned(),
        status: run.status.trim().to_lowercase(),
        started_at,
        finished_at,
        metadata: Json::Object(run.metadata.unwrap_or_default()).to_string(),
    })
}

fn pipeline_step(step: StepIn) -> PipelineStep {
    PipelineStep {
        step_id: step.step_id.trim().to_owned(),
        run_id: step.run_id.trim().to_owned(),
        pipeline_id: step.pipeline_id.trim().to_owned(),
        name: step.name.trim().to_owned(),
        position: step.position,
        input_count: step.input_count,
        output_count: step.output_count,
        kept_count: step.kept_count,
        eliminated_count: step.eliminated_count,
        scored_count: step.scored_count,
    }
}

fn decision_event(decision: DecisionIn) -> DecisionEvent {
    DecisionEvent {
        decision_id: decision.decision_id.trim().to_owned(),
        step_id: decision.step_id.trim().to_owned(),
        run_id: decision.run_id.trim().to_owned(),
        pipeline_id: decision.pipeline_id.trim().to_owned(),
        item_id: decision.item_id.trim().to_owned(),
        outcome: decision.outcome.trim().to_lowercase(),
        score: decision.score,
        reason: decision.reason,
        payload: decision
            .payload
            .map_or_else(|| "{}".to_owned(), |p| p.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use ve_schema::{RawPayload, Source};

    use super::*;

    fn raw(kind: &str, payload: &str) -> Envelope {
        Envelope {
            event_id: "e1".into(),
            event_time: 42,
            ingest_time: 43,
            tenant_id: "acme".into(),
            source: Source {
                kind: "sdk".into(),
                id: "web-js".into(),
            },
            schema_name: "ve.v1.RawPayload".into(),
            schema_version: 1,
            attributes: Map::from([
                ("batch_id".into(), "b1".into()),
                ("user_agent".into(), "Mozilla/5.0".into()),
            ]),
            tags: Map::from([("Env".into(), "prod".into())]),
            body: Body::Raw(RawPayload {
                kind: kind.into(),
                content_type: "application/json".into(),
                channel: "http".into(),
                payload: payload.as_bytes().to_vec(),
            }),
        }
    }

    fn ok(kind: &str, payload: &str) -> Normalized {
        normalize(&raw(kind, payload)).unwrap_or_else(|e| panic!("{kind} {payload}: {e}"))
    }

    #[test]
    fn web_events_keep_their_fields_and_fold_extras_into_properties() {
        let n = ok(
            "web",
            r#"{"id":"x","tenant_id":"evil","session_id":" s1 ","timestamp":"2024-01-01T01:00:00+01:00",
               "type":"scroll","scroll_depth":75,"path":"/a","button":"buy","properties":{"plan":"pro"},
               "metrics":{"LCP":1200}}"#,
        );
        assert_eq!(n.output, Output::Events);
        assert_eq!(n.key, "e1");
        let e = &n.envelope;
        assert_eq!(e.event_time, 1_704_067_200_000_000, "UTC micros");
        assert_eq!((e.ingest_time, e.tenant_id.as_str()), (43, "acme"));
        assert_eq!(e.schema_name, "ve.v1.WebEvent");
        assert_eq!(e.tags, Map::from([("env".into(), "prod".into())]));
        let Body::Web(web) = &e.body else { panic!() };
        assert_eq!(web.session_id, "s1");
        assert_eq!(web.scroll_depth, Some(0.75));
        assert_eq!(web.user_agent.as_deref(), Some("Mozilla/5.0"));
        assert_eq!(web.metrics["lcp"], 1200.0);
        let properties: Json = serde_json::from_str(&web.properties).unwrap();
        assert_eq!(
            properties,
            serde_json::json!({"plan": "pro", "button": "buy"})
        );
    }

    #[test]
    fn the_accepted_size_travels_as_an_attribute() {
        let payload = r#"{"app_id":"a","event_name":"open","user_id":"u1","timestamp":"2024-01-01T00:00:00Z"}"#;
        let n = ok("app", payload);
        assert_eq!(
            n.envelope.attributes[INGEST_BYTES],
            payload.len().to_string()
        );
        assert_eq!(n.envelope.attributes["batch_id"], "b1", "others kept");
    }

    #[test]
    fn app_properties_stay_json() {
        let n = ok(
            "app",
            r#"{"app_id":"openstream","event_name":"video_buffering","user_id":"u1",
               "timestamp":"2026-02-02T12:00:00.000Z","properties":{"buffer_duration_ms":1500}}"#,
        );
        let Body::App(app) = &n.envelope.body else {
            panic!()
        };
        assert_eq!(app.properties, r#"{"buffer_duration_ms":1500}"#);
        assert_eq!(n.envelope.event_time, 1_770_033_600_000_000);
        let n = ok(
            "app",
            r#"{"app_id":"a","event_name":"e","user_id":"u","timestamp":"2026-02-02T12:00:00Z"}"#,
        );
        let Body::App(app) = &n.envelope.body else {
            panic!()
        };
        assert_eq!(app.properties, "{}");
    }

    #[test]
    fn metrics_get_canonical_units_lowercase_tags_and_the_series_key() {
        let n = ok(
            "metric",
            r#"{"tenant_id":"other","host":"Host-A","metric":"Latency","value":250,"unit":"ms",
               "ts_event":"2025-10-16T09:00:00Z","tags":{"Env":"prod","Rack":7,"canary":true}}"#,
        );
        assert_eq!(n.output, Output::Metrics);
        assert_eq!(n.key, "acme/host-a/latency");
        let e = &n.envelope;
        assert_eq!(e.event_time, 1_760_605_200_000_000);
        let Body::Metric(m) = &e.body else { panic!() };
        assert_eq!((m.host.as_str(), m.metric.as_str()), ("host-a", "latency"));
        assert_eq!((m.unit.as_str(), m.value), ("s", 0.25));
        assert_eq!(e.tags["env"], "prod");
        assert_eq!(e.tags["rack"], "7");
        assert_eq!(e.tags["canary"], "true");
        assert!(!e.tags.contains_key("Env"));
    }

    #[test]
    fn a_metric_without_its_own_time_keeps_the_ingest_supplied_one() {
        let n = ok("metric", r#"{"host":"h","metric":"m","value":1}"#);
        assert_eq!(n.envelope.event_time, 42);
        let Body::Metric(m) = &n.envelope.body else {
            panic!()
        };
        assert_eq!(m.unit, "");
    }

    #[test]
    fn spans_carry_their_service_and_micros() {
        let n = ok(
            "span",
            r#"{"trace_id":"4BF92F3577B34DA6A3CE929D0E0E4736","span_id":"00f067aa0ba902b7","parent_span_id":"",
               "name":"GET /","kind":"server","start_time_unix_nano":1700000000000000999,
               "end_time_unix_nano":1700000000250000000,"status_code":"error",
               "attributes":{"http.method":"GET"},"resource":{"service.name":"checkout","host.name":"h1"}}"#,
        );
        let e = &n.envelope;
        let Body::Span(span) = &e.body else { panic!() };
        assert_eq!(span.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span.parent_span_id, None);
        assert_eq!(
            span.service_name, "checkout",
            "from the resource when not given"
        );
        assert_eq!(span.start_time, 1_700_000_000_000_000);
        assert_eq!(span.end_time, 1_700_000_000_250_000);
        assert_eq!(span.resource["host.name"], "h1");
        assert_eq!(e.tags["service"], "checkout");
        assert_eq!(e.event_time, 1_700_000_000_000_000);
    }

    #[test]
    fn pipeline_kinds_map_to_their_bodies() {
        let n = ok(
            "run",
            r#"{"run_id":"r1","pipeline_id":"p1","status":"Succeeded","started_at":"2025-01-01T00:00:00Z",
               "finished_at":"2025-01-01T00:01:00Z","metadata":{"by":"ci"}}"#,
        );
        let Body::Run(run) = &n.envelope.body else {
            panic!()
        };
        assert_eq!(run.status, "succeeded");
        assert_eq!(run.started_at, 1_735_689_600_000_000);
        assert_eq!(run.finished_at, Some(1_735_689_660_000_000));
        assert_eq!(run.metadata, r#"{"by":"ci"}"#);

        let n = ok(
            "step",
            r#"{"step_id":"s1","run_id":"r1","pipeline_id":"p1","name":"filter","position":2,
               "input_count":100,"output_count":25,"kept_count":25,"eliminated_count":75,"scored_count":100}"#,
        );
        let Body::Step(step) = &n.envelope.body else {
            panic!()
        };
        assert!((step.elimination_ratio() - 0.75).abs() < 1e-9);
        assert_eq!(n.envelope.event_time, 42);

        let n = ok(
            "decision",
            r#"{"event_id":"d1","step_id":"s1","run_id":"r1","pipeline_id":"p1","item_id":"i1",
               "outcome":"Eliminated","score":0.1,"payload":{"why":"dup"}}"#,
        );
        let Body::Decision(d) = &n.envelope.body else {
            panic!()
        };
        assert_eq!(
            (d.decision_id.as_str(), d.outcome.as_str()),
            ("d1", "eliminated")
        );
        assert_eq!(d.payload, r#"{"why":"dup"}"#);
        assert_eq!(n.envelope.schema_name, "ve.v1.DecisionEvent");
    }

    #[test]
    fn what_cannot_be_normalized_says_why() {
        let cases = [
            (raw("web", "not json"), "invalid web event: malformed event"),
            (
                raw("metric", r#"{"host":"h","metric":"m","value":"x"}"#),
                "invalid metric event",
            ),
            (
                raw(
                    "step",
                    r#"{"step_id":"s","run_id":"r","pipeline_id":"p","input_count":1,"output_count":2}"#,
                ),
                "greater than",
            ),
            (raw("log", "{}"), "unknown raw payload kind `log`"),
        ];
        for (envelope, expected) in cases {
            let reason = normalize(&envelope).unwrap_err();
            assert!(reason.contains(expected), "`{reason}` lacks `{expected}`");
        }
        let mut not_raw = raw("web", "{}");
        not_raw.body = Body::App(AppEvent {
            app_id: "a".into(),
            event_name: "e".into(),
            user_id: "u".into(),
            properties: "{}".into(),
        });
        assert!(
            normalize(&not_raw)
                .unwrap_err()
                .contains("expected a RawPayload body")
        );
    }
}
