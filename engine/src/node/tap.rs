//! What the backup thread takes from a running node.
//!
//! - [`CommitTap`]: every committed version, handed by the writer thread (after the commit, in
//!   commit order) to one bounded consumer: the log archive. The store keeps only each key's
//!   latest version, so reading it cannot see a version overwritten a moment later; the tap
//!   does. The writer never waits on the consumer: when the consumer falls more than
//!   [`TAP_MAX_ENTRIES`] versions (or [`TAP_MAX_BYTES`]) behind, the tap is closed and counts an
//!   overflow; the consumer sees it (its channel ends), says so and subscribes again.
//! - [`BackupView`]: the backup thread's status and metrics, shown by `GET /v1/admin/backup` and
//!   `/metrics`.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crossbeam_channel::{Receiver, Sender};

use super::store::RecordRow;

/// Versions the consumer may be behind before the tap closes.
pub const TAP_MAX_ENTRIES: usize = 200_000;
/// Bytes of record data the consumer may be behind before the tap closes.
pub const TAP_MAX_BYTES: usize = 256 << 20;

/// One committed version.
pub type TapEntry = RecordRow;

#[derive(Default)]
struct Inner {
    tx: Option<Sender<Vec<TapEntry>>>,
    /// What the current consumer has not taken yet.
    pending: Arc<Pending>,
    /// The last seq the writer committed (kept whether or not a consumer is subscribed).
    last_seq: u64,
}

/// Accounting shared by the writer and the consumer.
#[derive(Default)]
struct Pending {
    entries: AtomicUsize,
    bytes: AtomicUsize,
}

/// The commit tap of a node.
pub struct CommitTap {
    active: AtomicBool,
    inner: Mutex<Inner>,
    overflows: AtomicU64,
    max_entries: AtomicUsize,
    max_bytes: AtomicUsize,
}

impl Default for CommitTap {
    fn default() -> Self {
        CommitTap {
            active: AtomicBool::new(false),
            inner: Mutex::new(Inner::default()),
            overflows: AtomicU64::new(0),
            max_entries: AtomicUsize::new(TAP_MAX_ENTRIES),
            max_bytes: AtomicUsize::new(TAP_MAX_BYTES),
        }
    }
}

/// A consumer's end of the tap.
pub struct TapReceiver {
    rx: Receiver<Vec<TapEntry>>,
    pending: Arc<Pending>,
    /// Every version committed after this seq comes through the channel (until it ends);
    /// versions up to it must be read from the store.
    pub from_seq: u64,
}

/// The channel of a [`TapReceiver`] ended: the consumer fell too far behind (or another
/// subscribed, or the node is gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TapClosed;

impl TapReceiver {
    /// Waits up to `timeout` for the next group of committed versions.
    pub fn recv_timeout(&self, timeout: std::time::Duration) -> Result<Option<Vec<TapEntry>>, TapClosed> {
        match self.rx.recv_timeout(timeout) {
            Ok(v) => {
                self.release(&v);
                Ok(Some(v))
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Ok(None),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(TapClosed),
        }
    }

    /// The next group if one is there.
    pub fn try_recv(&self) -> Result<Option<Vec<TapEntry>>, TapClosed> {
        match self.rx.try_recv() {
            Ok(v) => {
                self.release(&v);
                Ok(Some(v))
            }
            Err(crossbeam_channel::TryRecvError::Empty) => Ok(None),
            Err(crossbeam_channel::TryRecvError::Disconnected) => Err(TapClosed),
        }
    }

    fn release(&self, v: &[TapEntry]) {
        let bytes: usize = v.iter().map(entry_bytes).sum();
        self.pending.entries.fetch_sub(v.len(), Ordering::AcqRel);
        self.pending.bytes.fetch_sub(bytes, Ordering::AcqRel);
    }
}

fn entry_bytes(e: &TapEntry) -> usize {
    e.data.len() + e.key.len() + 64
}

impl CommitTap {
    /// Subscribes the (one) consumer, replacing any earlier one (whose channel ends).
    pub fn subscribe(&self) -> TapReceiver {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (tx, rx) = crossbeam_channel::unbounded();
        let pending = Arc::new(Pending::default());
        inner.tx = Some(tx);
        inner.pending = pending.clone();
        self.active.store(true, Ordering::Release);
        TapReceiver { rx, pending, from_seq: inner.last_seq }
    }

