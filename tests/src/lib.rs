//! Helpers shared by the integration tests (tests/integration/).

use std::path::PathBuf;
use std::sync::Arc;

use tandem::plugin::{Runtime, RuntimeConfig};

/// Where `scripts/build-plugins.sh` puts the WebAssembly components.
pub fn wasm_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TANDEM_WASM_DIR") {
        return PathBuf::from(dir);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let target = if target.is_relative() { root.join(target) } else { target };
    target.join("wasm32-wasip2").join("release")
}

/// The bytes of a built component, e.g. `wasm("tandem_test_hostile")`.
pub fn wasm(name: &str) -> Vec<u8> {
    let path = wasm_dir().join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}; run `bash scripts/build-plugins.sh` first", path.display()))
}

/// The path of a built component.
pub fn wasm_path(name: &str) -> PathBuf {
    wasm_dir().join(format!("{name}.wasm"))
}

/// A runtime with a small instance pool and no compile cache.
pub fn runtime() -> Arc<Runtime> {
    Runtime::new(RuntimeConfig { cache_dir: None, max_instances: 64, max_memory_bytes: 64 << 20 }).expect("runtime")
}

// ---------------------------------------------------------------------------------------------
// Nodes (tests/integration/node_*.rs).

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tandem::node::config::{CONFIG_FILE, Config, toml_str};
use tandem::node::{NodeOptions, Server};

/// The workspace's target directory.
pub fn target_dir() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    if target.is_relative() { root.join(target) } else { target }
}

/// A plugin compile cache shared by every test node, so that each bundled plugin is compiled
/// once per build rather than once per node.
pub fn shared_cache_dir() -> PathBuf {
    target_dir().join("tandem-test-cache")
}

/// The API token of test nodes.
pub const TEST_TOKEN: &str = "test-token-0123456789abcdef";

/// Writes a node directory: the bundled plugins in DIR/plugins and DIR/tandem.toml with the
/// given components (all bundled ones when `components` is empty), the API on a free loopback
/// port, the shared compile cache, and `extra` appended (more TOML sections).
pub fn write_node_dir(dir: &Path, name: &str, components: &[&str], extra: &str) -> PathBuf {
    let written = tandem::bundled::write_all(&dir.join("plugins")).expect("write the bundled plugins");
    let mut text = format!(
        "[node]\nname = \"{name}\"\nlisten = \"127.0.0.1:1\"\napi = \"127.0.0.1:0\"\n\n[api]\ntoken = \"{TEST_TOKEN}\"\n\n[plugins]\ncache_dir = {}\nwatch = false\nthreads = 2\n\n[runtime]\nworkers = 2\n",
        toml_str(&shared_cache_dir().display().to_string())
    );
    text.push_str(extra);
    // Component sections from `extra` win: skip the defaults for them.
    for (component, _) in written {
        if !components.is_empty() && !components.contains(&component.as_str()) {
            continue;
        }
        if extra.contains(&format!("[components.{component}]")) {
            continue;
        }
        text.push_str(&format!("\n[components.{component}]\nplugin = \"plugins/{component}.wasm\"\n"));
    }
    let file = dir.join(CONFIG_FILE);
    std::fs::write(&file, text).expect("write the config");
    file
}

/// Loads a node directory's configuration.
pub fn load_config(dir: &Path) -> Config {
    Config::load(&dir.join(CONFIG_FILE)).unwrap_or_else(|e| panic!("{e}"))
}

/// Starts an in-process node on a node directory.
pub fn start_node(dir: &Path) -> Server {
    start_node_with(dir, NodeOptions::default())
}

/// Starts an in-process node with options (e.g. a hand-driven wall clock).
pub fn start_node_with(dir: &Path, options: NodeOptions) -> Server {
    // Compile each bundled plugin once, whichever test gets here first.
    warm_shared_cache();
    Server::start(load_config(dir), options).unwrap_or_else(|e| panic!("start the node in {}: {e:#}", dir.display()))
}

/// A client of an in-process node.
pub fn client(server: &Server) -> tandem::node::client::Client {
    tandem::node::client::Client::new(&server.api_addr().to_string(), TEST_TOKEN)
}

/// A component's convergence digest on an in-process node.
pub fn digest(server: &Server, component: &str) -> String {
    server.node().digest(component).expect("digest")
}

/// The replication alarms of an in-process node that replicates.
pub fn alarms(server: &Server) -> Vec<String> {
    server.replication().expect("replication").status().alarms
}

