//! The signalling channel with the real parts: QUIC over loopback between
//! endpoints in this process, certificates from a CA made for the test,
//! the key-exchange core on both ends.

use std::net::SocketAddr;
use std::time::Instant;

use super::messages::{self, Kind, MessageError};
use super::transport::*;
use crate::identity::{init_ca, issue, Claims};

struct Mesh {
    dir: std::path::PathBuf,
}

impl Mesh {
    fn new(name: &str) -> Mesh {
        let dir =
            std::env::temp_dir().join(format!("meshgate-transport-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        init_ca(&dir, 30).unwrap();
        Mesh { dir }
    }

    fn member(&self, id: &str) -> Credentials {
        let claims = Claims {
            id: id.into(),
            region: "eu-west-1".into(),
            role: "edge".into(),
            prefixes: vec!["10.0.0.0/8".parse().unwrap()],
        };
        let (cert, key) = issue(&self.dir, &claims, &self.dir, 30).unwrap();
        Credentials::load(&self.dir.join("ca.pem"), &cert, &key).unwrap()
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn local() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[tokio::test]
async fn members_of_one_mesh_connect_and_learn_who_the_other_is() {
    let mesh = Mesh::new("ok");
    let (a, b) = (mesh.member("region-1"), mesh.member("region-2"));
    let (ea, eb) = (
        endpoint(&a, local()).unwrap(),
        endpoint(&b, local()).unwrap(),
    );
    let b_addr = eb.local_addr().unwrap();
    let server = async {
        let incoming = eb.accept().await.unwrap();
        accept(incoming, &b).await.unwrap()
    };
    let ((_, seen_by_a), (_, seen_by_b)) = tokio::join!(
        async { connect(&ea, &a, "region-2", b_addr).await.unwrap() },
        server
    );
    assert_eq!(seen_by_a.claims.id, "region-2");
    assert_eq!(seen_by_b.claims.id, "region-1");
}

#[tokio::test]
async fn the_wrong_member_at_an_address_is_refused() {
    let mesh = Mesh::new("wrong");
    let (a, b) = (mesh.member("region-1"), mesh.member("region-2"));
    let (ea, eb) = (
        endpoint(&a, local()).unwrap(),
        endpoint(&b, local()).unwrap(),
    );
    let b_addr = eb.local_addr().unwrap();
    tokio::spawn(async move {
        while let Some(i) = eb.accept().await {
            let _ = i.await;
        }
    });
    let e = connect(&ea, &a, "region-3", b_addr)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.starts_with(&format!("connecting to region-3 at {b_addr}:")),
        "{e}"
    );
    assert!(
        e.contains("certificate not valid for name \"region-3.member.meshgate\""),
        "{e}"
    );
}

#[tokio::test]
async fn an_appliance_of_another_mesh_gets_no_connection() {
    let (ours, theirs) = (Mesh::new("ours"), Mesh::new("theirs"));
    let b = ours.member("region-2");
    let intruder = theirs.member("region-1");
    let (ei, eb) = (
        endpoint(&intruder, local()).unwrap(),
        endpoint(&b, local()).unwrap(),
    );
    let b_addr = eb.local_addr().unwrap();
    let server = async {
        let incoming = eb.accept().await.unwrap();
        accept(incoming, &b).await.err().unwrap().to_string()
    };
    let (client, server) = tokio::join!(connect(&ei, &intruder, "region-2", b_addr), server);
    assert!(client.is_err());
    assert!(
        server.starts_with("a connection from 127.0.0.1:"),
        "{server}"
    );
    assert!(
        server.contains("invalid peer certificate: UnknownIssuer"),
        "{server}"
    );
}

#[tokio::test]
async fn sas_are_negotiated_over_the_channel() {
    use crate::esp::CipherSuite;
    use crate::keys::{epoch::test_keys, Event, Negotiator};
    use std::sync::Arc;

    let mesh = Mesh::new("kx");
    let (a, b) = (mesh.member("region-1"), mesh.member("region-2"));
    let (ea, eb) = (
        endpoint(&a, local()).unwrap(),
        endpoint(&b, local()).unwrap(),
    );
    let b_addr = eb.local_addr().unwrap();
    let ((conn_a, b_is), (conn_b, a_is)) = tokio::join!(
        async { connect(&ea, &a, "region-2", b_addr).await.unwrap() },
        async { accept(eb.accept().await.unwrap(), &b).await.unwrap() }
    );
    let node = |id: &str| Negotiator::new(id, CipherSuite::Aes128Gcm, Arc::new(test_keys(9)), 1);
    let (mut na, mut nb) = (node("region-1"), node("region-2"));
    let mut installed: Vec<(char, &'static str, u32, crate::esp::KeyMaterial)> = Vec::new();
    // Carries out one side's events: messages go over its connection.
    async fn flush(
        who: char,
        n: &mut Negotiator,
        conn: &quinn::Connection,
        installed: &mut Vec<(char, &'static str, u32, crate::esp::KeyMaterial)>,
    ) {
        while let Some(e) = n.poll_event() {
            match e {
                Event::Send { message, .. } => messages::send(conn, Kind::KeyExchange, &message)
                    .await
                    .unwrap(),
                Event::InstallInbound { spi, key, .. } => installed.push((who, "in", spi, key)),
                Event::InstallOutbound { spi, key, .. } => installed.push((who, "out", spi, key)),
                other => panic!("{other:?}"),
            }
        }
    }
    async fn next(conn: &quinn::Connection) -> Vec<u8> {
        let (kind, body) = messages::read(conn.accept_uni().await.unwrap())
            .await
            .unwrap();
        assert_eq!(kind, Kind::KeyExchange);
        body
    }
    let now = Instant::now();
    na.initiate(&b_is.claims.id, now).unwrap();
    flush('a', &mut na, &conn_a, &mut installed).await;
    let init = next(&conn_b).await;
    nb.handle(&a_is.claims.id, &init, now).unwrap();
    flush('b', &mut nb, &conn_b, &mut installed).await;
    let resp = next(&conn_a).await;
    na.handle(&b_is.claims.id, &resp, now).unwrap();
    flush('a', &mut na, &conn_a, &mut installed).await;
    let confirm = next(&conn_b).await;
    nb.handle(&a_is.claims.id, &confirm, now).unwrap();
    flush('b', &mut nb, &conn_b, &mut installed).await;
    assert_eq!(installed.len(), 4);
    for (who, dir, spi, key) in &installed {
        if *dir == "out" {
            let peer_in = installed
                .iter()
                .find(|(w, d, s, _)| w != who && *d == "in" && s == spi)
                .unwrap_or_else(|| {
                    panic!("{who} sends on {spi:#x}, which the other does not receive on")
                });
            assert!(peer_in.3.same_as(key));
        }
    }

    // A message past its kind's limit, or of no known kind, is refused
    // without being read whole; the connection stays up.
    messages::send(&conn_a, Kind::KeyExchange, &[0u8; 4096])
        .await
        .unwrap();
    let e = messages::read(conn_b.accept_uni().await.unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            MessageError::Oversized {
                max: crate::keys::message::MAX_MESSAGE_LEN,
                ..
            }
        ),
        "{e}"
    );
    let mut s = conn_a.open_uni().await.unwrap();
    s.write_all(&[9, 1, 2, 3]).await.unwrap();
    s.finish().unwrap();
    let e = messages::read(conn_b.accept_uni().await.unwrap())
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "unknown message kind 9");
    messages::send(&conn_a, Kind::KeyExchange, b"still here")
        .await
        .unwrap();
    assert_eq!(next(&conn_b).await, b"still here");
}

/// Four members over real QUIC on loopback: three join through the first,
/// all learn of each other and key every pair (6 pairs, 12 SAs, each side
/// sending on the SA the other receives on); one stops and the others
/// declare it down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_join_through_a_seed_key_every_pair_and_see_a_stopped_one_go_down() {
    mesh_of(4).await;
}

/// The same with 30 members (435 pairs): `cargo test -p meshgate --release
/// --lib mesh_of_30 -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn mesh_of_30_keys_every_pair() {
    mesh_of(30).await;
}

async fn mesh_of(n: usize) {
    use super::node::{run, NodeConfig};
    use crate::esp::{CipherSuite, KeyMaterial};
    use crate::keys::{epoch::test_keys, Event};
    use crate::member::NodeEvent;
    use crate::membership::info::MemberInfo;
    use crate::membership::liveness::LivenessSettings;
    use crate::membership::{MembershipEvent, Settings};
    use std::collections::{BTreeSet, HashMap};
    use std::sync::Arc;
    use std::time::Duration;

    let mesh = Mesh::new("nodes");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, NodeEvent)>();
    let mut tasks = HashMap::new();
    let mut seed: Option<(String, SocketAddr)> = None;
    let provider: Arc<dyn crate::keys::KeyProvider> = Arc::new(test_keys(4));
    for i in 1..=n {
        let id = format!("m{i}");
        let info = MemberInfo {
            id: id.clone(),
            version: 1,
            // As the test certificates say (records at odds with their
            // member's certificate are refused).
            region: "eu-west-1".into(),
            zone: "eu-west-1a".into(),
            account: "123456789012".into(),
            role: "edge".into(),
            group: None,
            prefixes: vec![(std::net::IpAddr::from([10, i as u8, 0, 0]), 16)],
            endpoints: vec![],
            policy_version: 1,
            epoch: 1,
            ..Default::default()
        };
        let cfg = NodeConfig {
            kms: None,
            creds: Arc::new(mesh.member(&id)),
            listen: local(),
            discovery: Arc::new(super::discovery::StaticSeeds(
                seed.iter().cloned().collect(),
            )),
            info,
            settings: Settings::default(),
            liveness: Some(LivenessSettings::default()),
            keys: Some((provider.clone(), 1, CipherSuite::Aes128Gcm)),
            tunnels: None,
        };
        let (events, mut ev_rx) = tokio::sync::mpsc::unbounded_channel();
        let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
        let (commands, command_rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            // Kept for the life of the member, so its command channel stays open.
            let _commands = commands;
            run(cfg, events, command_rx, bound_tx).await
        });
        let addr = bound_rx.await.unwrap();
        seed.get_or_insert((id.clone(), addr));
        let (tx, me) = (tx.clone(), id.clone());
        tokio::spawn(async move {
            while let Some(e) = ev_rx.recv().await {
                let _ = tx.send((me.clone(), e));
            }
        });
        tasks.insert(id, task);
    }
    let started = std::time::Instant::now();
    let mut up: BTreeSet<(String, String)> = BTreeSet::new();
    let mut inbound: HashMap<(String, u32), KeyMaterial> = HashMap::new();
    let mut outbound: HashMap<(String, String), (u32, KeyMaterial)> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let pairs = n * (n - 1);
    while up.len() < pairs || outbound.len() < pairs {
        let (who, e) = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("after 10 s: {} up, {} SAs out", up.len(), outbound.len()))
            .unwrap();
        match e {
            NodeEvent::Membership(MembershipEvent::Up(m)) => {
                up.insert((who, m.id));
            }
            NodeEvent::Keys(Event::InstallInbound { spi, key, .. }) => {
                inbound.insert((who, spi), key);
            }
            NodeEvent::Keys(Event::InstallOutbound { peer, spi, key, .. }) => {
                outbound.insert((who, peer), (spi, key));
            }
            _ => {}
        }
    }
    eprintln!(
        "{n} members up and all {} pairs keyed after {:?}",
        pairs / 2,
        started.elapsed()
    );
    for ((from, to), (spi, key)) in &outbound {
        let theirs = inbound
            .get(&(to.clone(), *spi))
            .unwrap_or_else(|| panic!("{from} sends on {spi:#x}, which {to} does not receive on"));
        assert!(theirs.same_as(key), "{from} -> {to}");
    }
    let stopped = std::time::Instant::now();
    let victim = format!("m{n}");
    tasks.remove(&victim).unwrap().abort();
    let mut down = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while down.len() < n - 1 {
        let (who, e) = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("only {down:?} saw {victim} down after 10 s"))
            .unwrap();
        if let NodeEvent::Membership(MembershipEvent::Down(m)) = e {
            assert_eq!(m.id, victim, "{who} saw {} down", m.id);
            down.insert(who);
        }
    }
    eprintln!(
        "{victim} stopped; the {} others saw it down after {:?}",
        n - 1,
        stopped.elapsed()
    );
    for (_, t) in tasks {
        t.abort();
    }
}

