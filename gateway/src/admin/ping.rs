//! `GET /ping` (control socket): echoes through the SAs to a member, and
//! its signalling path as membership measures it (`meshgate ping`).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::{answer, refusal, wants_json, AppState};
use super::{member_rows, status_now};

/// `GET /ping?member=ID[&count=N][&interval_ms=MS]` (control socket):
/// echoes through the SAs to the member, and the signalling path as
/// membership measures it.
pub(super) async fn ping_handler(
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
    let status = status_now(&s);
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
