//! End-to-end tests of the ESP tunnel: real `meshgate` processes in network
//! namespaces, real TUN devices, traffic between VPC hosts. Each test builds
//! its own lab, which removes itself when the test ends, pass or fail.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::{
    drops, eventually, inject, lab, lab_with, metric, ping_ok, scratch, tcp_ok, write_pcap, Capture,
};
use meshgate::keys::session::{parse_hello, Nonce};
use meshgate::lab::probe::{ping, tcp_transfer};
use meshgate::lab::{spi, ESP_PORT};

fn esp_payloads(frames: &[common::Frame], dst_port_is_esp: bool) -> Vec<Vec<u8>> {
    frames
        .iter()
        .filter_map(|f| f.udp_payload(ESP_PORT))
        .filter(|p| p.len() > 16 && (!dst_port_is_esp || p[..4] != [0, 0, 0, 0]))
        .map(<[u8]>::to_vec)
        .collect()
}

/// The session hellos of a capture: the sender's underlay address, its
/// nonce and the peer nonce it echoes.
fn hellos(frames: &[common::Frame]) -> Vec<([u8; 4], Nonce, Nonce)> {
    frames
        .iter()
        .filter_map(|f| {
            let (nonce, echo) = parse_hello(f.udp_payload(ESP_PORT)?)?;
            Some((f.ip.get(12..16)?.try_into().ok()?, nonce, echo))
        })
        .collect()
}

/// The nonces of the last session keyed in a capture between regions
/// `a` and `b`: a's and b's (from the last hello a sent that echoes b's).
fn session_nonces(lab: &meshgate::lab::Lab, frames: &[common::Frame], a: usize) -> (Nonce, Nonce) {
    let ip = lab.regions[a].underlay_ip().octets();
    hellos(frames)
        .into_iter()
        .rev()
        .find(|(from, _, echo)| *from == ip && *echo != [0; 32])
        .map(|(_, nonce, echo)| (nonce, echo))
        .expect("a hello of the session in the capture")
}

