//! A plugin for the sandbox tests. It behaves like a simple last-writer-wins register, except
//! that the key of a call selects a misbehaviour:
//!
//! | key      | what the call does                                  |
//! |----------|-----------------------------------------------------|
//! | `loop`   | spins forever                                       |
//! | `memory` | allocates until the memory cap stops it             |
//! | `trap`   | panics                                              |
//! | `big`    | returns 8 MiB                                       |
//! | `stack`  | recurses until the stack overflows                  |
//! | `file`   | reads /etc/passwd                                   |
//! | `clock`  | returns the wall clock it sees (serialize only)     |
//! | `random` | returns 16 "random" bytes it sees (serialize only)  |
//! | `slow`   | burns about 20 million fuel, then answers normally  |
//! | `unmergeable` | behaves, but `merge` refuses every pair        |
//! | `merge-trap`  | behaves, but `merge` panics                    |
//! | other    | behaves                                             |
//!
//! Version 2.0.0 (the `hostile-v2` crate, built from this file) has a merge that keeps its first
//! argument: not commutative, which the conformance kit must catch.

use tandem_sdk::{Example, Host, Info, Op, Plugin, Stamp, Stored, Violation, WriteError};

pub struct Hostile;

fn misbehave(key: &str) -> Option<Vec<u8>> {
    match key {
        "loop" => {
            let mut x: u64 = 1;
            loop {
                x = std::hint::black_box(x.wrapping_mul(3).wrapping_add(1));
            }
        }
        "memory" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "trap" => panic!("deliberate panic"),
        "big" => Some(vec![b'x'; 8 << 20]),
        "stack" => Some(vec![recurse(std::hint::black_box(1))]),
        "file" => Some(std::fs::read("/etc/passwd").unwrap_or_else(|e| format!("read failed: {e}").into_bytes())),
        "slow" => {
            let mut x: u64 = 1;
            for i in 0..2_000_000u64 {
                x = std::hint::black_box(x.wrapping_mul(i | 1));
            }
            std::hint::black_box(x);
            None
        }
        _ => None,
    }
}

#[allow(unconditional_recursion)]
fn recurse(n: u64) -> u8 {
    let buf = std::hint::black_box([n as u8; 256]);
    recurse(n + u64::from(buf[3])).wrapping_add(buf[7])
}

fn encode(stamp: &Stamp, doc: &str) -> Vec<u8> {
    format!("{:020}|{:010}|{}|{}", stamp.physical, stamp.logical, stamp.node, doc).into_bytes()
}

impl Plugin for Hostile {
    fn describe() -> Info {
        Info {
            component: "hostile".to_owned(),
            plugin_version: env!("CARGO_PKG_VERSION").to_owned(),
            schema_version: 1,
            description: "misbehaves on demand (tests only)".to_owned(),
            shape: "custom".to_owned(),
            examples: vec![Example { key: "ok".to_owned(), input: "{\"v\":1}".to_owned() }],
            retention: None,
        }
    }

    fn serialize(key: &str, op: Op, _prior: Option<&[u8]>, stamp: &Stamp) -> Result<Stored, WriteError> {
        if key == "clock" {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(u128::MAX);
            return Ok(Stored { data: now.to_string().into_bytes(), tombstone: false });
        }
        if key == "random" {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(7);
            return Ok(Stored { data: h.finish().to_string().into_bytes(), tombstone: false });
        }
        if let Some(out) = misbehave(key) {
            return Ok(Stored { data: out, tombstone: false });
        }
        match op {
            Op::Put(doc) => Ok(Stored { data: encode(stamp, &doc), tombstone: false }),
            Op::Delete => Ok(Stored { data: encode(stamp, ""), tombstone: true }),
        }
    }

    fn deserialize(key: &str, data: &[u8]) -> Result<Option<String>, String> {
        if let Some(out) = misbehave(key) {
            return Ok(Some(String::from_utf8_lossy(&out).into_owned()));
        }
        let text = std::str::from_utf8(data).map_err(|e| e.to_string())?;
        let doc = text.splitn(4, '|').nth(3).ok_or("not a stored version")?;
        if text.len() < 32 || !text.as_bytes()[..20].iter().all(u8::is_ascii_digit) {
            return Err("not a stored version".to_owned());
        }
        Ok(if doc.is_empty() { None } else { Some(doc.to_owned()) })
    }

    fn merge(key: &str, a: &[u8], b: &[u8]) -> Result<Stored, String> {
        if let Some(out) = misbehave(key) {
            return Ok(Stored { data: out, tombstone: false });
        }
        if key == "unmergeable" {
            return Err("these two versions do not merge (deliberately)".to_owned());
        }
        if key == "merge-trap" {
            panic!("deliberate panic in merge");
        }
        for x in [a, b] {
            Self::deserialize(key, x)?;
        }
        let left_biased = env!("CARGO_PKG_VERSION") == "2.0.0";
        let winner = if left_biased || a >= b { a } else { b };
        let tombstone = Self::deserialize(key, winner)?.is_none();
        Ok(Stored { data: winner.to_vec(), tombstone })
    }

    fn validate(key: &str, data: &[u8], host: &dyn Host) -> Result<(), Vec<Violation>> {
        if let Some(out) = misbehave(key) {
            return Err(vec![Violation::new("", "hostile", String::from_utf8_lossy(&out).into_owned())]);
        }
        if key == "lookup" && host.lookup("trunks", "carrier-main").is_none() {
            return Err(vec![Violation::new("", "reference", "trunk carrier-main not found")]);
        }
        Self::deserialize(key, data).map(|_| ()).map_err(|e| vec![Violation::new("", "schema", e)])
    }
}

tandem_sdk::export_plugin!(Hostile);
