//! The key exchange between two negotiators in memory: messages passed by
//! hand, virtual time, no sockets.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::epoch::test_keys;
use super::*;
use crate::esp::{CipherSuite, KeyMaterial};

fn node(id: &str, master: u8) -> Negotiator {
    Negotiator::new(id, CipherSuite::Aes128Gcm, Arc::new(test_keys(master)), 1)
}

/// The SAs one side has installed, by SPI.
#[derive(Default)]
struct Sas {
    inbound: HashMap<u32, KeyMaterial>,
    outbound: Option<(u32, KeyMaterial)>,
    /// Event kinds in order, to check make-before-break.
    log: Vec<String>,
    failed: Vec<ExchangeError>,
}

/// Drains `n`'s events into `sas`; returns the messages it sends.
fn drain(n: &mut Negotiator, sas: &mut Sas) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(e) = n.poll_event() {
        match e {
            Event::Send { message, .. } => {
                sas.log.push("send".into());
                out.push(message);
            }
            Event::InstallInbound { spi, key, .. } => {
                sas.log.push(format!("in {spi:x}"));
                sas.inbound.insert(spi, key);
            }
            Event::InstallOutbound { spi, key, .. } => {
                sas.log.push(format!("out {spi:x}"));
                sas.outbound = Some((spi, key));
            }
            Event::RemoveInbound { spi, .. } => {
                sas.log.push(format!("remove {spi:x}"));
                sas.inbound.remove(&spi);
            }
            Event::Failed { error, .. } => sas.failed.push(error),
        }
    }
    out
}

/// Runs one exchange started by `a` to completion.
fn exchange(a: &mut Negotiator, sa: &mut Sas, b: &mut Negotiator, sb: &mut Sas, now: Instant) {
    exchange_started_by((a, sa, "a"), (b, sb, "b"), now);
}

/// One exchange from initiator `i` to responder `r`, each given with its
/// SAs and id.
fn exchange_started_by(
    (i, si, i_id): (&mut Negotiator, &mut Sas, &str),
    (r, sr, r_id): (&mut Negotiator, &mut Sas, &str),
    now: Instant,
) {
    i.initiate(r_id, now).unwrap();
    let init = drain(i, si);
    r.handle(i_id, &init[0], now).unwrap();
    let resp = drain(r, sr);
    i.handle(r_id, &resp[0], now).unwrap();
    let confirm = drain(i, si);
    r.handle(i_id, &confirm[0], now).unwrap();
    assert!(drain(r, sr).is_empty());
}

/// Each side sends on the SA the other receives on, with the same key.
fn keyed(sa: &Sas, sb: &Sas) -> bool {
    let pair = |from: &Sas, to: &Sas| {
        from.outbound
            .as_ref()
            .is_some_and(|(spi, k)| to.inbound.get(spi).is_some_and(|k2| k.same_as(k2)))
    };
    pair(sa, sb) && pair(sb, sa)
}

#[test]
fn an_exchange_keys_both_directions_with_distinct_keys_and_receiver_chosen_spis() {
    let (mut a, mut b) = (node("a", 1), node("b", 1));
    let (mut sa, mut sb) = (Sas::default(), Sas::default());
    exchange(&mut a, &mut sa, &mut b, &mut sb, Instant::now());
    assert!(keyed(&sa, &sb));
    let (a_out, b_out) = (sa.outbound.as_ref().unwrap(), sb.outbound.as_ref().unwrap());
    assert!(!a_out.1.same_as(&b_out.1), "one key per direction");
    assert!(a_out.0 > 255 && b_out.0 > 255 && a_out.0 != b_out.0);
    // Make-before-break: each side receives on the new SA before the other
    // sends on it.
    let b_in = format!("in {:x}", a_out.0);
    assert_eq!(sb.log, [b_in, "send".into(), format!("out {:x}", b_out.0)]);
    assert_eq!(
        sa.log,
        [
            "send".to_string(),
            format!("in {:x}", b_out.0),
            format!("out {:x}", a_out.0),
            "send".into()
        ]
    );
}

