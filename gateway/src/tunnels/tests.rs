use super::*;
use crate::esp::{Backend, CipherSuite, Lifetime, LimitKind};

/// Tunnels as the tests (here and the member's simulations) use them:
/// AES-128-GCM, ESN, no configured lifetime, slots from 0.
pub(crate) fn tunnels() -> Tunnels {
    let sa = SaDefaults {
        suite: CipherSuite::Aes128Gcm,
        esn: true,
        backend: Backend::Ring,
        replay_window: 4096,
        lifetime: Lifetime::default(),
    };
    Tunnels::new(sa, GRACE, Slots::starting_at(0))
}

fn key(n: u8) -> KeyMaterial {
    KeyMaterial::new(CipherSuite::Aes128Gcm, &[n; 20]).unwrap()
}

fn info(id: &str, n: u8) -> MemberInfo {
    MemberInfo {
        id: id.into(),
        version: 1,
        region: format!("r{n}"),
        zone: String::new(),
        account: String::new(),
        role: "edge".into(),
        group: None,
        prefixes: vec![(format!("10.{n}.0.0").parse().unwrap(), 16)],
        endpoints: vec![(
            "internet".into(),
            format!("198.18.0.{n}:4500").parse().unwrap(),
        )],
        policy_version: 1,
        epoch: 1,
        ..Default::default()
    }
}

fn drain(t: &mut Tunnels) -> Vec<String> {
    std::iter::from_fn(|| t.poll_action())
        .map(|a| format!("{a:?}"))
        .collect()
}

#[test]
fn a_rekey_installs_before_it_switches_and_retires_the_old_inbound_after_the_grace() {
    let mut t = tunnels();
    let now = Instant::now();
    t.member(&info("b", 2));
    assert_eq!(
        drain(&mut t),
        [
            "Inbound::Peer(0, b)",
            "Outbound::Peer(0, b, 198.18.0.2:4500)"
        ]
    );
    t.install_inbound("b", 0x1001, key(1), 1);
    t.install_outbound("b", 0x2001, key(2), 1, now);
    assert_eq!(
        drain(&mut t),
        ["Inbound::Sa(0, 0x00001001)", "Outbound::Sa(0, 0x00002001)"]
    );
    assert!(t.keyed("b"));
    assert_eq!(t.poll_timeout(), None, "nothing to retire yet");

    // The rekey: the new inbound first, then the switch.
    t.install_inbound("b", 0x1002, key(3), 1);
    assert_eq!(drain(&mut t), ["Inbound::Sa(0, 0x00001002)"]);
    let switched = now + Duration::from_secs(3);
    t.install_outbound("b", 0x2002, key(4), 1, switched);
    assert_eq!(drain(&mut t), ["Outbound::Sa(0, 0x00002002)"]);
    assert_eq!(t.poll_timeout(), Some(switched + GRACE));
    t.handle_timeout(switched + GRACE - Duration::from_millis(1));
    assert!(drain(&mut t).is_empty(), "the old SA lives out its grace");
    t.handle_timeout(switched + GRACE);
    assert_eq!(
        drain(&mut t),
        ["Inbound::RemoveSa(0x00001001)", "Release(0x00001001)"]
    );
    assert_eq!(t.poll_timeout(), None);
}

#[test]
fn keys_negotiated_before_the_record_wait_for_the_endpoint() {
    let mut t = tunnels();
    let now = Instant::now();
    t.install_inbound("c", 0x1001, key(1), 1);
    t.install_outbound("c", 0x2001, key(2), 1, now);
    assert_eq!(
        drain(&mut t),
        ["Inbound::Peer(0, c)", "Inbound::Sa(0, 0x00001001)"],
        "the inbound side can receive at once; the outbound waits"
    );
    t.member(&info("c", 3));
    assert_eq!(
        drain(&mut t),
        [
            "Inbound::Peer(0, c)",
            "Outbound::Peer(0, c, 198.18.0.3:4500)",
            "Outbound::Sa(0, 0x00002001)"
        ]
    );
    // The same record again changes nothing.
    t.member(&info("c", 3));
    assert!(drain(&mut t).is_empty());
}

#[test]
fn a_member_that_goes_down_loses_every_sa_and_keeps_its_slot() {
    let mut t = tunnels();
    let now = Instant::now();
    t.member(&info("a", 1));
    t.member(&info("b", 2));
    t.install_inbound("b", 0x1001, key(1), 1);
    t.install_inbound("b", 0x1002, key(2), 1);
    t.install_outbound("b", 0x2002, key(3), 1, now);
    drain(&mut t);
    t.member_down("b");
    assert_eq!(
        drain(&mut t),
        [
            "Outbound::Remove(1)",
            "Inbound::Remove(1)",
            "Release(0x00001001)",
            "Release(0x00001002)"
        ]
    );
    assert!(!t.keyed("b"));
    assert_eq!(t.poll_timeout(), None, "no retirement left for a gone peer");
    t.member(&info("b", 2));
    assert_eq!(
        drain(&mut t),
        [
            "Inbound::Peer(1, b)",
            "Outbound::Peer(1, b, 198.18.0.2:4500)"
        ],
        "back in the same slot"
    );
}

