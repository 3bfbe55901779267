//! Observability shared by every service: structured logs, the Prometheus recorder, the admin
//! router (`/metrics`, `/health`, `/health/live`, `/health/ready`) and W3C trace context.

mod health;
mod trace_context;

pub use health::{Check, CheckFuture, Health, admin_router, serve_admin};
pub use trace_context::{TRACEPARENT, TraceContext};

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log filter {filter:?}: {reason}")]
    Filter { filter: String, reason: String },
    #[error("cannot install the metrics recorder: {0}")]
    Recorder(String),
    #[error("admin server on {addr} failed: {reason}")]
    Admin { addr: String, reason: String },
}

/// `[log]` section of every service config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `pretty` for people at a terminal, `json` for log shipping in production.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `info,ve_kafka=debug`.
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Installs the global log subscriber. `RUST_LOG`, when set, overrides the configured level so an
/// operator can raise verbosity without editing config.
pub fn init_logging(config: &LogConfig) -> Result<(), TelemetryError> {
    use tracing_subscriber::EnvFilter;
    let filter_text = std::env::var("RUST_LOG").unwrap_or_else(|_| config.level.clone());
    let filter = EnvFilter::try_new(&filter_text).map_err(|e| TelemetryError::Filter {
        filter: filter_text.clone(),
        reason: e.to_string(),
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true);
    // A second init (tests running several services in one process) keeps the first subscriber.
    let _ = match config.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
    Ok(())
}

/// Installs the process-wide Prometheus recorder once and returns its handle; later calls (several
/// services inside one test process) share it.
pub fn metrics_recorder() -> Result<PrometheusHandle, TelemetryError> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets(&[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ])
        .map_err(|e| TelemetryError::Recorder(e.to_string()))?
        .build_recorder();
    let handle = recorder.handle();
    match metrics::set_global_recorder(recorder) {
        Ok(()) => {
            let _ = HANDLE.set(handle.clone());
            spawn_upkeep(handle.clone());
            Ok(handle)
        }
        Err(_) => HANDLE
            .get()
            .cloned()
            .ok_or_else(|| TelemetryError::Recorder("another recorder is installed".to_owned())),
    }
}

/// Histograms are drained by `run_upkeep`; without it, memory grows with every observation.
fn spawn_upkeep(handle: PrometheusHandle) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        drop(runtime.spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                let _ = tick.tick().await;
                handle.run_upkeep();
            }
        }));
    }
}
