//! The REST API: thin handlers over [`QueryService`], live alerts as server-sent events, the
//! OpenAPI document at `/docs/openapi.json` and a small page at `/docs`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::{Stream, StreamExt};
use serde::Serialize;
use utoipa::OpenApi;

use crate::alerts::{AlertHub, StreamItem};
use crate::core::{
    AlertView, AlertsQuery, Caller, DeadLetter, DeadLettersQuery, Invoice, LimitQuery,
    MetricSeries, QueryService, ReportRequest, ReportResponse, Run, RunDetail, RunsQuery,
    SeriesQuery, SqlRequest, Step,
};
use crate::store::SqlResult;
use crate::{QueryError, metrics};

#[derive(Debug, Clone)]
struct AppState {
    service: Arc<QueryService>,
    hub: AlertHub,
    keep_alive: Duration,
}

/// The error body of every failed request: `{"error": "<kind>", "message": "..."}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
}

impl IntoResponse for QueryError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.kind().to_owned(),
            message: self.to_string(),
        };
        let mut response = (self.http_status(), Json(body)).into_response();
        if matches!(self, QueryError::Unauthorized) {
            let _ = response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

pub fn router(service: Arc<QueryService>, hub: AlertHub, keep_alive: Duration) -> Router {
    let state = AppState {
        service,
        hub,
        keep_alive,
    };
    Router::new()
        .route("/report", post(report))
        .route("/query", post(query))
        .route("/metrics/{metric}", get(metric_series))
        .route("/runs", get(runs))
        .route("/runs/{run_id}", get(run))
        .route("/runs/{run_id}/steps", get(steps))
        .route("/invoices", get(invoices))
        .route("/invoices/{invoice_id}", get(invoice))
        .route("/alerts", get(alerts))
        .route("/alerts/stream", get(alert_stream))
        .route("/dead-letters", get(dead_letters))
        .route("/docs", get(docs_page))
        .route("/docs/openapi.json", get(openapi_json))
        .layer(middleware::from_fn(observe))
        .with_state(state)
}

/// Counts and times every request by matched route and status.
async fn observe(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    metrics::request(&route, response.status().as_u16(), started);
    response
}

fn caller(state: &AppState, headers: &HeaderMap) -> Result<Caller, QueryError> {
    state
        .service
        .authenticate(headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()))
}

/// Runs a predefined report template.
#[utoipa::path(post, path = "/report", request_body = ReportRequest,
    responses((status = 200, body = ReportResponse), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
async fn report(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(request): Json<ReportRequest>,
) -> Result<Json<ReportResponse>, QueryError> {
    let caller = caller(&state, &headers)?;
    Ok(Json(state.service.report(&caller, &request).await?))
}

/// One SELECT-only statement, scoped to the caller's rows.
#[utoipa::path(post, path = "/query", request_body = SqlRequest,
    responses((status = 200, body = SqlResult), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 504, body = ErrorBody)),
    security(("bearer" = [])))]
async fn query(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(request): Json<SqlRequest>,
) -> Result<Json<SqlResult>, QueryError> {
    let caller = caller(&state, &headers)?;
    Ok(Json(state.service.sql(&caller, &request.sql).await?))
}

/// A metric's time series.
#[utoipa::path(get, path = "/metrics/{metric}", params(("metric" = String, Path), SeriesQuery),
    responses((status = 200, body = MetricSeries)), security(("bearer" = [])))]
async fn metric_series(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(metric): Path<String>,
    Query(query): Query<SeriesQuery>,
) -> Result<Json<MetricSeries>, QueryError> {
    let caller = caller(&state, &headers)?;
    Ok(Json(
        state
            .service
            .metric_series(&caller, &metric, &query)
            .await?,
    ))
}

#[utoipa::path(get, path = "/runs", params(RunsQuery),
    responses((status = 200, body = Vec<Run>)), security(("bearer" = [])))]
async fn runs(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<RunsQuery>,
) -> Result<Json<Vec<Run>>, QueryError> {
    let caller = caller(&state, &headers)?;
    Ok(Json(state.service.runs(&caller, &query).await?))
}

#[utoipa::path(get, path = "/runs/{run_id}", params(("run_id" = String, Path)),
    responses((status = 200, body = RunDetail), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn run(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(run_id): Path<String>,
) -> Result<Json<RunDetail>, QueryError> {
    let caller = caller(&state, &headers)?;
    Ok(Json(state.service.run(&caller, &run_id).await?))
}

#[utoipa::path(get, path = "/runs/{run_id}/steps", params(("run_id" = String, Path)),
    responses((status = 200, body = Vec<Step>)), security(("bearer" = [])))]