#[test]
fn member_records_carry_their_members_signature_and_nobody_elses() {
    use crate::membership::info::{Infos, MemberInfo};
    use crate::membership::MemberId;
    use foca::BroadcastHandler;
    use std::sync::Arc;

    let mesh = Mesh::new("records");
    let (a, b, c) = (mesh.member("m1"), mesh.member("m2"), mesh.member("m3"));
    let signer = |creds: &Credentials| {
        Infos::with_authority(Arc::new(super::records::CertRecords::new(creds).unwrap()))
    };
    let checker = super::records::CertRecords::new(&c).unwrap();
    checker.learn(&a.as_peer());
    checker.learn(&b.as_peer());
    let mut at_c = Infos::with_authority(Arc::new(checker));
    let relay = MemberId {
        id: "m2".into(),
        addr: local(),
        generation: 0,
    };
    let record = |id: &str, version, region: &str| MemberInfo {
        id: id.into(),
        version,
        region: region.into(),
        zone: String::new(),
        account: String::new(),
        role: "edge".into(),
        group: None,
        prefixes: vec![(std::net::IpAddr::from([10, 1, 0, 0]), 16)],
        endpoints: vec![],
        policy_version: 1,
        epoch: 1,
        ..Default::default()
    };
    // m1's own record, relayed by m2: taken.
    let genuine = signer(&a).seal(&record("m1", 1, "eu-west-1"));
    assert!(at_c.receive_item(&genuine, Some(&relay)).unwrap().is_some());
    // m2 speaks for m1 (to take its prefixes): refused, and m2 named.
    let forged = signer(&b).seal(&record("m1", 2, "eu-west-1"));
    assert_eq!(at_c.receive_item(&forged, Some(&relay)).unwrap(), None);
    // m2 under its own name, but claiming another region than its
    // certificate binds: refused too.
    let moved = signer(&b).seal(&record("m2", 1, "us-east-1"));
    assert_eq!(at_c.receive_item(&moved, Some(&relay)).unwrap(), None);
    let refused = at_c.take_refused();
    assert_eq!(refused.len(), 2);
    assert!(refused.iter().all(|(by, _)| by == "m2"));
    assert!(refused[0].1.contains("not the member's"), "{refused:?}");
    assert!(refused[1].1.contains("region us-east-1"), "{refused:?}");
    assert_eq!(
        at_c.get("m1").unwrap().version,
        1,
        "the forgery changed nothing"
    );
    assert!(at_c.get("m2").is_none());
}

