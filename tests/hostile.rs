//! A hostile member in the lab: it holds a valid appliance certificate of
//! the mesh (region 4's, granting region 4's prefixes only), and runs the
//! real member and signalling code with a record of its own making, while
//! a flow runs between regions 1 and 2. What it tries, and what must
//! happen:
//!
//! - a record advertising what its certificate does not grant (halves of
//!   the default route, a more specific part of region 2's prefix, the
//!   metadata address, region 1's underlay address): refused by every
//!   member (`what="record"`), no route of theirs changes;
//! - a record naming a later key epoch and carrying an epoch order signed
//!   with its own key (rotating the mesh and revoking the current epoch,
//!   and revoking region 1's certificate): refused (`what="epochs"`), no
//!   member's epoch or SAs change.
//!
//! - SWIM gossip about others, sent over its own authenticated
//!   connections: region 2 declared down, region 2 at the largest
//!   generation (a restart everywhere, then silence for good), region 2 at
//!   the hostile member's address, and a member it invents at an address
//!   of its choosing: the death is refused at once, the rest waits for a
//!   record of region 2 or of the invented member to vouch for it, none
//!   does, and each is refused (`what="membership"`); nobody dials the
//!   invented member.
//!
//! The flow loses nothing; each refusal names region-4 in the log.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{echo_flow, eventually, mesh_lab, metric};
use meshgate::keys::order::MeshOrder;
use meshgate::lab::Lab;
use meshgate::membership::info::MemberInfo;
use meshgate::netns::Netns;

const HOSTILE: usize = 3;

/// Region 4's certificate and key: the hostile member's from now on.
fn hostile_credentials(lab: &Lab) -> meshgate::signal::transport::Credentials {
    let id = lab.regions[HOSTILE].gateway_id();
    let certs = lab.dir.join("certs");
    meshgate::signal::transport::Credentials::load(
        &lab.dir.join("ca").join("ca.pem"),
        &certs.join(format!("{id}.pem")),
        &certs.join(format!("{id}.key")),
    )
    .expect("region 4's credentials")
}

/// Runs a member as region 4 in its appliance's namespace for `secs`,
/// advertising `info`.
fn run_hostile(lab: &Lab, info: MemberInfo, secs: u64) {
    use meshgate::signal::discovery::StaticSeeds;
    use meshgate::signal::node::{run, NodeConfig};
    let creds = hostile_credentials(lab);
    let seeds: Vec<(String, std::net::SocketAddr)> = lab.regions[..HOSTILE]
        .iter()
        .map(|r| {
            (
                r.gateway_id(),
                (r.underlay_ip(), meshgate::lab::SIGNAL_PORT).into(),
            )
        })
        .collect();
    let listen = (
        lab.regions[HOSTILE].underlay_ip(),
        meshgate::lab::SIGNAL_PORT,
    )
        .into();
    let ns = Netns::attach(lab.regions[HOSTILE].appliance.name());
    ns.run(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async move {
            let (events, mut seen) = tokio::sync::mpsc::unbounded_channel();
            let (_commands, commands) = tokio::sync::mpsc::unbounded_channel();
            let (bound, _) = tokio::sync::oneshot::channel();
            let cfg = NodeConfig {
                kms: None,
                creds: Arc::new(creds),
                listen,
                discovery: Arc::new(StaticSeeds(seeds)),
                info,
                settings: Default::default(),
                liveness: Some(Default::default()),
                keys: None,
                tunnels: None,
            };
            let node = tokio::spawn(run(cfg, events, commands, bound));
            let drain = tokio::spawn(async move { while seen.recv().await.is_some() {} });
            tokio::time::sleep(Duration::from_secs(secs)).await;
            if node.is_finished() {
                eprintln!("hostile node ended: {:?}", node.await);
            } else {
                node.abort();
            }
            drain.abort();
        });
    })
    .expect("running the hostile member");
}

/// Where the invented member is said to listen (in the hostile member's
/// namespace, where a socket counts what arrives).
const GHOST_PORT: u16 = 4999;

