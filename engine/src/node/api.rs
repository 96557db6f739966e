//! The HTTP/JSON API (axum).
//!
//! | Route | |
//! |---|---|
//! | `GET /healthz` | can this node take reads, writes? (no token; 200, or 503 with `?need=writes` when it cannot) |
//! | `GET /metrics` | Prometheus text |
//! | `GET /v1/status` | node, store, components |
//! | `GET /v1/components` | component names, modes, plugin versions |
//! | `GET /v1/components/{c}/records?prefix=&after=&limit=` | a page of live records in key order |
//! | `PUT /v1/components/{c}/records/{key}` | write the JSON body (`Idempotency-Key` header optional) |
//! | `GET /v1/components/{c}/records/{key}` | the record |
//! | `DELETE /v1/components/{c}/records/{key}` | delete it |
//! | `GET /v1/conflicts?component=&all=` | conflicts, open ones unless `all=true` |
//! | `GET /v1/conflicts/{id}` | one conflict with its versions |
//! | `POST /v1/conflicts/{id}/resolve` | `{"value": doc}` or `{"delete": true}`: a write that supersedes the versions |
//! | `POST /v1/admin/promote` | make this node the warm primary, in a new epoch |
//! | `POST /v1/admin/demote?timeout_ms=` | close warm writes, wait for the standbys to acknowledge everything |
//! | `GET /v1/admin/backup` | the backup thread: last snapshot, next scheduled, archive position, peer sends, last error |
//!
//! Every route but `/healthz` needs `Authorization: Bearer TOKEN`. Errors are JSON
//! `{"error": {"code", "message", "violations"?, "retry_after_s"?}}` with a stable code.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::error::NodeError;
use super::service::{Node, ReadRecord};
use super::types::{ErrorBody, ErrorDetail, StampView};
use crate::plugin::Op;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct ApiState {
    pub node: Arc<Node>,
    token: Arc<str>,
}

/// An error answer.
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
    retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            body: ErrorBody {
                error: ErrorDetail { code: code.to_owned(), message: message.into(), violations: None, retry_after_s: None },
            },
            retry_after: None,
        }
    }

    fn from_node(e: NodeError, node: &Node, component: Option<&str>) -> ApiError {
        let mut err = ApiError::new(e.status(), e.code(), e.to_string());
        err.body.error.violations = e.violations().map(<[_]>::to_vec);
        if matches!(e, NodeError::QueueFull(_) | NodeError::Shed(_) | NodeError::Busy) {
            let secs = component.map_or(1, |c| node.retry_after(c));
            err.retry_after = Some(secs);
            err.body.error.retry_after_s = Some(secs);
        }
        err
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.body).unwrap_or_default();
        let mut r = (self.status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    }
}

/// The URL's path parameters, or a JSON `bad_request` (axum's own rejection of, e.g., a
/// percent-encoded byte that is not UTF-8 is plain text).
struct ApiPath<T>(T);

impl<T, S> axum::extract::FromRequestParts<S> for ApiPath<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(ApiPath(v)),
            Err(e) => Err(ApiError::new(400, "bad_request", format!("bad path: {}", e.body_text()))),
        }
    }
}