/// A member with a valid certificate advertises what the CA did not
/// grant it (all of IPv4 as two halves, another member's prefix or a
/// more specific part of it, the metadata service, a prefix with host
/// bits, a default route): each record is refused and the member named;
/// its granted record is taken. Before prefixes were granted, every one
/// of these records was taken and routed into every member's TUN.
#[test]
fn a_member_may_advertise_only_what_its_certificate_grants() {
    use crate::membership::admission::Admission;
    use crate::membership::info::{Infos, MemberInfo};
    use crate::membership::MemberId;
    use foca::BroadcastHandler;
    use std::net::IpAddr;
    use std::sync::Arc;

    let mesh = Mesh::new("grants");
    // Each certificate grants 10.0.0.0/8 (`Mesh::member`); m3 is this
    // gateway, with 10.3.0.0/16 of its own.
    let (hostile, me) = (mesh.member("m2"), mesh.member("m3"));
    let checker = super::records::CertRecords::new(&me).unwrap();
    checker.learn(&hostile.as_peer());
    let own = MemberInfo {
        id: "m3".into(),
        region: "eu-west-1".into(),
        role: "edge".into(),
        prefixes: vec![(IpAddr::from([10, 3, 0, 0]), 16)],
        endpoints: vec![("internet".into(), "192.0.2.3:4500".parse().unwrap())],
        ..Default::default()
    };
    let mut at_me = Infos::with_authority(Arc::new(checker)).admitting(Admission::new(&own, []));
    let sender = MemberId {
        id: "m2".into(),
        addr: local(),
        generation: 0,
    };
    let sign = Infos::with_authority(Arc::new(
        super::records::CertRecords::new(&hostile).unwrap(),
    ));
    let record = |version, prefixes: &[(IpAddr, u8)]| MemberInfo {
        id: "m2".into(),
        version,
        region: "eu-west-1".into(),
        role: "edge".into(),
        prefixes: prefixes.to_vec(),
        ..Default::default()
    };
    let v4 = |a: [u8; 4], l| (IpAddr::from(a), l);
    let attacks: [(&[(IpAddr, u8)], &str); 5] = [
        (
            &[v4([0, 0, 0, 0], 1), v4([128, 0, 0, 0], 1)],
            "0.0.0.0/1, which its certificate does not grant",
        ),
        (
            &[v4([11, 0, 0, 0], 8)],
            "11.0.0.0/8, which its certificate does not grant",
        ),
        (&[v4([169, 254, 169, 254], 32)], "does not grant"),
        (
            &[v4([10, 3, 0, 0], 16)],
            "10.3.0.0/16, which overlaps 10.3.0.0/16, this gateway's own",
        ),
        (&[v4([10, 3, 7, 0], 24)], "this gateway's own"),
    ];
    for (version, (prefixes, why)) in attacks.iter().enumerate() {
        let sealed = sign.seal(&record(version as u64 + 1, prefixes));
        assert_eq!(at_me.receive_item(&sealed, Some(&sender)).unwrap(), None);
        let refused = at_me.take_refused();
        assert_eq!(refused.len(), 1, "{prefixes:?}");
        assert_eq!(refused[0].0, "m2");
        assert!(refused[0].1.contains(why), "{prefixes:?}: {refused:?}");
        assert!(at_me.get("m2").is_none());
    }
    // Malformed prefixes are refused before any signature is checked.
    for bad in [v4([10, 2, 0, 1], 16), v4([0, 0, 0, 0], 0)] {
        let sealed = sign.seal(&record(10, &[bad]));
        assert!(
            at_me.receive_item(&sealed, Some(&sender)).is_err(),
            "{bad:?}"
        );
    }
    // What the CA granted is taken.
    let sealed = sign.seal(&record(11, &[v4([10, 2, 0, 0], 16)]));
    assert!(at_me
        .receive_item(&sealed, Some(&sender))
        .unwrap()
        .is_some());
    assert_eq!(at_me.get("m2").unwrap().version, 11);
}

