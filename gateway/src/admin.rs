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
        .route("/keys", get(keys_handler))
        .route("/cloud", get(cloud_handler))
        .route("/status", get(status_handler));
    let changes = Router::new()
        .route("/ping", get(ping_handler))
        .route("/policy/reload", post(reload_handler))
        .route("/keys/order", post(order_handler))
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

/// `GET /keys`: the epoch state in force, as `keys show` prints it and
/// `keys rotate --state` reads it.
async fn keys_handler(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let json = wants_json(&headers);
    match ask(&s, NodeCommand::Epochs).await {
        Ok(order) => {
            let value = serde_json::json!({
                "serial": order.serial,
                "current": order.current,
                "floor": order.floor,
                "revoked": order.revoked,
                "revoked_certs": order.certs.iter().map(crate::keys::order::cert_hex).collect::<Vec<_>>(),
                "kms_data_keys": order.wrapped.iter().map(|(e, d)| serde_json::json!({
                    "epoch": e,
                    "digest": crate::keys::wrapped::to_hex(d),
                })).collect::<Vec<_>>(),
            });
            answer(json, StatusCode::OK, format!("{order}\n"), &value)
        }
        Err(e) => refusal(json, e),
    }
}

/// `POST /keys/order`: an epoch order signed by the mesh CA (its hex form
/// as the first line of the body), from `keys rotate`, `keys revoke` or
/// `keys apply`; with KMS epoch keys, lines `wrapped EPOCH HEX` after it
/// carry the data keys (ciphertext) the order names.
async fn order_handler(State(s): State<AppState>, headers: HeaderMap, body: String) -> Response {
    let json = wants_json(&headers);
    let mut taken = serde_json::json!({});
    let (status, text) = put_in_force(&s, &body, &mut taken).await;
    answer(json, status, text, &taken)
}

