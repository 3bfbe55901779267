//! The registry as a service: configuration, the `_schemas` topic, the REST API and the admin port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::net::TcpListener;
use ve_kafka::{KafkaConfig, TopicSpec};
use ve_service::{AdminConfig, Context, Harness, ServiceConfig, ServiceError, deps};
use ve_telemetry::LogConfig;

use crate::compat::CompatibilityLevel;
use crate::kafka_log::{KafkaLog, feed};
use crate::registry::{Registry, RegistryConfig};

/// Built-in defaults; every key is documented there.
pub const DEFAULTS: &str = include_str!("../config/default.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub log: LogConfig,
    pub admin: AdminConfig,
    pub http: HttpConfig,
    pub kafka: KafkaConfig,
    pub registry: StoreConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: SocketAddr,
}

/// `[registry]`: where the state lives and how writes behave.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Compacted single-partition topic holding every registry record.
    pub topic: String,
    /// Global compatibility level until `PUT /config` sets one.
    pub default_compatibility: String,
    /// How long a write waits for its record to come back through the log.
    pub apply_timeout_ms: u64,
    pub max_write_attempts: u32,
}

impl ServiceConfig for Config {
    fn log(&self) -> &LogConfig {
        &self.log
    }

    fn admin(&self) -> &AdminConfig {
        &self.admin
    }
}

/// Runs the registry; binds the API from config (tests pass `Some` listener bound to port 0).
pub async fn run(config: Config, ctx: Context) -> Result<(), ServiceError> {
    let api = TcpListener::bind(config.http.listen).await.map_err(|e| {
        ServiceError::startup(
            &format!("cannot bind registry API {}", config.http.listen),
            e,
        )
    })?;
    run_with(config, ctx, api).await
}

pub async fn run_with(config: Config, ctx: Context, api: TcpListener) -> Result<(), ServiceError> {
    let drain = Duration::from_millis(config.admin.drain_timeout_ms);
    let mut harness = Harness::start(ctx)?;
    deps::check_broker(&mut harness, &config.kafka);
    let level: CompatibilityLevel = config
        .registry
        .default_compatibility
        .parse()
        .map_err(|e| ServiceError::startup("registry.default_compatibility", e))?;
    let topic = config.registry.topic.clone();
    let created = harness
        .until_shutdown(ve_kafka::ensure_topics(
            &config.kafka,
            &[TopicSpec::compacted(&topic).partitions(1)],
        ))
        .await;
    match created {
        Some(result) => result.map_err(|e| ServiceError::startup("schema topic", e))?,
        None => return harness.run(drain).await,
    }
    let log = Arc::new(
        KafkaLog::new(&config.kafka, &topic).map_err(|e| ServiceError::startup("schema log", e))?,
    );
    let registry = Registry::new(
        Arc::clone(&log) as Arc<dyn crate::SchemaLog>,
        RegistryConfig {
            default_compatibility: level,
            apply_timeout: Duration::from_millis(config.registry.apply_timeout_ms),
            max_write_attempts: config.registry.max_write_attempts,
        },
    );

    {
        let registry = Arc::clone(&registry);
        // Ready once the state holds everything the log held: serving before that would hand out
        // stale answers (and could assign an id twice).
        harness.check("schema_log", move || {
            let registry = Arc::clone(&registry);
            async move { registry.sync().await }
        });
    }
    let token = harness.token();
    harness.spawn(
        "schema-log",
        feed(
            config.kafka.clone(),
            topic,
            Arc::clone(&registry),
            log,
            token.clone(),
        ),
    );
    let router = crate::api::router(registry);
    harness.spawn("api", async move {
        tracing::info!(addr = %api.local_addr().map(|a| a.to_string()).unwrap_or_default(), "registry API listening");
        axum::serve(api, router).with_graceful_shutdown(async move { token.cancelled().await }).await
    });
    harness.started();
    harness.run(drain).await
}
