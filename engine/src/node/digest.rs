//! A component's convergence digest, kept up to date as writes commit.
//!
//! The digest is the sum, modulo 2^256, of the SHA-256 of every live record of the component
//! (its key and stored bytes, each framed by its length). A sum does not depend on the order
//! the records were written in, so two nodes holding the same live versions have the same
//! digest, and it changes by one subtraction and one addition when a record is replaced: the
//! writer maintains it in the same step as the commit instead of reading every record again.
//! Deletions (tombstones) count as absent records: each node purges its tombstones on its own
//! schedule, and a store that kept a tombstone a little longer holds the same data. It detects
//! divergence (a record missing, extra or different on one node); it is not a defence against
//! someone crafting records to collide, which needs a node's credentials anyway.

use sha2::{Digest as _, Sha256};

/// The running sum of a component's record hashes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetDigest([u64; 4]);

/// One live record's hash as four little-endian 64-bit limbs.
fn record_hash(key: &str, data: &[u8]) -> [u64; 4] {
    let mut h = Sha256::new();
    h.update((key.len() as u64).to_le_bytes());
    h.update(key.as_bytes());
    h.update((data.len() as u64).to_le_bytes());
    h.update(data);
    let bytes = h.finalize();
    let mut limbs = [0u64; 4];
    for (limb, chunk) in limbs.iter_mut().zip(bytes.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        *limb = u64::from_le_bytes(b);
    }
    limbs
}

impl SetDigest {
    /// Adds a record (a tombstone changes nothing).
    pub fn add(&mut self, key: &str, data: &[u8], tombstone: bool) {
        if !tombstone {
            self.add_limbs(record_hash(key, data));
        }
    }

    /// Takes a record out (it must have been added; a tombstone changes nothing): adds the
    /// two's complement of its hash.
    pub fn remove(&mut self, key: &str, data: &[u8], tombstone: bool) {
        if !tombstone {
            let mut negated = SetDigest(record_hash(key, data).map(|limb| !limb));
            negated.add_limbs([1, 0, 0, 0]);
            self.add_limbs(negated.0);
        }
    }

    /// Moves the digest by the difference `to - from` (both sums over sets of records): what a
    /// digest kept from `from` becomes once `from` is found to be `to`.
    pub fn shift(&mut self, from: SetDigest, to: SetDigest) {
        let mut negated = SetDigest(from.0.map(|limb| !limb));
        negated.add_limbs([1, 0, 0, 0]);
        self.add_limbs(negated.0);
        self.add_limbs(to.0);
    }

    /// Adds a 256-bit number, modulo 2^256.
    fn add_limbs(&mut self, r: [u64; 4]) {
        let mut carry = false;
        for (a, b) in self.0.iter_mut().zip(r) {
            let (s1, c1) = a.overflowing_add(b);
            let (s2, c2) = s1.overflowing_add(u64::from(carry));
            *a = s2;
            carry = c1 || c2;
        }
    }

    /// 64 hex digits, most significant first. A component without records has the digest of
    /// zeros.
    pub fn hex(&self) -> String {
        let mut out = String::with_capacity(64);
        for limb in self.0.iter().rev() {
            out.push_str(&format!("{limb:016x}"));
        }
        out
    }

    /// Reads what [`SetDigest::hex`] wrote.
    pub fn from_hex(hex: &str) -> Option<SetDigest> {
        if hex.len() != 64 || !hex.is_ascii() {
            return None;
        }
        let mut limbs = [0u64; 4];
        for (i, limb) in limbs.iter_mut().rev().enumerate() {
            *limb = u64::from_str_radix(hex.get(i * 16..(i + 1) * 16)?, 16).ok()?;
        }
        Some(SetDigest(limbs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifting_by_a_difference_corrects_a_digest_that_moved_on() {
        let (mut kept, mut actual) = (SetDigest::default(), SetDigest::default());
        kept.add("k1", b"a", false);
        actual.add("k1", b"b", false);
        // The digest moved on from the wrong starting point by a write of k2.
        let mut moved = kept;
        moved.add("k2", b"c", false);
        moved.shift(kept, actual);
        let mut expected = actual;
        expected.add("k2", b"c", false);
        assert_eq!(moved, expected);
    }

    #[test]
    fn hex_reads_back() {
        let mut d = SetDigest::default();
        d.add("k", b"v", false);
        assert_eq!(SetDigest::from_hex(&d.hex()), Some(d));
        assert_eq!(SetDigest::from_hex(&SetDigest::default().hex()), Some(SetDigest::default()));
        for bad in ["", "00", &"g".repeat(64), &"0".repeat(65), &"é".repeat(32)] {
            assert_eq!(SetDigest::from_hex(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_sum_ignores_order_and_removing_undoes_adding() {
        let records: Vec<(String, Vec<u8>, bool)> =
            (0..200).map(|i| (format!("k{i}"), format!("v{}", i * 7).into_bytes(), i % 5 == 0)).collect();
        let mut forward = SetDigest::default();
        for (k, d, t) in &records {
            forward.add(k, d, *t);
        }
        let mut backward = SetDigest::default();
        for (k, d, t) in records.iter().rev() {
            backward.add(k, d, *t);
        }
        assert_eq!(forward, backward);
        assert_ne!(forward, SetDigest::default());

        // Replacing a record is a removal and an addition; undoing every addition gives zero.
        let mut replaced = forward;
        replaced.remove("k3", b"v21", false);
        replaced.add("k3", b"other", false);
        assert_ne!(replaced, forward);
        replaced.remove("k3", b"other", false);
        replaced.add("k3", b"v21", false);
        assert_eq!(replaced, forward);
        for (k, d, t) in &records {
            forward.remove(k, d, *t);
        }
        assert_eq!(forward, SetDigest::default());
        assert_eq!(forward.hex(), "0".repeat(64));
    }

    #[test]
    fn tombstones_count_as_absent_and_the_framing_counts() {
        let mut a = SetDigest::default();
        a.add("k", b"v", false);
        let mut b = SetDigest::default();
        b.add("k", b"v", true);
        assert_ne!(a, b);
        assert_eq!(b, SetDigest::default());
        b.remove("k", b"v", true);
        assert_eq!(b, SetDigest::default());
        // "ab" + "c" is not "a" + "bc": lengths are framed.
        let mut c = SetDigest::default();
        c.add("ab", b"c", false);
        let mut d = SetDigest::default();
        d.add("a", b"bc", false);
        assert_ne!(c, d);
    }

    #[test]
    fn carries_cross_limbs() {
        let mut s = SetDigest([u64::MAX, u64::MAX, 0, 0]);
        let before = s;
        s.add("x", b"y", false);
        s.remove("x", b"y", false);
        assert_eq!(s, before);
    }
}
