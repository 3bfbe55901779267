//! OTLP traces over HTTP (`POST /v1/traces`, protobuf or JSON) and gRPC (`TraceService/Export`):
//! each span of an export becomes one `span` event, flattened to `ve_schema::ingest::SpanIn`.
//! Answers follow the OTLP spec: `ExportTraceServiceResponse` with `partial_success` for spans
//! that were refused, and a `google.rpc.Status` body on errors.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValueKind;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use prost::Message as _;
use serde_json::Value as Json;
use ve_schema::ingest::{Kind, SpanIn};

use crate::grpc::{grpc_meta, grpc_tenant};
use crate::http::{AppState, add_error_headers, authorize_and_read, request_meta};
use crate::ingest::count_rejected;
use crate::{BatchReport, Channel, GatewayError, Ingestor, Item};

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";
/// How many rejection reasons `partial_success.error_message` lists before summarizing.
const REASONS_SHOWN: usize = 5;

/// Every span of an export request, flattened, as the JSON the raw topic carries.
pub fn flatten(request: &ExportTraceServiceRequest) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for resource_spans in &request.resource_spans {
        let resource: BTreeMap<String, String> = resource_spans
            .resource
            .as_ref()
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        let service_name = resource.get("service.name").cloned().unwrap_or_default();
        for scope_spans in &resource_spans.scope_spans {
            let scope = scope_spans.scope.as_ref();
            for span in &scope_spans.spans {
                let mut attrs = attributes(&span.attributes);
                if let Some(scope) = scope {
                    for (key, value) in [
                        ("otel.scope.name", &scope.name),
                        ("otel.scope.version", &scope.version),
                    ] {
                        if !value.is_empty() {
                            let _ = attrs.entry(key.to_owned()).or_insert_with(|| value.clone());
                        }
                    }
                }
                let status = span.status.as_ref();
                let flat = SpanIn {
                    id: None,
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent_span_id: (!span.parent_span_id.is_empty())
                        .then(|| hex::encode(&span.parent_span_id)),
                    name: span.name.clone(),
                    kind: span_kind(span.kind).to_owned(),
                    start_time_unix_nano: span.start_time_unix_nano,
                    end_time_unix_nano: span.end_time_unix_nano,
                    status_code: status_code(status.map_or(0, |s| s.code)).to_owned(),
                    status_message: status.map(|s| s.message.clone()).unwrap_or_default(),
                    attributes: attrs,
                    resource: resource.clone(),
                    service_name: service_name.clone(),
                };
                // A struct of strings and maps always serializes.
                if let Ok(json) = serde_json::to_vec(&flat) {
                    out.push(json);
                }
            }
        }
    }
    out
}

fn span_kind(kind: i32) -> &'static str {
    match kind {
        1 => "internal",
        2 => "server",
        3 => "client",
        4 => "producer",
        5 => "consumer",
        _ => "unspecified",
    }
}

fn status_code(code: i32) -> &'static str {
    match code {
        1 => "ok",
        2 => "error",
        _ => "unset",
    }
}

fn attributes(list: &[KeyValue]) -> BTreeMap<String, String> {
    list.iter()
        .map(|kv| {
            (
                kv.key.clone(),
                kv.value.as_ref().map(any_to_string).unwrap_or_default(),
            )
        })
        .collect()
}

/// Scalars in their usual spelling; arrays and maps as JSON.
fn any_to_string(value: &AnyValue) -> String {
    match &value.value {
        Some(AnyValueKind::StringValue(s)) => s.clone(),
        Some(AnyValueKind::BoolValue(b)) => b.to_string(),
        Some(AnyValueKind::IntValue(i)) => i.to_string(),
        Some(AnyValueKind::DoubleValue(d)) => d.to_string(),
        Some(AnyValueKind::BytesValue(b)) => hex::encode(b),
        Some(_) => any_to_json(value).to_string(),
        None => String::new(),
    }
}

fn any_to_json(value: &AnyValue) -> Json {
    match &value.value {
        Some(AnyValueKind::StringValue(s)) => Json::from(s.as_str()),
        Some(AnyValueKind::BoolValue(b)) => Json::from(*b),
        Some(AnyValueKind::IntValue(i)) => Json::from(*i),
        Some(AnyValueKind::DoubleValue(d)) => Json::from(*d),
        Some(AnyValueKind::BytesValue(b)) => Json::from(hex::encode(b)),
        Some(AnyValueKind::ArrayValue(a)) => {
            Json::Array(a.values.iter().map(any_to_json).collect())
        }
        Some(AnyValueKind::KvlistValue(kv)) => Json::Object(
            kv.values
                .iter()
                .map(|kv| {
                    (
                        kv.key.clone(),
                        kv.value.as_ref().map_or(Json::Null, any_to_json),
                    )
                })
                .collect(),
        ),
        // An index into a profiles string table, meaningless without one.
        Some(AnyValueKind::StringValueStrindex(_)) | None => Json::Null,
    }
}

