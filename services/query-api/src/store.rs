//! Every read goes through here: `readonly=1` plus the configured limits on every query, JSON
//! results, ClickHouse errors classified into [`QueryError`].
//!
//! `readonly=1` (not 2): the engine then refuses writes, DDL, `SET`, SETTINGS clauses and table
//! functions, while the limits sent with the same request still apply (they are applied before
//! the read-only switch, both by ClickHouse and by the local engine's HTTP front).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use ve_store::ClickHouseConfig;

use crate::{LimitsConfig, QueryError};

/// A server-side query parameter (`{name:Type}` in the SQL).
#[derive(Debug, Clone)]
pub enum Param {
    Str(String),
    Int(i64),
}

#[derive(Debug, Clone)]
pub struct Store {
    /// Bound to the data database: reports and the fixed endpoints.
    data: clickhouse::Client,
    /// Bound to the empty sandbox database: tenant SQL, so unresolved names find nothing.
    sandbox: clickhouse::Client,
    limits: LimitsConfig,
}

/// The rows of a tenant SQL query, values as ClickHouse's JSON renders them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SqlResult {
    pub columns: Vec<SqlColumn>,
    #[schema(value_type = Vec<Vec<Object>>)]
    pub rows: Vec<Vec<serde_json::Value>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SqlColumn {
    pub name: String,
    #[serde(rename = "type")]
    pub r#type: String,
}

#[derive(Deserialize)]
struct JsonCompact {
    meta: Vec<SqlColumn>,
    data: Vec<Vec<serde_json::Value>>,
}

impl Store {
    pub fn new(
        config: &ClickHouseConfig,
        sandbox_database: &str,
        limits: LimitsConfig,
    ) -> Result<Self, ve_store::StoreError> {
        let base = config.server_client()?;
        let with_limits = |client: clickhouse::Client| {
            client
                .with_setting("readonly", "1")
                .with_setting(
                    "max_execution_time",
                    limits.max_execution_seconds.to_string(),
                )
                .with_setting("timeout_overflow_mode", "throw")
                .with_setting("max_memory_usage", limits.max_memory_bytes.to_string())
                // Counts are numbers in the JSON, not strings.
                .with_setting("output_format_json_quote_64bit_integers", "0")
                // The whole answer is computed before the status line, so a limit hit half-way
                // is an error status, not a truncated 200.
                .with_setting("wait_end_of_query", "1")
        };
        Ok(Self {
            data: with_limits(base.clone().with_database(&config.database)),
            sandbox: with_limits(base.with_database(sandbox_database)),
            limits,
        })
    }

    /// Rows of one of our own queries, deserialized from `JSONEachRow`.
    pub async fn rows<T: DeserializeOwned>(
        &self,
        sql: &str,
        params: &[(&str, Param)],
    ) -> Result<Vec<T>, QueryError> {
        let mut query = self.data.query_raw(sql);
        for (name, value) in params {
            query = match value {
                Param::Str(s) => query.param(name, s),
                Param::Int(i) => query.param(name, i),
            };
        }
        let bytes = fetch(query, "JSONEachRow").await?;
        bytes
            .split(|b| *b == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| {
                serde_json::from_slice(line).map_err(|e| {
                    QueryError::Internal(format!("unexpected row shape from ClickHouse: {e}"))
                })
            })
            .collect()
    }

    /// A tenant statement (already scoped by [`crate::sql::scope`]) with the row limit.
    pub async fn sql(&self, scoped: &str) -> Result<SqlResult, QueryError> {
        let query = self
            .sandbox
            .query_raw(scoped)
            .with_setting("max_result_rows", self.limits.max_result_rows.to_string())
            .with_setting("result_overflow_mode", "throw");
        let bytes = fetch(query, "JSONCompact").await?;
        let parsed: JsonCompact = serde_json::from_slice(&bytes)
            .map_err(|e| QueryError::Internal(format!("unexpected JSON from ClickHouse: {e}")))?;
        Ok(SqlResult {
            columns: parsed.meta,
            rows: parsed.data,
        })
    }
}

async fn fetch(query: clickhouse::query::Query, format: &str) -> Result<Vec<u8>, QueryError> {
    let mut cursor = query
        .fetch_bytes(format)
        .map_err(|e| QueryError::from_clickhouse(&e))?;
    let bytes = cursor
        .collect()
        .await
        .map_err(|e| QueryError::from_clickhouse(&e))?;
    Ok(bytes.to_vec())
}