/// Puts an order (and its data keys) in force: the answer's status and
/// text, and its JSON form in `taken`.
async fn put_in_force(
    s: &AppState,
    body: &str,
    taken: &mut serde_json::Value,
) -> (StatusCode, String) {
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
    let report = match ask(s, |tx| NodeCommand::Order(order, tx)).await {
        Ok(Ok(r)) => {
            *taken = serde_json::json!({
                "serial": r.serial,
                "current": r.current,
                "floor": r.floor,
                "revoked": r.revoked,
                "rekeying": r.rekeying,
                "kms_data_keys_taken": [],
            });
            format!(
                "epoch {} in force; revoked: {}; order {}; {} {} rekeying; the mesh follows by gossip\n",
                r.current,
                revoked_text(r.floor, &r.revoked),
                r.serial,
                r.rekeying,
                if r.rekeying == 1 { "peer" } else { "peers" }
            )
        }
        // The order in force already (a resubmission): its keys may still
        // be new here.
        Ok(Err(crate::keys::order::OrderError::Stale { .. })) if !wrapped.is_empty() => {
            *taken = serde_json::json!({ "already_in_force": true, "kms_data_keys_taken": [] });
            "the order is in force already\n".to_string()
        }
        Ok(Err(e)) => return (StatusCode::UNPROCESSABLE_ENTITY, format!("refused: {e}\n")),
        Err(e) => return e,
    };
    let mut report = report;
    for (epoch, ciphertext) in wrapped {
        match ask(s, |tx| NodeCommand::Wrapped(epoch, ciphertext, tx)).await {
            Ok(Ok(())) => {
                if let Some(list) = taken
                    .get_mut("kms_data_keys_taken")
                    .and_then(|v| v.as_array_mut())
                {
                    list.push(epoch.into());
                }
                report.push_str(&format!("the KMS data key of epoch {epoch} taken; the mesh's members receive it from here\n"))
            }
            Ok(Err(e)) => {
                return (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("{report}refused the data key of epoch {epoch}: {e}\n"),
                )
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

/// `GET /status`: this gateway, its peers (SAs, traffic, underlay), its
/// drops and its redundancy groups (see [`crate::status`]).
async fn status_handler(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let in_force = s.policy.in_force();
    let status = crate::status::collect(crate::status::Sources {
        identity: &s.identity,
        metrics: &s.metrics,
        members: member_rows(&s),
        running: (in_force.name.clone(), in_force.hash.clone()),
        configured: configured_now(&s.configured),
        cloud: s.cloud.as_ref().map(|c| c.borrow().clone()),
    });
    answer(
        wants_json(&headers),
        StatusCode::OK,
        status.to_string(),
        &status,
    )
}

/// `GET /ping?member=ID[&count=N][&interval_ms=MS]` (control socket):
/// echoes through the SAs to the member, and the signalling path as
/// membership measures it.
async fn ping_handler(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let json = wants_json(&headers);
    let query: Vec<(&str, &str)> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let arg = |k: &str| query.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
    let number = |k: &str, default: u64, range: std::ops::RangeInclusive<u64>| match arg(k) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| format!("{k}={v} is outside {}..={}\n", range.start(), range.end())),
    };
    let (member, count, interval) = match (
        arg("member"),
        number("count", 5, 1..=u64::from(crate::ping::MAX_COUNT)),
        number("interval_ms", 200, 10..=10_000),
    ) {
        (Some(m), Ok(c), Ok(i)) => (m.to_string(), c as u32, i),
        (None, _, _) => return refusal(json, (StatusCode::BAD_REQUEST, "give member=ID\n".into())),
        (_, Err(e), _) | (_, _, Err(e)) => return refusal(json, (StatusCode::BAD_REQUEST, e)),
    };
    let in_force = s.policy.in_force();
    let status = crate::status::collect(crate::status::Sources {
        identity: &s.identity,
        metrics: &s.metrics,
        members: member_rows(&s),
        running: (in_force.name.clone(), in_force.hash.clone()),
        configured: configured_now(&s.configured),
        cloud: None,
    });
    let Some(peer) = status.peers.iter().find(|p| p.id == member) else {
        let known: Vec<&str> = status.peers.iter().map(|p| p.id.as_str()).collect();
        return refusal(
            json,
            (
                StatusCode::NOT_FOUND,
                format!(
                    "no peer or member {member} here (known: {})\n",
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                ),
            ),
        );
    };
    if !peer.sas.iter().any(|sa| sa.direction == "out") {
        return refusal(
            json,
            (
                StatusCode::CONFLICT,
                format!("this gateway holds no SA with {member} (its policy does not connect them, or they are not keyed yet): no tunnel path to measure\n"),
            ),
        );
    }
    let tunnel = match s
        .pinger
        .tunnel(&member, count, std::time::Duration::from_millis(interval))
        .await
    {
        Ok(t) => t,
        Err(e) => return refusal(json, (StatusCode::CONFLICT, format!("{e}\n"))),
    };
    let signalling = member_rows(&s)
        .and_then(|rows| rows.into_iter().find(|r| r.id == member))
        .map(|r| serde_json::json!({ "state": r.state, "rtt_ms": r.rtt_ms, "loss": r.loss }));
    let text = ping_text(&member, peer, &tunnel, signalling.as_ref());
    let value = serde_json::json!({
        "member": member,
        "underlay": peer.underlay,
        "endpoint": peer.endpoint,
        "tunnel": tunnel,
        "signalling": signalling,
    });
    answer(json, StatusCode::OK, text, &value)
}

/// `meshgate ping` for a person.
fn ping_text(
    member: &str,
    peer: &crate::status::PeerStatus,
    t: &crate::ping::TunnelPath,
    signalling: Option<&serde_json::Value>,
) -> String {
    let mut out = format!(
        "tunnel path to {member}, over {} to {}: requests on SPI {}, replies on SPI {}\n",
        peer.underlay.as_deref().unwrap_or("its endpoint"),
        peer.endpoint.as_deref().unwrap_or("-"),
        t.request_spi.as_deref().unwrap_or("-"),
        t.reply_spi.as_deref().unwrap_or("- (no reply)"),
    );
    for (i, rtt) in t.rtt_ms.iter().enumerate() {
        match rtt {
            Some(ms) => out.push_str(&format!("  echo {}: {ms:.3} ms\n", i + 1)),
            None => out.push_str(&format!("  echo {}: no reply within 1 s\n", i + 1)),
        }
    }
    let lost = t.sent - t.answered;
    out.push_str(&format!(
        "  {} sent, {} answered, {:.0}% lost",
        t.sent,
        t.answered,
        100.0 * f64::from(lost) / f64::from(t.sent.max(1))
    ));
    if let (Some(min), Some(avg), Some(max)) = (t.min_ms, t.avg_ms, t.max_ms) {
        out.push_str(&format!("; rtt min/avg/max {min:.3}/{avg:.3}/{max:.3} ms"));
    }
    out.push('\n');
    match signalling {
        Some(sig) => out.push_str(&format!(
            "signalling path (QUIC, membership's liveness probes, smoothed): {}, rtt {}, loss {:.1}%\n",
            sig["state"].as_str().unwrap_or("-"),
            sig["rtt_ms"].as_f64().map_or("not measured yet".into(), |r| format!("{r:.3} ms")),
            sig["loss"].as_f64().unwrap_or(0.0) * 100.0
        )),
        None => out.push_str("signalling path: none (a configured peer: no signalling channel)\n"),
    }
    out
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