/// Waits until `cond` holds, failing the test after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `tandem` binary of this build (built once per test run if needed: `cargo test -p
/// tandem-tests` does not build other packages' binaries), or the one `TANDEM_TEST_BIN` names
/// (a copy kept aside, so that long explorations of the chaos tests run while the tree changes).
pub fn tandem_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("TANDEM_TEST_BIN") {
            return PathBuf::from(bin);
        }
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = std::process::Command::new(cargo);
        build.args(["build", "--quiet", "-p", "tandem", "--bin", "tandem"]).current_dir(&root);
        // Not the variables cargo sets for this test's package: build scripts that read one
        // (ring's reads CARGO_MANIFEST_DIR) would see it change from a plain `cargo build` and
        // rebuild, with everything above them, here and again at the next plain build.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if is_package_variable(&name) {
                build.env_remove(name.as_ref());
            }
        }
        let status = build.status().expect("run cargo build for the tandem binary");
        assert!(status.success(), "cargo build -p tandem --bin tandem failed");
        let bin = target_dir().join("debug").join(format!("tandem{}", std::env::consts::EXE_SUFFIX));
        assert!(bin.is_file(), "{} is missing after the build", bin.display());
        bin
    })
    .clone()
}

/// Whether `name` is one of the variables cargo sets for a package's tests and build scripts
/// (not one of cargo's own settings, such as `CARGO_HOME` or `CARGO_TARGET_DIR`).
fn is_package_variable(name: &str) -> bool {
    ["CARGO_MANIFEST_DIR", "CARGO_MANIFEST_PATH", "CARGO_CRATE_NAME", "CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR"].contains(&name)
        || name.starts_with("CARGO_PKG_")
        || name.starts_with("CARGO_BIN_")
}

/// Fills the shared compile cache with every bundled plugin (once per test run), e.g. before
/// running `tandem init`, which compiles them all.
pub fn warm_shared_cache() {
    static WARM: OnceLock<()> = OnceLock::new();
    WARM.get_or_init(|| {
        let runtime = Runtime::new(RuntimeConfig { cache_dir: Some(shared_cache_dir()), ..RuntimeConfig::default() }).expect("runtime");
        for (name, bytes) in tandem::bundled::BUNDLED {
            runtime.load(name, bytes, tandem::plugin::Limits::default()).unwrap_or_else(|e| panic!("bundled plugin {name}: {e}"));
        }
    });
}

/// Copies the shared compile cache into `dir` (a node directory's `cache`).
pub fn copy_shared_cache(dir: &Path) {
    warm_shared_cache();
    std::fs::create_dir_all(dir).expect("mkdir cache");
    for entry in std::fs::read_dir(shared_cache_dir()).expect("read the shared cache").flatten() {
        let _ = std::fs::copy(entry.path(), dir.join(entry.file_name()));
    }
}

/// A `tandem run` child process, killed (SIGKILL) when dropped.
pub struct NodeProcess {
    pub child: std::process::Child,
    pub dir: PathBuf,
    pub addr: String,
}

impl NodeProcess {
    /// Starts `tandem run --dir DIR` and waits until its API answers.
    pub fn start(dir: &Path) -> NodeProcess {
        let addr_file = dir.join("api.addr");
        let _ = std::fs::remove_file(&addr_file);
        // Appended to: a node started again keeps the log of its earlier runs.
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("node.log")).expect("open node.log");
        let child = std::process::Command::new(tandem_bin())
            .args(["--log-level", "info", "run", "--dir"])
            .arg(dir)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn tandem run");
        let mut process = NodeProcess { child, dir: dir.to_path_buf(), addr: String::new() };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = process.child.try_wait() {
                let log = std::fs::read_to_string(dir.join("node.log")).unwrap_or_default();
                panic!("tandem run exited with {status} before serving:\n{log}");
            }
            if let Ok(a) = std::fs::read_to_string(&addr_file) {
                let client = tandem::node::client::Client::new(a.trim(), TEST_TOKEN);
                if client.health().is_ok() {
                    process.addr = a.trim().to_owned();
                    return process;
                }
            }
            assert!(Instant::now() < deadline, "tandem run did not serve within 60 s");
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn client(&self) -> tandem::node::client::Client {
        tandem::node::client::Client::new(&self.addr, TEST_TOKEN)
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = std::process::Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s;
            }
            assert!(Instant::now() < deadline, "tandem run did not stop within 30 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
pub mod bench;
pub mod cluster;
pub mod fault_proxy;
