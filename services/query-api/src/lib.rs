//! Serves reports, metrics, runs, invoices, SELECT-only SQL and live alerts over REST and gRPC.
//!
//! One [`QueryService`] core answers everything for an authenticated tenant (API keys from the
//! compacted tenants topic, exactly as the gateway checks them); the REST API ([`http`]) and the
//! gRPC API ([`grpc`]) are thin front ends over it, so their numbers are the same by
//! construction. Reads go to ClickHouse with `readonly=1` and the configured limits
//! ([`store`]); tenant SQL is parsed, checked and rewritten first ([`sql`]). Live alerts come
//! from one follower of `ops.alert.v1` fanned out to every stream client ([`alerts`]).

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::net::TcpListener;
use ve_kafka::{KafkaConfig, TopicSpec};
use ve_schema::{Codec, RegistryConfig, topics};
use ve_service::{AdminConfig, Context, Harness, ListenConfig, ServiceConfig, ServiceError, deps};
use ve_store::ClickHouseConfig;
use ve_telemetry::LogConfig;

pub mod alerts;
pub mod core;
mod error;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod sql;
pub mod store;

pub use crate::core::QueryService;
pub use error::QueryError;

/// Built-in defaults; every key is documented there.
pub const DEFAULTS: &str = include_str!("../config/default.toml");

/// Service name: config prefix, metric prefix, client id.
pub const SERVICE: &str = "query-api";

/// Topics this service reads.
pub const CONSUMES: &[&str] = &[topics::OPS_ALERT, topics::CONTROL_TENANTS];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsConfig {
    /// The compacted tenants topic API keys are read from.
    pub tenants: String,
    /// The compacted alerts topic followed for `/alerts/stream`.
    pub alerts: String,
}

/// Server-side limits sent with every query (ClickHouse enforces them).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// `max_result_rows` of tenant SQL; more rows fail the query (422), never truncate it.
    pub max_result_rows: u64,
    /// `max_execution_time` of every query, seconds (504 when reached).
    pub max_execution_seconds: u64,
    /// `max_memory_usage` of every query, bytes (422 when reached).
    pub max_memory_bytes: u64,
    /// How long start-up waits for the tenants topic to be read before giving up.
    pub tenants_load_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlConfig {
    /// Tables (with a `tenant_id` column) tenant SQL may read; each is rewritten into a subquery
    /// filtered on the caller's tenant.
    pub tables: Vec<String>,
    /// An empty database tenant SQL runs in, created at start: a name the rewrite did not touch
    /// resolves there and finds nothing.
    pub sandbox_database: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// Alerts a stream client may fall behind by before it is told and resynced.
    pub buffer: usize,
    /// Interval of keep-alive pings on idle SSE connections.
    pub keep_alive_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub log: LogConfig,
    pub admin: AdminConfig,
    pub http: ListenConfig,
    pub grpc: ListenConfig,
    pub topics: TopicsConfig,
    pub limits: LimitsConfig,
    pub sql: SqlConfig,
    pub stream: StreamConfig,
    pub kafka: KafkaConfig,
    pub registry: RegistryConfig,
    pub clickhouse: ClickHouseConfig,
}

impl ServiceConfig for Config {
    fn log(&self) -> &LogConfig {
        &self.log
    }

    fn admin(&self) -> &AdminConfig {
        &self.admin
    }
}

/// The sockets the API serves on; tests bind port 0 and read the addresses back.
#[derive(Debug)]
pub struct Listeners {
    pub http: TcpListener,
    pub grpc: TcpListener,
}

impl Listeners {
    pub async fn bind(config: &Config) -> Result<Self, ServiceError> {
        Ok(Self {
            http: config.http.bind().await?,
            grpc: config.grpc.bind().await?,
        })
    }
}

pub async fn run(config: Config, ctx: Context) -> Result<(), ServiceError> {
    let listeners = Listeners::bind(&config).await?;
    run_with(config, ctx, listeners).await
}