fn response_for(report: &BatchReport) -> ExportTraceServiceResponse {
    let partial_success = (report.events_rejected > 0).then(|| {
        let mut message = report
            .rejected
            .iter()
            .take(REASONS_SHOWN)
            .map(|r| format!("span {}: {}", r.index, r.reason))
            .collect::<Vec<_>>()
            .join("; ");
        if report.rejected.len() > REASONS_SHOWN {
            message.push_str(&format!(
                "; and {} more",
                report.rejected.len() - REASONS_SHOWN
            ));
        }
        ExportTracePartialSuccess {
            rejected_spans: report.events_rejected as i64,
            error_message: message,
        }
    });
    ExportTraceServiceResponse { partial_success }
}

/// Export one request's spans: the part both transports share.
async fn export(
    ingestor: &Ingestor,
    tenant: &crate::TenantAuth,
    request: &ExportTraceServiceRequest,
    meta: &crate::RequestMeta,
    started: Instant,
) -> Result<ExportTraceServiceResponse, GatewayError> {
    let spans = flatten(request);
    if spans.is_empty() {
        // An empty export is valid OTLP and needs no broker round trip.
        return Ok(ExportTraceServiceResponse {
            partial_success: None,
        });
    }
    ingestor
        .admit(tenant, spans.len())
        .inspect_err(|e| count_rejected(e, spans.len()))?;
    let items = spans
        .into_iter()
        .map(|json| Item::new(Kind::Span, Cow::Owned(json)))
        .collect();
    let report = ingestor
        .ingest(tenant, Channel::Otlp, items, meta, started)
        .await?;
    Ok(response_for(&report))
}

/// `google.rpc.Status`, what OTLP/HTTP error bodies are (details left out).
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Protobuf,
    Json,
}

impl Format {
    fn content_type(self) -> &'static str {
        match self {
            Self::Protobuf => PROTOBUF,
            Self::Json => JSON,
        }
    }
}

pub(crate) async fn http_export(State(state): State<AppState>, request: Request) -> Response {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    let format = match declared.as_deref() {
        Some(PROTOBUF) => Format::Protobuf,
        Some(JSON) => Format::Json,
        other => {
            let error = GatewayError::UnsupportedMediaType(format!(
                "content type {other:?}: OTLP/HTTP takes {PROTOBUF} or {JSON}"
            ));
            count_rejected(&error, 1);
            return otlp_error(&error, Format::Protobuf);
        }
    };
    let outcome = async {
        let (tenant, body) = authorize_and_read(&state, &parts.headers, body).await?;
        let request = decode(format, &body).inspect_err(|e| count_rejected(e, 1))?;
        let meta = request_meta(&state, &parts.headers, &parts.extensions);
        export(&state.ingestor, &tenant, &request, &meta, started).await
    }
    .await;
    match outcome {
        Ok(response) => {
            let body = match format {
                Format::Protobuf => response.encode_to_vec(),
                Format::Json => serde_json::to_vec(&response).unwrap_or_else(|_| b"{}".to_vec()),
            };
            (
                StatusCode::OK,
                [(
                    CONTENT_TYPE,
                    HeaderValue::from_static(format.content_type()),
                )],
                body,
            )
                .into_response()
        }
        Err(error) => otlp_error(&error, format),
    }
}

fn decode(format: Format, body: &Bytes) -> Result<ExportTraceServiceRequest, GatewayError> {
    match format {
        Format::Protobuf => ExportTraceServiceRequest::decode(body.as_ref())
            .map_err(|e| GatewayError::BadRequest(format!("bad OTLP protobuf: {e}"))),
        Format::Json => serde_json::from_slice(body)
            .map_err(|e| GatewayError::BadRequest(format!("bad OTLP JSON: {e}"))),
    }
}

