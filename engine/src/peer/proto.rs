//! The preamble and the messages of the peer protocol.
//!
//! After TLS, the dialer sends a preamble frame `TANDEM-PEER | version: u32 BE`; the listener
//! answers with its own preamble followed by a status byte (0: accepted, 1: refused) and, when
//! refused, a UTF-8 reason naming both versions. The preamble's layout never changes, so any two
//! versions can tell each other apart. Then each side sends [`Msg::Hello`] (postcard-encoded from
//! here on).

use serde::{Deserialize, Serialize};

use super::PROTOCOL_VERSION;
use super::frame::FrameError;

const MAGIC: &[u8; 11] = b"TANDEM-PEER";

/// The dialer's preamble.
pub fn preamble(version: u32) -> Vec<u8> {
    let mut v = MAGIC.to_vec();
    v.extend_from_slice(&version.to_be_bytes());
    v
}

/// Parses a preamble: the version it announces.
pub fn parse_preamble(bytes: &[u8]) -> Result<u32, String> {
    if bytes.len() < MAGIC.len() + 4 || &bytes[..MAGIC.len()] != MAGIC {
        return Err("not a Tandem peer (no protocol preamble)".into());
    }
    let v = &bytes[MAGIC.len()..MAGIC.len() + 4];
    Ok(u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
}

/// The listener's answer: its preamble, then accepted or the reason of the refusal.
pub fn answer(version: u32, refusal: Option<&str>) -> Vec<u8> {
    let mut v = preamble(version);
    match refusal {
        None => v.push(0),
        Some(r) => {
            v.push(1);
            v.extend_from_slice(r.as_bytes());
        }
    }
    v
}

/// Parses the listener's answer: `Ok(version)` when accepted, `Err(reason)` otherwise.
pub fn parse_answer(bytes: &[u8]) -> Result<u32, String> {
    let version = parse_preamble(bytes)?;
    match bytes.get(MAGIC.len() + 4) {
        Some(0) => Ok(version),
        Some(_) => Err(String::from_utf8_lossy(&bytes[MAGIC.len() + 5..]).into_owned()),
        None => Err("truncated preamble answer".into()),
    }
}

/// The refusal of a peer that speaks another version.
pub fn version_refusal(us: &str, ours: u32, theirs: u32) -> String {
    format!("incompatible peer protocol: node {us} speaks tandem peer protocol {ours}, the peer speaks version {theirs}")
}

/// Whether two versions can talk (only equal versions, for now).
pub fn compatible(a: u32, b: u32) -> bool {
    a == b && a == PROTOCOL_VERSION
}

/// What a node says about one of its components.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentInfo {
    pub name: String,
    /// `warm` or `hot` (cold components are not replicated over links).
    pub mode: String,
    /// sha256 of the plugin's code.
    pub digest: String,
    pub plugin_version: String,
    pub schema_version: u32,
    /// The plugin's limits, rendered: they are part of the component's definition.
    pub limits: String,
}

/// The handshake message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub node: String,
    pub epoch: u64,
    /// The node's HTTP API address (where a standby sends writers).
    pub api: Option<String>,
    /// Who this node thinks is the warm primary.
    pub primary: Option<String>,
    /// The last seq of its change feed.
    pub last_seq: u64,
    pub components: Vec<ComponentInfo>,
}

/// One version of a record on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireChange {
    /// Its position in the sender's feed.
    pub seq: u64,
    pub component: String,
    pub key: String,
    #[serde(with = "bytes")]
    pub data: Vec<u8>,
    pub tombstone: bool,
    pub physical: u64,
    pub logical: u32,
    pub stamp_node: String,
    pub origin: String,
    /// The reader's document of a live version, as the sender's plugin (the same code: digests
    /// match on every flowing component) read it: a warm receiver keeps it instead of calling
    /// its plugin again. `None` for tombstones and versions read back from the store.
    pub doc: Option<String>,
}

/// A batch of changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// The sender's epoch (fencing: a warm receiver refuses batches of an older epoch).
    pub epoch: u64,
    /// The sender's feed position this batch brings the receiver to (changes of components it
    /// does not send are skipped, so this may be past the last change).
    pub up_to: u64,
    /// The priority lane: high-priority changes are sent ahead of the feed order; the sender
    /// has sent every high-priority change up to here (`>= up_to`).
    pub high: u64,
    pub changes: Vec<WireChange>,
}

