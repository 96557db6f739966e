//! A blocking client of the node's HTTP API (the CLI's client verbs, tests, tools).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::config::{CONFIG_FILE, ConfigFile};
use super::types::{ConflictView, ErrorBody, Health, Page, RecordView, ResolveAck, Status, WriteAck};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The node could not be reached (or the connection broke: the outcome of a write is then
    /// unknown; retry it with the same idempotency key).
    #[error("cannot reach the node at {addr}: {message}")]
    Transport { addr: String, message: String },
    /// The node answered with an error.
    #[error("{} ({}, HTTP {status})", .body.error.message, .body.error.code)]
    Api { status: u16, body: ErrorBody },
    /// The answer was not what the API promises.
    #[error("unexpected answer from the node (HTTP {status}): {message}")]
    Decode { status: u16, message: String },
}

impl ClientError {
    /// The stable error code of an API error.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { body, .. } => Some(&body.error.code),
            _ => None,
        }
    }

    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } | ClientError::Decode { status, .. } => Some(*status),
            ClientError::Transport { .. } => None,
        }
    }
}

/// An HTTP answer.
#[derive(Clone, Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Percent-encodes a path segment.
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn encode_query(s: &str) -> String {
    encode_segment(s)
}

/// A client of one node.
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    addr: String,
    token: String,
}

impl Client {
    /// A client of the node at `addr` (`HOST:PORT` or `http://HOST:PORT`) with the API token.
    pub fn new(addr: &str, token: &str) -> Client {
        let addr = addr.trim_end_matches('/');
        let addr = if addr.starts_with("http://") || addr.starts_with("https://") { addr.to_owned() } else { format!("http://{addr}") };
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .timeout_connect(Some(Duration::from_secs(5)))
            .max_idle_connections_per_host(16)
            .build();
        Client { agent: ureq::Agent::new_with_config(config), addr, token: token.to_owned() }
    }

