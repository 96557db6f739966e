//! The coordinators' transport between real nodes: the peer protocol (mutual TLS, version
//! preamble, hello), then one [`Msg::Failover`] request and its [`Msg::FailoverReply`] at a
//! time, on one kept-open link per voter. Every call runs on the failover runtime.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::TlsStream;

use super::{BoxFuture, Reply, Request, Transport};
use crate::peer::proto::{Hello, Msg};
use crate::peer::tls::Credentials;
use crate::peer::{self, PROTOCOL_VERSION};

/// How long one exchange may take before the link is dropped.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

type Link = Arc<tokio::sync::Mutex<Option<TlsStream<TcpStream>>>>;

/// Links to the other voters.
pub struct PeerTransport {
    us: String,
    creds: Credentials,
    addrs: BTreeMap<String, String>,
    links: BTreeMap<String, Link>,
    runtime: tokio::runtime::Handle,
}

impl PeerTransport {
    /// `addrs`: voter name -> peer address. Calls run on `runtime`.
    pub fn new(us: String, creds: Credentials, addrs: BTreeMap<String, String>, runtime: tokio::runtime::Handle) -> PeerTransport {
        let links = addrs.keys().map(|k| (k.clone(), Link::default())).collect();
        PeerTransport { us, creds, addrs, links, runtime }
    }
}

async fn open(us: &str, addr: &str, creds: &Credentials) -> Result<TlsStream<TcpStream>, String> {
    let timeout = Duration::from_secs(2);
    let mut tls = peer::dial(addr, creds, PROTOCOL_VERSION, timeout).await.map_err(|e| e.to_string())?;
    let hello = Hello { node: us.to_owned(), epoch: 0, api: None, primary: None, last_seq: 0, components: Vec::new() };
    peer::send(&mut tls, &Msg::Hello(hello), false).await.map_err(|e| e.to_string())?;
    match tokio::time::timeout(timeout, peer::recv(&mut tls)).await {
        Ok(Ok(Msg::Hello(_))) => Ok(tls),
        Ok(Ok(Msg::Refuse { reason })) => Err(format!("refused: {reason}")),
        Ok(Ok(other)) => Err(format!("expected hello, got {other:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no hello".into()),
    }
}

impl Transport for PeerTransport {
    fn call(&self, to: &str, req: Request) -> BoxFuture<'static, Result<Reply, String>> {
        let (Some(link), Some(addr)) = (self.links.get(to).cloned(), self.addrs.get(to).cloned()) else {
            let to = to.to_owned();
            return Box::pin(async move { Err(format!("{to} is not a voter of this cluster")) });
        };
        let us = self.us.clone();
        let creds = self.creds.clone();
        let to = to.to_owned();
        let task = self.runtime.spawn(async move {
            let mut guard = link.lock().await;
            if guard.is_none() {
                *guard = Some(open(&us, &addr, &creds).await.map_err(|e| format!("{to}: {e}"))?);
            }
            let Some(tls) = guard.as_mut() else { return Err(format!("{to}: no link")) };
            let exchange = async {
                peer::send(tls, &Msg::Failover(req.encode()), false).await.map_err(|e| e.to_string())?;
                match peer::recv(tls).await.map_err(|e| e.to_string())? {
                    Msg::FailoverReply(b) => Reply::decode(&b),
                    other => Err(format!("expected a failover reply, got {other:?}")),
                }
            };
            // A stopped peer keeps its socket open: give up on the link, not just the call.
            let r = tokio::time::timeout(CALL_TIMEOUT, exchange).await.unwrap_or_else(|_| Err("no answer".into()));
            if r.is_err() {
                *guard = None; // a broken or desynchronised link is opened anew
            }
            r.map_err(|e| format!("{to}: {e}"))
        });
        Box::pin(async move {
            // Dropped on timeout: the task ends on its own when the link answers or breaks.
            task.await.map_err(|e| format!("failover call: {e}"))?
        })
    }
}
