//! The per-packet logic of both directions, driven in memory: gateway A's
//! outbound feeds gateway B's inbound, no sockets or TUN involved.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::inbound::Delivery;
use super::*;
use crate::config::Config;
use crate::esp::{DropReason, ESP_HEADER_LEN};

const KEY_AB: &str = "00112233445566778899aabbccddeeff01020304";
const KEY_BA: &str = "ffeeddccbbaa99887766554433221100a1a2a3a4";

fn config(
    me: &str,
    peer: &str,
    peer_prefix: &str,
    out_key: &str,
    in_key: &str,
    out_spi: u32,
    in_spi: u32,
) -> Config {
    let text = format!(
        "[gateway]\nid = \"{me}\"\nlisten = \"127.0.0.1:4500\"\n[tun]\nname = \"mg0\"\n[[peers]]\nid = \"{peer}\"\nendpoint = \"127.0.0.2:4500\"\nprefixes = [\"{peer_prefix}\", \"fd00:{}::/48\"]\noutbound = {{ spi = {out_spi}, key_env = \"OUT\" }}\ninbound = {{ spi = {in_spi}, key_env = \"IN\" }}\n",
        &peer_prefix[3..4]
    );
    let (out_key, in_key) = (out_key.to_string(), in_key.to_string());
    Config::parse(Path::new("test.toml"), &text, &move |n| match n {
        "OUT" => Some(out_key.clone()),
        "IN" => Some(in_key.clone()),
        _ => None,
    })
    .expect("test config is valid")
}

fn shared(t: Tables) -> SharedTables {
    Arc::new(arc_swap::ArcSwap::from_pointee(t))
}

/// Gateway A (10.1/16) and B (10.2/16) with matching SAs.
fn pair() -> (Outbound, Inbound, Arc<Metrics>) {
    let a = config("a", "b", "10.2.0.0/16", KEY_AB, KEY_BA, 0x1001, 0x2001);
    let b = config("b", "a", "10.1.0.0/16", KEY_BA, KEY_AB, 0x2001, 0x1001);
    let ma = Arc::new(Metrics::new("a"));
    let mb = Arc::new(Metrics::new("b"));
    let (ta, tb) = (
        shared(Tables::from_peers(&a.dataplane().peers)),
        shared(Tables::from_peers(&b.dataplane().peers)),
    );
    (
        Outbound::new(&a.dataplane().peers, &ma, ta).unwrap(),
        Inbound::new(&b.dataplane().peers, &mb, tb).unwrap(),
        mb,
    )
}

fn ipv4(src: [u8; 4], dst: [u8; 4], payload: usize) -> Vec<u8> {
    let len = 20 + payload;
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    for (i, b) in p[20..].iter_mut().enumerate() {
        *b = i as u8;
    }
    p
}

fn ipv6(src_net: u8, dst_net: u8, payload: usize) -> Vec<u8> {
    let mut p = vec![0u8; 40 + payload];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&(payload as u16).to_be_bytes());
    p[6] = 59;
    p[8..10].copy_from_slice(&[0xfd, 0x00]);
    p[11] = src_net;
    p[23] = 1;
    p[24..26].copy_from_slice(&[0xfd, 0x00]);
    p[27] = dst_net;
    p[39] = 1;
    p
}

/// Seals `inner` at A and returns the ESP datagram.
fn seal(out: &mut Outbound, inner: &[u8]) -> Result<Vec<u8>, DropReason> {
    let mut buf = vec![0u8; 2048];
    buf[ESP_HEADER_LEN..ESP_HEADER_LEN + inner.len()].copy_from_slice(inner);
    let (_, len) = out.encapsulate(Instant::now(), &mut buf, inner.len())?;
    buf.truncate(len);
    Ok(buf)
}

fn deliver(inb: &mut Inbound, mut datagram: Vec<u8>) -> Result<Vec<u8>, DropReason> {
    match inb.decapsulate(Instant::now(), &mut datagram)? {
        Delivery::Packet(r) => Ok(datagram[r].to_vec()),
        Delivery::Nothing => Ok(Vec::new()),
    }
}

#[test]
fn carries_ipv4_and_ipv6_between_gateways() {
    let (mut out, mut inb, _) = pair();
    for size in [0, 1, 3, 100, 1380] {
        let p = ipv4([10, 1, 1, 10], [10, 2, 1, 10], size);
        assert_eq!(deliver(&mut inb, seal(&mut out, &p).unwrap()).unwrap(), p);
    }
    let p = ipv6(1, 2, 200);
    assert_eq!(deliver(&mut inb, seal(&mut out, &p).unwrap()).unwrap(), p);
}

