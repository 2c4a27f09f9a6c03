//! Entry points for coverage-guided fuzzing (the `fuzz/` crate, run with
//! cargo-fuzz on the stable toolchain). Each takes the fuzzer's bytes as a
//! hostile peer, a file or a policy module would hand them to a gateway,
//! and must neither panic nor hang. The tests below run each on its seed
//! inputs, so every target builds and runs in CI.

use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub use crate::dataplane::fuzz::esp_inbound;

/// The config file: parse and validate. Inputs naming a key file are
/// skipped (they would read the fuzzing machine's files).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if text.contains("key_file") {
        return;
    }
    let _ = crate::config::Config::parse(Path::new("fuzz.toml"), text, &|_| None);
}

/// A read from the TUN device: a virtio-net header the fuzzer chooses (so
/// checksum offload and TCP segmentation run on any values), and a packet.
pub fn tso(data: &[u8]) {
    use crate::dataplane::offload::{
        complete_checksum, plan_segments, write_segment, VnetHdr, VNET_HDR_LEN,
    };
    let Some(hdr) = data.get(..VNET_HDR_LEN).and_then(VnetHdr::parse) else {
        return;
    };
    let mut pkt = data[VNET_HDR_LEN..].to_vec();
    if hdr.is_tcp_gso() {
        if let Ok(plan) = plan_segments(&hdr, &pkt) {
            let mut out = Vec::new();
            for i in 0..plan.count {
                let len = if i + 1 == plan.count {
                    plan.last_len
                } else {
                    plan.full_len
                };
                out.resize(len, 0);
                let _ = write_segment(&hdr, &pkt, i, &mut out);
            }
        }
    } else {
        let _ = complete_checksum(&hdr, &mut pkt);
    }
}

/// An epoch order as the control socket takes it (hex) and the state as
/// `keys rotate --state` reads it (text), then put into force and used to
/// make the next orders. Signatures are taken as good here, so the
/// fuzzer reaches what lies behind them.
pub fn order(data: &[u8]) {
    use crate::keys::order::{MeshOrder, OrderAuthority, SignedOrder};
    use crate::keys::rotation::EpochState;
    struct AnySignature;
    impl OrderAuthority for AnySignature {
        fn verify(&self, _: &[u8], _: &[u8]) -> bool {
            true
        }
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut orders = Vec::new();
    if let Ok(signed) = SignedOrder::from_hex(text) {
        if let Ok(o) = signed.open(&AnySignature) {
            orders.push((o, signed));
        }
    }
    for line in text.lines() {
        if let Ok(o) = line.parse::<MeshOrder>() {
            orders.push((o, SignedOrder::default()));
        }
    }
    let mut state = EpochState::new(1);
    for (o, signed) in orders {
        let from = o.state();
        let _ = from.rotate();
        let _ = from.revoke(o.current);
        let _ = from.revoke_cert([0; 16]);
        let _ = from.drop_cert(o.certs.first().copied().unwrap_or_default());
        let _ = state.adopt(&o, signed);
        let _ = state.rotate();
    }
}

fn member_id(id: &str, port: u16) -> crate::membership::MemberId {
    crate::membership::MemberId {
        id: id.into(),
        addr: std::net::SocketAddr::from(([192, 0, 2, 1], port)),
        generation: 1,
    }
}

/// A membership datagram from an authenticated member (SWIM, heartbeats,
/// reports, records, record requests: the first byte is the agent's tag),
/// to a member that knows a few others, at a time that moves on.
pub fn membership(data: &[u8]) {
    use crate::membership::liveness::LivenessSettings;
    use crate::membership::{Agent, Settings};
    static AGENT: OnceLock<Mutex<(Agent, Instant)>> = OnceLock::new();
    let agent = AGENT.get_or_init(|| {
        let now = Instant::now();
        let mut a = Agent::new(
            member_id("me", 1),
            Settings::default(),
            Some(LivenessSettings::default()),
            7,
        );
        let _ = a.assume((2..6).map(|i| member_id(&format!("m{i}"), i)), now);
        Mutex::new((a, now))
    });
    let Ok(mut guard) = agent.lock() else {
        return;
    };
    let (a, now) = &mut *guard;
    *now += Duration::from_millis(7);
    let _ = a.handle("m2", data, *now);
    if a.poll_timeout().is_some_and(|t| t <= *now) {
        a.handle_timeout(*now);
    }
    while a.poll_transmit().is_some() {}
    while a.poll_event().is_some() {}
    let _ = a.take_refused();
}

/// A sequence of key-exchange messages from an authenticated peer, to a
/// negotiator that has an exchange of its own under way with it: each
/// message is a length byte and that many bytes.
pub fn key_exchange(data: &[u8]) {
    use crate::esp::CipherSuite;
    use crate::keys::exchange::Negotiator;
    let keys = std::sync::Arc::new(crate::keys::epoch::test_keys(7));
    let mut n = Negotiator::new("b", CipherSuite::Aes128Gcm, keys, 1);
    let now = Instant::now();
    let _ = n.initiate("a", now);
    let mut rest = data;
    let mut t = now;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        let (msg, tail) = tail.split_at(len);
        t += Duration::from_millis(100);
        let _ = n.handle("a", msg, t);
        if n.poll_timeout().is_some_and(|d| d <= t) {
            n.handle_timeout(t);
        }
        while n.poll_event().is_some() {}
        rest = tail;
    }
}

