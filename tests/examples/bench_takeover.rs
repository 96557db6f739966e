//! Takeover time: a warm primary is SIGKILLed (a real `tandem run` process, with its standby and
//! a witness, on loopback) and the time until the standby's `/healthz?need=writes` says it
//! takes writes is measured, over repeated trials; prints the median and p99.
//!
//!     cargo run -p tandem-tests --example bench_takeover -- [TRIALS]
//!
//! (The nodes are `tandem run` processes of the dev build: the takeover time is set by the lease
//! and the heartbeat, not by how fast the code runs.)

use std::time::{Duration, Instant};

use tandem_tests::cluster::{RunningTrio, start_trio, trio, writable};

fn wait(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < timeout, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
    started.elapsed()
}

fn main() {
    let trials: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20);
    tandem_tests::warm_shared_cache();
    let mut times = Vec::with_capacity(trials);
    let mut firsts = Vec::with_capacity(trials);
    for trial in 0..trials {
        let root = tempfile::tempdir().expect("tempdir");
        let t = trio(root.path());
        let RunningTrio { w: _w, a, b } = start_trio(&t);
        let (ca, cb) = (a.client(), b.client());
        for i in 0..200 {
            let doc = format!("{{\"host\": \"h{i}.carrier.example\", \"transport\": \"udp\", \"max_channels\": 10}}");
            ca.put("trunks", &format!("trunk-{i:04}"), &doc, None).expect("write before the takeover");
        }
        // b has everything (standby acks), and reads it while a standby.
        let _ = cb.get("trunks", "trunk-0000");
        std::thread::sleep(Duration::from_millis(300));
        let killed = Instant::now();
        a.kill();
        wait("b takes writes", Duration::from_secs(60), || writable(&cb));
        let took = killed.elapsed();
        // The first read after the promotion, then the median of the next 20.
        let t = Instant::now();
        cb.get("trunks", "trunk-0150").expect("read after the takeover");
        let first = t.elapsed();
        let mut later: Vec<Duration> = (0..20)
            .map(|i| {
                let t = Instant::now();
                cb.get("trunks", &format!("trunk-{:04}", 10 + i)).expect("read");
                t.elapsed()
            })
            .collect();
        later.sort();
        println!(
            "trial {:>3}: {:>7.1} ms; first read after it {:.2} ms, later reads median {:.2} ms",
            trial + 1,
            took.as_secs_f64() * 1000.0,
            first.as_secs_f64() * 1000.0,
            later[later.len() / 2].as_secs_f64() * 1000.0
        );
        firsts.push(first);
        times.push(took);
    }
    times.sort();
    let pick = |q: f64| times[((times.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "takeover over {} trials (lease 500 ms, local profile): median {:.1} ms, p99 {:.1} ms, min {:.1} ms, max {:.1} ms",
        times.len(),
        pick(0.5).as_secs_f64() * 1000.0,
        pick(0.99).as_secs_f64() * 1000.0,
        times[0].as_secs_f64() * 1000.0,
        times[times.len() - 1].as_secs_f64() * 1000.0
    );
    firsts.sort();
    println!("first read on the new primary: median {:.2} ms", firsts[firsts.len() / 2].as_secs_f64() * 1000.0);
}
