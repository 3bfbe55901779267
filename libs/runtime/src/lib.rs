//! Process lifecycle: one cancellation tree per process, tasks supervised so that one failure
//! stops the whole process cleanly, and a bounded drain when it stops.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("task {task} failed: {reason}")]
    TaskFailed { task: String, reason: String },
    #[error("task {task} exited before shutdown was requested")]
    TaskExited { task: String },
    #[error("shutdown did not finish within {0:?}; {1} task(s) still running")]
    DrainTimeout(Duration, usize),
    #[error("cannot install signal handler: {0}")]
    Signal(#[source] std::io::Error),
}

/// Cancels `token` on SIGTERM or SIGINT (Ctrl-C). A second signal is left to the default handler
/// by exiting at once, so an operator can always kill a stuck drain.
pub fn cancel_on_signals(token: CancellationToken) -> Result<(), RuntimeError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(RuntimeError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RuntimeError::Signal)?;
    drop(tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutdown requested"),
            _ = int.recv() => tracing::info!(signal = "SIGINT", "shutdown requested"),
        }
        token.cancel();
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second signal, exiting without drain");
        std::process::exit(130);
    }));
    Ok(())
}

/// Runs a service's long-lived tasks. The first task that fails, or that returns while the
/// process is not shutting down, cancels all the others.
#[derive(Debug, Clone)]
pub struct Supervisor {
    token: CancellationToken,
    tracker: TaskTracker,
    failure: Arc<Mutex<Option<RuntimeError>>>,
}

impl Supervisor {
    pub fn new(token: CancellationToken) -> Self {
        Self {
            token,
            tracker: TaskTracker::new(),
            failure: Arc::new(Mutex::new(None)),
        }
    }

    /// The shutdown token every task must watch.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    pub fn spawn<F, E>(&self, name: &str, task: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let name = name.to_owned();
        let token = self.token.clone();
        let failure = Arc::clone(&self.failure);
        drop(self.tracker.spawn(async move {
            let outcome = task.await;
            let error = match outcome {
                Ok(()) if token.is_cancelled() => None,
                Ok(()) => Some(RuntimeError::TaskExited { task: name.clone() }),
                Err(e) => Some(RuntimeError::TaskFailed {
                    task: name.clone(),
                    reason: e.to_string(),
                }),
            };
            if let Some(error) = error {
                tracing::error!(task = %name, error = %error, "task stopped, shutting down");
                let mut slot = failure.lock().unwrap_or_else(|p| p.into_inner());
                if slot.is_none() {
                    *slot = Some(error);
                }
                token.cancel();
            } else {
                tracing::debug!(task = %name, "task drained");
            }
        }));
    }

    /// Waits for shutdown, then for every task to drain within `budget`. Returns the first
    /// task failure, if any, so `main` can exit non-zero.
    pub async fn run_until_shutdown(self, budget: Duration) -> Result<(), RuntimeError> {
        self.token.cancelled().await;
        let _ = self.tracker.close();
        if tokio::time::timeout(budget, self.tracker.wait())
            .await
            .is_err()
        {
            return Err(RuntimeError::DrainTimeout(budget, self.tracker.len()));
        }
        match self
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_failed_task_stops_the_others() {
        let sup = Supervisor::new(CancellationToken::new());
        let token = sup.token();
        sup.spawn("worker", async move {
            token.cancelled().await;
            Ok::<_, String>(())
        });
        sup.spawn("broken", async { Err::<(), _>("boom".to_owned()) });
        let err = sup
            .run_until_shutdown(Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(err, RuntimeError::TaskFailed { ref task, .. } if task == "broken"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn early_exit_is_a_failure() {
        let sup = Supervisor::new(CancellationToken::new());
        sup.spawn("quitter", async { Ok::<_, String>(()) });
        let err = sup
            .run_until_shutdown(Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, RuntimeError::TaskExited { .. }), "{err}");
    }

    #[tokio::test]
    async fn clean_shutdown_drains() {
        let token = CancellationToken::new();
        let sup = Supervisor::new(token.clone());
        let t = sup.token();
        sup.spawn("worker", async move {
            t.cancelled().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok::<_, String>(())
        });
        token.cancel();
        sup.run_until_shutdown(Duration::from_secs(5))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn drain_is_bounded() {
        let token = CancellationToken::new();
        let sup = Supervisor::new(token.clone());
        sup.spawn("stuck", async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, String>(())
        });
        token.cancel();
        let err = sup
            .run_until_shutdown(Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(err, RuntimeError::DrainTimeout(_, 1)), "{err}");
    }
}