/// As region 4, connects to the honest members and gossips for `secs`,
/// every 500 ms, what it may not say of others (region 2's death if
/// `deaths`, else region 2 moved and an invented member); returns how many datagrams
/// reached the invented member's address meanwhile.
fn gossip_as_hostile(lab: &Lab, secs: u64, deaths: bool) -> usize {
    use bytes::BufMut;
    use foca::{Codec, Header, Member, PostcardCodec, State};
    use meshgate::membership::MemberId;
    use meshgate::signal::transport::{connect, endpoint};
    let id = lab.regions[HOSTILE].gateway_id();
    let creds = hostile_credentials(lab);
    let signal = |r: usize| -> std::net::SocketAddr {
        (lab.regions[r].underlay_ip(), meshgate::lab::SIGNAL_PORT).into()
    };
    let me = MemberId {
        id: id.clone(),
        addr: signal(HOSTILE),
        generation: meshgate::time::unix_ms(),
    };
    let region2 = lab.regions[1].gateway_id();
    let member = |id: &str, addr, generation, state| {
        Member::new(
            MemberId {
                id: id.into(),
                addr,
                generation,
            },
            0,
            state,
        )
    };
    let ghost_addr: std::net::SocketAddr = (lab.regions[HOSTILE].underlay_ip(), GHOST_PORT).into();
    let said = if deaths {
        vec![member(&region2, signal(1), 1, State::Down)]
    } else {
        vec![
            member(&region2, signal(1), u64::MAX, State::Alive),
            member(&region2, signal(HOSTILE), u64::MAX - 1, State::Alive),
            member("ghost", ghost_addr, 1, State::Alive),
        ]
    };
    let peers: Vec<(String, std::net::SocketAddr, MemberId)> = (0..HOSTILE)
        .map(|r| {
            let peer = lab.regions[r].gateway_id();
            let dst = MemberId {
                id: peer.clone(),
                addr: signal(r),
                generation: 0,
            };
            (peer, signal(r), dst)
        })
        .collect();
    let ns = Netns::attach(lab.regions[HOSTILE].appliance.name());
    ns.run(move || {
        let ghost = std::net::UdpSocket::bind(ghost_addr).expect("the invented member's socket");
        ghost.set_nonblocking(true).expect("nonblocking");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async move {
            let ep = endpoint(&creds, (me.addr.ip(), 0).into()).expect("an endpoint");
            let mut conns = Vec::new();
            for (peer, addr, seed) in &peers {
                let (conn, _) = connect(&ep, &creds, peer, *addr)
                    .await
                    .expect("connecting as region 4");
                // SWIM reads only what is addressed to the receiver's
                // identity as it stands: learn it as a joining member
                // would, from the answer to an announce.
                let mut announce = vec![0u8];
                let header = Header {
                    src: me.clone(),
                    src_incarnation: 0,
                    dst: seed.clone(),
                    message: foca::Message::Announce,
                };
                PostcardCodec
                    .encode_header(&header, &mut announce)
                    .expect("a header");
                let mut dst = None;
                while dst.is_none() {
                    let _ = conn.send_datagram(announce.clone().into());
                    let Ok(Ok(d)) =
                        tokio::time::timeout(Duration::from_millis(500), conn.read_datagram())
                            .await
                    else {
                        continue;
                    };
                    if let Some((0, mut rest)) = d.split_first().map(|(t, r)| (*t, r)) {
                        if let Ok(h) = PostcardCodec.decode_header(&mut rest) {
                            let h: Header<MemberId> = h;
                            dst = (h.src.id == *peer).then_some(h.src);
                        }
                    }
                }
                conns.push((conn, dst.expect("the peer's identity")));
            }
            let mut reached = 0;
            let end = std::time::Instant::now() + Duration::from_secs(secs);
            while std::time::Instant::now() < end {
                for (conn, dst) in &conns {
                    // The membership datagram's tag (SWIM), then foca's
                    // framing: header, updates, no records.
                    let mut codec = PostcardCodec;
                    let mut out = vec![0u8];
                    let header = Header {
                        src: me.clone(),
                        src_incarnation: 0,
                        dst: dst.clone(),
                        message: foca::Message::Gossip,
                    };
                    codec.encode_header(&header, &mut out).expect("a header");
                    out.put_u16(said.len() as u16);
                    for m in &said {
                        codec.encode_member(m, &mut out).expect("an update");
                    }
                    let _ = conn.send_datagram(out.into());
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                let mut buf = [0u8; 2048];
                while ghost.recv_from(&mut buf).is_ok() {
                    reached += 1;
                }
            }
            reached
        })
    })
    .expect("gossiping as region 4")
}

