//! Archives raw payloads and invoices in the object store under deterministic keys.
//!
//! Skeleton: starts, loads its configuration, prepares its topics and schemas, serves its admin
//! port with readiness on its dependencies, and drains on SIGTERM.

use std::time::Duration;

use serde::Deserialize;
use ve_kafka::KafkaConfig;
use ve_schema::{Codec, RegistryConfig, topics};
use ve_service::{AdminConfig, Context, Harness, ServiceConfig, ServiceError, deps};
use ve_store::ObjectStoreConfig;
use ve_telemetry::LogConfig;

/// Built-in defaults; every key is documented there.
pub const DEFAULTS: &str = include_str!("../config/default.toml");

/// Topics whose envelope schema this service registers at start.
pub const PRODUCES: &[&str] = &[];
/// Topics this service reads.
pub const CONSUMES: &[&str] = &[topics::INGEST_RAW, topics::BILLING_INVOICE];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub log: LogConfig,
    pub admin: AdminConfig,
    pub kafka: KafkaConfig,
    pub registry: RegistryConfig,
    pub object_store: ObjectStoreConfig,
}

impl ServiceConfig for Config {
    fn log(&self) -> &LogConfig {
        &self.log
    }

    fn admin(&self) -> &AdminConfig {
        &self.admin
    }
}

pub async fn run(config: Config, ctx: Context) -> Result<(), ServiceError> {
    let drain = Duration::from_millis(config.admin.drain_timeout_ms);
    let mut harness = Harness::start(ctx)?;
    deps::check_broker(&mut harness, &config.kafka);
    deps::check_registry(&mut harness, &config.registry);
    let codec =
        Codec::new(&config.registry).map_err(|e| ServiceError::startup("registry client", e))?;
    if let Some(prepared) = harness
        .until_shutdown(deps::prepare(&config.kafka, &codec, PRODUCES, CONSUMES))
        .await
    {
        prepared?;
        harness.started();
    }
    harness.run(drain).await
}
