//! Single-record writes on a lone node (no peer): each write one commit, waited for before the
//! next, beside plain SQLite committing one row at a time in the same run; with the CPU each
//! thread of the process used per write.
//!
//! cargo run --profile bench -p tandem-tests --example bench_single_write [-- WRITES [ROUNDS]]

use std::time::Instant;

use tandem::plugin::Op;
use tandem_tests::bench::{cpu_by_thread, cpu_line, plain_sqlite_upserts};

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>().ok());
    let writes = args.next().flatten().filter(|&n| n > 0).unwrap_or(300);
    let rounds = args.next().flatten().filter(|&n| n > 0).unwrap_or(3);
    let root = tempfile::tempdir().expect("tempdir");
    let file = tandem_tests::write_node_dir(&root.path().join("solo"), "solo", &["trunks"], "");
    let server = tandem_tests::start_node(file.parent().expect("the node's directory"));
    let doc = |j: usize| format!("{{\"host\": \"h{j}.carrier.example\", \"transport\": \"udp\", \"max_channels\": 12}}");

    // The baseline stores what the node stores for the same records.
    let plugin = server.node().registry().get("trunks").expect("plugin");
    let mut session = plugin.session(std::sync::Arc::new(tandem::plugin::NoLookup)).expect("session");
    let records: Vec<(String, Vec<u8>)> = (0..writes)
        .map(|j| {
            let key = format!("plain-{j}");
            let stored = session.serialize(&key, &Op::Put(doc(j)), None, &tandem::plugin::Stamp::new(1, 0, "solo"));
            (key, stored.expect("call").expect("serialize").data.to_vec())
        })
        .collect();
    drop(session);
    let cpu = cpu_by_thread();
    let took = plain_sqlite_upserts(&root.path().join("plain.db"), &records, 1);
    println!("plain SQLite, one row a commit: {:.0} µs a commit", took.as_secs_f64() * 1e6 / writes as f64);
    println!("  {}", cpu_line(&cpu, writes, took));

    for round in 0..rounds {
        let cpu = cpu_by_thread();
        let started = Instant::now();
        let mut times: Vec<u64> = (0..writes)
            .map(|j| {
                let (key, op) = (format!("trunk-{round}-{j}"), Op::Put(doc(j)));
                let t = Instant::now();
                server.block_on(server.node().write("trunks", &key, op, None)).expect("write");
                u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX)
            })
            .collect();
        let took = started.elapsed();
        times.sort_unstable();
        let at = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
        println!("node, one write a commit: median {} µs, p99 {} µs", at(0.5), at(0.99));
        println!("  {}", cpu_line(&cpu, writes, took));
    }
}
