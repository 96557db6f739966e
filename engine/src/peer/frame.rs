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
        let body = zstd::bulk::compress(&out[HEADER..], 3)?;
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
    if flags & FLAG_ZSTD != 0 {
        let buf = zstd::bulk::decompress(&body[1..], MAX_PAYLOAD).map_err(|e| FrameError::Decode(format!("zstd: {e}")))?;
        Ok(Payload { buf, start: 0 })
    } else {
        Ok(Payload { buf: body, start: 1 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
