//! The harness every service binary shares, so each `main.rs` reads: load config -> init
//! telemetry -> install shutdown -> `run` -> bounded drain.

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use ve_runtime::{CancellationToken, Supervisor};
use ve_telemetry::{Health, LogConfig};

pub mod deps;

pub use ve_runtime::RuntimeError;

/// `[admin]` section: the port Prometheus and Kubernetes probes talk to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Budget for draining in-flight work after SIGTERM; keep it below the pod's
    /// `terminationGracePeriodSeconds`.
    pub drain_timeout_ms: u64,
}

/// What the harness needs from any service's configuration.
pub trait ServiceConfig: DeserializeOwned + std::fmt::Debug + Send + 'static {
    fn log(&self) -> &LogConfig;
    fn admin(&self) -> &AdminConfig;
}

/// Runtime hand-off from the harness (or a test) to a service's `run`.
#[derive(Debug)]
pub struct Context {
    pub service: &'static str,
    pub admin: TcpListener,
    pub shutdown: CancellationToken,
}

impl Context {
    /// For tests: admin port 0 on loopback, a fresh shutdown token.
    pub async fn ephemeral(service: &'static str) -> std::io::Result<Self> {
        Ok(Self {
            service,
            admin: TcpListener::bind("127.0.0.1:0").await?,
            shutdown: CancellationToken::new(),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    Startup(String),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

impl ServiceError {
    pub fn startup(what: &str, e: impl std::fmt::Display) -> Self {
        Self::Startup(format!("{what}: {e}"))
    }
}

/// A service's running parts: the admin port (serving from the moment the harness exists, so
/// probes get answers during start-up), readiness checks, and supervised tasks.
#[derive(Debug)]
pub struct Harness {
    pub supervisor: Supervisor,
    health: Health,
    service: &'static str,
    admin: Option<(
        tokio::task::JoinHandle<Result<(), ve_telemetry::TelemetryError>>,
        CancellationToken,
    )>,
}

impl Harness {
    /// Starts serving the admin port of `ctx`; `/health/ready` answers 503 ("starting") until
    /// [`Harness::started`].
    pub fn start(ctx: Context) -> Result<Self, ServiceError> {
        Self::start_with_routes(ctx, axum::Router::new())
    }

    /// [`Harness::start`] with operator endpoints of the service's own merged into the admin
    /// router: they are reachable only where the admin port is (loopback or the cluster network),
    /// never on a public listener.
    pub fn start_with_routes(ctx: Context, routes: axum::Router) -> Result<Self, ServiceError> {
        let metrics =
            ve_telemetry::metrics_recorder().map_err(|e| ServiceError::startup("metrics", e))?;
        let health = Health::starting();
        let addr = ctx
            .admin
            .local_addr()
            .map_err(|e| ServiceError::startup("admin listener", e))?;
        let router = ve_telemetry::admin_router(health.clone(), metrics).merge(routes);
        // The admin port outlives the drain so probes keep answering (ready=503) until the end.
        let stop = CancellationToken::new();
        let task = tokio::spawn(ve_telemetry::serve_admin(ctx.admin, router, stop.clone()));
        tracing::info!(service = ctx.service, admin = %addr, "starting");
        let token = ctx.shutdown.clone();
        let draining = health.clone();
        drop(tokio::spawn(async move {
            token.cancelled().await;
            draining.set_draining();
        }));
        Ok(Self {
            supervisor: Supervisor::new(ctx.shutdown),
            health,
            service: ctx.service,
            admin: Some((task, stop)),
        })
    }

    /// Adds a readiness check (broker, registry, store ...).
    pub fn check<F, Fut, E>(&mut self, name: &str, check: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        self.health.add_check(name, move || {
            let fut = check();
            async move { fut.await.map_err(|e| e.to_string()) }
        });
    }

    /// Runs start-up work unless shutdown is requested first (`None`): a SIGTERM while waiting
    /// for a broker must not wait for the broker.
    pub async fn until_shutdown<F: Future>(&self, work: F) -> Option<F::Output> {
        let token = self.supervisor.token();
        tokio::select! {
            _ = token.cancelled() => None,
            output = work => Some(output),
        }
    }

    /// Start-up is done: readiness now depends on the checks only.
    pub fn started(&self) {
        self.health.set_started();
        tracing::info!(service = self.service, "started");
    }

    pub fn spawn<F, E>(&self, name: &str, task: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        self.supervisor.spawn(name, task);
    }

    pub fn token(&self) -> CancellationToken {
        self.supervisor.token()
    }

    /// Waits for shutdown (signal or a failed task), drains within `drain`, stops the admin port.
    pub async fn run(mut self, drain: Duration) -> Result<(), ServiceError> {
        let result = self.supervisor.clone().run_until_shutdown(drain).await;
        if let Some((task, stop)) = self.admin.take() {
            stop.cancel();
            let _ = task.await;
        }
        tracing::info!(service = self.service, "stopped");
        result.map_err(ServiceError::from)
    }
}

/// The whole of a service's `main`: config (all problems reported, exit 2), logs, runtime,
/// signals, `run`, exit status.
pub fn main<C, F, Fut>(service: &'static str, defaults: &'static str, run: F) -> ExitCode
where
    C: ServiceConfig,
    F: FnOnce(C, Context) -> Fut,
    Fut: Future<Output = Result<(), ServiceError>>,
{
    let env = ve_config::process_env();
    let files = ve_config::files_from_args(std::env::args().skip(1), &env);
    if std::env::args().any(|a| a == "--print-defaults") {
        print!("{defaults}");
        return ExitCode::SUCCESS;
    }
    let config: C = match ve_config::Sources::new(service, defaults)
        .env(env)
        .files_iter(files)
        .load()
    {
        Ok(config) => config,
        Err(e) => {
            eprintln!("ve-{service}: {e}");
            return ExitCode::from(2);
        }
    };
    if std::env::args().any(|a| a == "--healthcheck") {
        return healthcheck(config.admin().listen);
    }
    if let Err(e) = ve_telemetry::init_logging(config.log()) {
        eprintln!("ve-{service}: {e}");
        return ExitCode::from(2);
    }
    tracing::debug!(?config, "configuration loaded");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("ve-{service}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async move {
        let admin_addr = config.admin().listen;
        let admin = TcpListener::bind(admin_addr).await.map_err(|e| {
            ServiceError::startup(&format!("cannot bind admin port {admin_addr}"), e)
        })?;
        let shutdown = CancellationToken::new();
        ve_runtime::cancel_on_signals(shutdown.clone()).map_err(ServiceError::from)?;
        run(
            config,
            Context {
                service,
                admin,
                shutdown,
            },
        )
        .await
    });
    // Background tasks (producer flushes, idle pools) must not hold the process open.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "exiting");
            eprintln!("ve-{service}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `[http]` / `[grpc]` sections of the services that take requests.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    pub listen: SocketAddr,
}

impl ListenConfig {
    /// Binds the configured address.
    pub async fn bind(&self) -> Result<TcpListener, ServiceError> {
        bind(self.listen).await
    }
}

/// Binds a request port; the start-up error names the address.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServiceError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| ServiceError::startup(&format!("cannot bind {addr}"), e))
}

/// `--healthcheck`: exit 0 when the running service's `/health/ready` answers 200. Lets container
/// images without a shell or curl (distroless) declare a Docker/Compose health check.
fn healthcheck(listen: SocketAddr) -> ExitCode {
    use std::io::{Read, Write};
    let target = if listen.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], listen.port()))
    } else {
        listen
    };
    let probe = || -> std::io::Result<bool> {
        let mut stream = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(3))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            "GET /health/ready HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response)?;
        Ok(response.starts_with("HTTP/1.1 200"))
    };
    match probe() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("not ready: http://{target}/health/ready");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("admin port {target} unreachable: {e}");
            ExitCode::FAILURE
        }
    }
}