/// [`run`] on listeners the caller bound.
pub async fn run_with(
    config: Config,
    ctx: Context,
    listeners: Listeners,
) -> Result<(), ServiceError> {
    let drain = Duration::from_millis(config.admin.drain_timeout_ms);
    let mut harness = Harness::start(ctx)?;
    deps::check_broker(&mut harness, &config.kafka);
    deps::check_registry(&mut harness, &config.registry);
    deps::check_clickhouse(&mut harness, &config.clickhouse);
    metrics::register();
    let codec =
        Codec::new(&config.registry).map_err(|e| ServiceError::startup("registry client", e))?;
    let store = store::Store::new(
        &config.clickhouse,
        &config.sql.sandbox_database,
        config.limits.clone(),
    )
    .map_err(|e| ServiceError::startup("clickhouse client", e))?;

    let prepared = harness
        .until_shutdown(prepare(&config.kafka, &config.clickhouse, &config))
        .await;
    let Some(prepared) = prepared else {
        return harness.run(drain).await;
    };
    prepared?;

    let Some(tenants) = ve_auth::follow_tenants(
        &mut harness,
        &config.kafka,
        SERVICE,
        &config.topics.tenants,
        codec.clone(),
        Duration::from_millis(config.limits.tenants_load_timeout_ms),
    )
    .await?
    else {
        return harness.run(drain).await;
    };

    let hub = alerts::AlertHub::new(config.stream.buffer);
    harness.spawn(
        "alerts",
        hub.clone().follow(
            config.kafka.clone(),
            SERVICE.to_owned(),
            config.topics.alerts.clone(),
            codec,
            harness.token(),
        ),
    );
    {
        let hub = hub.clone();
        harness.check("alerts", move || {
            let loaded = hub.is_ready();
            async move {
                if loaded {
                    Ok(())
                } else {
                    Err("alerts topic not read yet")
                }
            }
        });
    }

    let policy = sql::SqlPolicy::new(
        config.sql.tables.iter().cloned(),
        config.clickhouse.database.clone(),
    );
    let service = Arc::new(QueryService::new(tenants, store, policy));
    let token = harness.token();

    let router = http::router(
        Arc::clone(&service),
        hub.clone(),
        Duration::from_millis(config.stream.keep_alive_ms),
    );
    let http_listener = listeners.http;
    let http_token = token.clone();
    harness.spawn("http", async move {
        let addr = http_listener.local_addr().ok();
        tracing::info!(listen = ?addr, "http listening");
        axum::serve(http_listener, router)
            .with_graceful_shutdown(http_token.cancelled_owned())
            .await
    });

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<grpc::proto::query_service_server::QueryServiceServer<grpc::GrpcApi>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(grpc::DESCRIPTOR)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServiceError::startup("grpc reflection", e))?;
    let grpc_server = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection)
        .add_service(grpc::service(service, hub));
    let grpc_listener = listeners.grpc;
    harness.spawn("grpc", async move {
        let addr = grpc_listener.local_addr().ok();
        tracing::info!(listen = ?addr, "grpc listening");
        grpc_server
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(grpc_listener),
                token.cancelled_owned(),
            )
            .await
    });
    harness.started();
    harness.run(drain).await
}

/// The topics exist (compacted) and the sandbox database exists.
async fn prepare(
    kafka: &KafkaConfig,
    clickhouse: &ClickHouseConfig,
    config: &Config,
) -> Result<(), ServiceError> {
    ve_kafka::ensure_topics(kafka, &[TopicSpec::compacted(config.topics.alerts.clone())])
        .await
        .map_err(|e| ServiceError::startup("alerts topic", e))?;
    let sandbox = ClickHouseConfig {
        database: config.sql.sandbox_database.clone(),
        ..clickhouse.clone()
    };
    sandbox
        .ensure_database()
        .await
        .map_err(|e| ServiceError::startup("sandbox database", e))
}
