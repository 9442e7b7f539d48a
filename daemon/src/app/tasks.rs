//! The daemon's background tasks, owned: each handle is kept and awaited
//! at shutdown, so no task outlives the stop and none ends unnoticed.

use std::future::Future;
use std::time::Duration;
use tokio::task::JoinHandle;

/// The running background tasks, by name.
#[derive(Default)]
pub struct Tasks {
    handles: Vec<(&'static str, JoinHandle<()>)>,
}

impl Tasks {
    /// Spawns `task`, which must end once the daemon's shutdown signal fires.
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        self.handles.push((name, tokio::spawn(task)));
    }

    /// Waits for every task to end, each at most `grace`; one that does not
    /// is aborted and logged, as is one that panicked.
    pub async fn join(self, grace: Duration) {
        for (name, handle) in self.handles {
            let abort = handle.abort_handle();
            match tokio::time::timeout(grace, handle).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(task = name, error = %e, "a background task failed"),
                Err(_) => {
                    tracing::warn!(
                        task = name,
                        "a background task did not stop in time; aborted"
                    );
                    abort.abort();
                }
            }
        }
    }
}