fn json_response(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn json_of<T: serde::Serialize>(value: &T) -> Response {
    match serde_json::to_string(value) {
        Ok(s) => json_response(StatusCode::OK, s),
        Err(e) => ApiError::new(500, "internal", format!("cannot encode the answer: {e}")).into_response(),
    }
}

fn jstr(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

/// A record's JSON, assembled around the document the node already holds as text.
fn record_json(r: &ReadRecord) -> String {
    let stamp = serde_json::to_string(&StampView::from(&r.stamp)).unwrap_or_default();
    format!(
        "{{\"component\":{},\"key\":{},\"value\":{},\"stamp\":{},\"origin\":{},\"seq\":{}}}",
        jstr(&r.component),
        jstr(&r.key),
        r.doc,
        stamp,
        jstr(&r.origin),
        r.seq
    )
}

/// Constant-time comparison of the presented token.
fn token_matches(presented: &[u8], expected: &[u8]) -> bool {
    if presented.len() != expected.len() {
        return false;
    }
    presented.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

async fn auth(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let presented = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(t) if token_matches(t.trim().as_bytes(), state.token.as_bytes()) => next.run(request).await,
        Some(_) => {
            state.node_metrics_unauthorized();
            ApiError::new(401, "unauthorized", "wrong API token").into_response()
        }
        None => {
            state.node_metrics_unauthorized();
            ApiError::new(
                401,
                "unauthorized",
                "this route needs `Authorization: Bearer TOKEN` (the token is in the node's tandem.toml, [api] token)",
            )
            .into_response()
        }
    }
}

impl ApiState {
    fn node_metrics_unauthorized(&self) {
        self.node.note_unauthorized();
    }
}

/// The API's routes.
pub fn router(node: Arc<Node>) -> Router {
    let max_body = node.config().raw.api.max_body_bytes;
    let state = ApiState { token: Arc::from(node.config().raw.api.token.as_str()), node };
    let protected = Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/components", get(components))
        .route("/v1/components/{component}/records", get(list))
        .route("/v1/components/{component}/records/{key}", get(get_record).put(put_record).delete(delete_record))
        .route("/v1/conflicts", get(list_conflicts))
        .route("/v1/conflicts/{id}", get(show_conflict))
        .route("/v1/conflicts/{id}/resolve", post(resolve_conflict))
        .route("/v1/admin/promote", post(promote))
        .route("/v1/admin/demote", post(demote))
        .route("/v1/admin/backup", get(backup_status))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/healthz", get(healthz))
        .merge(protected)
        .fallback(|| async { ApiError::new(404, "no_route", "no such route; see docs/operations.md for the API") })
        .method_not_allowed_fallback(|| async { ApiError::new(405, "method_not_allowed", "this route does not take that method") })
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

#[derive(Deserialize)]
struct HealthParams {
    need: Option<String>,
}

async fn healthz(State(s): State<ApiState>, q: Result<Query<HealthParams>, QueryRejection>) -> Response {
    let h = s.node.health();
    let need = q.ok().and_then(|Query(p)| p.need);
    let ok = match need.as_deref() {
        Some("writes") => h.writes,
        Some("reads") | None => h.reads,
        Some(other) => {
            return ApiError::new(400, "bad_request", format!("need={other:?}: expected `reads` or `writes`")).into_response();
        }
    };
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    match serde_json::to_string(&h) {
        Ok(body) => json_response(status, body),
        Err(_) => status.into_response(),
    }
}

async fn promote(State(s): State<ApiState>) -> Response {
    match s.node.promote().await {
        Ok(v) => json_of(&v),
        Err(e) => ApiError::from_node(e, &s.node, None).into_response(),
    }
}

#[derive(Deserialize)]
struct DemoteParams {
    timeout_ms: Option<u64>,
}

async fn demote(State(s): State<ApiState>, q: Result<Query<DemoteParams>, QueryRejection>) -> Response {
    let Query(p) = match q {
        Ok(q) => q,
        Err(e) => return ApiError::new(400, "bad_request", format!("bad query: {e}")).into_response(),
    };
    let timeout = std::time::Duration::from_millis(p.timeout_ms.unwrap_or(10_000).min(600_000));
    match s.node.demote(timeout).await {
        Ok(v) => json_of(&v),
        Err(e) => ApiError::from_node(e, &s.node, None).into_response(),
    }
}

async fn backup_status(State(s): State<ApiState>) -> Response {
    match s.node.backup_status() {
        Some(v) => json_of(&v),
        None => ApiError::new(
            404,
            "no_backup",
            "no backup runs on this node: set `[backup] target` in its tandem.toml (see docs/operations.md, \"Cold backup\")",
        )
        .into_response(),
    }
}

async fn metrics(State(s): State<ApiState>) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.node.metrics()).into_response()
}

async fn status(State(s): State<ApiState>) -> Response {
    json_of(&s.node.status())
}

async fn components(State(s): State<ApiState>) -> Response {
    let status = s.node.status();
    let list: Vec<serde_json::Value> = status
        .components
        .iter()
        .map(|c| serde_json::json!({"name": c.name, "mode": c.mode, "plugin_version": c.plugin.version, "digest": c.plugin.digest, "shape": c.plugin.shape}))
        .collect();
    json_of(&serde_json::json!({ "components": list }))
}

#[derive(Deserialize)]
struct ListParams {
    #[serde(default)]
    prefix: String,
    after: Option<String>,
    limit: Option<usize>,
}

async fn list(State(s): State<ApiState>, ApiPath(component): ApiPath<String>, q: Result<Query<ListParams>, QueryRejection>) -> Response {
    let Query(p) = match q {
        Ok(q) => q,
        Err(e) => return ApiError::new(400, "bad_request", format!("bad query: {e}")).into_response(),
    };
    match s.node.list(&component, &p.prefix, p.after.as_deref(), p.limit.unwrap_or(100)).await {
        Ok((records, next)) => {
            let mut body = String::with_capacity(64 + records.len() * 128);
            body.push_str("{\"component\":");
            body.push_str(&jstr(&component));
            body.push_str(",\"records\":[");
            for (i, r) in records.iter().enumerate() {
                if i > 0 {
                    body.push(',');
                }
                body.push_str(&record_json(r));
            }
            body.push_str("],\"next\":");
            body.push_str(&next.as_deref().map_or_else(|| "null".to_owned(), jstr));
            body.push('}');
            json_response(StatusCode::OK, body)
        }
        Err(e) => ApiError::from_node(e, &s.node, Some(&component)).into_response(),
    }
}

async fn get_record(State(s): State<ApiState>, ApiPath((component, key)): ApiPath<(String, String)>) -> Response {
    match s.node.get(&component, &key).await {
        Ok(Some(r)) => json_response(StatusCode::OK, record_json(&r)),
        Ok(None) => ApiError::from_node(NodeError::NotFound { component, key }, &s.node, None).into_response(),
        Err(e) => ApiError::from_node(e, &s.node, Some(&component)).into_response(),
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim().to_owned()))
            .map_err(|_| ApiError::new(400, "bad_request", "the Idempotency-Key header must be visible ASCII")),
    }
}