    /// Sets how far behind the consumer may fall (versions, bytes) before the tap closes
    /// (default [`TAP_MAX_ENTRIES`], [`TAP_MAX_BYTES`]); tests make it small.
    pub fn set_limits(&self, entries: usize, bytes: usize) {
        self.max_entries.store(entries, Ordering::Relaxed);
        self.max_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Whether a consumer is subscribed (the writer builds entries only then).
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Times the consumer fell too far behind and the tap closed.
    pub fn overflows(&self) -> u64 {
        self.overflows.load(Ordering::Acquire)
    }

    /// Called by the writer after every commit, with the versions it committed (empty when no
    /// consumer is subscribed) and the store's last seq. Never blocks on the consumer.
    pub fn publish(&self, entries: Vec<TapEntry>, last_seq: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.last_seq = last_seq;
        if entries.is_empty() || inner.tx.is_none() {
            return;
        }
        let bytes: usize = entries.iter().map(entry_bytes).sum();
        let n = entries.len();
        let over = inner.pending.entries.load(Ordering::Acquire) + n > self.max_entries.load(Ordering::Relaxed)
            || inner.pending.bytes.load(Ordering::Acquire) + bytes > self.max_bytes.load(Ordering::Relaxed);
        if over {
            // Counted before the channel ends: a consumer that sees it end must find the
            // overflow counted.
            self.overflows.fetch_add(1, Ordering::Release);
            self.active.store(false, Ordering::Release);
            inner.tx = None;
            return;
        }
        inner.pending.entries.fetch_add(n, Ordering::AcqRel);
        inner.pending.bytes.fetch_add(bytes, Ordering::AcqRel);
        let sent = inner.tx.as_ref().is_some_and(|tx| tx.send(entries).is_ok());
        if !sent {
            // The consumer is gone.
            inner.tx = None;
            self.active.store(false, Ordering::Release);
        }
    }
}

/// The backup thread's part of a node's API.
pub trait BackupView: Send + Sync {
    /// `GET /v1/admin/backup`.
    fn status(&self) -> serde_json::Value;
    /// Lines of `/metrics` (Prometheus text format).
    fn metrics(&self) -> String;
}

/// The node's backup view, set once by the backup thread at start.
#[derive(Default)]
pub struct BackupCell(OnceLock<Arc<dyn BackupView>>);

impl BackupCell {
    pub fn set(&self, view: Arc<dyn BackupView>) -> bool {
        self.0.set(view).is_ok()
    }
    pub fn get(&self) -> Option<&Arc<dyn BackupView>> {
        self.0.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::Stamp;
    use std::time::Duration;

    fn row(seq: u64, bytes: usize) -> TapEntry {
        RecordRow {
            component: "c".into(),
            key: "k".into(),
            data: vec![0; bytes],
            tombstone: false,
            stamp: Stamp::new(seq, 0, "n"),
            origin: "n".into(),
            epoch: 0,
            seq,
        }
    }

    #[test]
    fn a_subscriber_gets_every_commit_after_its_start_in_order() {
        let tap = CommitTap::default();
        tap.publish(Vec::new(), 5);
        assert!(!tap.active());
        let rx = tap.subscribe();
        assert_eq!(rx.from_seq, 5);
        assert!(tap.active());
        tap.publish(vec![row(6, 1), row(7, 1)], 7);
        tap.publish(vec![row(8, 1)], 8);
        let seqs: Vec<u64> = std::iter::from_fn(|| rx.try_recv().ok().flatten()).flatten().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![6, 7, 8]);
        assert_eq!(rx.recv_timeout(Duration::from_millis(1)), Ok(None));
    }

    #[test]
    fn a_consumer_too_far_behind_is_cut_off_and_told() {
        let tap = CommitTap::default();
        let rx = tap.subscribe();
        let mut seq = 0;
        // Fill the bound without the consumer taking anything.
        while seq < TAP_MAX_ENTRIES as u64 {
            let group: Vec<TapEntry> = (0..1000).map(|i| row(seq + i + 1, 0)).collect();
            seq += 1000;
            tap.publish(group, seq);
        }
        assert_eq!(tap.overflows(), 0);
        assert!(tap.active());
        tap.publish(vec![row(seq + 1, 0)], seq + 1);
        assert_eq!(tap.overflows(), 1);
        assert!(!tap.active());
        // What was queued before the overflow still arrives, then the channel ends.
        let mut got = 0;
        loop {
            match rx.try_recv() {
                Ok(Some(v)) => got += v.len(),
                Ok(None) => panic!("the channel should end after the queued groups"),
                Err(TapClosed) => break,
            }
        }
        assert_eq!(got, TAP_MAX_ENTRIES);
        // A new subscription starts where the writer is.
        let rx = tap.subscribe();
        assert_eq!(rx.from_seq, seq + 1);
        tap.publish(vec![row(seq + 2, 0)], seq + 2);
        assert_eq!(rx.try_recv().ok().flatten().map(|v| v[0].seq), Some(seq + 2));
    }

    #[test]
    fn the_byte_bound_also_cuts_off() {
        let tap = CommitTap::default();
        let _rx = tap.subscribe();
        tap.publish(vec![row(1, TAP_MAX_BYTES / 2)], 1);
        assert_eq!(tap.overflows(), 0);
        tap.publish(vec![row(2, TAP_MAX_BYTES / 2 + 1)], 2);
        assert_eq!(tap.overflows(), 1);
    }
}