    /// A client of the node whose directory (with `tandem.toml`) is `dir`.
    pub fn from_dir(dir: &Path) -> anyhow::Result<Client> {
        let file = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&file).map_err(|e| {
            anyhow::anyhow!("cannot read {}: {e} (is {} a node directory made by `tandem init`?)", file.display(), dir.display())
        })?;
        let raw: ConfigFile = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        let data_dir = match &raw.node.data_dir {
            Some(d) if d.is_absolute() => d.clone(),
            Some(d) => dir.join(d),
            None => dir.to_path_buf(),
        };
        let configured: Option<SocketAddr> = raw.node.api.parse().ok();
        let addr = match configured {
            Some(a) if a.port() != 0 => Some(a),
            _ => std::fs::read_to_string(data_dir.join("api.addr")).ok().and_then(|s| s.trim().parse::<SocketAddr>().ok()),
        };
        let mut addr = addr.ok_or_else(|| {
            anyhow::anyhow!(
                "the node in {} listens on a port chosen at start and is not running (no {}); start it with `tandem run --dir {}`",
                dir.display(),
                data_dir.join("api.addr").display(),
                dir.display()
            )
        })?;
        if addr.ip().is_unspecified() {
            addr.set_ip(if addr.is_ipv4() { std::net::Ipv4Addr::LOCALHOST.into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
        }
        Ok(Client::new(&addr.to_string(), &raw.api.token))
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.addr
    }

    /// Sends a request; `token` overrides the client's (use `Some("")` for none).
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
        token: Option<&str>,
    ) -> Result<RawResponse, ClientError> {
        let url = format!("{}{}", self.addr, path);
        let transport = |message: String| ClientError::Transport { addr: self.addr.clone(), message };
        let mut b = ureq::http::Request::builder().method(method).uri(&url);
        let token = token.unwrap_or(&self.token);
        if !token.is_empty() {
            b = b.header("authorization", format!("Bearer {token}"));
        }
        if body.is_some() {
            b = b.header("content-type", "application/json");
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let request = b.body(body.map(<[u8]>::to_vec).unwrap_or_default()).map_err(|e| transport(format!("bad request: {e}")))?;
        let mut resp = self.agent.run(request).map_err(|e| transport(e.to_string()))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().iter().map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())).collect();
        let body =
            resp.body_mut().with_config().limit(256 << 20).read_to_string().map_err(|e| transport(format!("reading the answer: {e}")))?;
        Ok(RawResponse { status, headers, body })
    }

    fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> Result<T, ClientError> {
        let r = self.raw(method, path, body, headers, None)?;
        decode(r)
    }

    fn record_path(component: &str, key: &str) -> String {
        format!("/v1/components/{}/records/{}", encode_segment(component), encode_segment(key))
    }

    /// Writes a JSON document.
    pub fn put(&self, component: &str, key: &str, json: &str, idempotency_key: Option<&str>) -> Result<WriteAck, ClientError> {
        let headers: Vec<(&str, &str)> = idempotency_key.map(|k| ("idempotency-key", k)).into_iter().collect();
        self.call("PUT", &Self::record_path(component, key), Some(json.as_bytes()), &headers)
    }

    /// Reads a record.
    pub fn get(&self, component: &str, key: &str) -> Result<RecordView, ClientError> {
        self.call("GET", &Self::record_path(component, key), None, &[])
    }

    /// Deletes a record.
    pub fn delete(&self, component: &str, key: &str, idempotency_key: Option<&str>) -> Result<WriteAck, ClientError> {
        let headers: Vec<(&str, &str)> = idempotency_key.map(|k| ("idempotency-key", k)).into_iter().collect();
        self.call("DELETE", &Self::record_path(component, key), None, &headers)
    }

    /// One page of a listing.
    pub fn list(&self, component: &str, prefix: &str, after: Option<&str>, limit: usize) -> Result<Page, ClientError> {
        let mut path = format!("/v1/components/{}/records?limit={limit}&prefix={}", encode_segment(component), encode_query(prefix));
        if let Some(a) = after {
            path.push_str(&format!("&after={}", encode_query(a)));
        }
        self.call("GET", &path, None, &[])
    }

    /// Every live record with the prefix, following pages.
    pub fn list_all(&self, component: &str, prefix: &str) -> Result<Vec<RecordView>, ClientError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.list(component, prefix, after.as_deref(), 1000)?;
            out.extend(page.records);
            match page.next {
                Some(n) => after = Some(n),
                None => return Ok(out),
            }
        }
    }

    /// The node's status.
    pub fn status(&self) -> Result<Status, ClientError> {
        self.call("GET", "/v1/status", None, &[])
    }

    /// Makes the node the warm primary in a new epoch.
    pub fn promote(&self) -> Result<serde_json::Value, ClientError> {
        self.call("POST", "/v1/admin/promote", None, &[])
    }

    /// Closes the node's warm writes and waits up to `timeout_ms` for its standbys.
    pub fn demote(&self, timeout_ms: u64) -> Result<serde_json::Value, ClientError> {
        self.call("POST", &format!("/v1/admin/demote?timeout_ms={timeout_ms}"), None, &[])
    }

    /// `/healthz` (no token needed).
    pub fn health(&self) -> Result<(u16, Health), ClientError> {
        let r = self.raw("GET", "/healthz", None, &[], Some(""))?;
        let status = r.status;
        let h: Health = serde_json::from_str(&r.body).map_err(|e| ClientError::Decode { status, message: e.to_string() })?;
        Ok((status, h))
    }

    /// Prometheus metrics text.
    pub fn metrics(&self) -> Result<String, ClientError> {
        let r = self.raw("GET", "/metrics", None, &[], None)?;
        if r.status != 200 {
            return decode::<String>(r);
        }
        Ok(r.body)
    }

    /// Conflicts (open only unless `all`).
    pub fn conflicts(&self, component: Option<&str>, all: bool) -> Result<Vec<ConflictView>, ClientError> {
        #[derive(serde::Deserialize)]
        struct L {
            conflicts: Vec<ConflictView>,
        }
        let mut path = format!("/v1/conflicts?all={all}");
        if let Some(c) = component {
            path.push_str(&format!("&component={}", encode_query(c)));
        }
        let l: L = self.call("GET", &path, None, &[])?;
        Ok(l.conflicts)
    }

    /// One conflict.
    pub fn conflict(&self, id: &str) -> Result<ConflictView, ClientError> {
        self.call("GET", &format!("/v1/conflicts/{}", encode_segment(id)), None, &[])
    }

    /// Resolves a conflict by writing `value` (or deleting the record when `None`).
    pub fn resolve(&self, id: &str, value: Option<&serde_json::Value>) -> Result<ResolveAck, ClientError> {
        let body = match value {
            Some(v) => serde_json::json!({ "value": v }),
            None => serde_json::json!({ "delete": true }),
        };
        self.call("POST", &format!("/v1/conflicts/{}/resolve", encode_segment(id)), Some(body.to_string().as_bytes()), &[])
    }
}

fn decode<T: serde::de::DeserializeOwned>(r: RawResponse) -> Result<T, ClientError> {
    if (200..300).contains(&r.status) {
        serde_json::from_str(&r.body).map_err(|e| ClientError::Decode { status: r.status, message: e.to_string() })
    } else {
        match serde_json::from_str::<ErrorBody>(&r.body) {
            Ok(body) => Err(ClientError::Api { status: r.status, body }),
            Err(_) => Err(ClientError::Decode { status: r.status, message: r.body.chars().take(200).collect() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::encode_segment;

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(encode_segment("carrier-main"), "carrier-main");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
        assert_eq!(encode_segment("é"), "%C3%A9");
    }
}