fn body_error(e: BytesRejection, limit: usize) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(413, "body_too_large", format!("the body is over the limit of {limit} bytes ([api] max_body_bytes)"))
    } else {
        ApiError::new(400, "bad_request", format!("cannot read the body: {e}"))
    }
}

fn write_answer(s: &ApiState, component: &str, r: Result<super::types::WriteAck, NodeError>) -> Response {
    match r {
        Ok(ack) => {
            let mut resp = json_of(&ack);
            if ack.replayed {
                resp.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
            }
            resp
        }
        Err(e) => ApiError::from_node(e, &s.node, Some(component)).into_response(),
    }
}

async fn put_record(
    State(s): State<ApiState>,
    ApiPath((component, key)): ApiPath<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let limit = s.node.config().raw.api.max_body_bytes;
    let body = match body {
        Ok(b) => b,
        Err(e) => return body_error(e, limit).into_response(),
    };
    let idem = match idempotency_key(&headers) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let text = match std::str::from_utf8(&body) {
        Ok(t) => t,
        Err(_) => return ApiError::new(400, "malformed", "the body is not UTF-8 JSON").into_response(),
    };
    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(text) {
        return ApiError::new(400, "malformed", format!("the body is not JSON: {e}")).into_response();
    }
    let r = s.node.put(&component, &key, text, idem.as_deref()).await;
    write_answer(&s, &component, r)
}

async fn delete_record(State(s): State<ApiState>, ApiPath((component, key)): ApiPath<(String, String)>, headers: HeaderMap) -> Response {
    let idem = match idempotency_key(&headers) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let r = s.node.delete(&component, &key, idem.as_deref()).await;
    write_answer(&s, &component, r)
}

#[derive(Deserialize)]
struct ConflictParams {
    component: Option<String>,
    #[serde(default)]
    all: bool,
    limit: Option<usize>,
}

async fn list_conflicts(State(s): State<ApiState>, q: Result<Query<ConflictParams>, QueryRejection>) -> Response {
    let Query(p) = match q {
        Ok(q) => q,
        Err(e) => return ApiError::new(400, "bad_request", format!("bad query: {e}")).into_response(),
    };
    match s.node.conflicts(p.component.as_deref(), p.all, p.limit.unwrap_or(1000).min(10_000)).await {
        Ok(list) => json_of(&serde_json::json!({ "conflicts": list })),
        Err(e) => ApiError::from_node(e, &s.node, None).into_response(),
    }
}

async fn show_conflict(State(s): State<ApiState>, ApiPath(id): ApiPath<String>) -> Response {
    match s.node.conflict(&id).await {
        Ok(c) => json_of(&c),
        Err(e) => ApiError::from_node(e, &s.node, None).into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveBody {
    value: Option<serde_json::Value>,
    #[serde(default)]
    delete: bool,
}

async fn resolve_conflict(
    State(s): State<ApiState>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let limit = s.node.config().raw.api.max_body_bytes;
    let body = match body {
        Ok(b) => b,
        Err(e) => return body_error(e, limit).into_response(),
    };
    let idem = match idempotency_key(&headers) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let parsed: ResolveBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return ApiError::new(400, "malformed", format!("expected {{\"value\": DOCUMENT}} or {{\"delete\": true}}: {e}"))
                .into_response();
        }
    };
    let op = match (parsed.value, parsed.delete) {
        (Some(v), false) => Op::Put(v.to_string()),
        (None, true) => Op::Delete,
        _ => return ApiError::new(400, "malformed", "give exactly one of \"value\" and \"delete\": true").into_response(),
    };
    match s.node.resolve(&id, op, idem.as_deref()).await {
        Ok(ack) => json_of(&ack),
        Err(e) => ApiError::from_node(e, &s.node, None).into_response(),
    }
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    node: Arc<Node>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(node);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::token_matches;

    #[test]
    fn tokens_compare_whole() {
        assert!(token_matches(b"abc", b"abc"));
        assert!(!token_matches(b"abd", b"abc"));
        assert!(!token_matches(b"ab", b"abc"));
        assert!(!token_matches(b"", b"abc"));
    }
}
