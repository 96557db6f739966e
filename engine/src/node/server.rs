//! A running node with its HTTP API, on its own tokio runtime: what `tandem run` starts, and
//! what tests start in-process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::oneshot;

use super::config::Config;
use super::service::{Node, NodeOptions};

/// A node serving its API.
pub struct Server {
    rt: Option<tokio::runtime::Runtime>,
    node: Arc<Node>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    http: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    addr_file: std::path::PathBuf,
    /// Replication, when the node has peers and cluster credentials.
    replication: Option<Arc<crate::replication::Replication>>,
}

impl Server {
    /// Starts the node and binds its API (`node.api`; port 0 picks a free port, see
    /// [`Server::api_addr`]). The bound address is also written to `DATA_DIR/api.addr`.
    pub fn start(config: Config, options: NodeOptions) -> anyhow::Result<Server> {
        let workers = match config.raw.runtime.workers {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).min(4),
            n => n,
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("tandem-rt")
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        let api = config.api;
        let addr_file = config.api_addr_file();
        let (node, listener) = rt.block_on(async {
            // Bind first: a port in use fails fast, before the plugins are compiled.
            let listener = tokio::net::TcpListener::bind(api)
                .await
                .with_context(|| format!("cannot listen on {api} (node.api in {}): is another node running?", config.file.display()))?;
            let node = Node::start(config, options).await?;
            anyhow::Ok((Arc::new(node), listener))
        })?;
        let addr = listener.local_addr().context("reading the bound API address")?;
        if !addr.ip().is_loopback() {
            tracing::warn!(api = %addr, "the API listens beyond loopback: keep it on a private network (every route but /healthz needs the token)");
        }
        let replication = rt.block_on(crate::replication::start(node.clone(), Some(addr)))?;
        write_atomically(&addr_file, &addr.to_string()).with_context(|| format!("writing {}", addr_file.display()))?;
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let http = rt.spawn(super::api::serve(listener, node.clone(), async move {
            let _ = stop_rx.await;
        }));
        tracing::info!(node = %node.name(), api = %addr, components = node.components().len(), "node serving");
        Ok(Server { rt: Some(rt), node, addr, stop: Some(stop_tx), http: Some(http), addr_file, replication })
    }

    /// The address the API listens on.
    pub fn api_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The API's base URL.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replication (None without peers or credentials).
    pub fn replication(&self) -> Option<&Arc<crate::replication::Replication>> {
        self.replication.as_ref()
    }

    /// The node.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Runs a future on the node's runtime (for tests and tools).
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        match &self.rt {
            Some(rt) => rt.block_on(f),
            None => panic!("the server is stopped"),
        }
    }

    /// Waits for SIGINT or SIGTERM.
    pub fn wait_for_signal(&self) -> anyhow::Result<()> {
        self.block_on(async {
            #[cfg(unix)]
            {
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                tokio::select! {
                    r = tokio::signal::ctrl_c() => r?,
                    _ = term.recv() => {}
                }
            }
            #[cfg(not(unix))]
            tokio::signal::ctrl_c().await?;
            anyhow::Ok(())
        })
    }

    /// Stops serving, lets queued writes finish, closes the store.
    pub fn shutdown(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        let Some(rt) = self.rt.take() else { return };
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(r) = &self.replication {
            r.stop();
        }
        let http = self.http.take();
        let node = self.node.clone();
        rt.block_on(async move {
            if let Some(h) = http {
                // In-flight requests get a moment to finish.
                let _ = tokio::time::timeout(Duration::from_secs(10), h).await;
            }
            node.shutdown().await;
        });
        let _ = std::fs::remove_file(&self.addr_file);
        rt.shutdown_timeout(Duration::from_secs(5));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// Writes a small file so that readers see the old or the new content, never a mix.
pub fn write_atomically(path: &std::path::Path, content: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content)?;
    std::fs::rename(&tmp, path)
}