async fn steps(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(run_id): Path<String>,
) -> Result<Json<Vec<Step>>, QueryError> {
    let caller = caller(&state, &headers)?;
    Ok(Json(state.service.steps(&caller, &run_id).await?))
}

#[utoipa::path(get, path = "/invoices", params(LimitQuery),
    responses((status = 200, body = Vec<Invoice>)), security(("bearer" = [])))]
async fn invoices(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<LimitQuery>,
) -> Result<Json<Vec<Invoice>>, QueryError> {
    let caller = caller(&state, &headers)?;
    Ok(Json(state.service.invoices(&caller, &query).await?))
}

#[utoipa::path(get, path = "/invoices/{invoice_id}", params(("invoice_id" = String, Path)),
    responses((status = 200, body = Invoice), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn invoice(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(invoice_id): Path<String>,
) -> Result<Json<Invoice>, QueryError> {
    let caller = caller(&state, &headers)?;
    Ok(Json(state.service.invoice(&caller, &invoice_id).await?))
}

/// The current state of every alert series.
#[utoipa::path(get, path = "/alerts", params(AlertsQuery),
    responses((status = 200, body = Vec<AlertView>)), security(("bearer" = [])))]
async fn alerts(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<AlertsQuery>,
) -> Result<Json<Vec<AlertView>>, QueryError> {
    let caller = caller(&state, &headers)?;
    Ok(Json(state.service.alerts(&caller, &query).await?))
}

#[utoipa::path(get, path = "/dead-letters", params(DeadLettersQuery),
    responses((status = 200, body = Vec<DeadLetter>)), security(("bearer" = [])))]
async fn dead_letters(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<DeadLettersQuery>,
) -> Result<Json<Vec<DeadLetter>>, QueryError> {
    let caller = caller(&state, &headers)?;
    Ok(Json(state.service.dead_letters(&caller, &query).await?))
}

/// Live alerts of the caller's tenant as server-sent events: `alert` events (an AlertView as
/// JSON), a `resync` event (`{"missed": n}`) when the client fell behind, followed by the current
/// state as `alert` events; comment pings keep idle connections open.
#[utoipa::path(get, path = "/alerts/stream",
    responses((status = 200, content_type = "text/event-stream", body = AlertView)),
    security(("bearer" = [])))]
async fn alert_stream(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, QueryError> {
    let caller = caller(&state, &headers)?;
    let events = state
        .hub
        .subscribe(caller.tenant_id().to_owned())
        .map(|item| {
            let event = match item {
                StreamItem::Alert(alert) => Event::default().event("alert").json_data(alert),
                StreamItem::Resync { missed } => Event::default()
                    .event("resync")
                    .json_data(serde_json::json!({ "missed": missed })),
            };
            Ok(event.unwrap_or_else(|e| Event::default().comment(format!("encoding: {e}"))))
        });
    // A first comment so clients (and tests) know the subscription is in place.
    let opened = futures::stream::once(async { Ok(Event::default().comment("subscribed")) });
    Ok(Sse::new(opened.chain(events))
        .keep_alive(KeepAlive::new().interval(state.keep_alive).text("ping")))
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Value Engine query API", description = "Reports, metrics, runs, invoices, \
        alerts and SELECT-only SQL, scoped to the tenant of the API key \
        (`Authorization: Bearer <tenant_id>:<key>`)."),
    paths(report, query, metric_series, runs, run, steps, invoices, invoice, alerts,
        alert_stream, dead_letters),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("<tenant_id>:<api_key>")
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document of this API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi())
}

/// A self-contained page listing the operations (no external assets: machines without internet
/// access must be able to read it).
async fn docs_page() -> Html<String> {
    let doc = openapi();
    let mut rows = String::new();
    for (path, item) in &doc.paths.paths {
        for (method, op) in [("GET", item.get.as_ref()), ("POST", item.post.as_ref())] {
            if let Some(op) = op {
                let summary = op
                    .summary
                    .clone()
                    .or_else(|| op.description.clone())
                    .unwrap_or_default();
                rows.push_str(&format!(
                    "<tr><td><code>{method}</code></td><td><code>{}</code></td><td>{}</td></tr>",
                    html_escape(path),
                    html_escape(&summary)
                ));
            }
        }
    }
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title>\
         <style>body{{font-family:sans-serif;margin:2em}}td{{padding:4px 12px;\
         vertical-align:top}}</style></head><body><h1>{title}</h1><p>{desc}</p>\
         <p>Machine-readable: <a href=\"/docs/openapi.json\">/docs/openapi.json</a> \
         (OpenAPI 3.1).</p><table>{rows}</table></body></html>",
        title = html_escape(&doc.info.title),
        desc = html_escape(doc.info.description.as_deref().unwrap_or_default()),
    ))
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
