//! The admin API. What reads is on the admin listener (TCP, loopback or
//! a private address a Prometheus server scrapes): metrics, a health
//! check, the policy in force (`GET /policy`) and, on a mesh member, the
//! members it sees (`GET /members`). What changes the gateway or the mesh
//! goes over the [control socket](crate::control) only, which serves the
//! reads too: `POST /policy/reload` and, on a mesh member, epoch orders
//! signed by the mesh CA (`POST /keys/order`; `GET /keys` reads the state
//! in force, from which `keys rotate` and `keys revoke` make the next).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;

use tokio::sync::mpsc::UnboundedSender;

use crate::keys::order::SignedOrder;
use crate::metrics::Metrics;
use crate::policy::driver::PolicyHandle;
use crate::signal::node::NodeCommand;

/// The policy source the config names now: the only file a reload reads.
/// The config's watcher changes it when `[policy] module` changes.
pub type ConfiguredPolicy = Arc<std::sync::RwLock<crate::policy::PolicySource>>;

/// Where the admin API listens.
#[derive(Clone, Debug)]
pub struct Listeners {
    /// The read-only TCP listener.
    pub admin: SocketAddr,
    /// The control socket, and the group that may use it besides root.
    pub control: PathBuf,
    pub control_group: Option<String>,
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    policy: PolicyHandle,
    configured: ConfiguredPolicy,
    control: PathBuf,
    /// The signalling member and the member list, on a mesh member.
    node: Option<UnboundedSender<NodeCommand>>,
    members: Option<crate::mesh::MemberList>,
    /// How this gateway's route claims on the cloud stand (with `[cloud]`).
    cloud: Option<tokio::sync::watch::Receiver<crate::cloud::reconcile::Status>>,
}

/// Serves the admin API until the task is dropped, or one listener fails.
pub async fn serve(
    at: Listeners,
    configured: ConfiguredPolicy,
    metrics: Arc<Metrics>,
    policy: PolicyHandle,
    mesh: Option<(UnboundedSender<NodeCommand>, crate::mesh::MemberList)>,
    cloud: Option<tokio::sync::watch::Receiver<crate::cloud::reconcile::Status>>,
) -> std::io::Result<()> {
    let (node, members) = match mesh {
        Some((n, m)) => (Some(n), Some(m)),
        None => (None, None),
    };
    let reads = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/policy", get(policy_handler))
        .route("/members", get(members_handler))
        .route("/keys", get(keys_handler))
        .route("/cloud", get(cloud_handler))
        .route("/status", get(status_handler));
    let changes = Router::new()
        .route("/policy/reload", post(reload_handler))
        .route("/keys/order", post(order_handler))
        .route("/keys/rotate", post(needs_an_order))
        .route("/keys/revoke", post(needs_an_order));
    let elsewhere = Router::new()
        .route("/policy/reload", post(on_control_socket))
        .route("/keys/order", post(on_control_socket))
        .route("/keys/rotate", post(on_control_socket))
        .route("/keys/revoke", post(on_control_socket));
    let state = AppState {
        metrics,
        policy,
        configured,
        control: at.control.clone(),
        node,
        members,
        cloud,
    };
    let tcp_app = reads
        .clone()
        .merge(elsewhere)
        .with_state(state.clone())
        .layer(axum::middleware::map_response(signed));
    let control_app = reads
        .merge(changes)
        .with_state(state)
        .layer(axum::middleware::map_response(signed));
    let group = match &at.control_group {
        None => None,
        Some(name) => Some(crate::control::group_id(name).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, format!("no group {name}"))
        })?),
    };
    let control = crate::control::ControlListener::bind(&at.control, group)?;
    let tcp = tokio::net::TcpListener::bind(at.admin).await?;
    tokio::select! {
        r = axum::serve(tcp, tcp_app) => r,
        r = axum::serve(control, control_app) => r,
    }
}

/// Marks an answer as meshgate's (see [`crate::control::SIGNATURE`]).
async fn signed(mut r: axum::response::Response) -> axum::response::Response {
    r.headers_mut().insert(
        crate::control::SIGNATURE,
        axum::http::HeaderValue::from_static(env!("CARGO_PKG_VERSION")),
    );
    r
}

