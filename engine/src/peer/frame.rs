//! Frames: `len: u32 BE | crc32: u32 BE | flags: u8 | payload`. `len` counts flags and
//! payload; the CRC covers them. Flag bit 0: the payload is zstd-compressed.

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// Largest frame accepted (after compression).
pub const MAX_FRAME: usize = 64 << 20;
/// Largest payload after decompression.
pub const MAX_PAYLOAD: usize = 256 << 20;
const FLAG_ZSTD: u8 = 1;

/// Why reading or writing a frame failed. Any of these resets the link.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("the peer closed the link")]
    Closed,
    #[error("link i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("corrupted frame: checksum {got:08x}, computed {computed:08x}; the link is reset and the frame not applied")]
    Checksum { got: u32, computed: u32 },
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME}")]
    TooLarge(usize),
    #[error("undecodable frame: {0}")]
    Decode(String),
}

impl FrameError {
    /// A stable code for status and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            FrameError::Closed => "closed",
            FrameError::Io(_) => "io",
            FrameError::Checksum { .. } => "checksum",
            FrameError::TooLarge(_) => "too_large",
            FrameError::Decode(_) => "decode",
        }
    }
}

/// Encodes a frame (header and body) into bytes.
pub fn encode(payload: &[u8], compress: bool) -> Result<Vec<u8>, FrameError> {
    encode_with(payload.len(), compress, |out| {
        out.extend_from_slice(payload);
        Ok(())
    })
}

/// zstd's level for frames on `geo` links.
const LEVEL: i32 = 3;

thread_local! {
    // zstd contexts, made once per thread rather than once per frame (a compression context is
    // about a megabyte to allocate and set up). Frames are encoded and read on the runtime's
    // threads; each context is reset by every call.
    static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> = const { std::cell::RefCell::new(None) };
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with this thread's context in `slot`, made by `make` on the thread's first use.
fn with_context<T, R>(
    slot: &'static std::thread::LocalKey<std::cell::RefCell<Option<T>>>,
    make: impl FnOnce() -> std::io::Result<T>,
    f: impl FnOnce(&mut T) -> std::io::Result<R>,
) -> std::io::Result<R> {
    slot.with(|slot| {
        let mut slot = slot.borrow_mut();
        let context = match slot.as_mut() {
            Some(c) => c,
            None => slot.insert(make()?),
        };
        f(context)
    })
}

/// Compresses a payload with this thread's context (the frame declares its size).
fn zstd_compress(payload: &[u8]) -> std::io::Result<Vec<u8>> {
    with_context(&COMPRESSOR, || zstd::bulk::Compressor::new(LEVEL), |c| c.compress(payload))
}

/// Header bytes before the payload: `len`, `crc32`, `flags`.
const HEADER: usize = 9;

/// Encodes a frame whose payload `fill` appends to the buffer it is given (about `size_hint`
/// bytes): the payload is written once, in place behind the header, not copied into the frame.
pub fn encode_with(
    size_hint: usize,
    compress: bool,
    fill: impl FnOnce(&mut Vec<u8>) -> Result<(), FrameError>,
) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::with_capacity(HEADER + size_hint);
    out.resize(HEADER, 0);
    fill(&mut out)?;
    let mut flags = 0;
    if compress && out.len() - HEADER > 256 {
        let body = zstd_compress(&out[HEADER..])?;
        out.truncate(HEADER);
        out.extend_from_slice(&body);
        flags = FLAG_ZSTD;
    }
    // `len` counts the flags and the body.
    let len = out.len() - (HEADER - 1);
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    out[HEADER - 1] = flags;
    let crc = crc32fast::hash(&out[HEADER - 1..]);
    out[..4].copy_from_slice(&u32::try_from(len).map_err(|_| FrameError::TooLarge(len))?.to_be_bytes());
    out[4..8].copy_from_slice(&crc.to_be_bytes());
    Ok(out)
}

/// Writes one frame and flushes.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, payload: &[u8], compress: bool) -> Result<(), FrameError> {
    write_encoded(w, &encode(payload, compress)?).await
}

/// Writes an encoded frame ([`encode_with`]) and flushes.
pub async fn write_encoded<W: AsyncWrite + Unpin>(w: &mut W, frame: &[u8]) -> Result<(), FrameError> {
    w.write_all(frame).await?;
    w.flush().await?;
    Ok(())
}

/// A frame's payload, read into the buffer the frame was read into (no copy to drop the flags).
#[derive(Debug)]
pub struct Payload {
    buf: Vec<u8>,
    start: usize,
}

