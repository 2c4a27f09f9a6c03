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
//! The flow loses nothing; each refusal names region-4 in the log.
//! (Declaring other members down is refused on virtual time, in
//! `membership::sim`; moving another member's address or generation by
//! gossip is not closed yet.)

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{echo_flow, eventually, mesh_lab, metric};
use meshgate::keys::order::MeshOrder;
use meshgate::lab::Lab;
use meshgate::membership::info::MemberInfo;
use meshgate::netns::Netns;

const HOSTILE: usize = 3;

/// Runs a member as region 4 in its appliance's namespace for `secs`,
/// advertising `info`.
fn run_hostile(lab: &Lab, info: MemberInfo, secs: u64) {
    use meshgate::signal::discovery::StaticSeeds;
    use meshgate::signal::node::{run, NodeConfig};
    use meshgate::signal::transport::Credentials;
    let id = lab.regions[HOSTILE].gateway_id();
    let certs = lab.dir.join("certs");
    let creds = Credentials::load(
        &lab.dir.join("ca").join("ca.pem"),
        &certs.join(format!("{id}.pem")),
        &certs.join(format!("{id}.key")),
    )
    .expect("region 4's credentials");
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
    let flow = echo_flow(&lab, 0, 1, 2400);
    let id = lab.regions[HOSTILE].gateway_id();
    // Versions past any its honest incarnation advertised (they start at
    // the wall clock in milliseconds), so each record is news.
    let version = meshgate::time::unix_ms() + 60_000;
    let base = MemberInfo {
        id: id.clone(),
        version,
        region: id.clone(),
        zone: String::new(),
        account: String::new(),
        role: "edge".into(),
        group: None,
        prefixes: vec![],
        endpoints: vec![(
            "internet".into(),
            (lab.regions[HOSTILE].underlay_ip(), 4500).into(),
        )],
        policy_version: 0,
        load_permille: 0,
        rtt_us: 0,
        loss_ppm: 0,
        epoch: 1,
        order: None,
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
    }
}
