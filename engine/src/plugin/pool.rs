//! Threads that run plugin calls, so that a plugin running up to its limits never occupies an
//! async runtime worker (heartbeats and the network keep their threads).

use std::thread::JoinHandle;

use crossbeam_channel::{Sender, TrySendError, bounded};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// A fixed set of threads fed by a bounded queue.
pub struct PluginPool {
    tx: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

/// The queue is full: the caller should shed load (HTTP 503) rather than wait without bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the plugin workers are saturated; retry shortly")
    }
}

impl std::error::Error for Busy {}

impl PluginPool {
    /// `threads` workers sharing a queue of at most `queue` waiting jobs.
    pub fn new(threads: usize, queue: usize) -> std::io::Result<PluginPool> {
        let (tx, rx) = bounded::<Job>(queue.max(1));
        let mut handles = Vec::with_capacity(threads.max(1));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            handles.push(std::thread::Builder::new().name(format!("tandem-plugin-{i}")).spawn(move || {
                while let Ok(job) = rx.recv() {
                    job();
                }
            })?);
        }
        Ok(PluginPool { tx: Some(tx), threads: handles })
    }

    /// Runs `f` on a plugin thread and waits for its result without blocking the async runtime.
    pub async fn run<R, F>(&self, f: F) -> Result<R, Busy>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        self.run_then_drop(move || (f(), ())).await
    }

    /// [`PluginPool::run`] for an `f` that returns its result and something to drop: the result
    /// is sent first, and the rest dropped on the plugin thread after (e.g. a plugin session,
    /// whose instance teardown then costs the caller no latency). The thread takes its next job
    /// only once the drop is done.
    pub async fn run_then_drop<R, D, F>(&self, f: F) -> Result<R, Busy>
    where
        F: FnOnce() -> (R, D) + Send + 'static,
        R: Send + 'static,
    {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let (r, rest) = f();
            let _ = done_tx.send(r);
            drop(rest);
        });
        let tx = self.tx.as_ref().ok_or(Busy)?;
        match tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => return Err(Busy),
        }
        done_rx.await.map_err(|_| Busy)
    }

    /// Runs `f` on a plugin thread and blocks until it is done (for callers off the async runtime).
    pub fn run_blocking<R, F>(&self, f: F) -> Result<R, Busy>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        let job: Job = Box::new(move || {
            let _ = done_tx.send(f());
        });
        self.tx.as_ref().ok_or(Busy)?.send(job).map_err(|_| Busy)?;
        done_rx.recv().map_err(|_| Busy)
    }
}

impl Drop for PluginPool {
    fn drop(&mut self) {
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