/// Messages after the preamble.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    Hello(Hello),
    /// The dialer asks for the feed after its last applied position.
    Subscribe {
        after_seq: u64,
        components: Vec<String>,
    },
    Batch(Batch),
    /// The receiver has applied (on disk) everything up to `seq`, and the high-priority
    /// components up to `high`.
    Ack {
        seq: u64,
        high: u64,
        epoch: u64,
    },
    Heartbeat {
        last_seq: u64,
        epoch: u64,
        /// From the streaming side: (component, convergence digest) of the components it sends
        /// on this link, as of `last_seq`, so that the follower can tell, once it applied that
        /// far, whether the two stores agree. Empty from the following side.
        digests: Vec<(String, String)>,
        /// From the following side: the components whose digests it found lastingly different
        /// from the streaming side's (its divergence alarms), so that both nodes show them.
        /// Empty from the streaming side.
        diverged: Vec<String>,
    },
    /// A request of the failover coordinator (JSON of `failover::Request`), answered by one
    /// [`Msg::FailoverReply`].
    Failover(#[serde(with = "bytes")] Vec<u8>),
    FailoverReply(#[serde(with = "bytes")] Vec<u8>),
    /// The sender refuses to go on (reason for the log and status).
    Refuse {
        reason: String,
    },
    /// Cold backup: a snapshot file offered to the listener's inbox, instead of a subscription
    /// (see `crate::backup::peer`). Answered by `SnapshotReady`, `SnapshotStored` (already
    /// there) or `Refuse`.
    SnapshotOffer {
        name: String,
        size: u64,
        /// sha256 of the whole file, hex.
        sha256: String,
    },
    /// The listener takes the offered file, from byte `from` on: what it holds of it already,
    /// from a transfer of the same file (name and sha256) that broke off.
    SnapshotReady {
        from: u64,
    },
    /// A piece of the file, at the offset the receiver expects.
    SnapshotChunk {
        offset: u64,
        #[serde(with = "bytes")]
        bytes: Vec<u8>,
    },
    /// The whole file was sent.
    SnapshotDone,
    /// The listener checked the file and stored it under its name.
    SnapshotStored {
        path: String,
        last_seq: u64,
        records: u64,
    },
}

impl Msg {
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        postcard::to_allocvec(self).map_err(|e| FrameError::Decode(format!("encoding: {e}")))
    }
    /// About the encoded size: a batch's changes' bytes, so that its buffer grows at most once.
    fn size_hint(&self) -> usize {
        match self {
            Msg::Batch(b) => {
                64 + b
                    .changes
                    .iter()
                    .map(|c| {
                        48 + c.component.len()
                            + c.key.len()
                            + c.data.len()
                            + c.stamp_node.len()
                            + c.origin.len()
                            + c.doc.as_ref().map_or(0, String::len)
                    })
                    .sum::<usize>()
            }
            Msg::SnapshotChunk { bytes, .. } => 32 + bytes.len(),
            Msg::Failover(b) | Msg::FailoverReply(b) => 16 + b.len(),
            _ => 256,
        }
    }

    /// Encodes the message as a frame, written once into the frame's buffer.
    pub fn encode_frame(&self, compress: bool) -> Result<Vec<u8>, FrameError> {
        super::frame::encode_with(self.size_hint(), compress, |out| {
            let buf = std::mem::take(out);
            *out = postcard::to_extend(self, buf).map_err(|e| FrameError::Decode(format!("encoding: {e}")))?;
            Ok(())
        })
    }
    pub fn decode(bytes: &[u8]) -> Result<Msg, FrameError> {
        postcard::from_bytes(bytes).map_err(|e| FrameError::Decode(e.to_string()))
    }
}

/// A byte vector encoded as bytes (one copy) rather than as a sequence of `u8` (one call per
/// byte). postcard writes both the same way (a varint length, then the bytes), so the wire is
/// unchanged.
mod bytes {
    use serde::{Deserializer, Serializer, de};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Bytes;
        impl<'de> de::Visitor<'de> for Bytes {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
                while let Some(b) = seq.next_element()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_byte_buf(Bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![".{0,12}", "[a-z0-9-]{1,24}"]
    }

