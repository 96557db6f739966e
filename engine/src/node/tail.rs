//! The newest committed versions, kept in memory for replication's senders.
//!
//! A sender that keeps up reads the versions committed since its last batch from here instead
//! of querying the store on a plugin-pool thread: one thread hop and one query less between a
//! commit and the batch that carries it. The answer is the store's feed exactly: each key once,
//! at its latest version, in seq order. When the tail does not hold every version past the
//! position asked for (the sender fell behind, the node just started, a version was too large
//! to keep), it answers `None` and the sender reads the store.
//!
//! A node without peers keeps no tail (nothing would read it).
//!
//! Invariant: the versions held have contiguous seqs (a gap empties the tail first), so "the
//! first seq held is at most `after + 1`" proves that nothing past `after` is missing.

use std::collections::{HashMap, VecDeque};

use super::service::Change;

/// Versions kept at most.
pub const TAIL_RECORDS: usize = 8_192;
/// Bytes of stored data kept at most.
pub const TAIL_BYTES: usize = 8 << 20;

#[derive(Default)]
pub struct Tail {
    versions: VecDeque<Change>,
    bytes: usize,
}

impl Tail {
    /// Appends the versions of one commit (seqs ascending and contiguous).
    pub fn push(&mut self, committed: impl IntoIterator<Item = Change>) {
        for c in committed {
            if self.versions.back().is_some_and(|last| last.seq + 1 != c.seq) {
                self.versions.clear();
                self.bytes = 0;
            }
            let size = c.stored.data.len();
            if size > TAIL_BYTES / 4 {
                // Too large to keep: what follows cannot prove it is complete any more.
                self.versions.clear();
                self.bytes = 0;
                continue;
            }
            self.bytes += size;
            self.versions.push_back(c);
            while self.versions.len() > TAIL_RECORDS || self.bytes > TAIL_BYTES {
                match self.versions.pop_front() {
                    Some(old) => self.bytes -= old.stored.data.len(),
                    None => break,
                }
            }
        }
    }

    /// The feed after `after_seq` (each key once, at its latest version, in seq order, at most
    /// `limit`), of the components in `only` if given; `None` when the tail does not hold every
    /// version past `after_seq` or holds nothing newer than the store's `last_seq`.
    pub fn read(&self, after_seq: u64, limit: usize, only: Option<&[String]>, last_seq: u64) -> Option<Vec<Change>> {
        let first = self.versions.front()?.seq;
        let newest = self.versions.back()?.seq;
        if first > after_seq.saturating_add(1) || newest < last_seq {
            return None;
        }
        let skip = usize::try_from(after_seq.saturating_add(1).saturating_sub(first)).unwrap_or(usize::MAX).min(self.versions.len());
        let wanted = |c: &Change| only.is_none_or(|o| o.contains(&c.component));
        // The latest version of each key past `after_seq`.
        let mut latest: HashMap<(&str, &str), u64> = HashMap::new();
        for c in self.versions.range(skip..).filter(|c| wanted(c)) {
            latest.insert((c.component.as_str(), c.key.as_str()), c.seq);
        }
        Some(
            self.versions
                .range(skip..)
                .filter(|c| wanted(c) && latest.get(&(c.component.as_str(), c.key.as_str())) == Some(&c.seq))
                .take(limit)
                .cloned()
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::{Stamp, Stored};

    fn change(seq: u64, component: &str, key: &str, size: usize) -> Change {
        Change {
            seq,
            component: component.to_owned(),
            key: key.to_owned(),
            stored: Stored { data: vec![b'x'; size], tombstone: false },
            stamp: Stamp::new(seq, 0, "a"),
            origin: "a".to_owned(),
            epoch: 1,
            doc: None,
        }
    }

    fn seqs(v: &Option<Vec<Change>>) -> Option<Vec<u64>> {
        v.as_ref().map(|v| v.iter().map(|c| c.seq).collect())
    }

    #[test]
    fn answers_like_the_store_feed_each_key_once_at_its_latest_version() {
        let mut t = Tail::default();
        t.push([change(1, "trunks", "a", 3), change(2, "trunks", "b", 3), change(3, "crm", "a", 3)]);
        t.push([change(4, "trunks", "a", 3), change(5, "trunks", "c", 3)]);
        assert_eq!(seqs(&t.read(0, 10, None, 5)), Some(vec![2, 3, 4, 5]));
        assert_eq!(seqs(&t.read(2, 10, None, 5)), Some(vec![3, 4, 5]));
        assert_eq!(seqs(&t.read(0, 2, None, 5)), Some(vec![2, 3]));
        assert_eq!(seqs(&t.read(0, 10, Some(&["crm".to_owned()]), 5)), Some(vec![3]));
        assert_eq!(seqs(&t.read(5, 10, None, 5)), Some(vec![]));
        // The store has committed past what the tail holds: read the store.
        assert_eq!(seqs(&t.read(5, 10, None, 6)), None);
    }

    #[test]
    fn a_position_before_the_first_version_held_or_a_gap_sends_the_reader_to_the_store() {
        let mut t = Tail::default();
        t.push((10..20).map(|s| change(s, "trunks", &format!("k{s}"), 1)));
        assert_eq!(seqs(&t.read(8, 100, None, 19)), None, "seq 9 is not held");
        assert_eq!(seqs(&t.read(9, 100, None, 19)).map(|v| v.len()), Some(10));
        // A gap (versions committed another way) empties the tail: only what follows is held.
        t.push([change(25, "trunks", "k25", 1)]);
        assert_eq!(seqs(&t.read(19, 100, None, 25)), None);
        assert_eq!(seqs(&t.read(24, 100, None, 25)), Some(vec![25]));
        let mut empty = Tail::default();
        assert_eq!(seqs(&empty.read(0, 10, None, 0)), None);
        empty.push([change(1, "trunks", "big", TAIL_BYTES)]);
        assert_eq!(seqs(&empty.read(0, 10, None, 1)), None, "a version too large to keep is not held");
    }

    #[test]
    fn holds_a_bounded_number_of_versions_and_bytes() {
        let mut t = Tail::default();
        t.push((1..=(TAIL_RECORDS as u64 + 100)).map(|s| change(s, "trunks", "k", 1)));
        assert_eq!(t.versions.len(), TAIL_RECORDS);
        assert_eq!(t.versions.front().map(|c| c.seq), Some(101));
        let mut t = Tail::default();
        let size = TAIL_BYTES / 10;
        t.push((1..=20).map(|s| change(s, "trunks", &format!("k{s}"), size)));
        assert!(t.bytes <= TAIL_BYTES);
        assert_eq!(t.versions.len(), 10);
        assert_eq!(seqs(&t.read(10, 100, None, 20)).map(|v| v.len()), Some(10));
    }
}