#[test]
fn a_member_advertises_the_median_round_trip_and_mean_loss_of_its_paths() {
    use crate::member::health::{health_moved, path_health};
    use crate::membership::sim::info;
    use crate::membership::Observed;
    use std::time::Duration;
    let seen = |i, state, rtt_ms: Option<u64>, loss| Observed {
        info: info(i, 1, 1),
        state,
        rtt: rtt_ms.map(Duration::from_millis),
        loss,
        since: Instant::now(),
        beat_gap: None,
    };
    let observed = [
        seen(1, foca::State::Alive, Some(80), 0.0),
        seen(2, foca::State::Alive, Some(120), 0.02),
        seen(3, foca::State::Alive, Some(200), 0.04),
        seen(4, foca::State::Down, Some(5), 1.0),
    ];
    assert_eq!(
        path_health(&observed),
        (120_000, 20_000),
        "the dead member is left out"
    );
    assert_eq!(path_health(&[]), (0, 0));
    assert!(
        !health_moved((120_000, 20_000), (130_000, 25_000)),
        "small moves are not news"
    );
    assert!(health_moved((120_000, 20_000), (160_000, 20_000)));
    assert!(health_moved((120_000, 20_000), (120_000, 30_000)));
}

/// A member that opens a message stream and never finishes it holds up
/// nothing: after the per-message deadline (5 s) the stream is refused,
/// named and counted, and a whole message sent after it on the same
/// connection is read at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_never_finished_is_refused_at_its_deadline_and_holds_up_nothing() {
    use super::node::{run, NodeConfig};
    use crate::member::NodeEvent;
    use crate::membership::info::MemberInfo;
    use crate::membership::Settings;
    use std::sync::Arc;
    use std::time::Duration;

    let mesh = Mesh::new("deadline");
    let cfg = NodeConfig {
        kms: None,
        creds: Arc::new(mesh.member("m1")),
        listen: local(),
        discovery: Arc::new(super::discovery::StaticSeeds(Vec::new())),
        info: MemberInfo {
            id: "m1".into(),
            version: 1,
            region: "eu-west-1".into(),
            role: "edge".into(),
            epoch: 1,
            ..Default::default()
        },
        settings: Settings::default(),
        liveness: None,
        keys: Some((
            Arc::new(crate::keys::epoch::test_keys(1)),
            1,
            crate::esp::CipherSuite::Aes128Gcm,
        )),
        tunnels: None,
    };
    let (events, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let (_commands, command_rx) = tokio::sync::mpsc::unbounded_channel();
    let node = tokio::spawn(run(cfg, events, command_rx, bound_tx));
    let addr = bound_rx.await.unwrap();
    let peer = mesh.member("m2");
    let ep = endpoint(&peer, local()).unwrap();
    let (conn, _) = connect(&ep, &peer, "m1", addr).await.unwrap();
    // The kind byte of a key-exchange message, and then nothing, for ever.
    let mut stuck = conn.open_uni().await.unwrap();
    stuck.write_all(&[1]).await.unwrap();
    let opened = Instant::now();
    // A second message, whole (not a valid exchange message: refused by
    // the member at once, which shows it was read).
    messages::send(&conn, Kind::KeyExchange, b"not an exchange")
        .await
        .unwrap();
    let mut seen_whole = None;
    let mut refused_late = None;
    while refused_late.is_none() {
        let e = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("no refusal within 10 s")
            .unwrap();
        if let NodeEvent::Refused(r) = e {
            match (r.what, r.kind) {
                ("key_exchange", _) => seen_whole = Some(opened.elapsed()),
                ("message", "unreadable") => {
                    assert_eq!(r.peer, "m2", "the sender is named");
                    assert!(r.reason.contains("not finished within"), "{}", r.reason);
                    refused_late = Some(opened.elapsed());
                }
                other => panic!("unexpected refusal {other:?}: {}", r.reason),
            }
        }
    }
    let (whole, late) = (
        seen_whole.expect("the whole message was read"),
        refused_late.unwrap(),
    );
    eprintln!("whole message read after {whole:?}; the stuck one refused after {late:?}");
    assert!(whole < Duration::from_secs(2), "{whole:?}");
    assert!(
        late >= Duration::from_secs(5) && late < Duration::from_secs(8),
        "{late:?}"
    );
    drop(stuck);
    node.abort();
}

