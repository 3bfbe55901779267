//! The HTTP API (services/gateway/README.md): `POST /ingest` (seed 001, any kind with a `kind`
//! field), `POST /v1/app-events`, `POST /v1/metrics`, `POST /v1/pipeline`, and OTLP/HTTP traces
//! on `POST /v1/traces`.

use std::borrow::Cow;
use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_LENGTH, USER_AGENT};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Deserialize;
use serde_json::value::RawValue;
use ve_schema::ingest::Kind;
use ve_telemetry::TraceContext;

use crate::ingest::count_rejected;
use crate::{BatchReport, Channel, GatewayError, HttpConfig, Ingestor, Item, RequestMeta, otlp};
use ve_auth::TenantAuth;

/// Header naming the sending client or SDK (envelope `source.id`).
pub const SOURCE_HEADER: &str = "x-source-id";

#[derive(Debug, Clone)]
pub(crate) struct AppState {
    pub(crate) ingestor: Arc<Ingestor>,
    pub(crate) max_body: usize,
    trust_forwarded_for: bool,
}

pub fn router(ingestor: Arc<Ingestor>, config: &HttpConfig) -> Router {
    let state = AppState {
        ingestor,
        max_body: config.max_body_bytes,
        trust_forwarded_for: config.trust_forwarded_for,
    };
    Router::new()
        .route("/ingest", post(ingest))
        .route("/v1/app-events", post(app_events))
        .route("/v1/metrics", post(metric_samples))
        .route("/v1/pipeline", post(pipeline))
        .route("/v1/traces", post(otlp::http_export))
        .route_layer(middleware::from_fn(track))
        .with_state(state)
}

/// `gateway_http_requests_total` and `gateway_request_duration_seconds`, by matched route.
async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    metrics::counter!(
        "gateway_http_requests_total",
        "route" => route.clone(),
        "status" => response.status().as_u16().to_string()
    )
    .increment(1);
    metrics::histogram!("gateway_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

#[derive(Deserialize)]
struct Events<'a> {
    #[serde(borrow)]
    events: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct Samples<'a> {
    #[serde(borrow)]
    samples: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct Pipeline<'a> {
    #[serde(borrow, default)]
    runs: Vec<&'a RawValue>,
    #[serde(borrow, default)]
    steps: Vec<&'a RawValue>,
    #[serde(borrow, default)]
    decisions: Vec<&'a RawValue>,
}

/// The `kind` discriminator of an event in `POST /ingest`; web when absent.
#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(borrow, default)]
    kind: Option<Cow<'a, str>>,
}

fn batch<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, GatewayError> {
    serde_json::from_slice(body).map_err(|e| GatewayError::BadRequest(e.to_string()))
}

fn item(kind: Kind, raw: &RawValue) -> Item<'_> {
    Item::new(kind, raw.get().as_bytes())
}

fn probed(raw: &RawValue) -> Item<'_> {
    let kind = match serde_json::from_str::<Probe<'_>>(raw.get()) {
        Ok(Probe { kind: None }) => Ok(Kind::Web),
        Ok(Probe { kind: Some(name) }) => Kind::parse(&name).ok_or_else(|| {
            format!(
                "unknown kind `{name}` (expected one of web, app, metric, span, run, step, decision)"
            )
        }),
        Err(e) => Err(format!("malformed event: {e}")),
    };
    Item {
        kind,
        json: Cow::Borrowed(raw.get().as_bytes()),
    }
}

async fn ingest(State(state): State<AppState>, request: Request) -> Response {
    handle(state, request, |body| {
        let Events { events } = batch(body)?;
        Ok(events.into_iter().map(probed).collect())
    })
    .await
}

async fn app_events(State(state): State<AppState>, request: Request) -> Response {
    handle(state, request, |body| {
        let Events { events } = batch(body)?;
        Ok(events.into_iter().map(|e| item(Kind::App, e)).collect())
    })
    .await
}

