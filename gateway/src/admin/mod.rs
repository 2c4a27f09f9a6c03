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
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use tokio::sync::mpsc::UnboundedSender;

mod keys;
mod ping;

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
    /// What this gateway is (`GET /status`).
    identity: Arc<crate::status::Identity>,
    /// Echoes through the SAs (`GET /ping`, control socket).
    pinger: Arc<crate::ping::Pinger>,
}

/// This gateway as the admin API shows it, and its echo sender.
pub struct ThisGateway {
    pub identity: crate::status::Identity,
    pub pinger: crate::ping::Pinger,
}

/// The admin listener and the control socket, bound: a gateway says it
/// is up only once both are (an address in use stops the start first).
pub struct Bound {
    tcp: tokio::net::TcpListener,
    control: crate::control::ControlListener,
    control_path: PathBuf,
}

impl Bound {
    /// Binds both listeners (within the control runtime).
    pub async fn bind(at: &Listeners) -> std::io::Result<Bound> {
        let group = match &at.control_group {
            None => None,
            Some(name) => Some(crate::control::group_id(name).ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, format!("no group {name}"))
            })?),
        };
        let control = crate::control::ControlListener::bind(&at.control, group)?;
        let tcp = tokio::net::TcpListener::bind(at.admin).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("binding the admin listener {}: {e}", at.admin),
            )
        })?;
        Ok(Bound {
            tcp,
            control,
            control_path: at.control.clone(),
        })
    }
}

/// Serves the admin API until the task is dropped, or one listener fails.
pub async fn serve(
    at: Bound,
    this: ThisGateway,
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
        .route("/keys", get(keys::keys_handler))
        .route("/cloud", get(cloud_handler))
        .route("/status", get(status_handler));
    let changes = Router::new()
        .route("/ping", get(ping::ping_handler))
        .route("/policy/reload", post(reload_handler))
        .route("/keys/order", post(keys::order_handler))
        .route("/keys/rotate", post(needs_an_order))
        .route("/keys/revoke", post(needs_an_order));
    let elsewhere = Router::new()
        .route("/ping", get(on_control_socket))
        .route("/policy/reload", post(on_control_socket))
        .route("/keys/order", post(on_control_socket))
        .route("/keys/rotate", post(on_control_socket))
        .route("/keys/revoke", post(on_control_socket));
    let state = AppState {
        metrics,
        policy,
        configured,
        control: at.control_path.clone(),
        node,
        members,
        cloud,
        identity: Arc::new(this.identity),
        pinger: Arc::new(this.pinger),
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
    tokio::select! {
        r = axum::serve(at.tcp, tcp_app) => r,
        r = axum::serve(at.control, control_app) => r,
    }
}

/// Whether the request asked for JSON (`Accept: application/json`).
fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.contains("application/json")))
}

/// An answer in the form asked for: `text`, or `value` as JSON. A
/// refusal in JSON is `{"error": "..."}` with the same status.
fn answer<T: serde::Serialize>(
    json: bool,
    status: StatusCode,
    text: String,
    value: &T,
) -> Response {
    if !json {
        return (status, text).into_response();
    }
    let body = if status.is_success() {
        serde_json::to_string_pretty(value)
    } else {
        serde_json::to_string_pretty(&serde_json::json!({ "error": text.trim_end() }))
    };
    match body {
        Ok(b) => (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            b + "\n",
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding JSON: {e}\n"),
        )
            .into_response(),
    }
}

/// A refusal in the form asked for.
fn refusal(json: bool, (status, text): (StatusCode, String)) -> Response {
    answer(json, status, text, &())
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
            "changes and pings go over the control socket {} (root and gateway.control_group only); the admin listener only reads\n",
            s.control.display()
        ),
    )
}

