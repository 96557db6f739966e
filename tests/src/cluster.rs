//! Node directories for replication tests: several nodes of one cluster on loopback, with
//! cluster credentials of one CA, free peer ports, and peers at chosen addresses (directly or
//! through a [`crate::fault_proxy::FaultProxy`]).

use std::path::{Path, PathBuf};

use crate::{NodeProcess, TEST_TOKEN, copy_shared_cache, wait_until, write_node_dir};

/// A free loopback port for a node to bind later. Taken below the kernel's ephemeral range
/// (32768 and up on Linux), so that no outgoing connection grabs it in between, from a start
/// that differs per process, and checked free.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 20_000 + (std::process::id() % 500) * 20;
    for _ in 0..2_000 {
        let port = 20_000 + (base - 20_000 + NEXT.fetch_add(1, Ordering::SeqCst)) % 12_000;
        let port = u16::try_from(port).unwrap_or(20_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between 20000 and 32000")
}

/// Writes credentials for `name` in `dir/creds`, from the CA in `ca_dir/creds` (or a new CA).
pub fn write_credentials(dir: &Path, name: &str, ca_dir: Option<&Path>) {
    let from = ca_dir.map(|d| d.join("creds"));
    tandem::peer::tls::write_node_credentials(&dir.join("creds"), name, from.as_deref()).expect("write credentials");
}

/// One node of a test cluster.
pub struct NodeDef<'a> {
    pub name: &'a str,
    /// Peer port this node listens on.
    pub port: u16,
    /// (peer name, address this node dials for it).
    pub peers: Vec<(String, String)>,
    /// Extra lines of `[cluster]` (e.g. `mode = "hot"`, `primary = "a"`).
    pub cluster: &'a str,
    /// Extra TOML after the cluster section (component sections).
    pub extra: &'a str,
}

/// Writes a node directory for `def` under `root/NAME`, its credentials from `ca_dir` (or a new
/// CA when `None`). Returns the directory.
pub fn write_cluster_node(root: &Path, def: &NodeDef<'_>, components: &[&str], ca_dir: Option<&Path>) -> PathBuf {
    let dir = root.join(def.name);
    std::fs::create_dir_all(&dir).expect("node dir");
    write_credentials(&dir, def.name, ca_dir);
    let mut extra =
        format!("\n[cluster]\nca = \"creds/cluster-ca.pem\"\ncert = \"creds/node.pem\"\nkey = \"creds/node.key\"\n{}\n", def.cluster);
    for (name, address) in &def.peers {
        extra.push_str(&format!("\n[[peer]]\nname = \"{name}\"\naddress = \"{address}\"\n"));
    }
    extra.push_str(def.extra);
    let file = write_node_dir(&dir, def.name, components, &extra);
    let text = std::fs::read_to_string(&file).expect("read the config");
    let text = text.replacen("listen = \"127.0.0.1:1\"", &format!("listen = \"127.0.0.1:{}\"", def.port), 1);
    std::fs::write(&file, text).expect("write the config");
    dir
}

fn format_addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// The node directories of a failover cluster.
pub struct Trio {
    pub a: PathBuf,
    pub b: PathBuf,
    pub w: PathBuf,
}

/// Data nodes a (primary) and b with warm trunks acknowledged by the standby, and witness w:
/// automatic failover is on.
pub fn trio(root: &Path) -> Trio {
    let ports = [free_port(), free_port(), free_port()];
    trio_on(root, ports, |_, to| format_addr(ports[index(to)]))
}

fn index(name: &str) -> usize {
    match name {
        "a" => 0,
        "b" => 1,
        _ => 2,
    }
}