impl std::ops::Deref for Payload {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.buf.get(self.start..).unwrap_or_default()
    }
}

/// Reads one frame and checks it; returns the (decompressed) payload.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Payload, FrameError> {
    let mut header = [0u8; 8];
    match r.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let got = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    if len == 0 || len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    match r.read_exact(&mut body).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let computed = crc32fast::hash(&body);
    if computed != got {
        return Err(FrameError::Checksum { got, computed });
    }
    let flags = body[0];
    if flags & FLAG_ZSTD != 0 { Ok(Payload { buf: decompress(&body[1..])?, start: 0 }) } else { Ok(Payload { buf: body, start: 1 }) }
}

/// Decompresses a compressed frame's payload into a buffer of the size its zstd header
/// declares (the encoder always declares it), refused past [`MAX_PAYLOAD`] before anything is
/// allocated. A payload that decompresses to another size is refused.
fn decompress(compressed: &[u8]) -> Result<Vec<u8>, FrameError> {
    let declared = match zstd::zstd_safe::get_frame_content_size(compressed) {
        Ok(Some(n)) => n,
        Ok(None) => return Err(FrameError::Decode("zstd: the payload does not declare its decompressed size".into())),
        Err(_) => return Err(FrameError::Decode("zstd: the payload is not a zstd frame".into())),
    };
    let size = usize::try_from(declared)
        .ok()
        .filter(|&n| n <= MAX_PAYLOAD)
        .ok_or_else(|| FrameError::Decode(format!("zstd: the payload declares {declared} bytes, over the limit of {MAX_PAYLOAD}")))?;
    let mut buf = Vec::with_capacity(size);
    with_context(&DECOMPRESSOR, zstd::bulk::Decompressor::new, |d| d.decompress_to_buffer(compressed, &mut buf))
        .map_err(|e| FrameError::Decode(format!("zstd: {e}")))?;
    if buf.len() != size {
        return Err(FrameError::Decode(format!("zstd: the payload declares {size} bytes and holds {}", buf.len())));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Reads one frame from bytes (a slice never waits, so one small runtime serves every case).
    fn read(bytes: &[u8]) -> Result<Payload, FrameError> {
        static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
        let rt = RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().build().expect("runtime"));
        let mut r = bytes;
        rt.block_on(read_frame(&mut r))
    }

    /// A frame around `body` (its flags byte first) with a correct length and checksum: what
    /// a peer holding the cluster's credentials could send, however malformed its content.
    fn framed(body: &[u8]) -> Vec<u8> {
        let mut out = u32::try_from(body.len()).expect("small").to_be_bytes().to_vec();
        out.extend_from_slice(&crc32fast::hash(body).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    /// The header of a zstd frame that declares `size` bytes of content (single segment,
    /// an 8-byte content size), and no blocks.
    fn zstd_header(size: u64) -> Vec<u8> {
        let mut h = vec![0x28, 0xB5, 0x2F, 0xFD, 0xE0];
        h.extend_from_slice(&size.to_le_bytes());
        h
    }

    #[test]
    fn a_thread_s_reused_context_compresses_as_a_fresh_one() {
        let first: Vec<u8> = (0..70_000u32).map(|i| (i % 13) as u8).collect();
        let second: Vec<u8> = (0..3000u32).map(|i| (i % 5) as u8).collect();
        for payload in [&first, &second, &first] {
            assert_eq!(zstd_compress(payload).expect("compress"), zstd::bulk::compress(payload, LEVEL).expect("compress"));
        }
    }

    #[test]
    fn a_compressed_payload_is_read_into_a_buffer_of_its_size() {
        let payload: Vec<u8> = (0..5000u32).map(|i| (i % 7) as u8).collect();
        let p = read(&encode(&payload, true).expect("encode")).expect("read");
        assert_eq!(*p, payload[..]);
        // Not a buffer of the largest payload accepted for every compressed frame.
        assert_eq!(p.buf.capacity(), payload.len());
    }

    #[test]
    fn a_compressed_payload_must_declare_a_size_within_the_limit_and_hold_it() {
        let over = u64::try_from(MAX_PAYLOAD).expect("fits") + 1;
        let body = [&[FLAG_ZSTD][..], &zstd_header(over)].concat();
        let err = read(&framed(&body)).expect_err("refused");
        assert!(err.to_string().contains("over the limit"), "{err}");
        assert_eq!(err.code(), "decode");

        // Two zstd frames back to back: the first declares less than the payload holds.
        let a = zstd::bulk::compress(&[1u8; 1000], 3).expect("compress");
        let b = zstd::bulk::compress(&[2u8; 1000], 3).expect("compress");
        let body = [&[FLAG_ZSTD][..], &a, &b].concat();
        assert!(matches!(read(&framed(&body)), Err(FrameError::Decode(_))));

        // A zstd stream that does not declare its size.
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("encoder");
        std::io::Write::write_all(&mut enc, &[3u8; 1000]).expect("write");
        let streamed = enc.finish().expect("finish");
        let body = [&[FLAG_ZSTD][..], &streamed].concat();
        let err = read(&framed(&body)).expect_err("refused");
        assert!(err.to_string().contains("does not declare"), "{err}");

        // Not zstd at all.
        let err = read(&framed(&[FLAG_ZSTD, 1, 2, 3, 4, 5, 6])).expect_err("refused");
        assert!(err.to_string().contains("not a zstd frame"), "{err}");
    }

    /// Payloads that compress (runs) and payloads that do not (noise), so that both kinds of
    /// frame are made.
    fn payloads() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..3000),
            (any::<u8>(), 0..5000usize).prop_map(|(b, n)| vec![b; n]),
            proptest::collection::vec(0..4u8, 0..4000),
        ]
    }

    proptest! {
        #[test]
        fn every_payload_round_trips_and_one_flipped_bit_is_never_read(
            payload in payloads(),
            compress in any::<bool>(),
            at in any::<proptest::sample::Index>(),
            bit in 0..8u8,
        ) {
            let mut bytes = encode(&payload, compress).expect("encode");
            prop_assert_eq!(&*read(&bytes).expect("read"), &payload[..]);
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
            // A damaged length reads as a truncated link or an oversized frame; anything
            // else fails the checksum. Nothing is read as a payload.
            let got = read(&bytes);
            prop_assert!(got.is_err(), "byte {} bit {}: read {:?}", i, bit, got.map(|p| p.len()));
        }

        #[test]
        fn arbitrary_bytes_are_refused_or_read_only_when_their_checksum_holds(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            if read(&bytes).is_ok() {
                let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
                let stored = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
                prop_assert_eq!(crc32fast::hash(&bytes[8..8 + len]), stored);
            }
        }

        #[test]
        fn a_checked_frame_with_any_body_is_read_or_refused_never_a_panic(
            flags in any::<u8>(),
            zstd_like in any::<bool>(),
            declared in any::<u64>(),
            rest in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            // Half the cases start like a zstd frame, to reach the decompressor's parsing.
            let mut body = vec![flags];
            if zstd_like {
                body.extend_from_slice(&zstd_header(declared % (1 << 20)));
            }
            body.extend_from_slice(&rest);
            match read(&framed(&body)) {
                Ok(p) if flags & FLAG_ZSTD == 0 => prop_assert_eq!(&*p, &body[1..]),
                Ok(p) => prop_assert!(p.len() <= MAX_PAYLOAD),
                Err(e) => prop_assert_eq!(e.code(), "decode"),
            }
        }
    }

    #[tokio::test]
    async fn round_trip_plain_and_compressed() {
        for compress in [false, true] {
            let payload: Vec<u8> = (0..5000u32).map(|i| (i % 7) as u8).collect();
            let bytes = encode(&payload, compress).expect("encode");
            let mut r = &bytes[..];
            assert_eq!(*read_frame(&mut r).await.expect("read"), payload[..]);
            // A payload written in place is the same frame.
            let in_place = encode_with(0, compress, |out| {
                out.extend_from_slice(&payload);
                Ok(())
            })
            .expect("encode");
            assert_eq!(in_place, bytes);
        }
    }

    #[tokio::test]
    async fn a_flipped_bit_is_a_checksum_error() {
        let mut bytes = encode(b"hello world", false).expect("encode");
        let last = bytes.len() - 1;
        bytes[last] ^= 0x10;
        let mut r = &bytes[..];
        assert!(matches!(read_frame(&mut r).await, Err(FrameError::Checksum { .. })));
    }

    #[tokio::test]
    async fn truncated_is_closed_and_oversized_refused() {
        let bytes = encode(b"hello", false).expect("encode");
        let mut r = &bytes[..6];
        assert!(matches!(read_frame(&mut r).await, Err(FrameError::Closed)));
        let mut big = Vec::new();
        big.extend_from_slice(&u32::MAX.to_be_bytes());
        big.extend_from_slice(&[0; 8]);
        let mut r = &big[..];
        assert!(matches!(read_frame(&mut r).await, Err(FrameError::TooLarge(_))));
    }
}