    fn change() -> impl Strategy<Value = WireChange> {
        (
            (any::<u64>(), text(), text(), vec(any::<u8>(), 0..300), any::<bool>()),
            (any::<u64>(), any::<u32>(), text(), text(), proptest::option::of(".{0,40}")),
        )
            .prop_map(|((seq, component, key, data, tombstone), (physical, logical, stamp_node, origin, doc))| WireChange {
                seq,
                component,
                key,
                data,
                tombstone,
                physical,
                logical,
                stamp_node,
                origin,
                doc,
            })
    }

    fn component() -> impl Strategy<Value = ComponentInfo> {
        (text(), text(), text(), text(), any::<u32>(), text()).prop_map(|(name, mode, digest, plugin_version, schema_version, limits)| {
            ComponentInfo { name, mode, digest, plugin_version, schema_version, limits }
        })
    }

    /// Every kind of message, with arbitrary contents.
    fn message() -> impl Strategy<Value = Msg> {
        prop_oneof![
            (text(), any::<u64>(), proptest::option::of(text()), proptest::option::of(text()), any::<u64>(), vec(component(), 0..4))
                .prop_map(|(node, epoch, api, primary, last_seq, components)| Msg::Hello(Hello {
                    node,
                    epoch,
                    api,
                    primary,
                    last_seq,
                    components
                })),
            (any::<u64>(), vec(text(), 0..4)).prop_map(|(after_seq, components)| Msg::Subscribe { after_seq, components }),
            (any::<u64>(), any::<u64>(), any::<u64>(), vec(change(), 0..6)).prop_map(|(epoch, up_to, high, changes)| Msg::Batch(Batch {
                epoch,
                up_to,
                high,
                changes
            })),
            (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(seq, high, epoch)| Msg::Ack { seq, high, epoch }),
            (any::<u64>(), any::<u64>(), vec((text(), text()), 0..4), vec(text(), 0..4))
                .prop_map(|(last_seq, epoch, digests, diverged)| Msg::Heartbeat { last_seq, epoch, digests, diverged }),
            vec(any::<u8>(), 0..200).prop_map(Msg::Failover),
            vec(any::<u8>(), 0..200).prop_map(Msg::FailoverReply),
            text().prop_map(|reason| Msg::Refuse { reason }),
            (text(), any::<u64>(), text()).prop_map(|(name, size, sha256)| Msg::SnapshotOffer { name, size, sha256 }),
            any::<u64>().prop_map(|from| Msg::SnapshotReady { from }),
            (any::<u64>(), vec(any::<u8>(), 0..300)).prop_map(|(offset, bytes)| Msg::SnapshotChunk { offset, bytes }),
            Just(Msg::SnapshotDone),
            (text(), any::<u64>(), any::<u64>()).prop_map(|(path, last_seq, records)| Msg::SnapshotStored { path, last_seq, records }),
        ]
    }

    proptest! {
        #[test]
        fn every_message_round_trips_in_both_encodings(m in message(), compress in any::<bool>()) {
            let bytes = m.encode().expect("encode");
            prop_assert_eq!(&Msg::decode(&bytes).expect("decode"), &m);
            // The frame written in place carries the same bytes.
            let frame = m.encode_frame(compress).expect("frame");
            prop_assert_eq!(frame, super::super::frame::encode(&bytes, compress).expect("encode"));
        }

        /// What an authenticated peer with a bug (or a hostile one) could put in a frame that
        /// passes its checksum: decoding answers a message or an error, never a panic.
        #[test]
        fn a_damaged_message_decodes_to_a_message_or_an_error(
            m in message(),
            edits in vec((any::<proptest::sample::Index>(), any::<u8>()), 1..6),
            cut in any::<proptest::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let mut bytes = m.encode().expect("encode");
            for (at, v) in edits {
                let i = at.index(bytes.len());
                bytes[i] = v;
            }
            if truncate {
                bytes.truncate(cut.index(bytes.len()));
            }
            if let Ok(decoded) = Msg::decode(&bytes) {
                // Whatever it decoded to is a message that encodes again.
                prop_assert!(decoded.encode().is_ok());
            }
        }

        #[test]
        fn arbitrary_bytes_are_a_message_or_an_error(bytes in vec(any::<u8>(), 0..400)) {
            let _ = Msg::decode(&bytes);
        }

        #[test]
        fn any_preamble_or_answer_parses_or_is_refused(bytes in vec(any::<u8>(), 0..40), version in any::<u32>(), reason in ".{0,30}") {
            // A valid one is read back whatever follows it.
            let mut pre = preamble(version);
            prop_assert_eq!(parse_preamble(&pre), Ok(version));
            pre.extend_from_slice(&bytes);
            prop_assert_eq!(parse_preamble(&pre), Ok(version));
            prop_assert_eq!(parse_answer(&answer(version, Some(&reason))), Err(reason));
            let _ = parse_preamble(&bytes);
            let _ = parse_answer(&bytes);
        }
    }