#[test]
fn a_hundred_rekeys_give_fresh_keys_and_spis_each_time() {
    let (mut a, mut b) = (node("a", 1), node("b", 1));
    let (mut sa, mut sb) = (Sas::default(), Sas::default());
    let mut seen_spis = std::collections::HashSet::new();
    let mut previous: Option<KeyMaterial> = None;
    let t0 = Instant::now();
    for i in 0..100u32 {
        // Alternate who starts, as either side's lifetime may run out first.
        let now = t0 + Duration::from_secs(u64::from(i));
        if i % 2 == 0 {
            exchange(&mut a, &mut sa, &mut b, &mut sb, now);
        } else {
            exchange_started_by((&mut b, &mut sb, "b"), (&mut a, &mut sa, "a"), now);
        }
        assert!(keyed(&sa, &sb), "rekey {i}");
        let (spi, key) = sa.outbound.clone().unwrap();
        assert!(seen_spis.insert(spi), "rekey {i} reused SPI {spi:#x}");
        assert!(
            !previous.as_ref().is_some_and(|p| p.same_as(&key)),
            "rekey {i} reused a key"
        );
        previous = Some(key);
        // The SA table retires the old inbound SAs once their grace period
        // is over, and gives their SPIs back.
        let live = (
            sb.outbound.as_ref().map(|o| o.0),
            sa.outbound.as_ref().map(|o| o.0),
        );
        for (mine, live, n) in [(&mut sa, live.0, &mut a), (&mut sb, live.1, &mut b)] {
            let old: Vec<u32> = mine
                .inbound
                .keys()
                .copied()
                .filter(|s| Some(*s) != live)
                .collect();
            for spi in old {
                mine.inbound.remove(&spi);
                n.release_spi(spi);
            }
        }
    }
}

#[test]
fn a_replayed_init_is_refused_and_changes_nothing() {
    let (mut a, mut b) = (node("a", 1), node("b", 1));
    let (mut sa, mut sb) = (Sas::default(), Sas::default());
    let now = Instant::now();
    a.initiate("b", now).unwrap();
    let init = drain(&mut a, &mut sa).remove(0);
    b.handle("a", &init, now).unwrap();
    drain(&mut b, &mut sb);
    let before = sb.inbound.len();
    assert_eq!(
        b.handle("a", &init, now).unwrap_err(),
        ExchangeError::Replay(u64::from_be_bytes(init[8..16].try_into().unwrap()))
    );
    assert!(drain(&mut b, &mut sb).is_empty());
    assert_eq!(sb.inbound.len(), before);
}

#[test]
fn a_peer_claiming_another_id_is_refused() {
    let (mut a, mut b) = (node("a", 1), node("b", 1));
    let mut sa = Sas::default();
    a.initiate("b", Instant::now()).unwrap();
    let init = drain(&mut a, &mut sa).remove(0);
    // The channel authenticated "c", who forwards a's init.
    assert_eq!(
        b.handle("c", &init, Instant::now()).unwrap_err(),
        ExchangeError::Impersonation {
            claimed: "a".into(),
            authenticated: "c".into()
        }
    );
    let mut other = node("x", 1);
    assert!(matches!(
        other.handle("a", &init, Instant::now()),
        Err(ExchangeError::NotForUs(r)) if r == "b"
    ));
}

#[test]
fn without_the_same_epoch_key_no_sa_forms() {
    // b holds another master key: the MACs do not verify, nothing is keyed.
    let (mut a, mut b) = (node("a", 1), node("b", 2));
    let (mut sa, mut sb) = (Sas::default(), Sas::default());
    let now = Instant::now();
    a.initiate("b", now).unwrap();
    let init = drain(&mut a, &mut sa).remove(0);
    b.handle("a", &init, now).unwrap();
    let resp = drain(&mut b, &mut sb).remove(0);
    assert_eq!(
        a.handle("b", &resp, now).unwrap_err(),
        ExchangeError::Authentication
    );
    assert!(sa.inbound.is_empty() && sa.outbound.is_none());
    // b's tentative inbound SA goes when its exchange times out.
    b.handle_timeout(now + Duration::from_secs(6));
    drain(&mut b, &mut sb);
    assert!(sb.inbound.is_empty() && sb.outbound.is_none());
    assert_eq!(sb.failed, [ExchangeError::Timeout]);
}

struct NoKeys;
impl KeyProvider for NoKeys {
    fn epoch_key(&self, _: Epoch) -> Result<EpochKey, EpochKeyError> {
        Err(EpochKeyError::MasterKey {
            path: "/etc/meshgate/master.key".into(),
            reason: "No such file or directory".into(),
        })
    }
    fn kind(&self) -> &'static str {
        "none"
    }
}