/// A policy's answer as the contract carries it (peers and route records
/// in their wire form, a count of next hops), decoded and validated
/// against a sample view: what a hostile module can make the host read.
pub fn decisions(data: &[u8]) {
    use meshgate_sdk::wire;
    let (Some(&split), Some(&hops)) = (data.first(), data.get(1)) else {
        return;
    };
    let body = &data[2..];
    let at = usize::from(split).min(body.len());
    let (peers, routes) = body.split_at(at);
    let hops_len = usize::from(hops);
    let (Ok(peers), Ok(routes)) = (
        wire::decode_peers(peers),
        wire::decode_route_records(routes, hops_len),
    ) else {
        return;
    };
    let d = crate::policy::decisions::Decisions {
        peers,
        routes,
        hops: (0..hops_len as u32).collect(),
        failover: Vec::new(),
    };
    let _ = crate::policy::validate::problems(&crate::policy::check::sample_view(), &d);
}

#[cfg(test)]
mod tests {
    /// Each target on its seeds (the fuzz crate's corpora start from the
    /// same): they build, run, and do not panic.
    /// With `MESHGATE_WRITE_FUZZ_SEEDS=DIR`, also writes the seeds to
    /// `DIR/<target>/` (how `fuzz/seeds` was made).
    #[test]
    fn every_fuzz_target_runs_on_its_seeds() {
        if let Ok(dir) = std::env::var("MESHGATE_WRITE_FUZZ_SEEDS") {
            use super::seeds;
            let all: [(&str, Vec<Vec<u8>>); 7] = [
                ("config", seeds::config()),
                ("tso", seeds::tso()),
                ("esp_inbound", seeds::esp_inbound()),
                ("membership", seeds::membership()),
                ("key_exchange", seeds::key_exchange()),
                ("decisions", seeds::decisions()),
                ("order", seeds::order()),
            ];
            for (target, inputs) in all {
                let d = std::path::Path::new(&dir).join(target);
                std::fs::create_dir_all(&d).unwrap();
                for (i, input) in inputs.iter().enumerate() {
                    std::fs::write(d.join(format!("seed-{i}")), input).unwrap();
                }
            }
        }
        for seed in super::seeds::config() {
            super::config(&seed);
        }
        for seed in super::seeds::tso() {
            super::tso(&seed);
        }
        let esp = super::seeds::esp_inbound();
        for seed in &esp {
            super::esp_inbound(seed);
        }
        // The sealed seeds reach the inner packet and the coalescer.
        assert!(crate::dataplane::fuzz::delivers(&esp[0]));
        assert!(crate::dataplane::fuzz::delivers(&esp[1]));
        for seed in super::seeds::membership() {
            super::membership(&seed);
        }
        for seed in super::seeds::key_exchange() {
            super::key_exchange(&seed);
        }
        for seed in super::seeds::decisions() {
            super::decisions(&seed);
        }
        for seed in super::seeds::order() {
            super::order(&seed);
        }
    }
}

