//! The admin listener, on loopback: Prometheus metrics, a health check,
//! the policy (`GET /policy`, `POST /policy/reload`) and, on a mesh
//! member, the members it sees (`GET /members`) and the key epochs
//! (`POST /keys/rotate`, `POST /keys/revoke` with the epoch as the body).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;

use tokio::sync::mpsc::UnboundedSender;

use crate::keys::rotation::EpochError;
use crate::member::EpochReport;
use crate::metrics::Metrics;
use crate::policy::driver::PolicyHandle;
use crate::signal::node::NodeCommand;

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    policy: PolicyHandle,
    /// The signalling member and the member list, on a mesh member.
    node: Option<UnboundedSender<NodeCommand>>,
    members: Option<crate::mesh::MemberList>,
}

/// Serves the admin API on `addr` until the task is dropped.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    policy: PolicyHandle,
    mesh: Option<(UnboundedSender<NodeCommand>, crate::mesh::MemberList)>,
) -> std::io::Result<()> {
    let (node, members) = match mesh {
        Some((n, m)) => (Some(n), Some(m)),
        None => (None, None),
    };
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/policy", get(policy_handler))
        .route("/policy/reload", post(reload_handler))
        .route("/keys/rotate", post(rotate_handler))
        .route("/keys/revoke", post(revoke_handler))
        .route("/members", get(members_handler))
        .with_state(AppState {
            metrics,
            policy,
            node,
            members,
        });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await
}

async fn policy_handler(State(s): State<AppState>) -> impl IntoResponse {
    let p = s.policy.in_force();
    (
        StatusCode::OK,
        format!("policy {} ({}) in force\n", p.name, p.hash),
    )
}

/// Reloads the policy from its configured source, or from the module the
/// request body names (a built-in's name, or a file's path): 200 with what
/// changed, or 422 with why the new one was refused (the old one stays in
/// force).
async fn reload_handler(State(s): State<AppState>, body: String) -> impl IntoResponse {
    let policy = s.policy.clone();
    // A built-in's name, or a file's absolute path (relative to what, on
    // a daemon?).
    let source = match Some(body.trim()).filter(|b| !b.is_empty()) {
        None => None,
        Some(m) => match crate::policy::PolicySource::parse(m, std::path::Path::new("/")) {
            Ok(s) if m.starts_with('/') || matches!(s, crate::policy::PolicySource::Builtin(_)) => {
                Some(s)
            }
            Ok(_) => {
                return (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!(
                    "reload refused: a policy file must be given by its absolute path, not {m}\n"
                ),
                )
            }
            Err(e) => {
                return (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("reload refused: {e}\n"),
                )
            }
        },
    };
    // The engine's thread compiles and swaps; this task only waits for
    // its answer.
    match policy.reload(source).await {
        Ok(Ok(report)) => (StatusCode::OK, report.to_string()),
        Ok(Err(e)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("reload refused; the policy in force stays: {e}\n"),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("reload failed: {e}\n"),
        ),
    }
}

/// Sends an epoch command to the member and reports its answer.
async fn epoch_command(
    s: &AppState,
    command: impl FnOnce(tokio::sync::oneshot::Sender<Result<EpochReport, EpochError>>) -> NodeCommand,
) -> (StatusCode, String) {
    let Some(node) = &s.node else {
        return (
            StatusCode::CONFLICT,
            "this gateway is not a mesh member ([signal] is not configured); its keys are configured\n".into(),
        );
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    if node.send(command(tx)).is_err() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the signalling member is not running\n".into(),
        );
    }
    match rx.await {
        Ok(Ok(r)) => (
            StatusCode::OK,
            format!(
                "epoch {} in force; revoked: {}; {} peer(s) rekeying; the mesh follows by gossip\n",
                r.current,
                if r.revoked.is_empty() {
                    "none".to_string()
                } else {
                    r.revoked
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(" ")
                },
                r.rekeying
            ),
        ),
        Ok(Err(e)) => (StatusCode::UNPROCESSABLE_ENTITY, format!("refused: {e}\n")),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the signalling member stopped\n".into(),
        ),
    }
}

/// The members this one sees: state, since when, path health, record.
async fn members_handler(State(s): State<AppState>) -> impl IntoResponse {
    match s
        .members
        .as_ref()
        .and_then(|m| m.lock().ok().map(|l| l.clone()))
    {
        Some(list) => (StatusCode::OK, list),
        None => (
            StatusCode::CONFLICT,
            "this gateway is not a mesh member ([signal] is not configured)\n".into(),
        ),
    }
}

async fn rotate_handler(State(s): State<AppState>) -> impl IntoResponse {
    epoch_command(&s, NodeCommand::Rotate).await
}

/// The body is the epoch to revoke.
async fn revoke_handler(State(s): State<AppState>, body: String) -> impl IntoResponse {
    let Ok(epoch) = body.trim().parse::<crate::keys::Epoch>() else {
        return (
            StatusCode::BAD_REQUEST,
            format!("'{}' is not an epoch number\n", body.trim()),
        );
    };
    epoch_command(&s, |tx| NodeCommand::Revoke(epoch, tx)).await
}

async fn metrics_handler(State(s): State<AppState>) -> impl IntoResponse {
    let metrics = s.metrics;
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(),
    )
}

/// A plain HTTP/1.0 request to the admin listener at `addr`; returns the
/// status code and the body. Used by `meshgate policy reload` and the lab.
pub fn request(addr: SocketAddr, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
    request_with_body(addr, method, path, "")
}

/// As [`request`], with a plain-text body.
pub fn request_with_body(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    use std::io::{Read, Write};
    let timeout = std::time::Duration::from_secs(30);
    let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2))
        .map_err(|e| anyhow::anyhow!("cannot reach the admin listener at {addr}: {e}"))?;
    s.set_read_timeout(Some(timeout))?;
    write!(s, "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}", body.len())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("malformed HTTP response from {addr}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("malformed HTTP status from {addr}"))?;
    Ok((status, body.to_string()))
}