/// A flood of handshakes that never finish (here 40 clients that send
/// their Initial and go silent, as spoofed sources would): past 16 in
/// progress, each new one is answered with a stateless QUIC retry, not a
/// handshake, and counted; a member still connects (its client answers
/// the retry) while the flood's handshakes are pending.
#[tokio::test]
async fn a_handshake_flood_is_met_with_retries_and_a_member_still_connects() {
    use super::node::{spawn_acceptor, Input, VALIDATE_ABOVE};
    use std::time::Duration;
    let mesh = Mesh::new("flood");
    let (a, b) = (
        std::sync::Arc::new(mesh.member("region-1")),
        mesh.member("region-2"),
    );
    let (ea, eb) = (
        endpoint(&a, local()).unwrap(),
        endpoint(&b, local()).unwrap(),
    );
    let b_addr = eb.local_addr().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    spawn_acceptor(eb.clone(), std::sync::Arc::new(b), tx);
    // Forty Initials, each of its own connection, caught on a socket that
    // never answers.
    const FLOOD: usize = 40;
    let sink = tokio::net::UdpSocket::bind(local()).await.unwrap();
    let sink_addr = sink.local_addr().unwrap();
    let mut dials = Vec::new();
    for _ in 0..FLOOD {
        let (ea, a) = (ea.clone(), a.clone());
        dials.push(tokio::spawn(async move {
            let _ = connect(&ea, &a, "region-2", sink_addr).await;
        }));
    }
    let mut initials = Vec::new();
    let mut buf = vec![0u8; 2048];
    while initials.len() < FLOOD {
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), sink.recv_from(&mut buf))
            .await
            .expect("the clients' Initials")
            .unwrap();
        // Long header, type Initial (RFC 9000 §17.2.2); the first of each
        // connection (retransmits carry a DCID already seen).
        let dcid_len = buf[5] as usize;
        if buf[0] & 0xb0 == 0x80
            && !initials
                .iter()
                .any(|i: &Vec<u8>| i[5..6 + dcid_len] == buf[5..6 + dcid_len])
        {
            initials.push(buf[..n].to_vec());
        }
    }
    for d in dials {
        d.abort();
    }
    // Each from its own address, to the gateway; the type of what comes back.
    let (mut kinds, mut silent) = (Vec::new(), Vec::new());
    for initial in &initials {
        let s = tokio::net::UdpSocket::bind(local()).await.unwrap();
        s.send_to(initial, b_addr).await.unwrap();
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), s.recv_from(&mut buf))
            .await
            .expect("an answer to each Initial")
            .unwrap();
        assert!(n > 0 && buf[0] & 0x80 != 0, "a long-header answer");
        kinds.push((buf[0] >> 4) & 0x3);
        silent.push(s); // never answers, as a spoofed source would not
    }
    let retries = kinds.iter().filter(|&&k| k == 3).count();
    assert_eq!(
        (kinds.len() - retries, retries),
        (VALIDATE_ABOVE, FLOOD - VALIDATE_ABOVE),
        "16 handshakes, then retries: {kinds:?}"
    );
    // The member answers the retry and gets through.
    let started = Instant::now();
    connect(&ea, &a, "region-2", b_addr)
        .await
        .expect("a member connects during the flood");
    eprintln!(
        "{FLOOD} handshakes left pending: {retries} answered with a retry; a member connected in {:?}",
        started.elapsed()
    );
    let mut counted = 0;
    let mut connected = false;
    while let Ok(Some(input)) = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await {
        match input {
            Input::Retried(_) => counted += 1,
            Input::Connected { peer, .. } if peer == "region-1" => connected = true,
            _ => {}
        }
        if connected && counted > retries {
            break;
        }
    }
    assert!(connected, "the member's connection reached the member loop");
    assert_eq!(
        counted,
        retries + 1,
        "every retry counted (the member's too)"
    );
}