/// The key of the SA from the side with nonce `sender` to the one with
/// `receiver`, as the session design derives it from the configured
/// (pre-shared) key `psk_hex`: HKDF-SHA256 with the label as salt and
/// the two nonces and the SPI as info. Written out here from the
/// documented design, so the test checks the gateway against it.
fn session_key_hex(psk_hex: &str, sender: &Nonce, receiver: &Nonce, spi: u32) -> String {
    struct Len(usize);
    impl ring::hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let psk: Vec<u8> = (0..psk_hex.len() / 2)
        .map(|i| u8::from_str_radix(&psk_hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let prk =
        ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"meshgate session key v1").extract(&psk);
    let mut out = vec![0u8; psk.len()];
    prk.expand(&[sender, receiver, &spi.to_be_bytes()], Len(out.len()))
        .unwrap()
        .fill(&mut out)
        .unwrap();
    out.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn ping_and_tcp_over_ipv4_and_ipv6_cross_the_tunnel_and_metrics_pass_promtool() {
    let lab = lab(2);
    let (a, b) = (&lab.regions[0], &lab.regions[1]);
    ping_ok(
        &a.host,
        b.host_ip().into(),
        20,
        "ping host-1 -> host-2 lost packets",
    );
    ping_ok(
        &b.host,
        a.host_ip().into(),
        20,
        "ping host-2 -> host-1 lost packets",
    );
    tcp_ok(&a.host, &b.host, b.host_ip().into(), Duration::from_secs(1));
    tcp_ok(&b.host, &a.host, a.host_ip().into(), Duration::from_secs(1));
    // Inner IPv6 over the same SAs.
    ping_ok(
        &a.host,
        b.host_ip6().into(),
        20,
        "ping6 host-1 -> host-2 lost packets",
    );
    let t = tcp_transfer(
        &b.host,
        &a.host,
        a.host_ip6().into(),
        5001,
        Duration::from_secs(1),
    )
    .unwrap();
    assert!(
        t.bytes > 1_000_000,
        "TCP over IPv6 moved only {} bytes",
        t.bytes
    );

    // Per-peer and per-SA counters moved, both directions, both gateways.
    for g in 0..2 {
        assert!(metric(&lab, g, "meshgate_peer_packets_total", "direction=\"out\"") >= 20);
        assert!(metric(&lab, g, "meshgate_peer_packets_total", "direction=\"in\"") >= 20);
        assert!(metric(&lab, g, "meshgate_sa_bytes_total", "direction=\"in\"") > 1_000_000);
    }
    for g in 0..2 {
        assert_eq!(
            metric(&lab, g, "meshgate_drops_total", ""),
            0,
            "a clean run drops nothing at gateway {g}"
        );
    }

    // Prometheus' own linter accepts the exposition.
    common::promtool_ok(&lab.metrics(0).unwrap());
}

#[test]
fn replayed_and_tampered_packets_are_dropped_and_counted() {
    let lab = lab(2);
    let (a, b) = (&lab.regions[0], &lab.regions[1]);
    let cap = Capture::start(&b.appliance, "ul0");
    ping_ok(&a.host, b.host_ip().into(), 10, "pings lost");
    let frames = cap.finish();
    // Datagrams gateway 1 sent to gateway 2 carry gateway 2's inbound SPI.
    let to_b: Vec<Vec<u8>> = esp_payloads(&frames, true)
        .into_iter()
        .filter(|p| p[..4] == spi(0, 1).to_be_bytes())
        .collect();
    assert!(
        to_b.len() >= 10,
        "captured only {} ESP packets to gateway 2",
        to_b.len()
    );
    let target = SocketAddr::from((b.underlay_ip(), ESP_PORT));

    let replay_before = drops(&lab, 1, "replay");
    inject(&a.appliance, target, to_b.clone());
    // Counted as they are read: wait for the count, then check it exactly.
    eventually(
        Duration::from_secs(5),
        "the replays were not all counted",
        || drops(&lab, 1, "replay") - replay_before >= to_b.len() as u64,
    );
    assert_eq!(
        drops(&lab, 1, "replay") - replay_before,
        to_b.len() as u64,
        "every replayed packet is counted as a replay"
    );

    // A forged packet with a fresh, far-ahead sequence number fails the ICV
    // (the sequence number is authenticated) and must not move the window.
    let icv_before = drops(&lab, 1, "icv");
    let mut forged = to_b[0].clone();
    forged[4..8].copy_from_slice(&1_000_000u32.to_be_bytes());
    let mut flipped = to_b[1].clone();
    flipped[4..8].copy_from_slice(&1_000_001u32.to_be_bytes());
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x80;
    inject(&a.appliance, target, vec![forged, flipped]);
    eventually(
        Duration::from_secs(5),
        "the forgeries were not counted",
        || drops(&lab, 1, "icv") - icv_before >= 2,
    );
    assert_eq!(drops(&lab, 1, "icv") - icv_before, 2);
    // `meshgate status` lays them at the SA's door: region-1's.
    let out = lab
        .gateway_ns(1)
        .command(env!("CARGO_BIN_EXE_meshgate"))
        .args(["status", "--json"])
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    let peer = &status["peers"][0];
    assert_eq!(peer["id"], "region-1", "{status}");
    assert_eq!(peer["drops"]["replay"], to_b.len() as u64, "{status}");
    assert_eq!(peer["drops"]["icv"], 2, "{status}");
    // Had the window jumped to 1,000,000, these would now be "replays".
    ping_ok(
        &a.host,
        b.host_ip().into(),
        10,
        "the tunnel still carries traffic",
    );
}

#[test]
fn garbage_flood_does_not_disturb_a_running_flow() {
    let lab = lab(2);
    let (a, b) = (&lab.regions[0], &lab.regions[1]);
    let target = SocketAddr::from((b.underlay_ip(), ESP_PORT));
    // Garbage of every shape: short, random, a valid SPI with random bytes,
    // an unknown SPI, the non-ESP marker, keepalives.
    let mut garbage = Vec::new();
    let mut x: u32 = 0x1234_5678;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    for i in 0..20_000u32 {
        let len = (rnd() % 1500) as usize;
        let mut p: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
        match i % 5 {
            0 if len >= 8 => p[..4].copy_from_slice(&spi(0, 1).to_be_bytes()),
            1 if len >= 4 => p[..4].copy_from_slice(&0x0bad_0000u32.to_be_bytes()),
            2 => p = vec![0xff],
            3 if len >= 4 => p[..4].copy_from_slice(&[0, 0, 0, 0]),
            _ => {}
        }
        garbage.push(p);
    }
    let flood = {
        let payloads = garbage.clone();
        let underlay_src = a.appliance.name().to_string();
        std::thread::spawn(move || {
            // Inject from the appliance namespace of region 1, spread over the transfer.
            let ns = meshgate::netns::Netns::attach(&underlay_src);
            for chunk in payloads.chunks(500) {
                inject(&ns, target, chunk.to_vec());
                std::thread::sleep(Duration::from_millis(40));
            }
        })
    };
    let t = tcp_transfer(
        &a.host,
        &b.host,
        b.host_ip().into(),
        5001,
        Duration::from_secs(2),
    )
    .expect("the flow survives the flood");
    flood.join().expect("flood thread");
    assert!(t.bytes > 1_000_000, "TCP moved only {} bytes", t.bytes);
    ping_ok(
        &a.host,
        b.host_ip().into(),
        20,
        "pings lost after the flood",
    );
    let counted = drops(&lab, 1, "malformed")
        + drops(&lab, 1, "unknown_spi")
        + drops(&lab, 1, "icv")
        + drops(&lab, 1, "replay");
    let benign = metric(&lab, 1, "meshgate_udp_control_total", "");
    assert!(
        counted + benign >= 19_000,
        "only {counted} drops and {benign} control datagrams counted for 20000 garbage datagrams"
    );
}

#[test]
fn tshark_decrypts_the_stream_and_verifies_every_icv() {
    // tshark 4.0 has no ESN support (it authenticates a 32-bit sequence
    // number only), so this SA runs without ESN; the ESN layout is checked
    // against the published test vectors in the unit tests.
    let mut lab = lab_with(2, "cipher = \"aes128gcm16\"\nesn = false");
    // The SA keys come from a session: restarted under capture, gateway 1
    // keys a new one, whose hellos (public nonces) the capture holds.
    lab.stop_gateway(0);
    let cap = Capture::start(&lab.regions[0].appliance, "ul0");
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_meshgate"));
    lab.start_gateway(bin, 0).unwrap();
    lab.wait_ready(0, Duration::from_secs(10)).unwrap();
    lab.wait_sessions(0, Duration::from_secs(10)).unwrap();
    lab.wait_sessions(1, Duration::from_secs(10)).unwrap();
    let (a, b) = (&lab.regions[0], &lab.regions[1]);
    ping_ok(&a.host, b.host_ip().into(), 10, "pings lost");
    tcp_transfer(
        &a.host,
        &b.host,
        b.host_ip().into(),
        5001,
        Duration::from_millis(300),
    )
    .unwrap();
    let frames = cap.finish();
    let esp = esp_payloads(&frames, true).len();
    assert!(esp > 20, "captured only {esp} ESP packets");
    let pcap = scratch("tshark.pcap");
    write_pcap(&pcap, &frames);

    let (nonce_a, nonce_b) = session_nonces(&lab, &frames, 0);
    let nonces = [nonce_a, nonce_b];
    let sa = |from: usize, to: usize| {
        let key = session_key_hex(
            &lab.key_hex(from, to).unwrap(),
            &nonces[from],
            &nonces[to],
            spi(from, to),
        );
        assert_ne!(
            key,
            lab.key_hex(from, to).unwrap(),
            "never the configured key"
        );
        format!(
            "uat:esp_sa:\"IPv4\",\"{}\",\"{}\",\"{:#010x}\",\"AES-GCM with 16 octet ICV [RFC4106]\",\"0x{key}\",\"NULL\",\"\"",
            lab.regions[from].underlay_ip(),
            lab.regions[to].underlay_ip(),
            spi(from, to),
        )
    };
    let out = Command::new("tshark")
        .arg("-r")
        .arg(&pcap)
        .args([
            "-o",
            "esp.enable_encryption_decode:TRUE",
            "-o",
            "esp.enable_authentication_check:TRUE",
        ])
        .args(["-o", &sa(0, 1), "-o", &sa(1, 0)])
        .args([
            "-Y",
            "esp",
            "-T",
            "fields",
            "-e",
            "esp.spi",
            "-e",
            "esp.sequence",
            "-e",
            "esp.icv_good",
            "-e",
            "esp.icv_bad",
            "-e",
            "ip.proto",
            "-e",
            "_ws.col.Protocol",
        ])
        .output()
        .expect("tshark must be installed (Debian package tshark)");
    let _ = std::fs::remove_file(&pcap);
    assert!(
        out.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(
        rows.len(),
        esp,
        "tshark saw a different number of ESP packets than we captured:\n{text}"
    );
    for r in &rows {
        assert_eq!(
            r.get(2),
            Some(&"1"),
            "ICV not verified by tshark: {r:?}\n{text}"
        );
        assert_ne!(r.get(3), Some(&"1"), "tshark found a bad ICV: {r:?}");
    }
    // The decrypted inner packets are what we sent: ICMP and TCP.
    assert!(
        rows.iter()
            .any(|r| r.last().is_some_and(|p| p.contains("ICMP"))),
        "no decrypted ICMP:\n{text}"
    );
    assert!(
        rows.iter()
            .any(|r| r.last().is_some_and(|p| p.contains("TCP"))),
        "no decrypted TCP:\n{text}"
    );
}

/// The IVs (= 64-bit sequence numbers, the per-packet half of the AES-GCM
/// nonce) of the ESP packets with `spi` in a capture.
fn ivs(frames: &[common::Frame], spi: u32) -> Vec<u64> {
    esp_payloads(frames, true)
        .iter()
        .filter(|p| p[..4] == spi.to_be_bytes())
        .map(|p| u64::from_be_bytes(p[8..16].try_into().unwrap()))
        .collect()
}

/// AES-GCM never runs twice on one (key, nonce): the configured keys are
/// pre-shared secrets, and each start keys a session of its own. The
/// sender is killed with SIGKILL and restarted on a restored copy of its
/// old state directory: its sequence numbers (IVs) start again at 1, but
/// under a key derived from a nonce it never used, so no (key, IV) pair of
/// the capture repeats. The receiver is killed and restarted: the packets
/// recorded before are refused, and none is delivered.
#[test]
fn restarts_reuse_no_key_and_nonce_and_recorded_packets_are_refused() {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_meshgate"));
    let mut lab = lab(2);
    let (a_to_b, b_ip) = (spi(0, 1), lab.regions[1].host_ip());
    let target = SocketAddr::from((lab.regions[1].underlay_ip(), ESP_PORT));
    let psk = lab.key_hex(0, 1).unwrap();
    // The sender's state (its sequence-number file), and a snapshot of it.
    let state_file = lab.dir.join(format!("{}.seq", lab.regions[0].gateway_id()));
    let snapshot = lab.dir.join("snapshot.seq");
    let restart = |lab: &mut meshgate::lab::Lab, g: usize, kill: bool| {
        if kill {
            lab.kill_gateway(g);
        } else {
            lab.stop_gateway(g);
        }
        lab.start_gateway(bin, g).unwrap();
        lab.wait_ready(g, Duration::from_secs(10)).unwrap();
        lab.wait_sessions(0, Duration::from_secs(10)).unwrap();
        lab.wait_sessions(1, Duration::from_secs(10)).unwrap();
    };

    // A session keyed under capture, and traffic on it.
    let cap = Capture::start(&lab.regions[1].appliance, "ul0");
    restart(&mut lab, 0, false);
    let _ = std::fs::copy(&state_file, &snapshot);
    ping_ok(&lab.regions[0].host, b_ip.into(), 10, "pings lost");
    let before = cap.finish();
    let (a1, b1) = session_nonces(&lab, &before, 0);
    let key1 = session_key_hex(&psk, &a1, &b1, a_to_b);

    // SIGKILL, the old state directory restored, and a start on it.
    let cap = Capture::start(&lab.regions[1].appliance, "ul0");
    lab.kill_gateway(0);
    if snapshot.exists() {
        std::fs::copy(&snapshot, &state_file).unwrap();
    }
    restart(&mut lab, 0, true);
    ping_ok(
        &lab.regions[0].host,
        b_ip.into(),
        10,
        "traffic flows right after the sender restarts",
    );
    let after = cap.finish();
    let (a2, b2) = session_nonces(&lab, &after, 0);
    assert_ne!(a1, a2, "the restarted sender drew a new nonce");
    let key2 = session_key_hex(&psk, &a2, &b2, a_to_b);
    assert_ne!(key1, key2, "the restarted sender keys anew");
    let mut pairs = std::collections::HashSet::new();
    for (key, frames) in [(&key1, &before), (&key2, &after)] {
        let ivs = ivs(frames, a_to_b);
        assert!(ivs.len() >= 10, "{} packets on {a_to_b:#x}", ivs.len());
        for iv in ivs {
            assert!(
                pairs.insert((key.clone(), iv)),
                "(key, IV {iv}) used twice: AES-GCM nonce reuse"
            );
        }
    }

    // The receiver is killed and restarts: what it accepted before is refused.
    restart(&mut lab, 1, true);
    let old: Vec<Vec<u8>> = esp_payloads(&before, true)
        .into_iter()
        .filter(|p| p[..4] == a_to_b.to_be_bytes())
        .collect();
    inject(&lab.regions[0].appliance, target, old.clone());
    eventually(
        Duration::from_secs(5),
        "the recorded packets were not all refused",
        || drops(&lab, 1, "replay") + drops(&lab, 1, "icv") >= old.len() as u64,
    );
    assert_eq!(
        metric(&lab, 1, "meshgate_peer_packets_total", "direction=\"in\""),
        0,
        "none of them was delivered"
    );
    ping_ok(
        &lab.regions[0].host,
        b_ip.into(),
        10,
        "and live traffic still flows",
    );
}

#[test]
fn hub_spoke_policy_sends_spoke_to_spoke_traffic_through_the_hub() {
    // Region 1 is the hub, regions 2 and 3 are spokes.
    let lab = common::lab_policy(3, "hub-spoke");
    let (s2, s3) = (&lab.regions[1], &lab.regions[2]);
    ping_ok(
        &s2.host,
        s3.host_ip().into(),
        20,
        "spoke-to-spoke pings lost",
    );
    tcp_ok(
        &s3.host,
        &s2.host,
        s2.host_ip().into(),
        Duration::from_millis(500),
    );

    let out_to = |g: usize, peer: &str| {
        metric(
            &lab,
            g,
            "meshgate_peer_packets_total",
            &format!("direction=\"out\",peer=\"{peer}\""),
        )
    };
    let in_from = |g: usize, peer: &str| {
        metric(
            &lab,
            g,
            "meshgate_peer_packets_total",
            &format!("direction=\"in\",peer=\"{peer}\""),
        )
    };
    // The spokes hold no direct path: everything went to the hub...
    assert_eq!(out_to(1, "region-3"), 0, "spoke 2 sent straight to spoke 3");
    assert_eq!(out_to(2, "region-2"), 0, "spoke 3 sent straight to spoke 2");
    assert!(out_to(1, "region-1") >= 20 && out_to(2, "region-1") >= 20);
    // ...which relayed it: in from one spoke, out to the other.
    assert!(
        in_from(0, "region-2") >= 20 && out_to(0, "region-3") >= 20,
        "the hub relayed nothing"
    );
    assert!(
        in_from(2, "region-1") >= 20,
        "spoke 3 received the relayed traffic from the hub"
    );
    for g in 0..3 {
        assert_eq!(
            metric(&lab, g, "meshgate_drops_total", ""),
            0,
            "transit through the hub passes anti-spoofing at gateway {g}"
        );
    }
}

#[test]
fn reloading_full_mesh_to_hub_spoke_moves_the_paths_without_losing_a_packet() {
    // Region 1 is the hub by placement, regions 2 and 3 spokes, but every
    // gateway starts on full-mesh: the spokes talk directly.
    let mut lab = common::lab_unstarted_placed(3, "full-mesh", "hub-spoke");
    lab.start_gateways(std::path::Path::new(env!("CARGO_BIN_EXE_meshgate")))
        .unwrap();
    let (hub, s2, s3) = (&lab.regions[0], &lab.regions[1], &lab.regions[2]);
    let out_to = |g: usize, peer: &str| {
        metric(
            &lab,
            g,
            "meshgate_peer_packets_total",
            &format!("direction=\"out\",peer=\"{peer}\""),
        )
    };
    ping_ok(
        &s2.host,
        s3.host_ip().into(),
        5,
        "spoke-to-spoke on full-mesh",
    );
    assert!(out_to(1, "region-3") >= 5, "full-mesh goes straight");
    std::thread::scope(|s| {
        let pings = s.spawn(|| {
            ping(
                &s2.host,
                s3.host_ip().into(),
                150,
                Duration::from_millis(10),
            )
        });
        std::thread::sleep(Duration::from_millis(300));
        // The hub first, then the spokes, one by one under the ping.
        for g in [hub, s2, s3] {
            let report = meshgate::lab::probe::control(
                &lab.control_socket(g.index),
                "/policy/reload",
                "hub-spoke",
            )
            .unwrap();
            assert!(report.contains("policy hub-spoke"), "{report}");
            std::thread::sleep(Duration::from_millis(300));
        }
        let p = pings.join().unwrap().unwrap();
        assert_eq!(p.received, p.sent, "pings lost while the policy rolled out");
    });
    // Now the spokes send to each other only through the hub.
    let (direct, via_hub) = (out_to(1, "region-3"), out_to(1, "region-1"));
    ping_ok(
        &s2.host,
        s3.host_ip().into(),
        20,
        "spoke-to-spoke on hub-spoke",
    );
    assert_eq!(
        out_to(1, "region-3"),
        direct,
        "spoke 2 still sends straight to spoke 3"
    );
    assert!(out_to(1, "region-1") >= via_hub + 20);
    assert!(out_to(0, "region-3") >= 20, "the hub relays");
    for g in 0..3 {
        assert_eq!(
            metric(&lab, g, "meshgate_drops_total", ""),
            0,
            "drops at {g}"
        );
    }
}

#[test]
fn a_hundred_policy_reloads_lose_no_packet() {
    let lab = lab(2);
    let (a, b) = (&lab.regions[0], &lab.regions[1]);
    let reload = |i: usize| {
        let report = meshgate::lab::probe::control(&lab.control_socket(0), "/policy/reload", "")
            .unwrap_or_else(|e| panic!("reload {i}: {e:#}"));
        assert!(report.contains("in force"), "{report}");
        std::thread::sleep(Duration::from_millis(15));
    };
    // Half the reloads under a continuous 10 ms ping: not one lost. (Not
    // beside the TCP flow: a full-speed flow fills the queues, and what
    // a ping loses there says nothing of the reloads.)
    std::thread::scope(|s| {
        let pings = s.spawn(|| ping(&a.host, b.host_ip().into(), 300, Duration::from_millis(10)));
        (0..50).for_each(&reload);
        let p = pings.join().unwrap().unwrap();
        assert_eq!(p.received, p.sent, "pings lost across reloads");
    });
    // The other half under a TCP flow at full speed: it carries on.
    std::thread::scope(|s| {
        let flow = s.spawn(|| {
            tcp_transfer(
                &b.host,
                &a.host,
                a.host_ip().into(),
                5001,
                Duration::from_secs(2),
            )
        });
        (50..100).for_each(&reload);
        let t = flow
            .join()
            .unwrap()
            .expect("the TCP flow survives the reloads");
        assert!(t.bytes > 1_000_000);
    });
    assert_eq!(
        metric(&lab, 0, "meshgate_policy_reloads_total", "outcome=\"ok\""),
        100
    );
    assert_eq!(
        metric(&lab, 0, "meshgate_policy_evaluations_total", ""),
        101
    );
    assert!(lab
        .metrics(0)
        .unwrap()
        .contains("meshgate_policy_info{hash="));
    for g in 0..2 {
        assert_eq!(metric(&lab, g, "meshgate_drops_total", ""), 0);
    }
}

#[test]
fn a_bad_policy_file_is_refused_and_the_old_one_keeps_forwarding() {
    // Gateway 1 runs a policy from a file, which we then replace.
    let (lab, policy) =
        common::lab_with_policy_file(2, meshgate::policy::builtin("full-mesh").unwrap());
    let (a, b) = (&lab.regions[0], &lab.regions[1]);
    let control = lab.control_socket(0);
    for (what, bytes) in [
        ("junk", b"definitely not wasm".to_vec()),
        (
            "a looping policy",
            std::fs::read(concat!(env!("OUT_DIR"), "/test-loop.wasm")).unwrap(),
        ),
        (
            "a trapping policy",
            std::fs::read(concat!(env!("OUT_DIR"), "/test-trap.wasm")).unwrap(),
        ),
        (
            "a memory hog",
            std::fs::read(concat!(env!("OUT_DIR"), "/test-oom.wasm")).unwrap(),
        ),
        (
            "invalid decisions",
            std::fs::read(concat!(env!("OUT_DIR"), "/test-invalid.wasm")).unwrap(),
        ),
        (
            "malformed decisions",
            std::fs::read(concat!(env!("OUT_DIR"), "/test-malformed.wasm")).unwrap(),
        ),
    ] {
        std::fs::write(&policy, &bytes).unwrap();
        let err = meshgate::lab::probe::control(&control, "/policy/reload", "")
            .expect_err(what)
            .to_string();
        assert!(
            err.contains("422") && err.contains("policy.wasm") && err.contains("stays"),
            "{what}: {err}"
        );
        ping_ok(
            &a.host,
            b.host_ip().into(),
            5,
            &format!("forwarding after refusing {what}"),
        );
    }
    // Six refused on request; the file watch may have tried one of the bad
    // files as well, and refused it too. None was taken.
    assert!(
        metric(
            &lab,
            0,
            "meshgate_policy_reloads_total",
            "outcome=\"refused\""
        ) >= 6
    );
    assert_eq!(
        metric(&lab, 0, "meshgate_policy_reloads_total", "outcome=\"ok\""),
        0
    );
    assert!(metric(&lab, 0, "meshgate_policy_traps_total", "kind=\"timeout\"") >= 1);
    assert!(
        metric(
            &lab,
            0,
            "meshgate_policy_traps_total",
            "kind=\"out_of_memory\""
        ) >= 1
    );
    // A good module again is taken (another than the one in force, and
    // one that keeps the routes: a module withdrawing them all needs
    // --force).
    std::fs::write(
        &policy,
        meshgate::policy::builtin("mesh-with-leaves").unwrap(),
    )
    .unwrap();
    let report = meshgate::lab::probe::control(&control, "/policy/reload", "").unwrap();
    assert!(report.contains("in force"), "{report}");
}

#[test]
fn a_policy_that_traps_on_an_event_keeps_the_last_good_tables_and_recovers() {
    let mut lab = common::lab_unstarted(2);
    // Gateway 1 runs a policy that decides as full-mesh while its parameter
    // `trap` is "no", and traps otherwise.
    let policy = lab.dir.join("policy.wasm");
    let bytes = std::fs::read(concat!(env!("OUT_DIR"), "/test-trap.wasm")).unwrap();
    std::fs::write(&policy, &bytes).unwrap();
    let hash = meshgate::policy::host::hash_of(&bytes);
    let cfg = lab.config_path(0);
    let original = std::fs::read_to_string(&cfg).unwrap();
    let with_trap = |value: &str| {
        original
            .lines()
            .map(|l| {
                if l.starts_with("module =") {
                    format!(
                        "module = \"{}\"\nparams = {{ trap = \"{value}\" }}",
                        policy.display()
                    )
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    std::fs::write(&cfg, with_trap("no")).unwrap();
    lab.start_gateways(std::path::Path::new(env!("CARGO_BIN_EXE_meshgate")))
        .unwrap();
    let (a, b) = (&lab.regions[0], &lab.regions[1]);
    ping_ok(
        &a.host,
        b.host_ip().into(),
        5,
        "forwarding under the policy",
    );
    let count = |name: &str, filter: &str| metric(&lab, 0, name, filter);

    // A config change is an event: the policy is evaluated again, traps,
    // and the tables it last answered stay in force.
    std::fs::write(&cfg, with_trap("yes")).unwrap();
    eventually(
        Duration::from_secs(5),
        "no failed evaluation after the change",
        || {
            count(
                "meshgate_policy_event_evaluations_total",
                "outcome=\"failed\"",
            ) >= 1
        },
    );
    assert_eq!(
        count("meshgate_policy_events_total", "trigger=\"config\""),
        1
    );
    assert!(count("meshgate_policy_traps_total", "kind=\"trap\"") >= 1);
    ping_ok(
        &a.host,
        b.host_ip().into(),
        20,
        "forwarding on the last good tables",
    );
    let log = std::fs::read_to_string(lab.log_path(0)).unwrap();
    assert!(
        log.contains(&format!("policy.wasm ({hash})"))
            && log.contains("trap in decide")
            && log.contains("the last good tables stay in force"),
        "the log names the policy, its hash and the trap:\n{log}"
    );

    // A config that does not load changes nothing, and says why.
    std::fs::write(&cfg, "[gateway]\nid = 7\n").unwrap();
    eventually(
        Duration::from_secs(5),
        "the broken config was not refused",
        || {
            std::fs::read_to_string(lab.log_path(0))
                .unwrap()
                .contains("config changed but is refused")
        },
    );
    ping_ok(
        &a.host,
        b.host_ip().into(),
        5,
        "forwarding after a broken config",
    );

    // Fixed: the next event is evaluated (after the backoff) and succeeds.
    std::fs::write(&cfg, with_trap("no")).unwrap();
    eventually(
        Duration::from_secs(8),
        "no successful evaluation after the fix",
        || count("meshgate_policy_event_evaluations_total", "outcome=\"ok\"") >= 1,
    );
    assert_eq!(
        count("meshgate_policy_events_total", "trigger=\"config\""),
        2
    );
    ping_ok(&a.host, b.host_ip().into(), 5, "forwarding after recovery");
    for g in 0..2 {
        assert_eq!(metric(&lab, g, "meshgate_drops_total", ""), 0);
    }
}

/// Configured keys cannot be renewed: at the soft limit the SA says a rekey
/// is due, at the hard limit it stops carrying traffic, and what it would
/// have carried is dropped as `expired`, counted and never sent.
#[test]
fn a_configured_sa_past_its_hard_lifetime_carries_nothing_and_says_so() {
    let lab = lab_with(
        2,
        "cipher = \"aes128gcm16\"\n\n[sa.lifetime.soft]\npackets = 20\n\n[sa.lifetime.hard]\npackets = 30",
    );
    let (a, b) = (&lab.regions[0], &lab.regions[1]);
    let p = ping(&a.host, b.host_ip().into(), 60, Duration::from_millis(10)).unwrap();
    eprintln!("{} of 60 echoes came back", p.received);
    assert!(
        p.received <= 30,
        "an expired SA carried traffic: {} echoes",
        p.received
    );
    assert!(
        p.received >= 15,
        "the SA carried too little before its limit: {}",
        p.received
    );
    eventually(Duration::from_secs(5), "no expired drops counted", || {
        drops(&lab, 0, "expired") + drops(&lab, 1, "expired") > 0
    });
    let events = |g, stage: &str| {
        metric(
            &lab,
            g,
            "meshgate_sa_lifetime_events_total",
            &format!("stage=\"{stage}\""),
        )
    };
    for stage in ["soft", "hard"] {
        assert!(
            events(0, stage) + events(1, stage) >= 1,
            "no {stage} lifetime event counted"
        );
    }
    let log = std::fs::read_to_string(lab.log_path(0)).unwrap()
        + &std::fs::read_to_string(lab.log_path(1)).unwrap();
    assert!(log.contains("reached its hard lifetime"), "{log}");
    // Nothing after the hard limit went on the wire: a second round of
    // echoes is lost whole.
    let p = ping(&a.host, b.host_ip().into(), 5, Duration::from_millis(10)).unwrap();
    assert_eq!(p.received, 0);
}

/// The watched policy file replaced the two ways it happens: written in
/// place (a reload may read it half written: refused, the old policy
/// forwards, and the completed file is taken), and by an atomic rename.
#[test]
fn a_policy_file_replaced_while_being_written_is_taken_once_whole() {
    let full_mesh = meshgate::policy::builtin("full-mesh").unwrap();
    let (lab, policy) = common::lab_with_policy_file(2, full_mesh);
    let (a, b) = (&lab.regions[0], &lab.regions[1]);
    let reloads = |outcome: &str| {
        metric(
            &lab,
            0,
            "meshgate_policy_reloads_total",
            &format!("outcome=\"{outcome}\""),
        )
    };
    let in_force =
        || meshgate::lab::probe::http_get(&a.appliance, meshgate::lab::ADMIN, "/policy").unwrap();
    let hash = |bytes: &[u8]| meshgate::policy::host::hash_of(bytes);
    // Half of another module (one that keeps the routes), written in
    // place: the watch reads it and refuses it.
    let other = meshgate::policy::builtin("mesh-with-leaves").unwrap();
    std::fs::write(&policy, &other[..other.len() / 2]).unwrap();
    eventually(
        Duration::from_secs(10),
        "the half-written file was not tried",
        || reloads("refused") >= 1,
    );
    assert!(in_force().contains(&hash(full_mesh)), "{}", in_force());
    ping_ok(
        &a.host,
        b.host_ip().into(),
        5,
        "forwarding while the file is half written",
    );
    // The rest arrives: the whole file is taken.
    std::fs::write(&policy, other).unwrap();
    eventually(
        Duration::from_secs(10),
        "the completed file was not taken",
        || in_force().contains(&hash(other)),
    );
    // An atomic rename over it: taken too.
    let next = lab.dir.join("policy.wasm.new");
    std::fs::write(&next, full_mesh).unwrap();
    std::fs::rename(&next, &policy).unwrap();
    eventually(
        Duration::from_secs(10),
        "the renamed file was not taken",
        || in_force().contains(&hash(full_mesh)),
    );
    assert!(reloads("ok") >= 2);
    ping_ok(
        &a.host,
        b.host_ip().into(),
        5,
        "forwarding after the replacements",
    );
}

/// The gateway replaces and removes only the routes it installed: a route
/// for the same prefix that an operator (or another daemon) put in the
/// main table stays as it is, even one into the tunnel device itself.
#[test]
fn routes_the_gateway_did_not_install_are_left_alone() {
    let ns = meshgate::netns::Netns::create("mg-routes").expect("a namespace");
    let result = ns
        .run(|| -> anyhow::Result<Vec<String>> {
            let tun = meshgate::tun::Tun::create("mgt0")?;
            tun.configure(1400, &[])?;
            let show = |p: &str| -> anyhow::Result<String> {
                let out = Command::new("ip")
                    .args(["route", "show", "exact", p])
                    .output()?;
                Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
            };
            meshgate::tun::ip(&["route", "add", "10.9.0.0/16", "dev", "lo"])?;
            meshgate::tun::ip(&["route", "add", "10.7.0.0/16", "dev", "mgt0"])?;
            let mut seen = Vec::new();
            for p in ["10.9.0.0/16", "10.7.0.0/16"] {
                let before = show(p)?;
                let err = tun.add_route(&p.parse().map_err(anyhow::Error::msg)?);
                seen.push(format!(
                    "{}",
                    err.expect_err("a foreign route is not replaced")
                ));
                assert_eq!(show(p)?, before, "{p} changed");
                let err = tun.del_route(&p.parse().map_err(anyhow::Error::msg)?);
                assert!(err.is_err(), "{p} was removed");
                assert_eq!(show(p)?, before, "{p} changed");
            }
            // Its own: installed, replaced again (idempotent), removed.
            let ours: meshgate::prefix::Prefix =
                "10.8.0.0/16".parse().map_err(anyhow::Error::msg)?;
            tun.add_route(&ours)?;
            tun.add_route(&ours)?;
            seen.push(show("10.8.0.0/16")?);
            tun.del_route(&ours)?;
            seen.push(show("10.8.0.0/16")?);
            Ok(seen)
        })
        .expect("running in the namespace")
        .expect("the routes behave");
    assert!(
        result[0].starts_with("a route for 10.9.0.0/16 that meshgate did not install is in the main table (10.9.0.0/16 dev lo"),
        "{}",
        result[0]
    );
    assert!(result[1].contains("(10.7.0.0/16 dev mgt0"), "{}", result[1]);
    assert!(result[2].contains("dev mgt0 proto 147"), "{}", result[2]);
    assert_eq!(result[3], "");
}

/// What a local user who is not root can do to a running gateway: nothing
/// through the control socket (its mode, and its check of the peer's
/// credentials when the mode is opened by mistake), nothing through the
/// TCP admin listener but read. Reload bodies that would make the root
/// process read another file (`/dev/zero`, a FIFO, a module of the user's)
/// are refused, and forwarding carries on. Before the control socket, any
/// local user could rotate or revoke the mesh's keys and have any path
/// loaded as a policy through the TCP listener.
#[test]
fn a_local_user_gets_nothing_from_the_control_socket_and_hostile_reloads_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let lab = lab(2);
    let (a, b) = (&lab.regions[0], &lab.regions[1]);
    let socket = lab.control_socket(0);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&socket), 0o600);
    // The binary where the unprivileged user may run it.
    let dir = scratch("local-user");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.join("meshgate");
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_meshgate"));
    if std::fs::hard_link(binary, &exe).is_err() {
        std::fs::copy(binary, &exe).unwrap();
    }
    let as_nobody = |args: &[&str]| {
        let out = Command::new(&exe)
            .args(args)
            .arg("--control")
            .arg(&socket)
            .uid(65534)
            .gid(65534)
            .output()
            .expect("running meshgate as nobody");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The lab's directory (mode 0700) opened for passing through, so the
    // socket's own mode is what is tested.
    let lab_mode = mode(&lab.dir);
    std::fs::set_permissions(&lab.dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    // (The CA key is never read: the control socket refuses first.)
    for args in [
        &["keys", "rotate", "--ca-key", "ca.key"][..],
        &["keys", "revoke", "1", "--ca-key", "ca.key"],
        &["keys", "show"],
        &["policy", "reload"],
    ] {
        let (ok, err) = as_nobody(args);
        assert!(!ok && err.contains("permission denied"), "{args:?}: {err}");
    }
    // A mode opened to everyone by mistake: the peer's credentials are
    // still checked, and the user gets no answer.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (ok, err) = as_nobody(&["keys", "rotate", "--ca-key", "ca.key"]);
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(&lab.dir, std::fs::Permissions::from_mode(lab_mode)).unwrap();
    assert!(
        !ok && err.contains("closed the connection without an answer"),
        "{err}"
    );
    eventually(Duration::from_secs(5), "the refusal was not logged", || {
        std::fs::read_to_string(lab.log_path(0))
            .unwrap_or_default()
            .contains("refused a connection from uid 65534")
    });
    // The TCP listener reads, and says where changes go.
    for path in [
        "/keys/order",
        "/keys/rotate",
        "/keys/revoke",
        "/policy/reload",
    ] {
        let e = meshgate::lab::probe::http(&a.appliance, meshgate::lab::ADMIN, "POST", path)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("403") && e.contains("control socket"),
            "{path}: {e}"
        );
    }
    assert!(
        meshgate::lab::probe::http_get(&a.appliance, meshgate::lab::ADMIN, "/policy")
            .unwrap()
            .contains("full-mesh")
    );
    // A read of the route claims, on a gateway without [cloud]: said so.
    let e = meshgate::lab::probe::http_get(&a.appliance, meshgate::lab::ADMIN, "/cloud")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("409") && e.contains("[cloud] is not configured"),
        "{e}"
    );
    // Reload bodies that name another file, over the control socket.
    let fifo = dir.join("fifo.wasm");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0);
    let theirs = dir.join("theirs.wasm");
    std::fs::write(&theirs, meshgate::policy::builtin("hub-spoke").unwrap()).unwrap();
    for body in [
        "/dev/zero".to_string(),
        fifo.display().to_string(),
        theirs.display().to_string(),
        "/etc/passwd".to_string(),
        "relative.wasm".to_string(),
    ] {
        let e = meshgate::lab::probe::control(&socket, "/policy/reload", &body)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("422") && e.contains("is not the configured policy"),
            "{body}: {e}"
        );
    }
    ping_ok(
        &a.host,
        b.host_ip().into(),
        5,
        "forwarding after the refusals",
    );
    assert_eq!(
        metric(&lab, 0, "meshgate_policy_reloads_total", "outcome=\"ok\""),
        0
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Another module is loaded by configuring it: the gateway follows a
/// change of `[policy] module` in its config file, and that file becomes
/// the one reloads may read.
#[test]
fn a_module_configured_anew_is_loaded_and_reloads_then_read_it() {
    let lab = lab(2);
    let (a, b) = (&lab.regions[0], &lab.regions[1]);
    let module = lab.dir.join("custom.wasm");
    std::fs::write(&module, meshgate::policy::builtin("full-mesh").unwrap()).unwrap();
    let socket = lab.control_socket(0);
    let refused =
        meshgate::lab::probe::control(&socket, "/policy/reload", &module.display().to_string())
            .unwrap_err()
            .to_string();
    assert!(
        refused.contains("is not the configured policy (full-mesh)"),
        "{refused}"
    );
    let cfg = lab.config_path(0);
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "module = \"full-mesh\"",
        &format!("module = \"{}\"", module.display()),
    );
    std::fs::write(&cfg, text).unwrap();
    let in_force = || {
        meshgate::lab::probe::http_get(&a.appliance, meshgate::lab::ADMIN, "/policy")
            .unwrap_or_default()
    };
    eventually(
        Duration::from_secs(10),
        "the configured module was not loaded",
        || in_force().contains("custom.wasm"),
    );
    let report =
        meshgate::lab::probe::control(&socket, "/policy/reload", &module.display().to_string())
            .unwrap();
    assert!(report.contains("in force"), "{report}");
    ping_ok(
        &a.host,
        b.host_ip().into(),
        5,
        "forwarding on the configured module",
    );
}
