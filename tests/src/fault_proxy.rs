//! A TCP proxy between two nodes that delays, holds, corrupts and cuts connections on command, for
//! replication tests. Plain threads and blocking sockets: it knows nothing of the protocol.

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct State {
    target: SocketAddr,
    delay_ms: AtomicU64,
    blocked: AtomicBool,
    held: AtomicBool,
    corrupt_next: AtomicBool,
    stopped: AtomicBool,
    forwarded: AtomicU64,
    cuts: AtomicU64,
    conns: Mutex<Vec<TcpStream>>,
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<State>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards every connection to `target`.
    pub fn start(target: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let state = Arc::new(State {
            target,
            delay_ms: AtomicU64::new(0),
            blocked: AtomicBool::new(false),
            held: AtomicBool::new(false),
            corrupt_next: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            forwarded: AtomicU64::new(0),
            cuts: AtomicU64::new(0),
            conns: Mutex::new(Vec::new()),
        });
        let s = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = conn else { continue };
                if s.blocked.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect_timeout(&s.target, Duration::from_secs(2)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                if let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) {
                    let mut conns = s.conns.lock().unwrap_or_else(|e| e.into_inner());
                    conns.push(c2);
                    conns.push(s2);
                }
                for (from, to) in [(client.try_clone(), server.try_clone()), (server.try_clone(), client.try_clone())] {
                    let (Ok(from), Ok(to)) = (from, to) else { continue };
                    let s = s.clone();
                    std::thread::spawn(move || pump(from, to, &s));
                }
            }
        });
        FaultProxy { addr, state }
    }

    /// Where nodes should connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Delays every chunk forwarded by `ms`.
    pub fn set_delay(&self, ms: u64) {
        self.state.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Cuts every open connection.
    pub fn cut(&self) {
        self.state.cuts.fetch_add(1, Ordering::SeqCst);
        for c in self.state.conns.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// While blocked, connections are cut and new ones closed at once (a partition).
    pub fn set_blocked(&self, blocked: bool) {
        self.state.blocked.store(blocked, Ordering::SeqCst);
        if blocked {
            self.cut();
        }
    }

    /// While held, nothing is forwarded either way but the connections stay open (a link that
    /// stalls, shorter than the nodes' link timeout); what was sent meanwhile flows on release.
    pub fn set_held(&self, held: bool) {
        self.state.held.store(held, Ordering::SeqCst);
    }

    /// Flips one bit in the next chunk forwarded (either direction).
    pub fn corrupt_next(&self) {
        self.state.corrupt_next.store(true, Ordering::SeqCst);
    }

    /// Bytes forwarded so far.
    pub fn forwarded(&self) -> u64 {
        self.state.forwarded.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.state.stopped.store(true, Ordering::SeqCst);
        self.cut();
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, s: &State) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if s.stopped.load(Ordering::SeqCst) || s.blocked.load(Ordering::SeqCst) {
            break;
        }
        let delay = s.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        while s.held.load(Ordering::SeqCst) && !s.stopped.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        if s.corrupt_next.swap(false, Ordering::SeqCst) {
            buf[n / 2] ^= 0x20;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        s.forwarded.fetch_add(n as u64, Ordering::SeqCst);
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