/// The unsigned epoch commands of before: refused, saying what replaced them.
async fn needs_an_order() -> impl IntoResponse {
    (
        StatusCode::GONE,
        "epochs move only by orders the mesh CA signs: meshgate keys rotate --ca-key CA_KEY (or keys revoke EPOCH --ca-key CA_KEY)\n",
    )
}

/// A change asked of the TCP listener: refused, and where to go instead.
async fn on_control_socket(State(s): State<AppState>) -> impl IntoResponse {
    (
        StatusCode::FORBIDDEN,
        format!(
            "changes go over the control socket {} (root and gateway.control_group only); the admin listener only reads\n",
            s.control.display()
        ),
    )
}

async fn policy_handler(State(s): State<AppState>) -> impl IntoResponse {
    let p = s.policy.in_force();
    (
        StatusCode::OK,
        format!("policy {} ({}) in force\n", p.name, p.hash),
    )
}

/// Reloads the policy from its configured source, or from the built-in
/// the request body names (or the configured file, by its absolute path):
/// 200 with what changed, or 422 with why the new one was refused (the
/// old one stays in force). No other file is read: the gateway runs as
/// root, and the file a reload may load is the one its config names.
async fn reload_handler(State(s): State<AppState>, body: String) -> impl IntoResponse {
    use crate::policy::PolicySource;
    let policy = s.policy.clone();
    let configured = match s.configured.read() {
        Ok(c) => c.clone(),
        Err(p) => p.into_inner().clone(),
    };
    let source = match Some(body.trim()).filter(|b| !b.is_empty()) {
        None => None,
        Some(m) => match PolicySource::parse(m, std::path::Path::new("/")) {
            Ok(b @ PolicySource::Builtin(_)) => Some(b),
            Ok(f) if f == configured && m.starts_with('/') => Some(f),
            Ok(_) => {
                return (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!(
                        "reload refused: {m} is not the configured policy ({configured}); a reload loads a built-in or the file [policy] module names (change it there to load another; the gateway follows the change)\n"
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

/// The signalling member, or why there is none.
fn member_channel(
    s: &AppState,
) -> Result<&tokio::sync::mpsc::UnboundedSender<NodeCommand>, (StatusCode, String)> {
    s.node.as_ref().ok_or((
        StatusCode::CONFLICT,
        "this gateway is not a mesh member ([signal] is not configured); its keys are configured\n"
            .into(),
    ))
}

/// Asks the member and waits for its answer.
async fn ask<T>(
    s: &AppState,
    command: impl FnOnce(tokio::sync::oneshot::Sender<T>) -> NodeCommand,
) -> Result<T, (StatusCode, String)> {
    let node = member_channel(s)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let stopped = || {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the signalling member is not running\n".to_string(),
        )
    };
    node.send(command(tx)).map_err(|_| stopped())?;
    rx.await.map_err(|_| stopped())
}

/// `GET /keys`: the epoch state in force, as `keys show` prints it and
/// `keys rotate --state` reads it.
async fn keys_handler(State(s): State<AppState>) -> impl IntoResponse {
    match ask(&s, NodeCommand::Epochs).await {
        Ok(order) => (StatusCode::OK, format!("{order}\n")),
        Err(e) => e,
    }
}

/// `POST /keys/order`: an epoch order signed by the mesh CA (its hex form
/// as the first line of the body), from `keys rotate`, `keys revoke` or
/// `keys apply`; with KMS epoch keys, lines `wrapped EPOCH HEX` after it
/// carry the data keys (ciphertext) the order names.
async fn order_handler(State(s): State<AppState>, body: String) -> impl IntoResponse {
    let mut lines = body.lines().filter(|l| !l.trim().is_empty());
    let order = match SignedOrder::from_hex(lines.next().unwrap_or_default()) {
        Ok(o) => o,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("refused: {e}\n")),
    };
    let mut wrapped = Vec::new();
    for (i, line) in lines.enumerate() {
        match parse_wrapped(line) {
            Some(w) => wrapped.push(w),
            None => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("refused: line {} is not `wrapped EPOCH HEX` (a KMS data key's ciphertext, at most {} bytes)\n", i + 2, crate::keys::wrapped::MAX_WRAPPED_LEN),
                )
            }
        }
    }
    let report = match ask(&s, |tx| NodeCommand::Order(order, tx)).await {
        Ok(Ok(r)) => format!(
            "epoch {} in force; revoked: {}; order {}; {} peer(s) rekeying; the mesh follows by gossip\n",
            r.current,
            revoked_text(r.floor, &r.revoked),
            r.serial,
            r.rekeying
        ),
        // The order in force already (a resubmission): its keys may still
        // be new here.
        Ok(Err(crate::keys::order::OrderError::Stale { .. })) if !wrapped.is_empty() => {
            "the order is in force already\n".to_string()
        }
        Ok(Err(e)) => return (StatusCode::UNPROCESSABLE_ENTITY, format!("refused: {e}\n")),
        Err(e) => return e,
    };
    let mut report = report;
    for (epoch, ciphertext) in wrapped {
        match ask(&s, |tx| NodeCommand::Wrapped(epoch, ciphertext, tx)).await {
            Ok(Ok(())) => report.push_str(&format!("the KMS data key of epoch {epoch} taken; the mesh's members receive it from here\n")),
            Ok(Err(e)) => {
                return (StatusCode::UNPROCESSABLE_ENTITY, format!("{report}refused the data key of epoch {epoch}: {e}\n"))
            }
            Err(e) => return e,
        }
    }
    (StatusCode::OK, report)
}

/// `wrapped EPOCH HEX`.
fn parse_wrapped(line: &str) -> Option<(crate::keys::Epoch, Vec<u8>)> {
    let mut w = line.split_whitespace();
    let (Some("wrapped"), Some(epoch), Some(hex), None) = (w.next(), w.next(), w.next(), w.next())
    else {
        return None;
    };
    let epoch = epoch.parse().ok()?;
    if hex.is_empty() || hex.len() > 2 * crate::keys::wrapped::MAX_WRAPPED_LEN {
        return None;
    }
    Some((epoch, crate::keys::wrapped::from_hex(hex)?))
}

/// `2 5` and, when a floor is set, `and every epoch below 3`.
fn revoked_text(floor: crate::keys::Epoch, revoked: &[crate::keys::Epoch]) -> String {
    let listed: Vec<String> = revoked.iter().map(ToString::to_string).collect();
    match (listed.is_empty(), floor) {
        (true, 0) => "none".into(),
        (true, f) => format!("every epoch below {f}"),
        (false, 0) => listed.join(" "),
        (false, f) => format!("{} and every epoch below {f}", listed.join(" ")),
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

/// How the route claims on the cloud stand: claimed, converged, and what
/// still fails.
async fn cloud_handler(State(s): State<AppState>) -> impl IntoResponse {
    match &s.cloud {
        Some(status) => (StatusCode::OK, status.borrow().to_string()),
        None => (
            StatusCode::CONFLICT,
            "this gateway claims no routes on a cloud ([cloud] is not configured)\n".into(),
        ),
    }
}

/// Per redundancy group who is active (as this gateway's policy decides),
/// and whether this gateway's route claims on the cloud have converged.
async fn status_handler(State(s): State<AppState>) -> impl IntoResponse {
    let mut out = String::new();
    let groups = s.metrics.cloud.active_members();
    if groups.is_empty() {
        out.push_str("redundancy groups: none in this gateway's view\n");
    } else {
        out.push_str("redundancy groups (as this gateway's policy decides):\n");
        for (group, active) in groups {
            out.push_str(&format!(
                "  {group:<20} active: {}\n",
                active.as_deref().unwrap_or("none (no member present)")
            ));
        }
    }
    match &s.cloud {
        Some(status) => out.push_str(&format!("cloud routes: {}", *status.borrow())),
        None => out.push_str("cloud routes: none ([cloud] is not configured)\n"),
    }
    (StatusCode::OK, out)
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
/// status code and the body. Used by the lab and `meshgate members`.
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
    let timeout = std::time::Duration::from_secs(30);
    let s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2))
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the admin listener at {addr}: {e} (is the gateway running? --admin is its gateway.admin; in the lab, run the command inside the appliance's namespace: ip netns exec NS meshgate ...)"
            )
        })?;
    s.set_read_timeout(Some(timeout))?;
    crate::control::exchange(s, &format!("the admin listener {addr}"), method, path, body)
}

/// As [`request_with_body`], to any HTTP server (the lab's Prometheus as
/// well as its gateways).
pub fn request_any(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2))
        .map_err(|e| anyhow::anyhow!("cannot reach {addr}: {e}"))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    crate::control::exchange_any(s, &addr.to_string(), method, path, body)
        .map(|(status, _, body)| (status, body))
}
