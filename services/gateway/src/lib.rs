//! Authenticates, validates and batches SDK, agent and OTLP events onto `ingest.raw.v1`.
//!
//! One [`Ingestor`] holds the rules (API keys from the compacted tenants topic, per-tenant rate
//! limits, batch limits, validation with `ve_schema::ingest`, one raw record per accepted event);
//! the HTTP API ([`http`]), the gRPC ingest API ([`grpc`]) and OTLP traces ([`otlp`], over both)
//! are thin front ends over it. A request is answered 2xx only once every accepted event of it is
//! acknowledged by the broker.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::net::TcpListener;
use ve_kafka::{KafkaConfig, Producer};
use ve_schema::{Codec, RegistryConfig};
use ve_service::{AdminConfig, Context, Harness, ServiceConfig, ServiceError, deps};
use ve_telemetry::LogConfig;

mod error;
pub mod grpc;
pub mod http;
mod ingest;
mod limit;
pub mod otlp;

pub use error::GatewayError;
pub use ingest::{BatchReport, Channel, Ingestor, Item, RequestMeta};
pub use ve_auth::{TenantAuth, Tenants, hash_api_key};

/// Built-in defaults; every key is documented there.
pub const DEFAULTS: &str = include_str!("../config/default.toml");

/// Service name: config prefix, metric prefix, client id.
pub const SERVICE: &str = "gateway";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Largest request body accepted (after gzip decoding too); larger requests get 413 before
    /// their body is read.
    pub max_body_bytes: usize,
    /// Take `client_ip` from the first `X-Forwarded-For` hop (only behind a trusted proxy).
    pub trust_forwarded_for: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcConfig {
    pub listen: SocketAddr,
    /// Largest gRPC message accepted (ingest and OTLP); larger ones fail with RESOURCE_EXHAUSTED.
    pub max_message_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsConfig {
    /// Where accepted events go, one record per event.
    pub raw: String,
    /// The compacted tenants topic API keys and rate limits are read from.
    pub tenants: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Most events (or spans) one request may carry; more is refused whole with 413.
    pub max_events_per_batch: usize,
    /// How long start-up waits for the tenants topic to be read before giving up.
    pub tenants_load_timeout_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub log: LogConfig,
    pub admin: AdminConfig,
    pub http: HttpConfig,
    pub grpc: GrpcConfig,
    pub topics: TopicsConfig,
    pub limits: LimitsConfig,
    pub kafka: KafkaConfig,
    pub registry: RegistryConfig,
}

impl ServiceConfig for Config {
    fn log(&self) -> &LogConfig {
        &self.log
    }

    fn admin(&self) -> &AdminConfig {
        &self.admin
    }
}

/// The sockets the gateway serves on; tests bind port 0 and read the addresses back.
#[derive(Debug)]
pub struct Listeners {
    pub http: TcpListener,
    pub grpc: TcpListener,
}

impl Listeners {
    pub async fn bind(config: &Config) -> Result<Self, ServiceError> {
        Ok(Self {
            http: ve_service::bind(config.http.listen).await?,
            grpc: ve_service::bind(config.grpc.listen).await?,
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
    let codec =
        Codec::new(&config.registry).map_err(|e| ServiceError::startup("registry client", e))?;
    let producer = Producer::new(&config.kafka, SERVICE)
        .map_err(|e| ServiceError::startup("kafka producer", e))?;
    ingest::register_metrics();

    let prepared = harness
        .until_shutdown(deps::prepare(
            &config.kafka,
            &codec,
            &[config.topics.raw.as_str()],
            &[],
        ))
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

    let ingestor = Arc::new(Ingestor::new(tenants, codec, producer.clone(), &config));
    let token = harness.token();
    let router = http::router(Arc::clone(&ingestor), &config.http);
    let http_listener = listeners.http;
    let http_token = token.clone();
    harness.spawn("http", async move {
        let addr = http_listener.local_addr().ok();
        tracing::info!(listen = ?addr, "http listening");
        axum::serve(
            http_listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(http_token.cancelled_owned())
        .await
    });
    let grpc = grpc::server(Arc::clone(&ingestor), &config.grpc);
    let grpc_listener = listeners.grpc;
    harness.spawn("grpc", async move {
        let addr = grpc_listener.local_addr().ok();
        tracing::info!(listen = ?addr, "grpc listening");
        grpc.serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(grpc_listener),
            token.cancelled_owned(),
        )
        .await
    });
    harness.started();
    let outcome = harness.run(drain).await;
    // Requests answered 2xx were acknowledged already; this only hurries stragglers along.
    if let Err(e) = producer.flush(Duration::from_secs(5)) {
        tracing::warn!(error = %e, "producer flush at shutdown failed");
    }
    outcome
}