    #[test]
    fn preamble_and_refusal_name_both_versions() {
        assert_eq!(parse_preamble(&preamble(7)), Ok(7));
        assert!(parse_preamble(b"GET / HTTP/1.1").is_err());
        let r = version_refusal("a", 1, 2);
        assert_eq!(parse_answer(&answer(1, Some(&r))), Err(r.clone()));
        assert!(r.contains("protocol 1") && r.contains("version 2"));
        assert_eq!(parse_answer(&answer(1, None)), Ok(1));
    }

    #[test]
    fn messages_round_trip() {
        let m = Msg::Batch(Batch {
            epoch: 3,
            up_to: 9,
            high: 9,
            changes: vec![WireChange {
                seq: 9,
                component: "trunks".into(),
                key: "k".into(),
                data: vec![1, 2, 3],
                tombstone: false,
                physical: 5,
                logical: 1,
                stamp_node: "a".into(),
                origin: "a".into(),
                doc: Some("{\"host\":\"h\"}".into()),
            }],
        });
        assert_eq!(Msg::decode(&m.encode().expect("encode")).expect("decode"), m);
    }

    #[test]
    fn record_bytes_keep_the_wire_format_of_a_byte_sequence() {
        // What earlier builds of this protocol version sent: `data` as a sequence of u8.
        #[derive(Serialize, Deserialize)]
        struct AsSequence {
            data: Vec<u8>,
        }
        #[derive(Serialize, Deserialize)]
        struct AsBytes {
            #[serde(with = "bytes")]
            data: Vec<u8>,
        }
        let data: Vec<u8> = (0..=255u8).chain(0..200).collect();
        let old = postcard::to_allocvec(&AsSequence { data: data.clone() }).expect("encode");
        let new = postcard::to_allocvec(&AsBytes { data: data.clone() }).expect("encode");
        assert_eq!(old, new);
        assert_eq!(postcard::from_bytes::<AsBytes>(&old).expect("decode").data, data);
        assert_eq!(postcard::from_bytes::<AsSequence>(&new).expect("decode").data, data);
    }

    #[test]
    fn snapshot_messages_round_trip() {
        for m in [
            Msg::SnapshotOffer { name: "x.tsnap".into(), size: 9, sha256: "ab".repeat(32) },
            Msg::SnapshotReady { from: 3 },
            Msg::SnapshotChunk { offset: 4, bytes: vec![1, 2, 3] },
            Msg::SnapshotDone,
            Msg::SnapshotStored { path: "/i/x.tsnap".into(), last_seq: 7, records: 3 },
        ] {
            assert_eq!(Msg::decode(&m.encode().expect("encode")).expect("decode"), m);
        }
    }

    #[test]
    fn a_message_encoded_in_place_is_the_frame_of_its_encoding() {
        let change = |i: u64| WireChange {
            seq: i,
            component: "trunks".into(),
            key: format!("k{i}"),
            data: vec![7; 700],
            tombstone: false,
            physical: 1_700_000_000_000 + i,
            logical: 0,
            stamp_node: "a".into(),
            origin: "a".into(),
            doc: Some("{\"host\": \"h\"}".into()),
        };
        let batch = Msg::Batch(Batch { epoch: 3, up_to: 100, high: 100, changes: (0..100).map(change).collect() });
        for m in [batch, Msg::SnapshotDone, Msg::Ack { seq: 1, high: 1, epoch: 1 }] {
            for compress in [false, true] {
                let frame = m.encode_frame(compress).expect("frame");
                assert_eq!(frame, super::super::frame::encode(&m.encode().expect("encode"), compress).expect("encode"));
            }
        }
    }
}