#[test]
fn an_appliance_without_the_epoch_key_forms_no_sa() {
    let mut a = Negotiator::new("a", CipherSuite::Aes128Gcm, Arc::new(NoKeys), 1);
    let e = a.initiate("b", Instant::now()).unwrap_err();
    assert_eq!(e.kind(), "no_epoch_key");
    assert!(e.to_string().contains("master.key"), "{e}");
    assert!(a.poll_event().is_none(), "nothing sent");
    // Nor does it answer.
    let (mut b, mut sb) = (node("b", 1), Sas::default());
    b.initiate("a", Instant::now()).unwrap();
    let init = drain(&mut b, &mut sb).remove(0);
    assert_eq!(
        a.handle("b", &init, Instant::now()).unwrap_err().kind(),
        "no_epoch_key"
    );
    assert!(a.poll_event().is_none());
}

#[test]
fn revoked_epochs_are_refused_and_rotation_moves_on() {
    let (mut a, mut b) = (node("a", 1), node("b", 1));
    let (mut sa, mut sb) = (Sas::default(), Sas::default());
    b.revoke(1);
    a.initiate("b", Instant::now()).unwrap();
    let init = drain(&mut a, &mut sa).remove(0);
    assert_eq!(
        b.handle("a", &init, Instant::now()).unwrap_err(),
        ExchangeError::Revoked(1)
    );
    a.revoke(1);
    assert_eq!(
        a.initiate("x", Instant::now()).unwrap_err(),
        ExchangeError::Revoked(1)
    );
    // A new epoch: exchanges work again, with keys from the new epoch.
    a.set_epoch(2, Instant::now());
    b.set_epoch(2, Instant::now());
    a.handle_timeout(Instant::now() + Duration::from_secs(10));
    drain(&mut a, &mut sa);
    exchange(&mut a, &mut sa, &mut b, &mut sb, Instant::now());
    assert!(keyed(&sa, &sb));
}

/// Revocations below a floor are one number, not a set that grows with
/// every epoch ever revoked: the set stays bounded however long the mesh
/// runs, and an exchange under way of an epoch below the floor ends.
#[test]
fn a_floor_revokes_every_epoch_below_it_and_bounds_the_set() {
    let (mut a, mut sa) = (node("a", 1), Sas::default());
    for e in 1..=500 {
        a.revoke(e);
    }
    assert_eq!(a.revoked_len(), 500);
    a.set_epoch(501, Instant::now());
    a.initiate("b", Instant::now()).unwrap();
    drain(&mut a, &mut sa);
    a.set_epoch(502, Instant::now());
    a.revoke_below(502);
    assert_eq!(a.revoked_len(), 0, "every listed epoch is below the floor");
    let failed = std::iter::from_fn(|| a.poll_event()).any(|e| {
        matches!(
            e,
            Event::Failed {
                error: ExchangeError::Revoked(501),
                ..
            }
        )
    });
    assert!(failed, "the exchange under epoch 501 ended");
    assert_eq!(
        a.initiate("c", Instant::now()),
        Ok(()),
        "epoch 502 is not revoked"
    );
    let mut b = node("b", 1);
    b.revoke_below(10);
    assert_eq!(
        b.initiate("a", Instant::now()).unwrap_err(),
        ExchangeError::Revoked(1)
    );
}

