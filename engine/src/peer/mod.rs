//! The peer protocol: how two nodes talk.
//!
//! - [`tls`]: mutual TLS (rustls, ring provider) with certificates of a cluster CA that
//!   `tandem init` creates; a peer without a certificate of the cluster's CA is refused during
//!   the TLS handshake, before any frame.
//! - [`frame`]: length-delimited frames with a CRC32; a frame that fails its check resets the
//!   link and is never decoded; zstd compression on geo links.
//! - [`proto`]: the version preamble (an incompatible peer is refused with both versions named)
//!   and the messages (hello with per-component plugin digests, subscribe, batches, acks).

pub mod frame;
pub mod proto;
pub mod tls;

/// The peer protocol version this build speaks (2: failover requests and snapshot transfers;
/// 3: warm versions carry the reader's document; 4: heartbeats carry the component digests;
/// 5: a snapshot transfer resumes where a broken one stopped).
pub const PROTOCOL_VERSION: u32 = 5;

use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};

use self::frame::{FrameError, read_frame, write_frame};
use self::proto::Msg;
use self::tls::Credentials;

/// Why a link failed or was refused.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("TLS handshake failed (is the peer's certificate signed by this cluster's CA?): {0}")]
    Tls(String),
    #[error("refused by the peer: {0}")]
    Refused(String),
    /// This node refused the peer (its version, its position, a batch of an old epoch...).
    #[error("refused the peer: {0}")]
    RefusedPeer(String),
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("applying replicated versions failed: {0}")]
    Apply(String),
    #[error("timed out: {0}")]
    Timeout(String),
}

impl LinkError {
    pub fn code(&self) -> &'static str {
        match self {
            LinkError::Connect { .. } => "connect",
            LinkError::Tls(_) => "tls",
            LinkError::Refused(_) => "refused",
            LinkError::RefusedPeer(_) => "refused_peer",
            LinkError::Frame(f) => f.code(),
            LinkError::Protocol(_) => "protocol",
            LinkError::Apply(_) => "apply",
            LinkError::Timeout(_) => "timeout",
        }
    }
}

async fn within<T>(d: Duration, what: &str, f: impl Future<Output = Result<T, LinkError>>) -> Result<T, LinkError> {
    tokio::time::timeout(d, f).await.map_err(|_| LinkError::Timeout(what.to_owned()))?
}

/// Dials a peer: TCP, mutual TLS, then the version preamble. Returns the link ready for
/// [`Msg::Hello`], or the peer's refusal (which names both versions when they differ).
pub async fn dial(addr: &str, creds: &Credentials, version: u32, timeout: Duration) -> Result<TlsStream<TcpStream>, LinkError> {
    within(timeout, "connecting", async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| LinkError::Connect { addr: addr.to_owned(), reason: e.to_string() })?;
        let _ = tcp.set_nodelay(true);
        let tls =
            TlsConnector::from(creds.client.clone()).connect(tls::server_name(), tcp).await.map_err(|e| LinkError::Tls(e.to_string()))?;
        let mut tls = TlsStream::Client(tls);
        write_frame(&mut tls, &proto::preamble(version), false).await?;
        // A server that refuses our certificate closes the link here.
        let answer = read_frame(&mut tls).await.map_err(|e| match e {
            FrameError::Closed | FrameError::Io(_) => LinkError::Tls(format!("the peer closed the link during the handshake ({e})")),
            e => e.into(),
        })?;
        proto::parse_answer(&answer).map_err(LinkError::Refused)?;
        Ok(tls)
    })
    .await
}

/// Accepts a peer: mutual TLS (a certificate not of the cluster CA fails here, before any
/// frame), then the version preamble: a peer of another version is told so, naming both.
pub async fn accept(tcp: TcpStream, creds: &Credentials, us: &str, timeout: Duration) -> Result<TlsStream<TcpStream>, LinkError> {
    within(timeout, "accepting", async {
        let _ = tcp.set_nodelay(true);
        let tls = TlsAcceptor::from(creds.server.clone()).accept(tcp).await.map_err(|e| LinkError::Tls(e.to_string()))?;
        let mut tls = TlsStream::Server(tls);
        let pre = read_frame(&mut tls).await?;
        let theirs = proto::parse_preamble(&pre).map_err(LinkError::Protocol)?;
        if !proto::compatible(theirs, PROTOCOL_VERSION) {
            let reason = proto::version_refusal(us, PROTOCOL_VERSION, theirs);
            write_frame(&mut tls, &proto::answer(PROTOCOL_VERSION, Some(&reason)), false).await?;
            return Err(LinkError::RefusedPeer(reason));
        }
        write_frame(&mut tls, &proto::answer(PROTOCOL_VERSION, None), false).await?;
        Ok(tls)
    })
    .await
}

/// Sends a message.
pub async fn send<W: tokio::io::AsyncWrite + Unpin>(w: &mut W, msg: &Msg, compress: bool) -> Result<(), LinkError> {
    Ok(frame::write_encoded(w, &msg.encode_frame(compress)?).await?)
}

/// Receives a message (a corrupted frame is an error: the caller resets the link).
pub async fn recv<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> Result<Msg, LinkError> {
    Ok(Msg::decode(&read_frame(r).await?)?)
}