/// The routes the gateway installed (its own protocol) to the honest
/// regions' prefixes, sorted (region 4's own, granted prefixes may come
/// and go with its membership).
fn routes(lab: &Lab, g: usize) -> String {
    let region4 = lab.regions[HOSTILE].prefixes();
    let mut lines: Vec<String> = ["-4", "-6"]
        .iter()
        .flat_map(|family| {
            let out = lab.regions[g]
                .appliance
                .command("ip")
                .args([*family, "route", "show", "proto", "147"])
                .output()
                .expect("ip route");
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    lines.retain(|l| !region4.iter().any(|p| l.starts_with(p.as_str())));
    lines.sort();
    lines.join("\n")
}

/// The SAs gateway `g` holds with the other honest members: peer, SPI and
/// direction of each.
fn honest_sas(lab: &Lab, g: usize) -> Vec<String> {
    let region4 = format!("peer=\"{}\"", lab.regions[HOSTILE].gateway_id());
    let text = lab.metrics(g).expect("scraping metrics");
    let mut sas: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("meshgate_sa_info{") && !l.contains(&region4))
        .map(|l| l.split('}').next().unwrap_or(l).to_string())
        .collect();
    sas.sort();
    sas
}

fn sas(lab: &Lab, g: usize) -> u64 {
    metric(lab, g, "meshgate_sas_by_epoch", "epoch=\"1\"")
}

fn refused(lab: &Lab, g: usize, what: &str) -> u64 {
    metric(
        lab,
        g,
        "meshgate_signal_refused_total",
        &format!("what=\"{what}\""),
    )
}

/// `text` without terminal colour codes (the lab's logs carry them).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn a_hostile_member_changes_no_honest_members_routes_or_sas() {
    let mut lab = mesh_lab(4, "full-mesh", "cipher = \"aes128gcm16\"");
    let honest = [0usize, 1, 2];
    // Region 4's own gateway goes; its certificate and key are the
    // hostile member's from now on.
    lab.kill_gateway(HOSTILE);
    eventually(
        Duration::from_secs(15),
        "the honest members did not settle on four SAs each",
        || honest.iter().all(|&g| sas(&lab, g) == 4),
    );
    let before: Vec<String> = honest.iter().map(|&g| routes(&lab, g)).collect();
    assert!(before
        .iter()
        .all(|r| r.contains("10.2.0.0/16") || r.contains("10.1.0.0/16")));
    let flow = echo_flow(&lab, 0, 1, 6000);
    let id = lab.regions[HOSTILE].gateway_id();
    // Versions past any its honest incarnation advertised (they start at
    // the wall clock in milliseconds), so each record is news.
    let version = meshgate::time::unix_ms() + 60_000;
    let base = MemberInfo {
        id: id.clone(),
        version,
        region: id.clone(),
        role: "edge".into(),
        endpoints: vec![(
            "internet".into(),
            (lab.regions[HOSTILE].underlay_ip(), 4500).into(),
        )],
        epoch: 1,
        ..MemberInfo::default()
    };
    // 1. Prefixes its certificate does not grant.
    let region1_underlay = lab.regions[0].underlay_ip();
    let ungranted = MemberInfo {
        prefixes: vec![
            ("0.0.0.0".parse().unwrap(), 1),
            ("128.0.0.0".parse().unwrap(), 1),
            ("10.2.1.0".parse().unwrap(), 24),
            ("169.254.169.254".parse().unwrap(), 32),
            (region1_underlay.into(), 32),
        ],
        ..base.clone()
    };
    run_hostile(&lab, ungranted, 5);
    for &g in &honest {
        assert!(
            refused(&lab, g, "record") >= 1,
            "gateway {} took the record",
            g + 1
        );
    }
    // 2. A later epoch, and an order signed with its own key.
    let key = lab.dir.join("certs").join(format!("{id}.key"));
    let forged = MeshOrder {
        wrapped: Vec::new(),
        serial: 1_000,
        current: 7,
        floor: 2,
        revoked: vec![1],
        certs: vec![],
    }
    .seal(|m| meshgate::identity::ca_sign(&key, m).map_err(|e| e.to_string()))
    .unwrap();
    let epochs = MemberInfo {
        version: version + 1,
        epoch: 7,
        order: Some(forged),
        ..base
    };
    run_hostile(&lab, epochs, 5);
    // 3. Gossip about others: region 2 moved and an invented member, for
    // longer than gossip waits for a record to vouch for it; then region
    // 2's death.
    let refusals = |kind: &str| -> Vec<u64> {
        honest
            .iter()
            .map(|&g| {
                metric(
                    &lab,
                    g,
                    "meshgate_signal_refused_total",
                    // (Labels come sorted by name.)
                    &format!("reason=\"{kind}\",what=\"membership\""),
                )
            })
            .collect()
    };
    let (unvouched, unauthorized) = (refusals("unvouched"), refusals("unauthorized"));
    let sas_before: Vec<Vec<String>> = honest.iter().map(|&g| honest_sas(&lab, g)).collect();
    let ghost = gossip_as_hostile(&lab, 13, false);
    assert_eq!(ghost, 0, "an honest member dialed the invented member");
    gossip_as_hostile(&lab, 2, true);
    let (unvouched_after, unauthorized_after) = (refusals("unvouched"), refusals("unauthorized"));
    for (i, &g) in honest.iter().enumerate() {
        // Region 2 moved and the invented member, once their wait ran out
        // (one refusal each per member said of), and the death at once.
        assert!(
            unvouched_after[i] >= unvouched[i] + 2,
            "gateway {}: gossip no record vouched for was not refused ({} -> {})",
            g + 1,
            unvouched[i],
            unvouched_after[i]
        );
        assert!(
            unauthorized_after[i] > unauthorized[i],
            "gateway {}: the death gossiped by another was not refused",
            g + 1
        );
        assert_eq!(
            honest_sas(&lab, g),
            sas_before[i],
            "gateway {}: SAs with honest members changed (a member seen restarted)",
            g + 1
        );
    }
    let p = flow.join().unwrap();
    eprintln!(
        "hostile member: flow between regions 1 and 2: {} of {} echoes",
        p.received, p.sent
    );
    assert_eq!(
        p.received, p.sent,
        "the flow between regions 1 and 2 lost echoes"
    );
    for (i, &g) in honest.iter().enumerate() {
        assert_eq!(
            metric(&lab, g, "meshgate_key_epoch", ""),
            1,
            "gateway {}",
            g + 1
        );
        assert_eq!(sas(&lab, g), 4, "gateway {}: its SAs changed", g + 1);
        assert!(
            refused(&lab, g, "epochs") >= 1,
            "gateway {} took the order",
            g + 1
        );
        assert_eq!(
            routes(&lab, g),
            before[i],
            "gateway {}: routes changed",
            g + 1
        );
        let log = plain(&std::fs::read_to_string(lab.log_path(g)).unwrap_or_default());
        assert!(
            log.lines()
                .any(|l| l.contains("refused") && l.contains(&format!("peer={id}"))),
            "gateway {}: no refusal names {id}",
            g + 1
        );
        assert!(
            log.lines().any(|l| l.contains(&format!("peer={id}"))
                && l.contains("says ")
                && l.contains("which no record of")),
            "gateway {}: no refusal of unvouched gossip names {id}; its refusals:\n{}",
            g + 1,
            log.lines()
                .filter(|l| l.contains("refused"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