/// Seed inputs: well-formed examples each target starts exploring from.
pub mod seeds {
    /// An order in its hex form (signed by a stand-in), and states as
    /// `keys show` prints them.
    pub fn order() -> Vec<Vec<u8>> {
        use crate::keys::order::MeshOrder;
        let order = MeshOrder {
            wrapped: Vec::new(),
            serial: 3,
            current: 4,
            floor: 2,
            revoked: vec![3, 5],
            certs: vec![[0xab; 16]],
        };
        let signed = order.seal(|_| Ok(vec![0x30; 70])).unwrap_or_default();
        vec![
            signed.to_hex().into_bytes(),
            order.to_string().into_bytes(),
            b"serial 0 current 1 floor 0 revoked none certs none".to_vec(),
        ]
    }

    use crate::dataplane::offload::{VnetHdr, VNET_HDR_LEN};

    pub fn config() -> Vec<Vec<u8>> {
        vec![
            b"[gateway]\nid = \"a\"\nlisten = \"198.18.0.1:4500\"\nprefixes = [\"10.1.0.0/16\"]\n[tun]\nname = \"mg0\"\n".to_vec(),
            b"[gateway]\nid = \"a\"\nlisten = \"198.18.0.1:4500\"\n[tun]\n[[peers]]\nid = \"b\"\nendpoint = \"198.18.0.2:4500\"\nprefixes = [\"10.2.0.0/16\"]\noutbound = { spi = 4097, key_env = \"X\" }\ninbound = { spi = 4098, key_env = \"Y\" }\n".to_vec(),
        ]
    }

    /// An IPv4 TCP packet from 10.1.0.1 to 10.2.0.1 with `payload` bytes.
    pub fn tcp4(payload: usize) -> Vec<u8> {
        let len = 40 + payload;
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 1, 0, 1]);
        p[16..20].copy_from_slice(&[10, 2, 0, 1]);
        p[20..22].copy_from_slice(&40000u16.to_be_bytes());
        p[22..24].copy_from_slice(&5201u16.to_be_bytes());
        p[32] = 0x50;
        p[33] = 0x10;
        p
    }

    pub fn tso() -> Vec<Vec<u8>> {
        let mut gso = vec![0u8; VNET_HDR_LEN];
        VnetHdr {
            flags: 1,
            gso_type: 1,
            hdr_len: 40,
            gso_size: 1000,
            csum_start: 20,
            csum_offset: 16,
        }
        .write(&mut gso);
        gso.extend(tcp4(3000));
        let mut plain = vec![0u8; VNET_HDR_LEN];
        plain.extend(tcp4(100));
        vec![gso, plain]
    }

    pub fn esp_inbound() -> Vec<Vec<u8>> {
        let mut sealed = vec![0u8, 4];
        sealed.extend(tcp4(1000));
        let mut flushed = vec![2u8, 4];
        flushed.extend(tcp4(1000));
        let mut raw = vec![1u8];
        raw.extend_from_slice(&0x2001u32.to_be_bytes());
        raw.extend_from_slice(&[0; 40]);
        vec![sealed, flushed, raw, vec![1, 0xff]]
    }

    pub fn membership() -> Vec<Vec<u8>> {
        vec![
            vec![0],
            vec![1; 40],
            vec![2, 0, 0],
            vec![3],
            vec![4, 1, 2, 3],
        ]
    }

    pub fn key_exchange() -> Vec<Vec<u8>> {
        vec![vec![3, 1, 0, 0], vec![0], vec![200; 201]]
    }

    pub fn decisions() -> Vec<Vec<u8>> {
        vec![vec![0, 0], vec![8, 2, 0, 0, 0, 0, 1, 0, 0, 0]]
    }
}

#[cfg(test)]
mod found {
    /// Inputs the fuzzer found that once failed, kept as regressions.
    /// A policy naming endpoint u32::MAX overflowed the validator's
    /// message (a panic in a debug build, on the engine's thread).
    #[test]
    fn decisions_crash_53fe0db3() {
        super::decisions(&[
            247, 253, 1, 0, 0, 0, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
            255, 255, 255, 255, 255, 0, 59, 1, 0, 0, 0, 0, 0, 0, 16,
        ]);
    }
}