async fn metric_samples(State(state): State<AppState>, request: Request) -> Response {
    handle(state, request, |body| {
        let Samples { samples } = batch(body)?;
        Ok(samples.into_iter().map(|e| item(Kind::Metric, e)).collect())
    })
    .await
}

async fn pipeline(State(state): State<AppState>, request: Request) -> Response {
    handle(state, request, |body| {
        let Pipeline {
            runs,
            steps,
            decisions,
        } = batch(body)?;
        let tagged = [
            (Kind::Run, runs),
            (Kind::Step, steps),
            (Kind::Decision, decisions),
        ];
        Ok(tagged
            .into_iter()
            .flat_map(|(kind, events)| events.into_iter().map(move |e| item(kind, e)))
            .collect())
    })
    .await
}

/// The common path of the JSON batch routes.
async fn handle<F>(state: AppState, request: Request, parse: F) -> Response
where
    F: for<'a> FnOnce(&'a [u8]) -> Result<Vec<Item<'a>>, GatewayError>,
{
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let outcome = async {
        let (tenant, body) = authorize_and_read(&state, &parts.headers, body).await?;
        let items = parse(&body).inspect_err(|e| count_rejected(e, 1))?;
        if items.is_empty() {
            let error = GatewayError::BadRequest("the batch has no events".into());
            count_rejected(&error, 1);
            return Err(error);
        }
        state
            .ingestor
            .admit(&tenant, items.len())
            .inspect_err(|e| count_rejected(e, items.len()))?;
        let meta = request_meta(&state, &parts.headers, &parts.extensions);
        state
            .ingestor
            .ingest(&tenant, Channel::Http, items, &meta, started)
            .await
    }
    .await;
    match outcome {
        Ok(report) => report_response(report),
        Err(error) => error_response(&error),
    }
}

/// Size limit (declared length first, so an oversized body is refused unread), API key, then
/// the body itself under the same limit, gunzipped when it says so.
pub(crate) async fn authorize_and_read(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Arc<TenantAuth>, Bytes), GatewayError> {
    let max = state.max_body;
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let refuse = |error: GatewayError| {
        count_rejected(&error, 1);
        error
    };
    if declared.is_some_and(|len| len > max as u64) {
        return Err(refuse(GatewayError::PayloadTooLarge { max }));
    }
    let tenant = state
        .ingestor
        .authenticate(headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()))
        .map_err(refuse)?;
    let bytes = match Limited::new(body, max).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(refuse(GatewayError::PayloadTooLarge { max }));
        }
        Err(e) => {
            return Err(refuse(GatewayError::BadRequest(format!(
                "reading body: {e}"
            ))));
        }
    };
    let bytes = decode_content(headers, bytes, max).map_err(refuse)?;
    Ok((tenant, bytes))
}

fn decode_content(headers: &HeaderMap, bytes: Bytes, max: usize) -> Result<Bytes, GatewayError> {
    let encoding = headers
        .get(CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("" | "identity") => Ok(bytes),
        Some("gzip" | "x-gzip") => {
            let mut out = Vec::with_capacity(bytes.len().saturating_mul(4).min(max));
            // One byte over the limit is enough to know it is too large (a gzip bomb stops here).
            let read = flate2::read::GzDecoder::new(bytes.as_ref())
                .take(max as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| GatewayError::BadRequest(format!("bad gzip body: {e}")))?;
            if read > max {
                return Err(GatewayError::PayloadTooLarge { max });
            }
            Ok(Bytes::from(out))
        }
        Some(other) => Err(GatewayError::UnsupportedMediaType(format!(
            "content encoding `{other}`"
        ))),
    }
}

pub(crate) fn request_meta(
    state: &AppState,
    headers: &HeaderMap,
    extensions: &axum::http::Extensions,
) -> RequestMeta {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let forwarded = state
        .trust_forwarded_for
        .then(|| text("x-forwarded-for"))
        .flatten()
        .and_then(|v| v.split(',').next())
        .map(|v| v.trim().to_owned());
    let peer = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    RequestMeta {
        source_id: text(SOURCE_HEADER).map(str::to_owned),
        client_ip: forwarded.or(peer),
        user_agent: text(USER_AGENT.as_str()).map(str::to_owned),
        trace: text(ve_telemetry::TRACEPARENT).and_then(TraceContext::parse),
    }
}

