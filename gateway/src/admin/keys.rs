//! The epoch state and the orders that move it (`GET /keys`, `POST
//! /keys/order`): what `keys show`, `keys rotate`, `keys revoke`, `keys
//! apply` and `cert revoke` talk to.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::ask;
use super::{answer, refusal, wants_json, AppState};
use crate::keys::order::SignedOrder;
use crate::signal::node::NodeCommand;

/// `GET /keys`: the epoch state in force, as `keys show` prints it and
/// `keys rotate --state` reads it.
pub(super) async fn keys_handler(State(s): State<AppState>, headers: HeaderMap) -> Response {
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
pub(super) async fn order_handler(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: String,
) -> Response {
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
