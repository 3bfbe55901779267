//! The admin port: Prometheus `/metrics` and the three health endpoints Kubernetes probes use.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::TelemetryError;

pub type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
/// A readiness dependency check: the broker, the registry, the store. Must be cheap; it runs on
/// every `/health/ready` request with a timeout.
pub type Check = Arc<dyn Fn() -> CheckFuture + Send + Sync>;

const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// What `/health/ready` reports: start-up finished, every dependency answering, and the process
/// not shutting down. Cheap to clone; clones share state, so checks added after the admin port
/// started serving are seen by it.
#[derive(Clone, Default)]
pub struct Health {
    checks: Arc<std::sync::RwLock<Vec<(String, Check)>>>,
    started: Arc<AtomicBool>,
    draining: Arc<AtomicBool>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.checks().into_iter().map(|(n, _)| n).collect();
        f.debug_struct("Health")
            .field("checks", &names)
            .field("started", &self.started)
            .field("draining", &self.draining)
            .finish()
    }
}

impl Health {
    /// Health of a process that has finished starting (tests, simple tools).
    pub fn new() -> Self {
        let health = Self::default();
        health.set_started();
        health
    }

    /// Health of a process still starting: not ready until [`Health::set_started`].
    pub fn starting() -> Self {
        Self::default()
    }

    pub fn with_check<F, Fut>(self, name: &str, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.add_check(name, check);
        self
    }

    pub fn add_check<F, Fut>(&self, name: &str, check: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let check: Check = Arc::new(move || Box::pin(check()));
        self.checks
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push((name.to_owned(), check));
    }

    fn checks(&self) -> Vec<(String, Check)> {
        self.checks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_started(&self) {
        self.started.store(true, Ordering::SeqCst);
    }

    /// Readiness drops to 503 as soon as shutdown starts, so load balancers stop sending work
    /// while in-flight work drains.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Runs every check concurrently; returns overall readiness and per-check results.
    pub async fn probe(&self) -> (bool, serde_json::Value) {
        let checks = self.checks();
        let results = futures::future::join_all(checks.iter().map(|(name, check)| async move {
            let result = match tokio::time::timeout(CHECK_TIMEOUT, check()).await {
                Ok(result) => result,
                Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
            };
            (name.clone(), result)
        }))
        .await;
        let draining = self.draining.load(Ordering::SeqCst);
        let started = self.started.load(Ordering::SeqCst);
        let mut ready = started && !draining;
        let mut checks = serde_json::Map::new();
        for (name, result) in results {
            let value = match result {
                Ok(()) => json!({"status": "up"}),
                Err(reason) => {
                    ready = false;
                    json!({"status": "down", "error": reason})
                }
            };
            let _ = checks.insert(name, value);
        }
        let status = if ready {
            "ready"
        } else if draining {
            "draining"
        } else {
            "not_ready"
        };
        (ready, json!({"status": status, "checks": checks}))
    }
}

#[derive(Clone)]
struct AdminState {
    health: Health,
    metrics: PrometheusHandle,
}

/// `/metrics`, `/health` (detail), `/health/live` (process alive), `/health/ready` (dependencies).
pub fn admin_router(health: Health, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/health", get(health_detail))
        .route(
            "/health/live",
            get(|| async { Json(json!({"status": "alive"})) }),
        )
        .route("/health/ready", get(ready))
        .with_state(AdminState { health, metrics })
}

async fn render_metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

async fn health_detail(State(state): State<AdminState>) -> impl IntoResponse {
    let (_, body) = state.health.probe().await;
    Json(body)
}

async fn ready(State(state): State<AdminState>) -> impl IntoResponse {
    let (ready, body) = state.health.probe().await;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// Serves the admin router until `shutdown`; kept up during the drain so probes still answer.
pub async fn serve_admin(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> Result<(), TelemetryError> {
    let addr = listener
        .local_addr()
        .map(|a: SocketAddr| a.to_string())
        .unwrap_or_default();
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .map_err(|e| TelemetryError::Admin {
            addr,
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get(router: &Router, path: &str) -> (StatusCode, String) {
        let response = router
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn ready_only_when_every_check_passes_and_not_draining() {
        let handle = crate::metrics_recorder().unwrap();
        let ok = Health::new().with_check("broker", || async { Ok(()) });
        let router = admin_router(ok.clone(), handle.clone());
        assert_eq!(get(&router, "/health/ready").await.0, StatusCode::OK);
        ok.set_draining();
        let (status, body) = get(&router, "/health/ready").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("draining"), "{body}");

        let down = Health::new()
            .with_check("broker", || async { Ok(()) })
            .with_check("registry", || async {
                Err("connection refused".to_owned())
            });
        let router = admin_router(down, handle);
        let (status, body) = get(&router, "/health/ready").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("connection refused"), "{body}");
        assert_eq!(get(&router, "/health/live").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn metrics_are_rendered() {
        let handle = crate::metrics_recorder().unwrap();
        metrics::counter!("ve_telemetry_test_total").increment(3);
        let router = admin_router(Health::new(), handle);
        let (status, body) = get(&router, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("ve_telemetry_test_total 3"), "{body}");
    }
}