#[test]
fn outbound_drops_what_it_cannot_route() {
    let (mut out, _, _) = pair();
    assert_eq!(
        seal(&mut out, &ipv4([10, 1, 1, 10], [192, 0, 2, 1], 10)),
        Err(DropReason::NoRoute)
    );
    assert_eq!(seal(&mut out, &[0x45, 0, 0]), Err(DropReason::Malformed));
    assert_eq!(seal(&mut out, &[]), Err(DropReason::Malformed));
    let mut small = vec![0u8; 60];
    let p = ipv4([10, 1, 1, 10], [10, 2, 1, 10], 10);
    small[ESP_HEADER_LEN..ESP_HEADER_LEN + p.len()].copy_from_slice(&p);
    assert_eq!(
        out.encapsulate(Instant::now(), &mut small, p.len()),
        Err(DropReason::TooBig)
    );
}

#[test]
fn inbound_enforces_the_peers_prefixes() {
    let (mut out, mut inb, _) = pair();
    // A sends a packet claiming a source outside A's 10.1/16.
    let spoofed = ipv4([10, 9, 9, 9], [10, 2, 1, 10], 10);
    assert_eq!(
        deliver(&mut inb, seal(&mut out, &spoofed).unwrap()),
        Err(DropReason::Spoofed)
    );
    let spoofed6 = ipv6(9, 2, 8);
    assert_eq!(
        deliver(&mut inb, seal(&mut out, &spoofed6).unwrap()),
        Err(DropReason::Spoofed)
    );
}

#[test]
fn inbound_drops_replays_tampering_and_unknown_spis() {
    let (mut out, mut inb, _) = pair();
    let p = ipv4([10, 1, 1, 10], [10, 2, 1, 10], 64);
    let d = seal(&mut out, &p).unwrap();
    assert!(deliver(&mut inb, d.clone()).is_ok());
    assert_eq!(deliver(&mut inb, d.clone()), Err(DropReason::Replay));
    let mut t = seal(&mut out, &p).unwrap();
    let last = t.len() - 20;
    t[last] ^= 1;
    assert_eq!(deliver(&mut inb, t), Err(DropReason::Icv));
    let mut u = seal(&mut out, &p).unwrap();
    u[0..4].copy_from_slice(&0x7777u32.to_be_bytes());
    assert_eq!(deliver(&mut inb, u), Err(DropReason::UnknownSpi));
    assert_eq!(
        deliver(&mut inb, vec![0xff]).unwrap(),
        Vec::<u8>::new(),
        "NAT keepalive"
    );
    assert_eq!(
        deliver(&mut inb, vec![0, 0, 0, 0, 1, 2, 3]).unwrap(),
        Vec::<u8>::new(),
        "non-ESP marker"
    );
    assert_eq!(deliver(&mut inb, vec![1, 2, 3]), Err(DropReason::Malformed));
}

#[test]
fn tso_super_packets_cross_as_gso_runs_and_coalesce_back() {
    use super::offload::{tests::super_packet, Coalescer, VnetHdr, VNET_HDR_LEN};
    let (mut out, mut inb, _) = pair();
    for v6 in [false, true] {
        let pkt = super_packet(v6, 20_000, 0x18);
        let mut read = vec![0u8; VNET_HDR_LEN];
        let hdr = VnetHdr {
            flags: 1,
            gso_type: if v6 { 4 } else { 1 },
            hdr_len: 0,
            gso_size: 1348,
            csum_start: 0,
            csum_offset: 16,
        };
        hdr.write(&mut read);
        read.extend_from_slice(&pkt);
        let mut send = vec![0u8; 1 << 20];
        let mut trains = Vec::new();
        let used = out
            .process_tun_read(Instant::now(), &mut read, &mut send, 100, &mut trains, true)
            .expect("super-packet is sealed");
        // 15 segments of one flow: one UDP GSO message of equal-size datagrams.
        assert_eq!(trains.len(), 1);
        let t = trains[0];
        assert_eq!((t.offset, t.len), (100, used));
        let stride = usize::from(t.segment);
        assert_eq!(used.div_ceil(stride), 15);

        let mut gro = Coalescer::default();
        let mut written: Vec<Vec<u8>> = Vec::new();
        for datagram in send[t.offset..t.offset + t.len].chunks_mut(stride) {
            match inb
                .decapsulate(Instant::now(), datagram)
                .expect("every segment opens")
            {
                Delivery::Packet(r) => gro
                    .push(&datagram[r], &mut |b: &[u8]| -> Result<(), ()> {
                        written.push(b.to_vec());
                        Ok(())
                    })
                    .unwrap(),
                Delivery::Nothing => panic!("segment carried nothing"),
            }
        }
        gro.flush(&mut |b: &[u8]| -> Result<(), ()> {
            written.push(b.to_vec());
            Ok(())
        })
        .unwrap();
        assert_eq!(written.len(), 1, "the receiver writes one super-packet");
        let ip = if v6 { 40 } else { 20 };
        assert_eq!(
            written[0][VNET_HDR_LEN + ip + 32..],
            pkt[ip + 32..],
            "payload survives segmentation, ESP and coalescing"
        );
    }
    // Without GSO every datagram is its own message.
    let mut read = vec![0u8; VNET_HDR_LEN];
    VnetHdr {
        flags: 1,
        gso_type: 1,
        hdr_len: 0,
        gso_size: 1000,
        csum_start: 0,
        csum_offset: 16,
    }
    .write(&mut read);
    read.extend_from_slice(&super_packet(false, 3000, 0x10));
    let mut send = vec![0u8; 1 << 16];
    let mut trains = Vec::new();
    out.process_tun_read(Instant::now(), &mut read, &mut send, 0, &mut trains, false)
        .unwrap();
    assert_eq!(
        trains.iter().map(|t| t.segment).collect::<Vec<_>>(),
        vec![0, 0, 0]
    );
}