/// An init under the epoch an order just moved the initiator to, reaching
/// a member the order has not reached yet, is answered when that member
/// moves too (within `AHEAD_WAIT`), not left to time out.
#[test]
fn an_init_just_ahead_is_answered_once_this_member_moves_to_its_epoch() {
    let now = Instant::now();
    let wait = super::exchange::AHEAD_WAIT;
    for (moves_after, answered) in [(Duration::from_millis(300), true), (wait, false)] {
        let (mut a, mut b) = (node("a", 1), node("b", 1));
        let (mut sa, mut sb) = (Sas::default(), Sas::default());
        a.set_epoch(2, now);
        a.initiate("b", now).unwrap();
        let init = drain(&mut a, &mut sa).remove(0);
        assert_eq!(b.handle("a", &init, now), Ok(()), "kept, not refused");
        assert!(drain(&mut b, &mut sb).is_empty(), "not answered yet");
        b.set_epoch(2, now + moves_after);
        let response = drain(&mut b, &mut sb);
        assert_eq!(
            !response.is_empty(),
            answered,
            "moved after {moves_after:?}"
        );
        if answered {
            a.handle("b", &response[0], now + moves_after).unwrap();
            let confirm = drain(&mut a, &mut sa).remove(0);
            b.handle("a", &confirm, now + moves_after).unwrap();
            drain(&mut b, &mut sb);
            assert!(keyed(&sa, &sb));
        }
    }
    // Far ahead (a misconfigured member), or revoked: refused at once.
    let (mut a, mut b) = (node("a", 1), node("b", 1));
    let mut sa = Sas::default();
    a.set_epoch(9, now);
    a.initiate("b", now).unwrap();
    let init = drain(&mut a, &mut sa).remove(0);
    assert!(matches!(
        b.handle("a", &init, now),
        Err(ExchangeError::Epoch { .. })
    ));
}

/// What the negotiator keeps per peer (the exchange ids seen, an init
/// kept for an epoch ahead) goes when the member forgets the peer: with
/// appliances replaced over months, the tables would otherwise grow with
/// every member ever met.
#[test]
fn what_is_kept_per_peer_goes_when_the_peer_is_forgotten() {
    let now = Instant::now();
    let mut b = node("b", 1);
    for i in 0..100 {
        let peer = format!("p{i}");
        let mut a = node(&peer, 1);
        let mut sa = Sas::default();
        a.initiate("b", now).unwrap();
        let init = drain(&mut a, &mut sa).remove(0);
        b.handle(&peer, &init, now).unwrap();
    }
    let mut ahead = node("q", 1);
    let mut sq = Sas::default();
    ahead.set_epoch(2, now);
    ahead.initiate("b", now).unwrap();
    let init = drain(&mut ahead, &mut sq).remove(0);
    b.handle("q", &init, now).unwrap();
    assert!(b.peers_kept() > 100, "{}", b.peers_kept());
    for i in 0..100 {
        b.forget(&format!("p{i}"));
    }
    b.forget("q");
    assert_eq!(b.peers_kept(), 0);
}

#[test]
fn simultaneous_starts_end_in_one_exchange() {
    let (mut a, mut b) = (node("a", 1), node("b", 1));
    let (mut sa, mut sb) = (Sas::default(), Sas::default());
    let now = Instant::now();
    a.initiate("b", now).unwrap();
    b.initiate("a", now).unwrap();
    let from_a = drain(&mut a, &mut sa).remove(0);
    let from_b = drain(&mut b, &mut sb).remove(0);
    // a's id is lower: a refuses b's init, b gives its own up and answers.
    assert_eq!(
        a.handle("b", &from_b, now).unwrap_err(),
        ExchangeError::Collision
    );
    b.handle("a", &from_a, now).unwrap();
    let resp = drain(&mut b, &mut sb).remove(0);
    a.handle("b", &resp, now).unwrap();
    let confirm = drain(&mut a, &mut sa).pop().unwrap();
    b.handle("a", &confirm, now).unwrap();
    drain(&mut b, &mut sb);
    assert!(keyed(&sa, &sb));
    assert_eq!(b.poll_timeout(), None, "b's own exchange was dropped");
}

#[test]
fn tampered_and_stray_messages_are_refused() {
    let (mut a, mut b) = (node("a", 1), node("b", 1));
    let (mut sa, mut sb) = (Sas::default(), Sas::default());
    let now = Instant::now();
    a.initiate("b", now).unwrap();
    let init = drain(&mut a, &mut sa).remove(0);
    // A flipped bit in the initiator's public key: b answers, but the keys
    // differ and a refuses the response.
    let mut bad = init.clone();
    bad[60] ^= 1;
    b.handle("a", &bad, now).unwrap();
    let resp = drain(&mut b, &mut sb).remove(0);
    assert_eq!(
        a.handle("b", &resp, now).unwrap_err(),
        ExchangeError::Authentication
    );
    // A response or confirm for nothing under way.
    assert_eq!(
        a.handle("b", &resp, now).unwrap_err(),
        ExchangeError::Unexpected("response")
    );
    let mut confirm = resp.clone();
    confirm[5] = 3;
    confirm[7] = 40;
    confirm.truncate(48);
    assert_eq!(
        b.handle("x", &confirm, now).unwrap_err(),
        ExchangeError::Unexpected("confirm")
    );
    assert_eq!(b.handle("a", b"junk", now).unwrap_err().kind(), "malformed");
    assert_eq!(
        b.handle("a", &[0u8; 4096], now).unwrap_err().kind(),
        "malformed"
    );
}

