//! The gRPC API: the same operations as REST over the same [`QueryService`], plus server
//! reflection and the standard health service.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::alerts::{AlertHub, StreamItem};
use crate::core::{self, Caller, QueryService};
use crate::{QueryError, metrics};

#[allow(
    clippy::all,
    unreachable_pub,
    missing_debug_implementations,
    unused_results
)]
pub mod proto {
    tonic::include_proto!("ve.query.v1");
}

/// Encoded descriptors of `query.proto`, for server reflection.
pub const DESCRIPTOR: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/query_descriptor.bin"));

use proto::query_service_server::{QueryService as Grpc, QueryServiceServer};

#[derive(Debug, Clone)]
pub struct GrpcApi {
    service: Arc<QueryService>,
    hub: AlertHub,
}

pub fn service(service: Arc<QueryService>, hub: AlertHub) -> QueryServiceServer<GrpcApi> {
    QueryServiceServer::new(GrpcApi { service, hub })
}

impl GrpcApi {
    fn caller<T>(&self, request: &Request<T>) -> Result<Caller, QueryError> {
        self.service.authenticate(
            request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok()),
        )
    }

    /// Authenticates, runs `work` and records the request like the REST middleware does.
    async fn answer<T, R, F, Fut>(
        &self,
        method: &'static str,
        request: Request<T>,
        work: F,
    ) -> Result<Response<R>, Status>
    where
        F: FnOnce(Arc<QueryService>, Caller, T) -> Fut,
        Fut: Future<Output = Result<R, QueryError>>,
    {
        let started = Instant::now();
        let outcome = match self.caller(&request) {
            Ok(caller) => work(Arc::clone(&self.service), caller, request.into_inner()).await,
            Err(e) => Err(e),
        };
        let route = format!("grpc:{method}");
        match outcome {
            Ok(answer) => {
                metrics::request(&route, 200, started);
                Ok(Response::new(answer))
            }
            Err(e) => {
                metrics::request(&route, e.http_status().as_u16(), started);
                Err(e.grpc_status())
            }
        }
    }
}