fn report_response(report: BatchReport) -> Response {
    // Nothing accepted is a client error the client must not retry as is.
    let status = if report.events_accepted == 0 {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    (status, axum::Json(report)).into_response()
}

pub(crate) fn error_response(error: &GatewayError) -> Response {
    let body = serde_json::json!({
        "status": "error",
        "error": error.reason(),
        "message": error.to_string(),
    });
    let mut response = (error.http_status(), axum::Json(body)).into_response();
    add_error_headers(error, response.headers_mut());
    response
}

pub(crate) fn add_error_headers(error: &GatewayError, headers: &mut HeaderMap) {
    if let Some(secs) = error.retry_after() {
        let _ = headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if matches!(error, GatewayError::Unauthorized) {
        let _ = headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
}

#[cfg(test)]
mod tests {
    use axum::body::to_bytes;
    use axum::http::Request;
    use tower::ServiceExt as _;
    use ve_kafka::{KafkaConfig, Producer};
    use ve_schema::{ApiKey, Codec, RegistryConfig, Tenant};

    use super::*;
    use crate::{Tenants, hash_api_key};

    /// A router whose broker and registry do not exist: enough for every refusal, which never
    /// touches either.
    fn app(max_body: usize, max_events: usize) -> Router {
        let kafka: KafkaConfig = toml_config();
        let codec = Codec::new(&RegistryConfig {
            url: "http://127.0.0.1:1".into(),
            username: String::new(),
            password: ve_config::Secret::default(),
            timeout_ms: 100,
        })
        .unwrap();
        let tenant = |id: &str, rate: i32| Tenant {
            tenant_id: id.into(),
            name: id.into(),
            plan: "free".into(),
            retention_days: 1,
            rate_limit_eps: rate,
            burst: 1,
            api_keys: vec![ApiKey {
                key_id: "k".into(),
                sha256: hash_api_key("key"),
                revoked: false,
            }],
            currency: "USD".into(),
        };
        let ingestor = Ingestor::with_limits(
            Tenants::fixed([tenant("t1", 0), tenant("slow", 1)]),
            codec,
            Producer::new(&kafka, "gateway-test").unwrap(),
            "raw".into(),
            max_events,
        );
        router(
            Arc::new(ingestor),
            &HttpConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                max_body_bytes: max_body,
                trust_forwarded_for: true,
            },
        )
    }

    fn toml_config() -> KafkaConfig {
        let defaults: crate::Config = ve_config::Sources::new("gateway", crate::DEFAULTS)
            .load()
            .unwrap();
        let mut kafka = defaults.kafka;
        kafka.brokers = "127.0.0.1:1".into();
        kafka
    }

    async fn call(
        app: &Router,
        path: &str,
        auth: Option<&str>,
        body: &str,
    ) -> (u16, HeaderMap, String) {
        let mut request = Request::post(path).header("content-type", "application/json");
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let response = app
            .clone()
            .oneshot(request.body(Body::from(body.to_owned())).unwrap())
            .await
            .unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        (status, headers, String::from_utf8(bytes.to_vec()).unwrap())
    }

    const ONE: &str =
        r#"{"events":[{"type":"pageview","session_id":"s","timestamp":"2024-01-01T00:00:00Z"}]}"#;

    #[tokio::test]
    async fn every_auth_failure_is_the_same_401() {
        let app = app(1 << 20, 10);
        let mut bodies = Vec::new();
        for auth in [
            None,
            Some("Bearer t1:nope"),
            Some("Bearer ghost:key"),
            Some("Token t1:key"),
        ] {
            let (status, headers, body) = call(&app, "/ingest", auth, ONE).await;
            assert_eq!(status, 401, "{auth:?}");
            assert_eq!(headers["www-authenticate"], "Bearer");
            bodies.push(body);
        }
        assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{bodies:?}");
        assert!(bodies[0].contains("unauthorized"), "{}", bodies[0]);
    }

    #[tokio::test]
    async fn oversized_bodies_and_batches_are_413() {
        let app = app(64, 1);
        let (status, _, body) = call(&app, "/ingest", Some("Bearer t1:key"), ONE).await;
        assert_eq!(status, 413, "{body}");
        let app = self::app(1 << 20, 1);
        let two = r#"{"events":[{},{}]}"#;
        let (status, _, body) = call(&app, "/v1/app-events", Some("Bearer t1:key"), two).await;
        assert_eq!(status, 413, "{body}");
        assert!(body.contains("2 events exceeds the limit of 1"), "{body}");
    }

    #[tokio::test]
    async fn malformed_batches_are_400() {
        let app = app(1 << 20, 10);
        for (path, body) in [
            ("/ingest", "not json"),
            ("/ingest", r#"{"events":{}}"#),
            ("/ingest", r#"{"events":[]}"#),
            ("/v1/metrics", r#"{"events":[]}"#),
            ("/v1/pipeline", r#"{}"#),
        ] {
            let (status, _, answer) = call(&app, path, Some("Bearer t1:key"), body).await;
            assert_eq!(status, 400, "{path} {body}: {answer}");
        }
    }

    #[tokio::test]
    async fn an_all_invalid_batch_reports_every_reason_without_touching_the_broker() {
        let app = app(1 << 20, 10);
        let body = r#"{"events":[{"type":"hover"},{"kind":"metric","host":"h"},7]}"#;
        let (status, _, answer) = call(&app, "/ingest", Some("Bearer t1:key"), body).await;
        assert_eq!(status, 400, "{answer}");
        let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(answer["status"], "rejected");
        assert_eq!(answer["events_rejected"], 3);
        let reasons: Vec<&str> = answer["rejected"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["reason"].as_str().unwrap())
            .collect();
        assert!(reasons[0].contains("missing field"), "{reasons:?}");
        assert!(reasons[1].contains("missing field `metric`"), "{reasons:?}");
        assert!(reasons[2].contains("malformed event"), "{reasons:?}");
    }

    #[tokio::test]
    async fn rate_limited_requests_are_429_with_retry_after() {
        let app = app(1 << 20, 10);
        let bad = r#"{"events":[{"type":"hover"}]}"#;
        let (status, _, _) = call(&app, "/ingest", Some("Bearer slow:key"), bad).await;
        assert_eq!(status, 400);
        let (status, headers, body) = call(&app, "/ingest", Some("Bearer slow:key"), bad).await;
        assert_eq!(status, 429, "{body}");
        assert_eq!(headers["retry-after"], "1");
    }

    #[tokio::test]
    async fn otlp_needs_a_protobuf_or_json_content_type_and_gzip_is_understood() {
        let app = app(1 << 20, 10);
        let response = app
            .clone()
            .oneshot(
                Request::post("/v1/traces")
                    .header("content-type", "text/plain")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), 415);

        // A gzipped empty export: valid, nothing to produce.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, b"{}").unwrap();
        let response = app
            .clone()
            .oneshot(
                Request::post("/v1/traces")
                    .header("content-type", "application/json")
                    .header("content-encoding", "gzip")
                    .header("authorization", "Bearer t1:key")
                    .body(Body::from(gz.finish().unwrap()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }

    #[test]
    fn gzip_bombs_stop_at_the_limit() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut gz, &vec![b' '; 1 << 20]).unwrap();
        let mut headers = HeaderMap::new();
        let _ = headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        let compressed = Bytes::from(gz.finish().unwrap());
        assert!(compressed.len() < 4096);
        let error = decode_content(&headers, compressed, 4096).unwrap_err();
        assert!(matches!(error, GatewayError::PayloadTooLarge { max: 4096 }));
        let _ = headers.insert(CONTENT_ENCODING, HeaderValue::from_static("br"));
        assert!(matches!(
            decode_content(&headers, Bytes::new(), 10),
            Err(GatewayError::UnsupportedMediaType(_))
        ));
    }
}