/// `GET /policy`: the policy in force and the one the config names.
async fn policy_handler(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let p = s.policy.in_force();
    let configured = configured_now(&s.configured);
    let mut text = format!("policy {} ({}) in force\n", p.name, p.hash);
    if p.name != configured {
        text.push_str(&format!(
            "the config names {configured}, which a restart loads (or now: meshgate policy reload --module {configured})\n"
        ));
    }
    let value = serde_json::json!({
        "running": p.name,
        "hash": p.hash,
        "configured": configured,
        "differs": p.name != configured,
    });
    answer(wants_json(&headers), StatusCode::OK, text, &value)
}

/// The policy source the config names now, as text.
fn configured_now(configured: &ConfiguredPolicy) -> String {
    match configured.read() {
        Ok(c) => c.to_string(),
        Err(p) => p.into_inner().to_string(),
    }
}

/// Reloads the policy from its configured source, or from the built-in
/// the request body names (or the configured file, by its absolute path):
/// 200 with what changed, or 422 with why the new one was refused (the
/// old one stays in force). No other file is read: the gateway runs as
/// root, and the file a reload may load is the one its config names.
async fn reload_handler(
    State(s): State<AppState>,
    uri: axum::http::Uri,
    body: String,
) -> impl IntoResponse {
    // `?force`: load it even if it withdraws every route.
    let force = uri
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "force" || kv == "force=1"));
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
    match policy.reload(source, force).await {
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

/// The members this one sees: state, since when, path health, record.
async fn members_handler(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let json = wants_json(&headers);
    match member_rows(&s) {
        Some(rows) => answer(json, StatusCode::OK, crate::mesh::render(&rows), &rows),
        None => refusal(
            json,
            (
                StatusCode::CONFLICT,
                "this gateway is not a mesh member ([signal] is not configured): `meshgate status` shows its configured peers\n".into(),
            ),
        ),
    }
}

/// The members as last observed, on a mesh member.
fn member_rows(s: &AppState) -> Option<Vec<crate::mesh::MemberRow>> {
    s.members.as_ref().map(|m| {
        m.lock()
            .map_or_else(|p| p.into_inner().clone(), |l| l.clone())
    })
}

/// How the route claims on the cloud stand: claimed, converged, and what
/// still fails.
async fn cloud_handler(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let json = wants_json(&headers);
    match &s.cloud {
        Some(status) => {
            let status = status.borrow().clone();
            answer(json, StatusCode::OK, status.to_string(), &status)
        }
        None => refusal(
            json,
            (
                StatusCode::CONFLICT,
                "this gateway claims no routes on a cloud ([cloud] is not configured)\n".into(),
            ),
        ),
    }
}

/// The status as of now.
fn status_now(s: &AppState) -> crate::status::Status {
    let in_force = s.policy.in_force();
    crate::status::collect(crate::status::Sources {
        identity: &s.identity,
        metrics: &s.metrics,
        members: member_rows(s),
        running: (in_force.name.clone(), in_force.hash.clone()),
        configured: configured_now(&s.configured),
        cloud: s.cloud.as_ref().map(|c| c.borrow().clone()),
    })
}

/// `GET /status`: this gateway, its peers (SAs, traffic, underlay), its
/// drops and its redundancy groups (see [`crate::status`]).
async fn status_handler(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let status = status_now(&s);
    answer(
        wants_json(&headers),
        StatusCode::OK,
        status.to_string(),
        &status,
    )
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

/// A read of the admin listener at `addr`, its answer in `format`.
pub fn read(
    addr: SocketAddr,
    path: &str,
    format: crate::control::Format,
) -> anyhow::Result<(u16, String)> {
    let s = connect(addr)?;
    crate::control::exchange_in(
        s,
        &format!("the admin listener {addr}"),
        ("GET", path, ""),
        format,
    )
}

fn connect(addr: SocketAddr) -> anyhow::Result<std::net::TcpStream> {
    let s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2))
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the admin listener at {addr}: {e} (is the gateway running? --admin is its gateway.admin; in the lab, run the command inside the appliance's namespace: ip netns exec NS meshgate ...)"
            )
        })?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    Ok(s)
}

/// As [`request`], with a plain-text body.
pub fn request_with_body(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let s = connect(addr)?;
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
