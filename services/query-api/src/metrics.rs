//! The query API's metrics (names are a contract: deploy/metrics.md).

use std::time::Instant;

pub const REQUESTS: &str = "query_api_requests_total";
pub const REQUEST_SECONDS: &str = "query_api_request_seconds";
pub const SQL_REFUSED: &str = "query_api_sql_refused_total";
pub const STREAM_CLIENTS: &str = "query_api_sse_clients";
pub const ALERTS_STREAMED: &str = "query_api_alerts_streamed_total";
pub const STREAM_RESYNCS: &str = "query_api_stream_resyncs_total";
pub const ALERTS_REJECTED: &str = "query_api_alert_records_rejected_total";

/// Every refusal reason of [`crate::sql`], registered at 0 so dashboards see them from start.
const REFUSAL_REASONS: &[&str] = &[
    "syntax",
    "multiple_statements",
    "not_a_query",
    "settings",
    "format",
    "into",
    "clause",
    "table_function",
    "system",
    "other_database",
    "unknown_table",
    "function",
    "cte_shadows_table",
    "literal",
    "server",
];

pub fn register() {
    for reason in REFUSAL_REASONS {
        metrics::counter!(SQL_REFUSED, "reason" => *reason).absolute(0);
    }
    metrics::gauge!(STREAM_CLIENTS).set(0.0);
    metrics::counter!(ALERTS_STREAMED).absolute(0);
    metrics::counter!(STREAM_RESYNCS).absolute(0);
    metrics::counter!(ALERTS_REJECTED).absolute(0);
}

pub fn sql_refused(reason: &'static str) {
    metrics::counter!(SQL_REFUSED, "reason" => reason).increment(1);
}

/// One answered request: `route` is the matched REST route or `grpc:<Method>`, `status` the HTTP
/// status (gRPC answers count with the HTTP status of the same error).
pub fn request(route: &str, status: u16, started: Instant) {
    metrics::counter!(REQUESTS, "route" => route.to_owned(), "status" => status.to_string())
        .increment(1);
    metrics::histogram!(REQUEST_SECONDS, "route" => route.to_owned())
        .record(started.elapsed().as_secs_f64());
}

/// Counts a live stream client for as long as it is held.
#[derive(Debug)]
pub struct StreamClient;

impl StreamClient {
    pub fn open() -> Self {
        metrics::gauge!(STREAM_CLIENTS).increment(1.0);
        Self
    }
}

impl Drop for StreamClient {
    fn drop(&mut self) {
        metrics::gauge!(STREAM_CLIENTS).decrement(1.0);
    }
}
