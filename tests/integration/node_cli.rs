//! The node's CLI verbs, run as a user would: the `tandem` binary.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use tandem::node::config::{CONFIG_FILE, Config, Mode};
use tandem_tests::{copy_shared_cache, tandem_bin, wait_until};

fn tandem(args: &[&str]) -> Output {
    Command::new(tandem_bin()).args(args).output().expect("run tandem")
}

fn tandem_stdin(args: &[&str], input: &str) -> Output {
    let mut child =
        Command::new(tandem_bin()).args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
    child.wait_with_output().expect("wait")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[track_caller]
fn ok(out: &Output) -> String {
    assert!(out.status.success(), "exit {:?}\nstdout:\n{}\nstderr:\n{}", out.status, text(&out.stdout), text(&out.stderr));
    text(&out.stdout)
}

/// `tandem run --dir DIR` in the background; returns the child and the API address.
fn run(dir: &Path) -> (std::process::Child, String) {
    let _ = std::fs::remove_file(dir.join("api.addr"));
    let log = std::fs::File::create(dir.join("node.log")).expect("log");
    let child = Command::new(tandem_bin())
        .args(["run", "--dir"])
        .arg(dir)
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn tandem run");
    wait_until("the node to serve", Duration::from_secs(60), || dir.join("api.addr").is_file());
    let addr = std::fs::read_to_string(dir.join("api.addr")).expect("api.addr").trim().to_owned();
    (child, addr)
}

fn terminate(mut child: std::process::Child) -> std::process::ExitStatus {
    Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().expect("kill");
    let mut status = None;
    wait_until("the node to stop", Duration::from_secs(30), || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    status.expect("exited")
}

#[test]
fn init_then_run_then_every_client_verb() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("n1");
    // `init` compiles every bundled plugin to learn its shape: give it the compiled ones.
    copy_shared_cache(&dir.join("cache"));
    let d = dir.to_str().expect("utf-8 path");
    let out = ok(&tandem(&[
        "init",
        "--dir",
        d,
        "--node",
        "n1",
        "--listen",
        "127.0.0.1:17401",
        "--api",
        "127.0.0.1:0",
        "--peer",
        "n2=127.0.0.1:17402",
        "--witness",
        "w=127.0.0.1:17403",
        "--mode",
        "hot",
    ]));
    assert!(out.contains(&format!("tandem run --dir {d}")), "{out}");
    let config = Config::load(&dir.join(CONFIG_FILE)).expect("init writes a valid config");
    assert_eq!(config.components.len(), tandem::bundled::BUNDLED.len(), "every bundled plugin is registered");
    assert!(config.components.iter().all(|c| c.mode == Mode::Hot && c.plugin.is_file()));
    assert_eq!(config.raw.peers.len(), 1);
    assert_eq!(config.raw.witness.as_ref().map(|w| w.name.as_str()), Some("w"));
    assert!(config.raw.api.token.len() >= 32);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(CONFIG_FILE)).expect("meta").permissions().mode();
        assert_eq!(mode & 0o077, 0, "the config holds the token: private to its owner");
    }
    let again = tandem(&["init", "--dir", d, "--node", "n1", "--listen", "127.0.0.1:1", "--api", "127.0.0.1:0"]);
    assert!(!again.status.success());
    assert!(text(&again.stderr).contains("already exists"), "{}", text(&again.stderr));
    let bad =
        tandem(&["init", "--dir", &format!("{d}-x"), "--node", "n9", "--listen", "127.0.0.1:1", "--api", "127.0.0.1:0", "--peer", "n2"]);
    assert!(!bad.status.success());
    assert!(text(&bad.stderr).contains("NAME=HOST:PORT"), "{}", text(&bad.stderr));

    let (child, addr) = run(&dir);
    let out = ok(&tandem(&["put", "--dir", d, "trunks", "k", r#"{"host": "a.example"}"#]));
    assert!(out.starts_with("written trunks/k at seq 1"), "{out}");
    ok(&tandem_stdin(&["put", "--dir", d, "trunks", "k2"], r#"{"host": "b.example"}"#));
    let doc: serde_json::Value = serde_json::from_str(&ok(&tandem(&["get", "--dir", d, "trunks", "k"]))).expect("json");
    assert_eq!(doc["host"], "a.example");
    let meta: serde_json::Value = serde_json::from_str(&ok(&tandem(&["get", "--dir", d, "trunks", "k", "--meta"]))).expect("json");
    assert_eq!((meta["origin"].as_str(), meta["seq"].as_u64()), (Some("n1"), Some(1)));
    assert_eq!(ok(&tandem(&["list", "--dir", d, "trunks", "--keys"])), "k\nk2\n");

    let refused = tandem(&["put", "--dir", d, "trunks", "bad", r#"{"host": "a.example", "port": 0}"#]);
    assert_eq!(refused.status.code(), Some(1));
    let err = text(&refused.stderr);
    assert!(err.contains("/port") && err.contains("[range]") && err.contains("422"), "{err}");
    let missing = tandem(&["get", "--dir", d, "trunks", "nope"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing.stderr).contains("not_found"));
    let not_json = tandem(&["put", "--dir", d, "trunks", "k", "{oops"]);
    assert!(!not_json.status.success());
    assert!(text(&not_json.stderr).contains("not JSON"));

    let table = ok(&tandem(&["status", "--dir", d]));
    assert!(table.contains("node n1") && table.contains("COMPONENT") && table.contains("trunks") && table.contains("peer n2"), "{table}");
    let status: tandem::node::types::Status = serde_json::from_str(&ok(&tandem(&["status", "--dir", d, "--json"]))).expect("status json");
    assert_eq!((status.node.mode.as_str(), status.store.last_seq), ("hot", 2));
    assert_eq!(ok(&tandem(&["conflicts", "list", "--dir", d])), "no open conflicts\n");
    let token = config.raw.api.token.clone();
    let via_api = ok(&tandem(&["get", "--api", &addr, "--token", &token, "trunks", "k2"]));
    assert!(via_api.contains("b.example"));
    let no_token = tandem(&["get", "--api", &addr, "trunks", "k2"]);
    assert!(!no_token.status.success());
    assert!(text(&no_token.stderr).contains("--token"), "{}", text(&no_token.stderr));
    let wrong = tandem(&["get", "--api", &addr, "--token", "wrong-token-0000000000", "trunks", "k2"]);
    assert_eq!(wrong.status.code(), Some(1));
    assert!(text(&wrong.stderr).contains("unauthorized"));
    assert!(ok(&tandem(&["delete", "--dir", d, "trunks", "k"])).starts_with("deleted trunks/k"));

    assert!(terminate(child).success(), "a clean stop on SIGTERM");
    assert!(!dir.join("api.addr").exists(), "the address file goes with the process");
    let down = tandem(&["get", "--dir", d, "trunks", "k2"]);
    assert!(!down.status.success());
    assert!(text(&down.stderr).contains("not running") || text(&down.stderr).contains("cannot reach"), "{}", text(&down.stderr));
}

#[test]
fn a_witness_runs_without_data() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("w");
    let d = dir.to_str().expect("utf-8 path");
    ok(&tandem(&[
        "init",
        "--dir",
        d,
        "--node",
        "w",
        "--listen",
        "127.0.0.1:17403",
        "--api",
        "127.0.0.1:0",
        "--role",
        "witness",
        "--peer",
        "n1=127.0.0.1:17401",
        "--replaces",
    ]));
    let config = Config::load(&dir.join(CONFIG_FILE)).expect("valid");
    assert!(config.components.is_empty());
    // A replacement's first start rejoins the consensus (see failover_auto.rs).
    assert!(tandem::failover::rejoin_marker(&dir).is_file());
    let (child, _) = run(&dir);
    let status: tandem::node::types::Status = serde_json::from_str(&ok(&tandem(&["status", "--dir", d, "--json"]))).expect("json");
    assert_eq!(status.node.role, "witness");
    assert!(!status.node.writes && !status.node.reads);
    assert_eq!(tandem(&["get", "--dir", d, "trunks", "k"]).status.code(), Some(1));
    assert!(terminate(child).success());
}

#[test]
fn a_bad_config_is_refused_at_start_naming_the_file_the_keys_and_the_problems() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join(CONFIG_FILE);
    std::fs::write(&file, "[node]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\napi = \"localhost\"\n\n[api]\ntoken = \"short\"\n")
        .expect("write");
    let out = tandem(&["run", "--dir", tmp.path().to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains(&file.display().to_string()), "{err}");
    assert!(err.contains("`node.api`") && err.contains("`api.token`"), "{err}");
    std::fs::write(&file, "[node]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\napi = \"127.0.0.1:0\"\ncolour = \"red\"\n").expect("write");
    let err = text(&tandem(&["run", "--dir", tmp.path().to_str().expect("utf-8")]).stderr);
    assert!(err.contains("`node.colour`") && err.contains("unknown field"), "{err}");
    let err = text(&tandem(&["run", "--dir", tmp.path().join("none").to_str().expect("utf-8")]).stderr);
    assert!(err.contains("tandem init"), "{err}");
}

#[test]
fn every_node_verb_has_help() {
    for verb in [
        &["init"][..],
        &["run"],
        &["put"],
        &["get"],
        &["delete"],
        &["list"],
        &["status"],
        &["conflicts"],
        &["conflicts", "list"],
        &["conflicts", "show"],
        &["conflicts", "resolve"],
    ] {
        let mut args = verb.to_vec();
        args.push("--help");
        let out = ok(&tandem(&args));
        assert!(out.contains("Usage: tandem"), "{verb:?}: {out}");
    }
    let top = ok(&tandem(&["--help"]));
    for verb in ["init", "run", "put", "get", "delete", "list", "status", "conflicts"] {
        assert!(top.lines().any(|l| l.trim_start().starts_with(verb)), "{verb} missing from --help:\n{top}");
    }
    assert!(!top.contains("node-bench"), "the benchmark verb is hidden");
}