fn opt(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

fn opt_u32(n: u32) -> Option<u32> {
    (n > 0).then_some(n)
}

type AlertStream = Pin<Box<dyn Stream<Item = Result<proto::AlertStreamMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Grpc for GrpcApi {
    async fn report(
        &self,
        request: Request<proto::ReportRequest>,
    ) -> Result<Response<proto::ReportResponse>, Status> {
        self.answer("Report", request, |s, caller, r| async move {
            let request = core::ReportRequest {
                template: r.template,
                from: opt(r.from),
                to: opt(r.to),
                app_id: opt(r.app_id),
                limit: opt_u32(r.limit),
            };
            s.report(&caller, &request).await.map(Into::into)
        })
        .await
    }

    async fn query(
        &self,
        request: Request<proto::SqlRequest>,
    ) -> Result<Response<proto::SqlResponse>, Status> {
        self.answer("Query", request, |s, caller, r| async move {
            s.sql(&caller, &r.sql).await.map(Into::into)
        })
        .await
    }

    async fn metric_series(
        &self,
        request: Request<proto::MetricSeriesRequest>,
    ) -> Result<Response<proto::MetricSeriesResponse>, Status> {
        self.answer("MetricSeries", request, |s, caller, r| async move {
            let query = core::SeriesQuery {
                host: opt(r.host),
                from: opt(r.from),
                to: opt(r.to),
                step: opt_u32(r.step_seconds),
            };
            s.metric_series(&caller, &r.metric, &query)
                .await
                .map(Into::into)
        })
        .await
    }

    async fn list_runs(
        &self,
        request: Request<proto::ListRunsRequest>,
    ) -> Result<Response<proto::ListRunsResponse>, Status> {
        self.answer("ListRuns", request, |s, caller, r| async move {
            let query = core::RunsQuery {
                pipeline_id: opt(r.pipeline_id),
                status: opt(r.status),
                limit: opt_u32(r.limit),
            };
            let runs = s.runs(&caller, &query).await?;
            Ok(proto::ListRunsResponse {
                runs: runs.into_iter().map(Into::into).collect(),
            })
        })
        .await
    }

    async fn get_run(
        &self,
        request: Request<proto::GetRunRequest>,
    ) -> Result<Response<proto::RunDetail>, Status> {
        self.answer("GetRun", request, |s, caller, r| async move {
            let detail = s.run(&caller, &r.run_id).await?;
            Ok(proto::RunDetail {
                run: Some(detail.run.into()),
                steps: detail.steps.into_iter().map(Into::into).collect(),
            })
        })
        .await
    }

    async fn list_steps(
        &self,
        request: Request<proto::GetRunRequest>,
    ) -> Result<Response<proto::ListStepsResponse>, Status> {
        self.answer("ListSteps", request, |s, caller, r| async move {
            let steps = s.steps(&caller, &r.run_id).await?;
            Ok(proto::ListStepsResponse {
                steps: steps.into_iter().map(Into::into).collect(),
            })
        })
        .await
    }

    async fn list_invoices(
        &self,
        request: Request<proto::ListInvoicesRequest>,
    ) -> Result<Response<proto::ListInvoicesResponse>, Status> {
        self.answer("ListInvoices", request, |s, caller, r| async move {
            let query = core::LimitQuery {
                limit: opt_u32(r.limit),
            };
            let invoices = s.invoices(&caller, &query).await?;
            Ok(proto::ListInvoicesResponse {
                invoices: invoices.into_iter().map(Into::into).collect(),
            })
        })
        .await
    }

    async fn get_invoice(
        &self,
        request: Request<proto::GetInvoiceRequest>,
    ) -> Result<Response<proto::Invoice>, Status> {
        self.answer("GetInvoice", request, |s, caller, r| async move {
            s.invoice(&caller, &r.invoice_id).await.map(Into::into)
        })
        .await
    }

    async fn list_alerts(
        &self,
        request: Request<proto::ListAlertsRequest>,
    ) -> Result<Response<proto::ListAlertsResponse>, Status> {
        self.answer("ListAlerts", request, |s, caller, r| async move {
            let query = core::AlertsQuery {
                state: opt(r.state),
            };
            let alerts = s.alerts(&caller, &query).await?;
            Ok(proto::ListAlertsResponse {
                alerts: alerts.into_iter().map(Into::into).collect(),
            })
        })
        .await
    }

    async fn list_dead_letters(
        &self,
        request: Request<proto::ListDeadLettersRequest>,
    ) -> Result<Response<proto::ListDeadLettersResponse>, Status> {
        self.answer("ListDeadLetters", request, |s, caller, r| async move {
            let query = core::DeadLettersQuery {
                stage: opt(r.stage),
                limit: opt_u32(r.limit),
            };
            let dead = s.dead_letters(&caller, &query).await?;
            Ok(proto::ListDeadLettersResponse {
                dead_letters: dead.into_iter().map(Into::into).collect(),
            })
        })
        .await
    }

    type StreamAlertsStream = AlertStream;

    async fn stream_alerts(
        &self,
        request: Request<proto::StreamAlertsRequest>,
    ) -> Result<Response<AlertStream>, Status> {
        let hub = self.hub.clone();
        self.answer("StreamAlerts", request, |_, caller, _| async move {
            let stream = hub.subscribe(caller.tenant_id().to_owned()).map(|item| {
                Ok(proto::AlertStreamMessage {
                    kind: Some(match item {
                        StreamItem::Alert(a) => {
                            proto::alert_stream_message::Kind::Alert((*a).into())
                        }
                        StreamItem::Resync { missed } => {
                            proto::alert_stream_message::Kind::Resync(proto::Resync { missed })
                        }
                    }),
                })
            });
            Ok(Box::pin(stream) as AlertStream)
        })
        .await
    }
}

impl From<core::ReportResponse> for proto::ReportResponse {
    fn from(r: core::ReportResponse) -> Self {
        use proto::report_response::Data;
        let data = match r.data {
            core::ReportData::OverviewStats(o) => Data::OverviewStats(proto::OverviewStats {
                total_events: o.total_events,
                unique_users: o.unique_users,
                sessions: o.sessions,
                pageviews: o.pageviews,
                app_events: o.app_events,
                video_heartbeats: o.video_heartbeats,
                watch_time_seconds: o.watch_time_seconds,
                top_events: o
                    .top_events
                    .into_iter()
                    .map(|n| proto::NamedCount {
                        name: n.name,
                        count: n.count,
                    })
                    .collect(),
            }),
            core::ReportData::TopContent(rows) => Data::TopContent(proto::TopContent {
                rows: rows
                    .into_iter()
                    .map(|c| proto::ContentRow {
                        content: c.content,
                        views: c.views,
                        unique_viewers: c.unique_viewers,
                        watch_time_seconds: c.watch_time_seconds,
                    })
                    .collect(),
            }),
            core::ReportData::SearchAnalytics(s) => Data::SearchAnalytics(proto::SearchAnalytics {
                total_searches: s.total_searches,
                unique_searchers: s.unique_searchers,
                zero_result_searches: s.zero_result_searches,
                zero_result_rate: s.zero_result_rate,
                top_queries: s
                    .top_queries
                    .into_iter()
                    .map(|q| proto::SearchQueryRow {
                        query: q.query,
                        searches: q.searches,
                        avg_results: q.avg_results,
                        zero_results: q.zero_results,
                    })
                    .collect(),
            }),
        };
        Self {
            template: r.template,
            from: r.from,
            to: r.to,
            data: Some(data),
        }
    }
}

/// JSON values as protobuf `Value`s (numbers become doubles, as in any JSON client).
fn to_value(json: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match json {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(to_value).collect(),
        }),
        serde_json::Value::Object(map) => Kind::StructValue(prost_types::Struct {
            fields: map.into_iter().map(|(k, v)| (k, to_value(v))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

impl From<crate::store::SqlResult> for proto::SqlResponse {
    fn from(r: crate::store::SqlResult) -> Self {
        Self {
            columns: r
                .columns
                .into_iter()
                .map(|c| proto::Column {
                    name: c.name,
                    r#type: c.r#type,
                })
                .collect(),
            rows: r
                .rows
                .into_iter()
                .map(|row| prost_types::ListValue {
                    values: row.into_iter().map(to_value).collect(),
                })
                .collect(),
        }
    }
}

impl From<core::MetricSeries> for proto::MetricSeriesResponse {
    fn from(m: core::MetricSeries) -> Self {
        Self {
            metric: m.metric,
            host: m.host,
            step_seconds: m.step_seconds,
            source: m.source,
            points: m
                .points
                .into_iter()
                .map(|p| proto::MetricPoint {
                    ts: p.ts,
                    count: p.count,
                    avg: p.avg,
                    min: p.min,
                    max: p.max,
                    sum: p.sum,
                })
                .collect(),
        }
    }
}

impl From<core::Run> for proto::Run {
    fn from(r: core::Run) -> Self {
        Self {
            run_id: r.run_id,
            pipeline_id: r.pipeline_id,
            status: r.status,
            started_at: r.started_at,
            finished_at: r.finished_at,
            total_steps: r.total_steps,
            total_input_count: r.total_input_count,
            total_output_count: r.total_output_count,
            overall_elimination_ratio: r.overall_elimination_ratio,
        }
    }
}

impl From<core::Step> for proto::Step {
    fn from(s: core::Step) -> Self {
        Self {
            step_id: s.step_id,
            run_id: s.run_id,
            name: s.name,
            position: s.position,
            input_count: s.input_count,
            output_count: s.output_count,
            kept_count: s.kept_count,
            eliminated_count: s.eliminated_count,
            scored_count: s.scored_count,
            elimination_ratio: s.elimination_ratio,
        }
    }
}

impl From<core::Invoice> for proto::Invoice {
    fn from(i: core::Invoice) -> Self {
        Self {
            invoice_id: i.invoice_id,
            period_start: i.period_start,
            period_end: i.period_end,
            plan: i.plan,
            currency: i.currency,
            lines_json: i.lines_json,
            subtotal_micros: i.subtotal_micros,
            total_micros: i.total_micros,
            issued_at: i.issued_at,
        }
    }
}

impl From<core::AlertView> for proto::Alert {
    fn from(a: core::AlertView) -> Self {
        Self {
            rule_id: a.rule_id,
            series: a.series,
            state: a.state,
            value: a.value,
            threshold: a.threshold,
            started_at: a.started_at,
            resolved_at: a.resolved_at,
            message: a.message,
            labels: a.labels.into_iter().collect(),
            event_id: a.event_id,
            event_time: a.event_time,
        }
    }
}

impl From<core::DeadLetter> for proto::DeadLetter {
    fn from(d: core::DeadLetter) -> Self {
        Self {
            stage: d.stage,
            reason: d.reason,
            source_topic: d.source_topic,
            source_partition: d.source_partition,
            source_offset: d.source_offset,
            event_id: d.event_id,
            payload_bytes: d.payload_bytes,
            dead_at: d.dead_at,
        }
    }
}
