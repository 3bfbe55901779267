//! The one core both transports call: every answer of the REST and the gRPC API is computed here,
//! for an authenticated tenant, so the two can never disagree.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use ve_auth::{TenantAuth, Tenants};

use crate::sql::{self, SqlPolicy};
use crate::store::{Param, SqlResult, Store};
use crate::{QueryError, metrics};

/// Rows a list endpoint returns when the caller does not say, and the most it may ask for.
pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;
/// Rows of ranked report lists (top content, top queries) by default.
pub const DEFAULT_TOP: u32 = 10;
/// Reports cover the last week unless told otherwise.
const DEFAULT_RANGE_MICROS: i64 = 7 * 24 * 3600 * 1_000_000;

/// `DateTime64` columns as RFC 3339 UTC text, the way every answer carries times.
macro_rules! iso {
    ($col:literal) => {
        concat!("formatDateTime(", $col, ", '%Y-%m-%dT%H:%i:%S.%fZ', 'UTC')")
    };
}

#[derive(Debug)]
pub struct QueryService {
    tenants: Tenants,
    store: Store,
    policy: SqlPolicy,
}

/// The caller, once authenticated.
#[derive(Debug, Clone)]
pub struct Caller(Arc<TenantAuth>);

impl Caller {
    pub fn tenant_id(&self) -> &str {
        &self.0.tenant.tenant_id
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportRequest {
    /// overview_stats, top_content or search_analytics.
    pub template: String,
    /// RFC 3339; default: 7 days before `to`.
    #[serde(default)]
    pub from: Option<String>,
    /// RFC 3339; default: now.
    #[serde(default)]
    pub to: Option<String>,
    /// Only events of this app.
    #[serde(default)]
    pub app_id: Option<String>,
    /// Rows of ranked lists; default 10, at most 1000.
    #[serde(default)]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReportResponse {
    pub template: String,
    pub from: String,
    pub to: String,
    pub data: ReportData,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ReportData {
    OverviewStats(OverviewStats),
    TopContent(Vec<ContentRow>),
    SearchAnalytics(SearchAnalytics),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NamedCount {
    pub name: String,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OverviewStats {
    pub total_events: u64,
    pub unique_users: u64,
    pub sessions: u64,
    pub pageviews: u64,
    pub app_events: u64,
    pub video_heartbeats: u64,
    /// Sum of `properties.watch_seconds` over `video_heartbeat` app events.
    pub watch_time_seconds: f64,
    #[serde(default)]
    pub top_events: Vec<NamedCount>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ContentRow {
    /// `properties.content_id` of app events, the path of web pageviews.
    pub content: String,
    /// Pageviews, `video_start` and `content_view` events.
    pub views: u64,
    pub unique_viewers: u64,
    pub watch_time_seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SearchQueryRow {
    pub query: String,
    pub searches: u64,
    pub avg_results: f64,
    pub zero_results: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SearchAnalytics {
    pub total_searches: u64,
    pub unique_searchers: u64,
    pub zero_result_searches: u64,
    pub zero_result_rate: f64,
    #[serde(default)]
    pub top_queries: Vec<SearchQueryRow>,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SeriesQuery {
    /// Only this host; default: every host together.
    pub host: Option<String>,
    /// RFC 3339; default: 1 hour before `to`.
    pub from: Option<String>,
    /// RFC 3339; default: now.
    pub to: Option<String>,
    /// Bucket width in seconds; default 60.
    pub step: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MetricPoint {
    pub ts: String,
    pub count: u64,
    pub avg: f64,
    pub min: f64,
    pub max: f64,
    pub sum: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MetricSeries {
    pub metric: String,
    pub host: String,
    pub step_seconds: u32,
    /// `metrics_1m` when the step is whole minutes, `metric_samples` otherwise.
    pub source: String,
    pub points: Vec<MetricPoint>,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RunsQuery {
    pub pipeline_id: Option<String>,
    pub status: Option<String>,
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Run {
    pub run_id: String,
    pub pipeline_id: String,
    pub status: String,
    pub started_at: String,
    /// Empty while the run is not finished.
    pub finished_at: String,
    pub total_steps: u64,
    pub total_input_count: i64,
    pub total_output_count: i64,
    pub overall_elimination_ratio: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Step {
    pub step_id: String,
    pub run_id: String,
    pub name: String,
    pub position: i32,
    pub input_count: i64,
    pub output_count: i64,
    pub kept_count: i64,
    pub eliminated_count: i64,
    pub scored_count: i64,
    pub elimination_ratio: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RunDetail {
    pub run: Run,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LimitQuery {
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Invoice {
    pub invoice_id: String,
    pub period_start: String,
    pub period_end: String,
    pub plan: String,
    pub currency: String,
    /// The invoice lines as the invoicer wrote them (a JSON array).
    pub lines_json: String,
    pub subtotal_micros: i64,
    pub total_micros: i64,
    pub issued_at: String,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AlertsQuery {
    /// firing, resolved, ...; default: every state.
    pub state: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AlertView {
    pub rule_id: String,
    pub series: String,
    pub state: String,
    pub value: f64,
    pub threshold: f64,
    pub started_at: String,
    /// Empty while firing.
    pub resolved_at: String,
    pub message: String,
    pub labels: BTreeMap<String, String>,
    pub event_id: String,
    pub event_time: String,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeadLettersQuery {
    pub stage: Option<String>,
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeadLetter {
    pub stage: String,
    pub reason: String,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    pub event_id: String,
    pub payload_bytes: u32,
    pub dead_at: String,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SqlRequest {
    pub sql: String,
}

/// A half-open time range in microseconds, with the RFC 3339 text it is reported as.
struct Range {
    from: i64,
    to: i64,
}

impl Range {
    fn parse(from: Option<&str>, to: Option<&str>, default_span: i64) -> Result<Self, QueryError> {
        let to = match to.filter(|s| !s.is_empty()) {
            Some(text) => parse_time(text, "to")?,
            None => chrono::Utc::now().timestamp_micros(),
        };
        let from = match from.filter(|s| !s.is_empty()) {
            Some(text) => parse_time(text, "from")?,
            None => to - default_span,
        };
        if from >= to {
            return Err(QueryError::BadRequest("`from` must be before `to`".into()));
        }
        Ok(Self { from, to })
    }

    fn params(&self) -> [(&'static str, Param); 2] {
        [("from", Param::Int(self.from)), ("to", Param::Int(self.to))]
    }
}

fn parse_time(text: &str, name: &str) -> Result<i64, QueryError> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_micros())
        .map_err(|e| QueryError::BadRequest(format!("`{name}` is not an RFC 3339 time: {e}")))
}

/// Microseconds since the epoch as the RFC 3339 text every answer uses.
pub fn iso_micros(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
        .unwrap_or_default()
}

fn limit(requested: Option<u32>, default: u32) -> i64 {
    i64::from(
        requested
            .filter(|l| *l > 0)
            .unwrap_or(default)
            .min(MAX_LIMIT),
    )
}

fn tenant_param(caller: &Caller) -> (&'static str, Param) {
    ("tenant", Param::Str(caller.tenant_id().to_owned()))
}

const EVENTS_IN_RANGE: &str = "tenant_id = {tenant:String} \
    AND event_time >= fromUnixTimestamp64Micro({from:Int64}) \
    AND event_time < fromUnixTimestamp64Micro({to:Int64}) \
    AND ({app:String} = '' OR app_id = {app:String})";

impl QueryService {
    pub fn new(tenants: Tenants, store: Store, policy: SqlPolicy) -> Self {
        Self {
            tenants,
            store,
            policy,
        }
    }

    /// The tenant of an `Authorization` header value; every failure is the same error.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Caller, QueryError> {
        Ok(Caller(self.tenants.authenticate(header)?))
    }

    pub async fn report(
        &self,
        caller: &Caller,
        request: &ReportRequest,
    ) -> Result<ReportResponse, QueryError> {
        let range = Range::parse(
            request.from.as_deref(),
            request.to.as_deref(),
            DEFAULT_RANGE_MICROS,
        )?;
        let mut params: Vec<(&str, Param)> = range.params().into_iter().collect();
        params.push(tenant_param(caller));
        params.push((
            "app",
            Param::Str(request.app_id.clone().unwrap_or_default()),
        ));
        params.push(("limit", Param::Int(limit(request.limit, DEFAULT_TOP))));
        let data = match request.template.as_str() {
            "overview_stats" => ReportData::OverviewStats(self.overview(&params).await?),
            "top_content" => ReportData::TopContent(self.top_content(&params).await?),
            "search_analytics" => ReportData::SearchAnalytics(self.search(&params).await?),
            other => {
                return Err(QueryError::BadRequest(format!(
                    "unknown template {other:?}; templates: overview_stats, top_content, \
                     search_analytics"
                )));
            }
        };
        Ok(ReportResponse {
            template: request.template.clone(),
            from: iso_micros(range.from),
            to: iso_micros(range.to),
            data,
        })
    }

    async fn overview(&self, params: &[(&str, Param)]) -> Result<OverviewStats, QueryError> {
        let sql = format!(
            "SELECT count() AS total_events, \
             uniqExactIf(user_id, user_id != '') AS unique_users, \
             uniqExactIf(session_id, session_id != '') AS sessions, \
             countIf(kind = 'web' AND event_type = 'pageview') AS pageviews, \
             countIf(kind = 'app') AS app_events, \
             countIf(event_name = 'video_heartbeat') AS video_heartbeats, \
             sumIf(JSONExtractFloat(properties, 'watch_seconds'), event_name = 'video_heartbeat') \
                AS watch_time_seconds \
             FROM events FINAL WHERE {EVENTS_IN_RANGE}"
        );
        let mut stats: OverviewStats = self
            .store
            .rows(&sql, params)
            .await?
            .pop()
            .ok_or_else(|| QueryError::Internal("aggregate returned no row".into()))?;
        let sql = format!(
            "SELECT if(event_name != '', event_name, event_type) AS name, count() AS count \
             FROM events FINAL WHERE {EVENTS_IN_RANGE} \
             GROUP BY name ORDER BY count DESC, name LIMIT {{limit:Int64}}"
        );
        stats.top_events = self.store.rows(&sql, params).await?;
        Ok(stats)
    }

    async fn top_content(&self, params: &[(&str, Param)]) -> Result<Vec<ContentRow>, QueryError> {
        let sql = format!(
            "SELECT content, countIf(is_view) AS views, \
             uniqExactIf(user_id, is_view AND user_id != '') AS unique_viewers, \
             sumIf(watch, is_heartbeat) AS watch_time_seconds \
             FROM (SELECT if(kind = 'web', path, JSONExtractString(properties, 'content_id')) \
                 AS content, \
                 (kind = 'web' AND event_type = 'pageview') \
                     OR event_name IN ('video_start', 'content_view') AS is_view, \
                 event_name = 'video_heartbeat' AS is_heartbeat, \
                 JSONExtractFloat(properties, 'watch_seconds') AS watch, user_id \
                 FROM events FINAL WHERE {EVENTS_IN_RANGE}) \
             WHERE content != '' GROUP BY content \
             ORDER BY views DESC, watch_time_seconds DESC, content LIMIT {{limit:Int64}}"
        );
        self.store.rows(&sql, params).await
    }

    async fn search(&self, params: &[(&str, Param)]) -> Result<SearchAnalytics, QueryError> {
        let searches = format!(
            "SELECT user_id, lower(trimBoth(JSONExtractString(properties, 'query'))) AS query, \
             JSONExtractInt(properties, 'results_count') AS results \
             FROM events FINAL WHERE {EVENTS_IN_RANGE} AND event_name = 'search'"
        );
        let sql = format!(
            "SELECT count() AS total_searches, \
             uniqExactIf(user_id, user_id != '') AS unique_searchers, \
             countIf(results = 0) AS zero_result_searches, \
             if(total_searches = 0, 0, zero_result_searches / total_searches) AS zero_result_rate \
             FROM ({searches})"
        );
        let mut analytics: SearchAnalytics = self
            .store
            .rows(&sql, params)
            .await?
            .pop()
            .ok_or_else(|| QueryError::Internal("aggregate returned no row".into()))?;
        let sql = format!(
            "SELECT query, count() AS searches, avg(results) AS avg_results, \
             countIf(results = 0) AS zero_results FROM ({searches}) WHERE query != '' \
             GROUP BY query ORDER BY searches DESC, query LIMIT {{limit:Int64}}"
        );
        analytics.top_queries = self.store.rows(&sql, params).await?;
        Ok(analytics)
    }

    /// One SELECT-only statement, scoped to the caller (see [`crate::sql`]).
    pub async fn sql(&self, caller: &Caller, sql: &str) -> Result<SqlResult, QueryError> {
        let scoped =
            sql::scope(sql, caller.tenant_id(), &self.policy).inspect_err(|e| match e {
                QueryError::Refused { reason, .. } => metrics::sql_refused(reason),
                QueryError::BadSql(_) => metrics::sql_refused("syntax"),
                _ => {}
            })?;
        self.store.sql(&scoped).await.inspect_err(|e| {
            if let QueryError::Refused { reason, .. } = e {
                metrics::sql_refused(reason);
            }
        })
    }

    pub async fn metric_series(
        &self,
        caller: &Caller,
        metric: &str,
        query: &SeriesQuery,
    ) -> Result<MetricSeries, QueryError> {
        let range = Range::parse(query.from.as_deref(), query.to.as_deref(), 3600 * 1_000_000)?;
        let step = query.step.filter(|s| *s > 0).unwrap_or(60);
        let buckets = (range.to - range.from) / (i64::from(step) * 1_000_000);
        if buckets > 10_000 {
            return Err(QueryError::BadRequest(format!(
                "{buckets} buckets of {step}s: at most 10000 per series; widen `step`"
            )));
        }
        let rollup = step.is_multiple_of(60);
        let sql = if rollup {
            concat!(
                "SELECT ",
                iso!("bucket"),
                " AS ts, sum(count) AS count, sum(sum) AS sum, min(min) AS min, max(max) AS max \
                 FROM metrics_1m WHERE tenant_id = {tenant:String} AND metric = {metric:String} \
                 AND ({host:String} = '' OR host = {host:String}) \
                 AND minute >= toStartOfMinute(fromUnixTimestamp64Micro({from:Int64})) \
                 AND minute < fromUnixTimestamp64Micro({to:Int64}) \
                 GROUP BY toStartOfInterval(minute, toIntervalSecond({step:Int64})) AS bucket \
                 ORDER BY bucket"
            )
        } else {
            concat!(
                "SELECT ",
                iso!("bucket"),
                " AS ts, count() AS count, sum(value) AS sum, min(value) AS min, \
                 max(value) AS max FROM metric_samples FINAL \
                 WHERE tenant_id = {tenant:String} AND metric = {metric:String} \
                 AND ({host:String} = '' OR host = {host:String}) \
                 AND event_time >= fromUnixTimestamp64Micro({from:Int64}) \
                 AND event_time < fromUnixTimestamp64Micro({to:Int64}) \
                 GROUP BY toStartOfInterval(event_time, toIntervalSecond({step:Int64})) AS bucket \
                 ORDER BY bucket"
            )
        };
        #[derive(Deserialize)]
        struct Bucket {
            ts: String,
            count: u64,
            sum: f64,
            min: f64,
            max: f64,
        }
        let host = query.host.clone().unwrap_or_default();
        let mut params: Vec<(&str, Param)> = range.params().into_iter().collect();
        params.extend([
            tenant_param(caller),
            ("metric", Param::Str(metric.to_owned())),
            ("host", Param::Str(host.clone())),
            ("step", Param::Int(i64::from(step))),
        ]);
        let buckets: Vec<Bucket> = self.store.rows(sql, &params).await?;
        Ok(MetricSeries {
            metric: metric.to_owned(),
            host,
            step_seconds: step,
            source: if rollup {
                "metrics_1m"
            } else {
                "metric_samples"
            }
            .to_owned(),
            points: buckets
                .into_iter()
                .map(|b| MetricPoint {
                    avg: if b.count == 0 {
                        0.0
                    } else {
                        b.sum / b.count as f64
                    },
                    ts: b.ts,
                    count: b.count,
                    min: b.min,
                    max: b.max,
                    sum: b.sum,
                })
                .collect(),
        })
    }

    pub async fn runs(&self, caller: &Caller, query: &RunsQuery) -> Result<Vec<Run>, QueryError> {
        let sql = format!(
            "{RUN_COLUMNS} WHERE tenant_id = {{tenant:String}} \
             AND ({{pipeline:String}} = '' OR pipeline_id = {{pipeline:String}}) \
             AND ({{status:String}} = '' OR status = {{status:String}}) \
             ORDER BY started_at DESC, run_id LIMIT {{limit:Int64}}"
        );
        let params = [
            tenant_param(caller),
            (
                "pipeline",
                Param::Str(query.pipeline_id.clone().unwrap_or_default()),
            ),
            (
                "status",
                Param::Str(query.status.clone().unwrap_or_default()),
            ),
            ("limit", Param::Int(limit(query.limit, DEFAULT_LIMIT))),
        ];
        self.store.rows(&sql, &params).await
    }

    pub async fn run(&self, caller: &Caller, run_id: &str) -> Result<RunDetail, QueryError> {
        let sql = format!(
            "{RUN_COLUMNS} WHERE tenant_id = {{tenant:String}} AND run_id = {{run:String}} \
             LIMIT 1"
        );
        let params = [tenant_param(caller), ("run", Param::Str(run_id.to_owned()))];
        let run: Run = self
            .store
            .rows(&sql, &params)
            .await?
            .pop()
            .ok_or_else(|| QueryError::NotFound(format!("run {run_id}")))?;
        let steps = self.steps(caller, run_id).await?;
        Ok(RunDetail { run, steps })
    }

    pub async fn steps(&self, caller: &Caller, run_id: &str) -> Result<Vec<Step>, QueryError> {
        let sql = "SELECT step_id, run_id, name, position, input_count, output_count, \
             kept_count, eliminated_count, scored_count, elimination_ratio FROM steps FINAL \
             WHERE tenant_id = {tenant:String} AND run_id = {run:String} \
             ORDER BY position, step_id";
        let params = [tenant_param(caller), ("run", Param::Str(run_id.to_owned()))];
        self.store.rows(sql, &params).await
    }

    pub async fn invoices(
        &self,
        caller: &Caller,
        query: &LimitQuery,
    ) -> Result<Vec<Invoice>, QueryError> {
        let sql = format!(
            "{INVOICE_COLUMNS} WHERE tenant_id = {{tenant:String}} \
             ORDER BY period_start DESC, invoice_id LIMIT {{limit:Int64}}"
        );
        let params = [
            tenant_param(caller),
            ("limit", Param::Int(limit(query.limit, DEFAULT_LIMIT))),
        ];
        self.store.rows(&sql, &params).await
    }

    pub async fn invoice(&self, caller: &Caller, id: &str) -> Result<Invoice, QueryError> {
        let sql = format!(
            "{INVOICE_COLUMNS} WHERE tenant_id = {{tenant:String}} AND invoice_id = {{id:String}} \
             LIMIT 1"
        );
        let params = [tenant_param(caller), ("id", Param::Str(id.to_owned()))];
        self.store
            .rows(&sql, &params)
            .await?
            .pop()
            .ok_or_else(|| QueryError::NotFound(format!("invoice {id}")))
    }

    pub async fn alerts(
        &self,
        caller: &Caller,
        query: &AlertsQuery,
    ) -> Result<Vec<AlertView>, QueryError> {
        let sql = concat!(
            "SELECT rule_id, series, state, value, threshold, ",
            iso!("started_at"),
            " AS started_at, ifNull(",
            iso!("resolved_at"),
            ", '') AS resolved_at, message, labels, event_id, ",
            iso!("event_time"),
            " AS event_time FROM alerts FINAL WHERE tenant_id = {tenant:String} \
             AND ({state:String} = '' OR state = {state:String}) ORDER BY rule_id, series"
        );
        let params = [
            tenant_param(caller),
            ("state", Param::Str(query.state.clone().unwrap_or_default())),
        ];
        self.store.rows(sql, &params).await
    }

    pub async fn dead_letters(
        &self,
        caller: &Caller,
        query: &DeadLettersQuery,
    ) -> Result<Vec<DeadLetter>, QueryError> {
        let sql = concat!(
            "SELECT stage, reason, source_topic, source_partition, source_offset, event_id, \
             payload_bytes, ",
            iso!("dead_at"),
            " AS dead_at FROM dead_letters FINAL WHERE tenant_id = {tenant:String} \
             AND ({stage:String} = '' OR stage = {stage:String}) \
             ORDER BY dead_at DESC, source_topic, source_partition, source_offset \
             LIMIT {limit:Int64}"
        );
        let params = [
            tenant_param(caller),
            ("stage", Param::Str(query.stage.clone().unwrap_or_default())),
            ("limit", Param::Int(limit(query.limit, DEFAULT_LIMIT))),
        ];
        self.store.rows(sql, &params).await
    }
}

const RUN_COLUMNS: &str = concat!(
    "SELECT run_id, pipeline_id, status, ",
    iso!("started_at"),
    " AS started_at, ifNull(",
    iso!("finished_at"),
    ", '') AS finished_at, toUInt64(total_steps) AS total_steps, \
     toInt64(total_input_count) AS total_input_count, \
     toInt64(total_output_count) AS total_output_count, \
     toFloat64(overall_elimination_ratio) AS overall_elimination_ratio FROM runs_summary"
);

const INVOICE_COLUMNS: &str = concat!(
    "SELECT invoice_id, ",
    iso!("period_start"),
    " AS period_start, ",
    iso!("period_end"),
    " AS period_end, plan, currency, lines AS lines_json, subtotal_micros, total_micros, ",
    iso!("issued_at"),
    " AS issued_at FROM invoices FINAL"
);