#[test]
fn a_lifetime_event_rekeys_only_for_an_sa_in_use() {
    let mut t = tunnels();
    let now = Instant::now();
    t.member(&info("b", 2));
    t.install_inbound("b", 0x1001, key(1), 1);
    t.install_outbound("b", 0x2001, key(2), 1, now);
    t.install_inbound("b", 0x1002, key(3), 1);
    t.install_outbound("b", 0x2002, key(4), 1, now);
    drain(&mut t);
    let soft = |spi| LifetimeEvent::Soft {
        spi,
        kind: LimitKind::Packets,
    };
    t.lifetime(0, Direction::In, soft(0x1001));
    t.lifetime(0, Direction::Out, soft(0x2001));
    assert!(drain(&mut t).is_empty(), "replaced SAs need no rekey");
    t.lifetime(0, Direction::Out, soft(0x2002));
    assert_eq!(drain(&mut t), ["Rekey(b)"]);
    t.lifetime(0, Direction::In, soft(0x1002));
    assert_eq!(drain(&mut t), ["Rekey(b)"]);
    t.lifetime(7, Direction::In, soft(0x1002));
    assert!(drain(&mut t).is_empty(), "an unknown slot");
}

#[test]
fn revoking_an_epoch_removes_its_sas_at_once_and_rekeys_their_peers() {
    let mut t = tunnels();
    let now = Instant::now();
    for (id, n) in [("b", 2), ("c", 3)] {
        t.member(&info(id, n));
    }
    t.install_inbound("b", 0x1001, key(1), 1);
    t.install_outbound("b", 0x2001, key(2), 1, now);
    t.install_inbound("c", 0x1002, key(3), 2);
    t.install_outbound("c", 0x2002, key(4), 2, now);
    drain(&mut t);
    assert_eq!(t.epochs(), [(1, 2), (2, 2)]);
    t.revoke(1);
    assert_eq!(
        drain(&mut t),
        [
            "Outbound::ClearSa(0)",
            "Inbound::RemoveSa(0x00001001)",
            "Release(0x00001001)",
            "Rekey(b)"
        ]
    );
    assert!(!t.keyed("b"));
    assert!(t.keyed("c"), "epoch 2 is untouched");
    assert_eq!(t.epochs(), [(2, 2)]);
    t.rekey_stale(2);
    assert!(drain(&mut t).is_empty(), "c is on the current epoch");
    t.rekey_stale(3);
    assert_eq!(drain(&mut t), ["Rekey(c)"]);
}

#[test]
fn negotiated_sas_always_have_a_time_limit() {
    let t = tunnels();
    let p = t.params(0x1001, key(1));
    let soft = p.lifetime.soft.time.unwrap();
    assert!(
        soft <= Duration::from_secs(3600) && soft >= Duration::from_secs(3240),
        "rekey within the last 10% before 3600 s, at random: {soft:?}"
    );
    assert_eq!(p.lifetime.hard.time, Some(Duration::from_secs(3960)));
}

/// The policy's choice of underlay is where ESP goes: a peer moved from
/// `internet` to `dx` and back keeps its SA (only the destination changes,
/// so nothing in flight is lost); a label the peer does not have falls
/// back to `internet`.
#[test]
fn the_underlay_the_policy_chose_is_where_esp_goes_and_a_move_keeps_the_sa() {
    let mut t = tunnels();
    let now = Instant::now();
    let mut b = info("b", 2);
    b.endpoints
        .push(("dx".into(), "203.0.113.2:4500".parse().unwrap()));
    t.member(&b);
    t.install_outbound("b", 0x2001, key(2), 1, now);
    drain(&mut t);
    t.set_underlays([("b".to_string(), "dx".to_string())].into());
    t.member(&b);
    assert_eq!(drain(&mut t), ["Outbound::Peer(0, b, 203.0.113.2:4500)"]);
    t.member(&b);
    assert!(drain(&mut t).is_empty(), "the same choice again: nothing");
    t.set_underlays([("b".to_string(), "satellite".to_string())].into());
    t.member(&b);
    assert_eq!(drain(&mut t), ["Outbound::Peer(0, b, 198.18.0.2:4500)"]);
    assert!(t.keyed("b"), "the SA stays through both moves");
}

/// The underlay probes' keys follow the SAs held: one per SA, replaced on
/// a rekey once the old inbound SA retires, all gone with the member.
#[test]
fn probe_keys_come_and_go_with_the_sas() {
    let mut t = tunnels();
    let keys = crate::underlay::SharedProbeKeys::default();
    t.share_probe_keys(keys.clone());
    let now = Instant::now();
    t.member(&info("b", 2));
    t.install_inbound("b", 0x1001, key(1), 1);
    t.install_outbound("b", 0x2001, key(2), 1, now);
    drain(&mut t);
    {
        let k = keys.lock().unwrap();
        assert_eq!(k.len(), 2);
        assert_eq!(k.outbound("b").map(|(spi, _)| spi), Some(0x2001));
        assert_eq!(k.lookup(0x1001, false).map(|(p, _)| p), Some("b"));
        assert!(k.lookup(0x1001, true).is_none(), "inbound is not outbound");
    }
    t.install_inbound("b", 0x1002, key(3), 1);
    t.install_outbound("b", 0x2002, key(4), 1, now);
    drain(&mut t);
    assert_eq!(
        keys.lock().unwrap().len(),
        3,
        "the old inbound is still in its grace"
    );
    t.handle_timeout(now + GRACE);
    drain(&mut t);
    {
        let k = keys.lock().unwrap();
        assert_eq!(k.len(), 2);
        assert_eq!(k.outbound("b").map(|(spi, _)| spi), Some(0x2002));
        assert!(k.lookup(0x1001, false).is_none(), "retired with its SA");
    }
    t.member_down("b");
    drain(&mut t);
    assert!(keys.lock().unwrap().is_empty());
}