/// [`trio`] with the peer ports of a, b and w given, and `route(from, to)` the address `from`
/// dials for `to` (e.g. a fault proxy).
pub fn trio_on(root: &Path, ports: [u16; 3], route: impl Fn(&str, &str) -> String) -> Trio {
    let cluster = "mode = \"warm\"\nprimary = \"a\"";
    let extra = |from: &str| {
        format!(
            "\n[witness]\nname = \"w\"\naddress = \"{}\"\n\n[components.trunks]\nplugin = \"plugins/trunks.wasm\"\nack = \"standby\"\n",
            route(from, "w")
        )
    };
    let a = write_cluster_node(
        root,
        &NodeDef { name: "a", port: ports[0], peers: vec![("b".into(), route("a", "b"))], cluster, extra: &extra("a") },
        &["trunks"],
        None,
    );
    let b = write_cluster_node(
        root,
        &NodeDef { name: "b", port: ports[1], peers: vec![("a".into(), route("b", "a"))], cluster, extra: &extra("b") },
        &["trunks"],
        Some(&a),
    );
    let w = root.join("w");
    std::fs::create_dir_all(&w).expect("witness dir");
    write_credentials(&w, "w", Some(&a));
    let text = format!(
        "[node]\nname = \"w\"\nrole = \"witness\"\nlisten = \"{}\"\napi = \"127.0.0.1:0\"\n\n[api]\ntoken = \"{TEST_TOKEN}\"\n\n[cluster]\nmode = \"warm\"\nca = \"creds/cluster-ca.pem\"\ncert = \"creds/node.pem\"\nkey = \"creds/node.key\"\n\n[[peer]]\nname = \"a\"\naddress = \"{}\"\n\n[[peer]]\nname = \"b\"\naddress = \"{}\"\n",
        format_addr(ports[2]),
        route("w", "a"),
        route("w", "b")
    );
    std::fs::write(w.join("tandem.toml"), text).expect("witness config");
    for d in [&a, &b] {
        copy_shared_cache(d);
    }
    Trio { a, b, w }
}

/// Sets the primary's lease of every node of `t` to `lease_ms` (heartbeat a tenth of it): for a
/// test whose subject is not timing, so that a busy machine's stalls do not fail the primary over
/// by themselves.
pub fn set_lease(t: &Trio, lease_ms: u64) {
    for d in [&t.a, &t.b, &t.w] {
        let file = d.join("tandem.toml");
        let text = std::fs::read_to_string(&file).expect("read the config");
        assert_eq!(text.matches("[cluster]\n").count(), 1, "one [cluster] section in {}", file.display());
        let text = text.replacen("[cluster]\n", &format!("[cluster]\nlease_ms = {lease_ms}\n"), 1);
        std::fs::write(&file, text).expect("write the config");
    }
}

/// Whether a node takes writes now (`/healthz?need=writes`).
pub fn writable(c: &tandem::node::client::Client) -> bool {
    c.raw("GET", "/healthz?need=writes", None, &[], Some("")).is_ok_and(|r| r.status == 200)
}

/// The processes of a running [`Trio`].
pub struct RunningTrio {
    pub w: NodeProcess,
    pub a: NodeProcess,
    pub b: NodeProcess,
}

/// Starts the witness, a and b as `tandem run` processes; returns once a holds the primary's
/// lease and b is in its synchronous set.
pub fn start_trio(t: &Trio) -> RunningTrio {
    let wait = std::time::Duration::from_secs(60);
    let w = NodeProcess::start(&t.w);
    let a = NodeProcess::start(&t.a);
    let b = NodeProcess::start(&t.b);
    let ca = a.client();
    wait_until("a takes writes under a lease", wait, || writable(&ca));
    wait_until("b is in a's synchronous set", wait, || {
        ca.status().ok().and_then(|s| s.replication).is_some_and(|r| r["sync_set"]["members"].get("b").is_some())
    });
    RunningTrio { w, a, b }
}

/// Turns a stopped node's directory into a new server replacing it: its configuration,
/// credentials, plugins and compile cache stay (and its log, appended to); its store,
/// replication and consensus state go; the rejoin marker of `tandem init --replaces` is left.
/// Returns the marker's path.
pub fn replace_with_empty_server(dir: &Path) -> PathBuf {
    let keep = ["tandem.toml", "creds", "plugins", "node.log"];
    for entry in std::fs::read_dir(dir).expect("read the node's directory").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if keep.contains(&name.as_str()) || name.ends_with(".cwasm") {
            continue;
        }
        if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) }
            .unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
    }
    assert!(!dir.join("store.db").exists());
    std::fs::create_dir_all(dir.join("replication")).expect("mkdir replication");
    let marker = tandem::failover::rejoin_marker(dir);
    std::fs::write(&marker, b"").expect("write the rejoin marker");
    marker
}