#[test]
fn unanswered_exchanges_time_out_and_free_their_spi() {
    let mut a = node("a", 1);
    let mut sa = Sas::default();
    let now = Instant::now();
    a.initiate("b", now).unwrap();
    drain(&mut a, &mut sa);
    assert_eq!(a.poll_timeout(), Some(now + Duration::from_secs(5)));
    a.handle_timeout(now + Duration::from_secs(4));
    assert!(a.poll_event().is_none());
    a.handle_timeout(now + Duration::from_secs(5));
    drain(&mut a, &mut sa);
    assert_eq!(sa.failed, [ExchangeError::Timeout]);
    assert_eq!(a.poll_timeout(), None);
}

#[test]
fn no_key_bytes_in_debug_output() {
    let (mut a, mut b) = (node("a", 1), node("b", 1));
    let now = Instant::now();
    a.initiate("b", now).unwrap();
    let Some(Event::Send { message, .. }) = a.poll_event() else {
        panic!("a sends its init")
    };
    b.handle("a", &message, now).unwrap();
    let Some(e @ Event::InstallInbound { .. }) = b.poll_event() else {
        panic!("b installs its inbound SA first")
    };
    let Event::InstallInbound { key, .. } = &e else {
        unreachable!()
    };
    let text = format!("{e:?}");
    assert!(text.contains("redacted"), "{text}");
    assert!(!text.contains(&key.fingerprint()));
}

#[test]
fn negotiated_keys_carry_esp_both_ways() {
    use crate::esp::{
        Backend, InboundSa, Lifetime, OutboundSa, SaParams, ESP_HEADER_LEN, MAX_TRAILER_LEN,
        NEXT_HEADER_IPV4,
    };
    let (mut a, mut b) = (node("a", 1), node("b", 1));
    let (mut sa, mut sb) = (Sas::default(), Sas::default());
    let now = Instant::now();
    exchange(&mut a, &mut sa, &mut b, &mut sb, now);
    let params = |spi: u32, key: &KeyMaterial| SaParams {
        spi,
        suite: CipherSuite::Aes128Gcm,
        key: key.clone(),
        esn: true,
        backend: Backend::Ring,
        lifetime: Lifetime::default(),
        replay_window: 1024,
    };
    for (from, to) in [(&sa, &sb), (&sb, &sa)] {
        let (spi, key) = from.outbound.as_ref().unwrap();
        let mut out = OutboundSa::new(params(*spi, key), now).unwrap();
        let mut inb = InboundSa::new(params(*spi, &to.inbound[spi]), now).unwrap();
        let inner: Vec<u8> = (0..60u8).collect();
        let mut buf = vec![0u8; ESP_HEADER_LEN + inner.len() + MAX_TRAILER_LEN];
        buf[ESP_HEADER_LEN..][..inner.len()].copy_from_slice(&inner);
        let sealed = out
            .seal(now, &mut buf, inner.len(), NEXT_HEADER_IPV4)
            .unwrap();
        let opened = inb.open(now, &mut buf[..sealed.len]).unwrap();
        assert_eq!(&buf[opened.inner], &inner[..]);
    }
}

/// `a` ("a") starts an exchange and `b` ("b") answers it; returns b's
/// response, not yet delivered.
fn answered(
    a: &mut Negotiator,
    sa: &mut Sas,
    b: &mut Negotiator,
    sb: &mut Sas,
    now: Instant,
) -> Vec<u8> {
    a.initiate("b", now).unwrap();
    let init = drain(a, sa).remove(0);
    b.handle("a", &init, now).unwrap();
    drain(b, sb).remove(0)
}

