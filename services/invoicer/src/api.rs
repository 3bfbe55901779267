//! Operator endpoints, served on the admin port only (never on a public listener):
//! `POST /v1/billing/close`, `GET /v1/billing/invoices`, `GET /v1/billing/usage`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::close::{CloseError, Closer, Totals};
use crate::period::rfc3339;
use crate::usage::Usage;
use crate::views::Issued;

/// `period_start` as RFC 3339 (`"2026-11-01T00:00:00Z"`) or microseconds since the epoch.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Instant {
    Micros(i64),
    Text(String),
}

impl Instant {
    fn micros(&self) -> Result<i64, CloseError> {
        match self {
            Self::Micros(m) => Ok(*m),
            Self::Text(text) => chrono::DateTime::parse_from_rfc3339(text)
                .map(|t| t.timestamp_micros())
                .map_err(|e| CloseError::BadRequest(format!("period_start `{text}`: {e}"))),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloseRequest {
    pub period_start: Instant,
}

#[derive(Debug, Serialize)]
struct CloseResponse<'a> {
    period_start: String,
    invoices: Vec<&'a Issued>,
}

#[derive(Debug, Deserialize)]
struct InvoiceQuery {
    tenant: Option<String>,
}

impl IntoResponse for CloseError {
    fn into_response(self) -> Response {
        let status = match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        (status, Json(json!({ "error": self.to_string() }))).into_response()
    }
}

/// The closer, once start-up has built it: the routes are served from the first moment the admin
/// port is, and answer 503 until then.
#[derive(Debug, Clone, Default)]
pub struct Api(Arc<std::sync::OnceLock<Closer>>);

impl Api {
    pub fn set(&self, closer: Closer) {
        let _ = self.0.set(closer);
    }

    fn closer(&self) -> Result<&Closer, CloseError> {
        self.0.get().ok_or_else(|| {
            CloseError::Unavailable("starting: usage and invoices still loading".into())
        })
    }
}

async fn close(
    State(api): State<Api>,
    request: Result<Json<CloseRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<serde_json::Value>, CloseError> {
    let closer = api.closer()?;
    let Json(request) = request.map_err(|e| CloseError::BadRequest(e.body_text()))?;
    let start = request.period_start.micros()?;
    let invoices = closer.close(start).await?;
    Ok(Json(json!(CloseResponse {
        period_start: rfc3339(start),
        invoices: invoices.iter().map(|i| &**i).collect(),
    })))
}

async fn invoices(
    State(api): State<Api>,
    Query(query): Query<InvoiceQuery>,
) -> Result<Json<serde_json::Value>, CloseError> {
    let closer = api.closer()?;
    let list = closer.invoices.list(query.tenant.as_deref());
    let invoices: Vec<&Issued> = list.iter().map(|i| &**i).collect();
    Ok(Json(json!({ "invoices": invoices })))
}

/// Metered usage as the next close would see it, per tenant and period (RFC 3339 starts), with
/// the per-partition offsets it covers.
async fn usage(State(api): State<Api>) -> Result<Json<serde_json::Value>, CloseError> {
    let closer = api.closer()?;
    let totals = Totals::of(&closer.usage.snapshot());
    let usage: BTreeMap<String, BTreeMap<String, serde_json::Value>> = totals
        .usage
        .iter()
        .map(|(tenant, periods)| {
            let periods = periods
                .iter()
                .map(|(start, u): (&i64, &Usage)| {
                    (
                        rfc3339(*start),
                        json!({
                            "period_start_micros": start,
                            "events": u.events,
                            "ingest_bytes": u.ingest_bytes,
                            "spans": u.spans,
                            "metric_series": u.series.len(),
                        }),
                    )
                })
                .collect();
            (tenant.clone(), periods)
        })
        .collect();
    Ok(Json(json!({ "partitions": totals.cut, "usage": usage })))
}

pub fn router(api: Api) -> Router {
    Router::new()
        .route("/v1/billing/close", post(close))
        .route("/v1/billing/invoices", get(invoices))
        .route("/v1/billing/usage", get(usage))
        .with_state(api)
}