/// A member that sends datagrams faster than the member loop takes them
/// fills only its own share of the loop's input: 256 wait, the rest are
/// dropped and counted (said once its queue has room again), and another
/// member's datagrams still get through meanwhile.
#[tokio::test]
async fn a_flooding_peer_fills_only_its_own_queue_and_drops_are_counted() {
    use super::node::{spawn_readers, Input};
    use super::queue::PER_PEER;
    use crate::member::ConnId;
    use std::time::Duration;
    let mesh = Mesh::new("overflow");
    let (a, b, c) = (
        mesh.member("region-1"),
        mesh.member("region-2"),
        mesh.member("region-3"),
    );
    let (ea, eb, ec) = (
        endpoint(&a, local()).unwrap(),
        endpoint(&b, local()).unwrap(),
        endpoint(&c, local()).unwrap(),
    );
    let b_addr = eb.local_addr().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut senders = Vec::new();
    for (i, (ep, creds)) in [(&ea, &a), (&ec, &c)].into_iter().enumerate() {
        let server = async {
            let incoming = eb.accept().await.unwrap();
            accept(incoming, &b).await.unwrap()
        };
        let ((conn, _), (at_b, cert)) = tokio::join!(
            async { connect(ep, creds, "region-2", b_addr).await.unwrap() },
            server
        );
        spawn_readers(&at_b, ConnId(i as u64), &cert.claims.id, &tx);
        senders.push(conn);
    }
    // region-1 floods while the loop takes nothing; then region-3 sends one.
    const SENT: usize = 1000;
    for i in 0..SENT {
        senders[0]
            .send_datagram(bytes::Bytes::from(vec![i as u8; 100]))
            .unwrap();
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    senders[1]
        .send_datagram(bytes::Bytes::from_static(b"still heard"))
        .unwrap();
    let mut held = Vec::new();
    let (mut from_1, mut from_3) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while from_3 == 0 && Instant::now() < deadline {
        if let Ok(Some(input)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
            if let Input::Datagram(from, ..) = &input {
                match from.as_str() {
                    "region-1" => from_1 += 1,
                    _ => from_3 += 1,
                }
            }
            held.push(input); // taken off the channel, its place still held
        }
    }
    assert_eq!(from_3, 1, "region-3's datagram got through");
    assert_eq!(from_1, PER_PEER, "region-1 holds at most its share");
    // The loop takes its input: the places free, and the next datagram
    // from region-1 comes with the count of what was dropped.
    held.clear();
    senders[0]
        .send_datagram(bytes::Bytes::from_static(b"after"))
        .unwrap();
    let mut dropped = None;
    while dropped.is_none() && Instant::now() < deadline {
        if let Ok(Some(Input::Overflow(from, n))) =
            tokio::time::timeout(Duration::from_millis(100), rx.recv()).await
        {
            assert_eq!(from, "region-1");
            dropped = Some(n);
        }
    }
    let dropped = dropped.expect("the drops were counted");
    eprintln!("{SENT} datagrams sent while the loop took none: {PER_PEER} waited, {dropped} dropped and counted");
    assert!(
        dropped as usize <= SENT - PER_PEER && dropped as usize >= (SENT - PER_PEER) / 2,
        "{dropped}"
    );
}
