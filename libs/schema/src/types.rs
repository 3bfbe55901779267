//! Rust mirror of `schemas/*.avsc`. Bodies are plain serde structs (apache-avro maps them to
//! records); the envelope and its body union are converted by hand because serde enums do not map
//! onto Avro unions.

use std::collections::BTreeMap;

use apache_avro::types::Value;
use serde::{Deserialize, Serialize};

use crate::SchemaError;

pub type Map = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Source {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub event_id: String,
    /// Microseconds since the Unix epoch, UTC.
    pub event_time: i64,
    pub ingest_time: i64,
    pub tenant_id: String,
    pub source: Source,
    pub schema_name: String,
    pub schema_version: i32,
    pub attributes: Map,
    pub tags: Map,
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawPayload {
    pub kind: String,
    pub content_type: String,
    pub channel: String,
    #[serde(with = "apache_avro::serde::bytes")]
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebEvent {
    pub event_type: String,
    pub session_id: String,
    pub user_id: Option<String>,
    pub url: Option<String>,
    pub path: Option<String>,
    pub title: Option<String>,
    pub referrer: Option<String>,
    pub user_agent: Option<String>,
    pub selector: Option<String>,
    pub scroll_depth: Option<f64>,
    pub name: Option<String>,
    pub metrics: BTreeMap<String, f64>,
    pub properties: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppEvent {
    pub app_id: String,
    pub event_name: String,
    pub user_id: String,
    pub properties: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricSample {
    pub host: String,
    pub metric: String,
    pub value: f64,
    pub unit: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Span {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub name: String,
    pub kind: String,
    pub service_name: String,
    pub start_time: i64,
    pub end_time: i64,
    pub status_code: String,
    pub status_message: String,
    pub attributes: Map,
    pub resource: Map,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineRun {
    pub run_id: String,
    pub pipeline_id: String,
    pub status: String,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub metadata: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineStep {
    pub step_id: String,
    pub run_id: String,
    pub pipeline_id: String,
    pub name: String,
    pub position: i32,
    pub input_count: i64,
    pub output_count: i64,
    pub kept_count: i64,
    pub eliminated_count: i64,
    pub scored_count: i64,
}

impl PipelineStep {
    /// `1 - output/input`, 0 for an empty input (nothing was eliminated).
    pub fn elimination_ratio(&self) -> f64 {
        if self.input_count <= 0 {
            0.0
        } else {
            1.0 - self.output_count as f64 / self.input_count as f64
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionEvent {
    pub decision_id: String,
    pub step_id: String,
    pub run_id: String,
    pub pipeline_id: String,
    pub item_id: String,
    pub outcome: String,
    pub score: Option<f64>,
    pub reason: String,
    pub payload: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKey {
    pub key_id: String,
    pub sha256: String,
    pub revoked: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tenant {
    pub tenant_id: String,
    pub name: String,
    pub plan: String,
    pub retention_days: i32,
    pub rate_limit_eps: i32,
    pub burst: i32,
    pub api_keys: Vec<ApiKey>,
    pub currency: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CmdbHost {
    pub host: String,
    pub tags: Map,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertRule {
    pub rule_id: String,
    pub name: String,
    pub kind: String,
    pub metric: Option<String>,
    pub event_match: Option<String>,
    pub operator: String,
    pub threshold: f64,
    pub for_seconds: i64,
    pub group_by: Vec<String>,
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub rule_id: String,
    pub series: String,
    pub state: String,
    pub value: f64,
    pub threshold: f64,
    pub started_at: i64,
    pub resolved_at: Option<i64>,
    pub message: String,
    pub labels: Map,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvoiceLine {
    pub kind: String,
    pub description: String,
    pub quantity: i64,
    pub unit_price_micros: i64,
    pub amount_micros: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invoice {
    pub invoice_id: String,
    pub period_start: i64,
    pub period_end: i64,
    pub plan: String,
    pub currency: String,
    pub lines: Vec<InvoiceLine>,
    pub subtotal_micros: i64,
    pub total_micros: i64,
    pub issued_at: i64,
}

/// The envelope's body union; variant order is the union order in `schemas/envelope.avsc`.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Raw(RawPayload),
    Web(WebEvent),
    App(AppEvent),
    Metric(MetricSample),
    Span(Span),
    Run(PipelineRun),
    Step(PipelineStep),
    Decision(DecisionEvent),
    Tenant(Tenant),
    Cmdb(CmdbHost),
    Rule(AlertRule),
    Alert(Alert),
    Invoice(Invoice),
}

macro_rules! body_kinds {
    ($($variant:ident = $index:literal, $name:literal;)*) => {
        impl Body {
            /// Position in the Avro union.
            pub fn union_index(&self) -> u32 {
                match self { $(Self::$variant(_) => $index,)* }
            }

            /// Full Avro name of the kind, e.g. `ve.v1.WebEvent` (the envelope's `schema_name`).
            pub fn schema_name(&self) -> &'static str {
                match self { $(Self::$variant(_) => $name,)* }
            }

            fn inner_value(&self) -> Result<Value, apache_avro::Error> {
                match self { $(Self::$variant(b) => apache_avro::to_value(b),)* }
            }

            /// Writes the body alone with `writer`, a writer of this kind's own schema.
            pub(crate) fn write_ser(
                &self,
                writer: &apache_avro::writer::datum::GenericDatumWriter<'_>,
                out: &mut Vec<u8>,
            ) -> Result<usize, apache_avro::Error> {
                match self { $(Self::$variant(b) => writer.write_ser(out, b),)* }
            }

            /// Reads the body of union position `index` with `reader`, a reader of that kind's
            /// own schema; `None` for an index past the union.
            pub(crate) fn read_deser(
                index: u32,
                reader: &apache_avro::reader::datum::GenericDatumReader<'_>,
                input: &mut &[u8],
            ) -> Result<Option<Self>, apache_avro::Error> {
                match index {
                    $($index => reader.read_deser(input).map(|b| Some(Self::$variant(b))),)*
                    _ => Ok(None),
                }
            }

            fn from_union(index: u32, value: &Value) -> Result<Self, SchemaError> {
                let decode = |e: apache_avro::Error| SchemaError::Decode(format!("body kind {index}: {e}"));
                match index {
                    $($index => Ok(Self::$variant(apache_avro::from_value(value).map_err(decode)?)),)*
                    other => Err(SchemaError::Decode(format!("unknown body kind index {other}"))),
                }
            }
        }
    };
}

body_kinds! {
    Raw = 0, "ve.v1.RawPayload";
    Web = 1, "ve.v1.WebEvent";
    App = 2, "ve.v1.AppEvent";
    Metric = 3, "ve.v1.MetricSample";
    Span = 4, "ve.v1.Span";
    Run = 5, "ve.v1.PipelineRun";
    Step = 6, "ve.v1.PipelineStep";
    Decision = 7, "ve.v1.DecisionEvent";
    Tenant = 8, "ve.v1.Tenant";
    Cmdb = 9, "ve.v1.CmdbHost";
    Rule = 10, "ve.v1.AlertRule";
    Alert = 11, "ve.v1.Alert";
    Invoice = 12, "ve.v1.Invoice";
}

fn string_map(map: &Map) -> Value {
    Value::Map(
        map.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

impl Envelope {
    /// The generic Avro value of this envelope, shaped like the envelope schema (not resolved).
    /// `Codec::encode` does not go through it (see `wire.rs`); it is the reference the direct
    /// writer is tested against, and what other Avro tooling can take.
    pub fn to_value(&self) -> Result<Value, SchemaError> {
        let body = self
            .body
            .inner_value()
            .map_err(|e| SchemaError::Encode(e.to_string()))?;
        let value = Value::Record(vec![
            ("event_id".into(), Value::String(self.event_id.clone())),
            ("event_time".into(), Value::TimestampMicros(self.event_time)),
            (
                "ingest_time".into(),
                Value::TimestampMicros(self.ingest_time),
            ),
            ("tenant_id".into(), Value::String(self.tenant_id.clone())),
            (
                "source".into(),
                Value::Record(vec![
                    ("type".into(), Value::String(self.source.kind.clone())),
                    ("id".into(), Value::String(self.source.id.clone())),
                ]),
            ),
            (
                "schema_name".into(),
                Value::String(self.schema_name.clone()),
            ),
            ("schema_version".into(), Value::Int(self.schema_version)),
            ("attributes".into(), string_map(&self.attributes)),
            ("tags".into(), string_map(&self.tags)),
            (
                "body".into(),
                Value::Union(self.body.union_index(), Box::new(body)),
            ),
        ]);
        Ok(value)
    }

    /// Reads an envelope from an Avro value already decoded with (or resolved to) the envelope
    /// schema.
    pub fn from_value(value: Value) -> Result<Self, SchemaError> {
        let Value::Record(fields) = value else {
            return Err(SchemaError::Decode("envelope is not a record".into()));
        };
        let mut f: BTreeMap<String, Value> = fields.into_iter().collect();
        let mut take = |name: &str| {
            f.remove(name)
                .ok_or_else(|| SchemaError::Decode(format!("envelope lacks field {name}")))
        };
        let event_id = string(take("event_id")?, "event_id")?;
        let event_time = micros(take("event_time")?, "event_time")?;
        let ingest_time = micros(take("ingest_time")?, "ingest_time")?;
        let tenant_id = string(take("tenant_id")?, "tenant_id")?;
        let source: Source = apache_avro::from_value(&take("source")?)
            .map_err(|e| SchemaError::Decode(format!("source: {e}")))?;
        let schema_name = string(take("schema_name")?, "schema_name")?;
        let schema_version = match take("schema_version")? {
            Value::Int(v) => v,
            other => return Err(SchemaError::Decode(format!("schema_version: {other:?}"))),
        };
        let attributes = apache_avro::from_value(&take("attributes")?)
            .map_err(|e| SchemaError::Decode(format!("attributes: {e}")))?;
        let tags = apache_avro::from_value(&take("tags")?)
            .map_err(|e| SchemaError::Decode(format!("tags: {e}")))?;
        let body = match take("body")? {
            Value::Union(index, inner) => Body::from_union(index, &inner)?,
            other => {
                return Err(SchemaError::Decode(format!(
                    "body is not a union: {other:?}"
                )));
            }
        };
        Ok(Self {
            event_id,
            event_time,
            ingest_time,
            tenant_id,
            source,
            schema_name,
            schema_version,
            attributes,
            tags,
            body,
        })
    }
}

fn string(value: Value, field: &str) -> Result<String, SchemaError> {
    match value {
        Value::String(s) => Ok(s),
        other => Err(SchemaError::Decode(format!(
            "{field}: expected string, got {other:?}"
        ))),
    }
}

fn micros(value: Value, field: &str) -> Result<i64, SchemaError> {
    match value {
        Value::TimestampMicros(v) | Value::Long(v) => Ok(v),
        other => Err(SchemaError::Decode(format!(
            "{field}: expected timestamp, got {other:?}"
        ))),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::envelope_schema;

    pub(crate) fn sample_bodies() -> Vec<Body> {
        vec![
            Body::Raw(RawPayload {
                kind: "web".into(),
                content_type: "application/json".into(),
                channel: "http".into(),
                payload: br#"{"type":"pageview"}"#.to_vec(),
            }),
            Body::Web(WebEvent {
                event_type: "scroll".into(),
                session_id: "s1".into(),
                user_id: None,
                url: Some("https://example.com/a".into()),
                path: Some("/a".into()),
                title: None,
                referrer: None,
                user_agent: Some("Mozilla/5.0".into()),
                selector: None,
                scroll_depth: Some(0.75),
                name: None,
                metrics: BTreeMap::from([("lcp".into(), 1200.5)]),
                properties: "{}".into(),
            }),
            Body::App(AppEvent {
                app_id: "openstream".into(),
                event_name: "video_heartbeat".into(),
                user_id: "u1".into(),
                properties: r#"{"watch_ms":5000}"#.into(),
            }),
            Body::Metric(MetricSample {
                host: "h1".into(),
                metric: "cpu_load".into(),
                value: 92.5,
                unit: "percent".into(),
            }),
            Body::Span(Span {
                trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                span_id: "00f067aa0ba902b7".into(),
                parent_span_id: None,
                name: "GET /".into(),
                kind: "server".into(),
                service_name: "web".into(),
                start_time: 1_700_000_000_000_000,
                end_time: 1_700_000_000_250_000,
                status_code: "ok".into(),
                status_message: String::new(),
                attributes: Map::from([("http.method".into(), "GET".into())]),
                resource: Map::new(),
            }),
            Body::Run(PipelineRun {
                run_id: "r1".into(),
                pipeline_id: "p1".into(),
                status: "succeeded".into(),
                started_at: 1,
                finished_at: Some(2),
                metadata: "{}".into(),
            }),
            Body::Step(PipelineStep {
                step_id: "s1".into(),
                run_id: "r1".into(),
                pipeline_id: "p1".into(),
                name: "filter".into(),
                position: 1,
                input_count: 100,
                output_count: 25,
                kept_count: 25,
                eliminated_count: 75,
                scored_count: 100,
            }),
            Body::Decision(DecisionEvent {
                decision_id: "d1".into(),
                step_id: "s1".into(),
                run_id: "r1".into(),
                pipeline_id: "p1".into(),
                item_id: "i1".into(),
                outcome: "kept".into(),
                score: Some(0.9),
                reason: String::new(),
                payload: "{}".into(),
            }),
            Body::Tenant(Tenant {
                tenant_id: "t1".into(),
                name: "Acme".into(),
                plan: "paid".into(),
                retention_days: 90,
                rate_limit_eps: 1000,
                burst: 2000,
                api_keys: vec![ApiKey {
                    key_id: "k1".into(),
                    sha256: "ab".repeat(32),
                    revoked: false,
                }],
                currency: "USD".into(),
            }),
            Body::Cmdb(CmdbHost {
                host: "h1".into(),
                tags: Map::from([("env".into(), "prod".into())]),
            }),
            Body::Rule(AlertRule {
                rule_id: "cpu".into(),
                name: "cpu high".into(),
                kind: "threshold".into(),
                metric: Some("cpu_load".into()),
                event_match: None,
                operator: ">".into(),
                threshold: 90.0,
                for_seconds: 60,
                group_by: vec!["host".into()],
                enabled: true,
            }),
            Body::Alert(Alert {
                rule_id: "cpu".into(),
                series: "host=h1".into(),
                state: "firing".into(),
                value: 95.0,
                threshold: 90.0,
                started_at: 5,
                resolved_at: None,
                message: "cpu_load > 90 for 60s".into(),
                labels: Map::new(),
            }),
            Body::Invoice(Invoice {
                invoice_id: "inv-t1-2026-11".into(),
                period_start: 1,
                period_end: 2,
                plan: "paid".into(),
                currency: "USD".into(),
                lines: vec![InvoiceLine {
                    kind: "events".into(),
                    description: "events over allowance".into(),
                    quantity: 10,
                    unit_price_micros: 100,
                    amount_micros: 1000,
                }],
                subtotal_micros: 1000,
                total_micros: 1000,
                issued_at: 3,
            }),
        ]
    }

    pub(crate) fn envelope(body: Body) -> Envelope {
        Envelope {
            event_id: "e1".into(),
            event_time: 1_700_000_000_000_000,
            ingest_time: 1_700_000_000_100_000,
            tenant_id: "t1".into(),
            source: Source {
                kind: "sdk".into(),
                id: "web-js/1.0".into(),
            },
            schema_name: body.schema_name().into(),
            schema_version: 1,
            attributes: Map::from([("ip".into(), "203.0.113.9".into())]),
            tags: Map::from([("env".into(), "prod".into())]),
            body,
        }
    }

    #[test]
    fn every_kind_round_trips_through_avro_bytes() {
        let schema = envelope_schema();
        for body in sample_bodies() {
            let original = envelope(body);
            let value = original.to_value().unwrap();
            let writer = apache_avro::writer::datum::GenericDatumWriter::builder(schema)
                .build()
                .unwrap();
            let bytes = writer.write_value_to_vec(value).unwrap();
            let reader = apache_avro::reader::datum::GenericDatumReader::builder(schema)
                .build()
                .unwrap();
            let decoded = reader.read_value(&mut bytes.as_slice()).unwrap();
            assert_eq!(Envelope::from_value(decoded).unwrap(), original);
        }
    }

    #[test]
    fn union_index_matches_schema_name() {
        for body in sample_bodies() {
            let (index, name) = (body.union_index() as usize, body.schema_name());
            assert_eq!(crate::BODIES[index].0, name);
        }
    }

    #[test]
    fn elimination_ratio() {
        let Body::Step(step) = &sample_bodies()[6] else {
            panic!()
        };
        assert!((step.elimination_ratio() - 0.75).abs() < 1e-9);
        let empty = PipelineStep {
            input_count: 0,
            ..step.clone()
        };
        assert_eq!(empty.elimination_ratio(), 0.0);
    }
}