fn otlp_error(error: &GatewayError, format: Format) -> Response {
    let status = RpcStatus {
        code: error.grpc_status().code() as i32,
        message: error.to_string(),
    };
    let body = match format {
        Format::Protobuf => status.encode_to_vec(),
        Format::Json => serde_json::json!({"code": status.code, "message": status.message})
            .to_string()
            .into_bytes(),
    };
    let mut response = (
        error.http_status(),
        [(
            CONTENT_TYPE,
            HeaderValue::from_static(format.content_type()),
        )],
        body,
    )
        .into_response();
    add_error_headers(error, response.headers_mut());
    response
}

/// OTLP/gRPC `TraceService`.
#[derive(Debug, Clone)]
pub struct OtlpTraceService {
    pub(crate) ingestor: Arc<Ingestor>,
}

#[tonic::async_trait]
impl TraceService for OtlpTraceService {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let started = Instant::now();
        let tenant = grpc_tenant(&self.ingestor, &request)?;
        let meta = grpc_meta(&request);
        export(&self.ingestor, &tenant, request.get_ref(), &meta, started)
            .await
            .map(tonic::Response::new)
            .map_err(|e| e.grpc_status())
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, InstrumentationScope};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

    use super::*;

    fn kv(key: &str, value: AnyValueKind) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    pub(crate) fn sample_request() -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![
                        kv("service.name", AnyValueKind::StringValue("checkout".into())),
                        kv("host.name", AnyValueKind::StringValue("h1".into())),
                    ],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "my.lib".into(),
                        version: "1.2".into(),
                        ..Default::default()
                    }),
                    spans: vec![Span {
                        trace_id: vec![0x4b; 16],
                        span_id: vec![0x01; 8],
                        parent_span_id: vec![0x02; 8],
                        name: "GET /cart".into(),
                        kind: 2,
                        start_time_unix_nano: 1_700_000_000_000_000_000,
                        end_time_unix_nano: 1_700_000_000_250_000_000,
                        attributes: vec![
                            kv("http.status_code", AnyValueKind::IntValue(200)),
                            kv("retry", AnyValueKind::BoolValue(false)),
                            kv(
                                "tags",
                                AnyValueKind::ArrayValue(ArrayValue {
                                    values: vec![AnyValue {
                                        value: Some(AnyValueKind::StringValue("a".into())),
                                    }],
                                }),
                            ),
                        ],
                        status: Some(Status {
                            code: 2,
                            message: "boom".into(),
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn spans_flatten_to_valid_span_events() {
        let flat = flatten(&sample_request());
        assert_eq!(flat.len(), 1);
        let span: SpanIn = serde_json::from_slice(&flat[0]).unwrap();
        span.validate().unwrap();
        assert_eq!(span.trace_id, "4b".repeat(16));
        assert_eq!(span.parent_span_id.as_deref(), Some("0202020202020202"));
        assert_eq!(span.kind, "server");
        assert_eq!(span.status_code, "error");
        assert_eq!(span.status_message, "boom");
        assert_eq!(span.service_name, "checkout");
        assert_eq!(span.resource["host.name"], "h1");
        assert_eq!(span.attributes["http.status_code"], "200");
        assert_eq!(span.attributes["retry"], "false");
        assert_eq!(span.attributes["tags"], r#"["a"]"#);
        assert_eq!(span.attributes["otel.scope.name"], "my.lib");
    }

    #[test]
    fn otlp_json_decodes_per_spec() {
        // OTLP/JSON: hex ids, camelCase, enums as integers, 64-bit integers as strings.
        let json = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"api"}}]},
            "scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
            "parentSpanId":"","name":"I'm a server span","kind":2,"startTimeUnixNano":"1544712660000000000",
            "endTimeUnixNano":"1544712661000000000","attributes":[{"key":"n","value":{"intValue":"7"}}]}]}]}]}"#;
        let request = decode(Format::Json, &Bytes::from_static(json.as_bytes())).unwrap();
        let span: SpanIn = serde_json::from_slice(&flatten(&request)[0]).unwrap();
        span.validate().unwrap();
        assert_eq!(span.parent_span_id, None);
        assert_eq!(span.service_name, "api");
        assert_eq!(span.start_time_unix_nano, 1_544_712_660_000_000_000);
        assert_eq!(span.attributes["n"], "7");
    }

    #[test]
    fn protobuf_round_trips() {
        let bytes = sample_request().encode_to_vec();
        let request = decode(Format::Protobuf, &Bytes::from(bytes)).unwrap();
        assert_eq!(request, sample_request());
        assert!(decode(Format::Protobuf, &Bytes::from_static(b"\xff\xff")).is_err());
    }
}