/// Anything a peer or the TUN can hand over, however malformed: dropped or
/// passed on, never a panic.
#[test]
fn random_input_never_panics() {
    use super::offload::{Coalescer, VNET_HDR_LEN};
    use rand::{Rng, SeedableRng};
    let (mut out, mut inb, _) = pair();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x6d67);
    let mut gro = Coalescer::default();
    let mut send = vec![0u8; 1 << 20];
    let mut trains = Vec::new();
    let mut sink = |_: &[u8]| -> Result<(), ()> { Ok(()) };
    for round in 0..20_000 {
        let len = rng.random_range(0..2000);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        // Bias towards plausible headers so the deeper paths are reached.
        if len > 60 && round % 2 == 0 {
            bytes[VNET_HDR_LEN] = if round % 4 == 0 { 0x45 } else { 0x60 };
            bytes[1] = [0, 1, 4, 0x81][round % 4];
        }
        trains.clear();
        let _ = out.process_tun_read(
            Instant::now(),
            &mut bytes.clone(),
            &mut send,
            0,
            &mut trains,
            round % 3 == 0,
        );
        let _ = inb.decapsulate(Instant::now(), &mut bytes.clone());
        let _ = gro.push(&bytes[VNET_HDR_LEN.min(bytes.len())..], &mut sink);
    }
    let _ = gro.flush(&mut sink);
}

/// Echoes (`meshgate ping`) from a peer are read only once its SA opened
/// them: a flood of requests is answered 100 a second and the rest
/// counted over budget; a tampered one is dropped as an ICV failure and
/// answered not at all; a reply reaches the one waiting for its id, with
/// the SA it came on, and a reply nobody waits for is ignored.
#[test]
fn echoes_are_answered_after_authentication_and_within_a_budget() {
    use super::echo::{Echo, EchoKind, EchoWaiters, REPLIES_PER_SEC};
    let (mut a_out, mut b_in, metrics) = pair();
    let (tx, rx) = std::sync::mpsc::channel();
    let wake = Arc::new(control::Wake::new().unwrap());
    let waiters = EchoWaiters::default();
    b_in.attach_echo(control::OutboundSender::new(tx, wake), waiters.clone());
    let now = Instant::now();
    let flood = REPLIES_PER_SEC + 50;
    for id in 0..u64::from(flood) {
        let (datagram, _) = a_out
            .seal_echo(0, Echo::request(id), now)
            .expect("an SA to b");
        assert_eq!(
            deliver(&mut b_in, datagram),
            Ok(Vec::new()),
            "nothing to the TUN"
        );
    }
    let replies: Vec<OutboundCommand> = rx.try_iter().collect();
    assert_eq!(replies.len(), REPLIES_PER_SEC as usize);
    match &replies[0] {
        OutboundCommand::Echo { slot: 0, echo } => {
            assert_eq!(echo.kind, EchoKind::Reply);
            assert_eq!(
                (echo.id, echo.request_spi),
                (0, 0x1001),
                "the request's SPI carried back"
            );
        }
        other => panic!("{other:?}"),
    }
    let text = metrics.render();
    let count = |outcome: &str| {
        crate::metrics::sum_samples(
            &text,
            "meshgate_echo_requests_total",
            &format!("outcome=\"{outcome}\""),
        )
    };
    assert_eq!(count("answered"), f64::from(REPLIES_PER_SEC));
    assert_eq!(count("over_budget"), 50.0);

    // Tampered: an ICV failure like any other packet, and no answer.
    let (mut forged, _) = a_out.seal_echo(0, Echo::request(7), now).unwrap();
    let mid = forged.len() / 2;
    forged[mid] ^= 1;
    assert_eq!(deliver(&mut b_in, forged), Err(DropReason::Icv));
    assert_eq!(rx.try_iter().count(), 0);

    // A reply: to its waiter only.
    let (waiting, mut answer) = tokio::sync::oneshot::channel();
    waiters.lock().unwrap().insert(42, waiting);
    for id in [41, 42] {
        let (reply, _) = a_out.seal_echo(0, Echo::request(id).reply(), now).unwrap();
        assert_eq!(deliver(&mut b_in, reply), Ok(Vec::new()));
    }
    let got = answer.try_recv().expect("the reply reached its waiter");
    assert_eq!((got.echo.id, got.spi), (42, 0x1001));
    assert!(waiters.lock().unwrap().is_empty(), "the waiter is taken");
}
