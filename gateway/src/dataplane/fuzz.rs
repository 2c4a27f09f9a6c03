//! The inbound packet path for the fuzzer: what a peer holding the SA
//! (or anyone on the path) can hand a gateway. An ESP datagram with an
//! inner packet the fuzzer chooses (sealed under a real SA, so decryption
//! succeeds and inner parsing, padding and the GRO coalescer are reached),
//! or raw bytes on the ESP port.

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use super::inbound::{Delivery, Inbound};
use super::offload::Coalescer;
use super::tables::{SharedTables, Tables};
use crate::config::Config;
use crate::esp::{OutboundSa, ESP_HEADER_LEN, MAX_TRAILER_LEN};
use crate::metrics::Metrics;

struct Target {
    seal: OutboundSa,
    inbound: Inbound,
    coalescer: Coalescer,
}

fn config(me: &str, peer: &str, peer_prefix: &str, out_spi: u32, in_spi: u32) -> Option<Config> {
    let text = format!(
        "[gateway]\nid = \"{me}\"\nlisten = \"127.0.0.1:4500\"\n[tun]\nname = \"mg0\"\n[[peers]]\nid = \"{peer}\"\nendpoint = \"127.0.0.2:4500\"\nprefixes = [\"{peer_prefix}\"]\noutbound = {{ spi = {out_spi}, key_env = \"OUT\" }}\ninbound = {{ spi = {in_spi}, key_env = \"IN\" }}\n"
    );
    let (ab, ba) = (
        "00112233445566778899aabbccddeeff01020304",
        "ffeeddccbbaa99887766554433221100a1a2a3a4",
    );
    let swap = me == "b";
    Config::parse(Path::new("fuzz.toml"), &text, &move |n| match (n, swap) {
        ("OUT", false) | ("IN", true) => Some(ab.to_string()),
        ("IN", false) | ("OUT", true) => Some(ba.to_string()),
        _ => None,
    })
    .ok()
}

fn target() -> Option<&'static Mutex<Target>> {
    static TARGET: OnceLock<Option<Mutex<Target>>> = OnceLock::new();
    TARGET
        .get_or_init(|| {
            let a = config("a", "b", "10.2.0.0/16", 0x1001, 0x2001)?;
            let b = config("b", "a", "10.1.0.0/16", 0x2001, 0x1001)?;
            let now = Instant::now();
            let seal = OutboundSa::new(a.dataplane().peers.first()?.outbound.clone(), now).ok()?;
            let peers = b.dataplane().peers;
            let tables: SharedTables =
                Arc::new(arc_swap::ArcSwap::from_pointee(Tables::from_peers(&peers)));
            let inbound = Inbound::new(&peers, &Arc::new(Metrics::new("fuzz")), tables).ok()?;
            Some(Mutex::new(Target {
                seal,
                inbound,
                coalescer: Coalescer::default(),
            }))
        })
        .as_ref()
}

/// `data[0]`: bit 0 set, the rest is a raw datagram on the ESP port;
/// clear, the rest is an inner packet sealed with next header `data[1]`.
/// Bit 1 flushes the coalescer afterwards.
pub fn esp_inbound(data: &[u8]) {
    delivers(data);
}

/// As [`esp_inbound`]; true if an inner packet was delivered.
pub fn delivers(data: &[u8]) -> bool {
    let (Some(&mode), Some(target)) = (data.first(), target()) else {
        return false;
    };
    let Ok(mut t) = target.lock() else {
        return false;
    };
    let t = &mut *t;
    let now = Instant::now();
    let mut buf;
    if mode & 1 == 1 {
        buf = data[1..].to_vec();
    } else {
        let (Some(&next_header), Some(inner)) = (data.get(1), data.get(2..)) else {
            return false;
        };
        buf = vec![0; ESP_HEADER_LEN + inner.len() + MAX_TRAILER_LEN];
        buf[ESP_HEADER_LEN..][..inner.len()].copy_from_slice(inner);
        match t.seal.seal(now, &mut buf, inner.len(), next_header) {
            Ok(s) => buf.truncate(s.len),
            Err(_) => return false,
        }
    }
    let mut sink = |p: &[u8]| -> Result<(), ()> {
        std::hint::black_box(p);
        Ok(())
    };
    let delivered = match t.inbound.decapsulate(now, &mut buf) {
        Ok(Delivery::Packet(range)) => {
            let _ = t.coalescer.push(&buf[range], &mut sink);
            true
        }
        _ => false,
    };
    if mode & 2 == 2 {
        let _ = t.coalescer.flush(&mut sink);
    }
    delivered
}