#[test]
fn revoking_an_epoch_ends_its_exchanges_under_way_and_a_late_confirm_installs_nothing() {
    let now = Instant::now();
    let (mut a, mut b) = (node("a", 7), node("b", 7));
    let (mut sa, mut sb) = (Sas::default(), Sas::default());
    let response = answered(&mut a, &mut sa, &mut b, &mut sb, now);
    assert_eq!(sb.inbound.len(), 1, "b receives on the new SA already");
    a.handle("b", &response, now).unwrap();
    let confirm = drain(&mut a, &mut sa).remove(0);
    // Epoch 1 is revoked at b before the confirm arrives.
    b.revoke(1);
    drain(&mut b, &mut sb);
    assert!(sb.inbound.is_empty(), "its inbound SA is removed at once");
    assert_eq!(sb.failed, [ExchangeError::Revoked(1)]);
    assert!(b.handle("a", &confirm, now).is_err());
    drain(&mut b, &mut sb);
    assert!(
        sb.outbound.is_none(),
        "no SA of a revoked epoch is installed"
    );
}

#[test]
fn a_failed_response_is_reported_so_the_pair_is_tried_again() {
    let now = Instant::now();
    // b derives with another master key: a's check of b's MAC fails.
    let (mut a, mut b) = (node("a", 7), node("b", 8));
    let (mut sa, mut sb) = (Sas::default(), Sas::default());
    let response = answered(&mut a, &mut sa, &mut b, &mut sb, now);
    assert_eq!(
        a.handle("b", &response, now),
        Err(ExchangeError::Authentication)
    );
    drain(&mut a, &mut sa);
    assert_eq!(sa.failed, [ExchangeError::Authentication]);
    assert!(sa.outbound.is_none() && sa.inbound.is_empty());
}

#[test]
fn a_member_answering_an_exchange_starts_none_of_its_own() {
    let now = Instant::now();
    let (mut a, mut b) = (node("a", 7), node("b", 7));
    let (mut sa, mut sb) = (Sas::default(), Sas::default());
    answered(&mut a, &mut sa, &mut b, &mut sb, now);
    b.initiate("a", now).unwrap();
    assert!(
        drain(&mut b, &mut sb).is_empty(),
        "b is confirming a's exchange: no second one"
    );
}

/// The responder answers only its current epoch, and the one before for
/// [`EPOCH_GRACE`](super::exchange::EPOCH_GRACE) after a rotation: an
/// initiator cannot pick an old epoch, nor one the mesh has not moved to.
/// (Before, any epoch whose key could be had was answered.)
#[test]
fn an_exchange_is_answered_only_under_the_current_epoch_or_the_one_before_in_its_grace() {
    let t0 = Instant::now();
    let grace = super::exchange::EPOCH_GRACE;
    let (mut a, mut b) = (node("a", 1), node("b", 1));
    let (mut sa, mut sb) = (Sas::default(), Sas::default());
    // a picks an epoch b has not moved to.
    a.set_epoch(7, t0);
    a.initiate("b", t0).unwrap();
    let init = drain(&mut a, &mut sa).remove(0);
    assert_eq!(
        b.handle("a", &init, t0).unwrap_err(),
        ExchangeError::Epoch { theirs: 7, ours: 1 }
    );
    // b moves to 2; a, not yet told, starts under 1: answered during the
    // grace, refused after it.
    let (mut a, mut sa) = (node("a", 1), Sas::default());
    b.set_epoch(2, t0);
    a.initiate("b", t0).unwrap();
    let init = drain(&mut a, &mut sa).remove(0);
    assert_eq!(
        b.handle("a", &init, t0 + grace).unwrap_err(),
        ExchangeError::Epoch { theirs: 1, ours: 2 }
    );
    a.handle_timeout(t0 + Duration::from_secs(10));
    drain(&mut a, &mut sa);
    exchange(
        &mut a,
        &mut sa,
        &mut b,
        &mut sb,
        t0 + Duration::from_secs(10),
    );
    assert!(keyed(&sa, &sb), "the epoch before is answered in its grace");
    // Two rotations on, epoch 1 is no longer the one before.
    b.set_epoch(3, t0 + Duration::from_secs(20));
    let (mut a, mut sa) = (node("a", 1), Sas::default());
    a.initiate("b", t0 + Duration::from_secs(21)).unwrap();
    let init = drain(&mut a, &mut sa).remove(0);
    assert_eq!(
        b.handle("a", &init, t0 + Duration::from_secs(21))
            .unwrap_err(),
        ExchangeError::Epoch { theirs: 1, ours: 3 }
    );
}
