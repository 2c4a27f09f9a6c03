//! Soft and hard lifetimes through both SA directions, on virtual time.

use std::time::{Duration, Instant};

use super::*;

fn with_lifetime(soft: LifetimeLimits, hard: LifetimeLimits) -> SaParams {
    SaParams {
        lifetime: Lifetime { soft, hard },
        ..params(CipherSuite::Aes128Gcm, Backend::Ring, false)
    }
}

fn soft(kind: LimitKind) -> Option<LifetimeEvent> {
    Some(LifetimeEvent::Soft { spi: SPI, kind })
}

fn hard(kind: LimitKind) -> Option<LifetimeEvent> {
    Some(LifetimeEvent::Hard { spi: SPI, kind })
}

/// Seals (or opens) packets of `len` bytes until one fails; returns the
/// event of each successful packet and the final error.
fn run(
    p: &SaParams,
    len: usize,
) -> (
    Vec<Option<LifetimeEvent>>,
    SealError,
    Vec<Option<LifetimeEvent>>,
    DropReason,
) {
    let now = Instant::now();
    let (mut out, mut sa) = pair(p, now);
    let mut packets = Vec::new();
    let mut sealed = Vec::new();
    let seal_err = loop {
        let mut buf = vec![0u8; ESP_HEADER_LEN + len + MAX_TRAILER_LEN];
        match out.seal(now, &mut buf, len, NEXT_HEADER_IPV4) {
            Ok(s) => {
                sealed.push(s.event);
                packets.push(buf[..s.len].to_vec());
            }
            Err(e) => break e,
        }
    };
    // One packet more than the sender would send, from another sender.
    let (mut extra, _) = pair(
        &SaParams {
            lifetime: Lifetime::default(),
            ..p.clone()
        },
        now,
    );
    extra.set_next_seq_for_test(packets.len() as u64 + 1);
    packets.push(seal(&mut extra, now, &inner(len)).expect("seal"));
    let mut opened = Vec::new();
    let mut open_err = None;
    for packet in &mut packets {
        match sa.open(now, packet) {
            Ok(o) => opened.push(o.event),
            Err(e) => {
                open_err = Some(e);
                break;
            }
        }
    }
    (
        sealed,
        seal_err,
        opened,
        open_err.expect("the last packet is refused"),
    )
}

#[test]
fn packet_limits() {
    let p = with_lifetime(
        LifetimeLimits {
            packets: Some(3),
            ..Default::default()
        },
        LifetimeLimits {
            packets: Some(5),
            ..Default::default()
        },
    );
    let expected = vec![
        None,
        None,
        soft(LimitKind::Packets),
        None,
        hard(LimitKind::Packets),
    ];
    let (sealed, seal_err, opened, open_err) = run(&p, 100);
    assert_eq!((sealed, seal_err), (expected.clone(), SealError::Expired));
    assert_eq!((opened, open_err), (expected, DropReason::Expired));
}

#[test]
fn byte_limits_count_inner_bytes() {
    let p = with_lifetime(
        LifetimeLimits {
            bytes: Some(1000),
            ..Default::default()
        },
        LifetimeLimits {
            bytes: Some(2000),
            ..Default::default()
        },
    );
    // 400-byte packets: 1200 bytes after the third, 2000 after the fifth.
    let expected = vec![
        None,
        None,
        soft(LimitKind::Bytes),
        None,
        hard(LimitKind::Bytes),
    ];
    let (sealed, seal_err, opened, open_err) = run(&p, 400);
    assert_eq!((sealed, seal_err), (expected.clone(), SealError::Expired));
    assert_eq!((opened, open_err), (expected, DropReason::Expired));
}

#[test]
fn time_limits_outbound() {
    let p = with_lifetime(
        LifetimeLimits {
            time: Some(Duration::from_secs(10)),
            ..Default::default()
        },
        LifetimeLimits {
            time: Some(Duration::from_secs(20)),
            ..Default::default()
        },
    );
    let t0 = Instant::now();
    let at = |s| t0 + Duration::from_secs(s);
    let (mut out, _) = pair(&p, t0);
    let mut buf = vec![0u8; 128];
    assert_eq!(out.poll_lifetime(at(9)), None);
    // A seal is the first to notice the soft limit: its result carries it.
    assert_eq!(
        out.seal(at(10), &mut buf, 10, NEXT_HEADER_IPV4)
            .map(|s| s.event),
        Ok(soft(LimitKind::Time))
    );
    assert_eq!(out.poll_lifetime(at(11)), None, "reported once");
    assert_eq!(
        out.seal(at(19), &mut buf, 10, NEXT_HEADER_IPV4)
            .map(|s| s.event),
        Ok(None)
    );
    // Past the hard limit a seal fails; the event waits for the next poll.
    assert_eq!(
        out.seal(at(20), &mut buf, 10, NEXT_HEADER_IPV4),
        Err(SealError::Expired)
    );
    assert!(out.is_expired());
    assert_eq!(out.poll_lifetime(at(21)), hard(LimitKind::Time));
    assert_eq!(out.poll_lifetime(at(22)), None);
}

#[test]
fn time_limits_inbound() {
    let p = with_lifetime(
        LifetimeLimits {
            time: Some(Duration::from_secs(30)),
            ..Default::default()
        },
        LifetimeLimits {
            time: Some(Duration::from_secs(60)),
            ..Default::default()
        },
    );
    let t0 = Instant::now();
    let at = |s| t0 + Duration::from_secs(s);
    let (mut out, mut sa) = pair(&params(CipherSuite::Aes128Gcm, Backend::Ring, false), t0);
    let mut sa_timed = InboundSa::new(p, t0).expect("inbound SA");
    let packets: Vec<_> = (0..3)
        .map(|_| seal(&mut out, t0, &inner(10)).expect("seal"))
        .collect();
    assert_eq!(sa_timed.poll_lifetime(at(29)), None);
    assert_eq!(sa_timed.poll_lifetime(at(30)), soft(LimitKind::Time));
    assert!(sa_timed.open(at(31), &mut packets[0].clone()).is_ok());
    assert_eq!(sa_timed.poll_lifetime(at(59)), None);
    assert_eq!(
        sa_timed.open(at(60), &mut packets[1].clone()).err(),
        Some(DropReason::Expired)
    );
    assert!(sa_timed.is_expired());
    assert_eq!(sa_timed.poll_lifetime(at(61)), hard(LimitKind::Time));
    // The untimed SA is unaffected by age.
    assert!(sa.open(at(1_000_000), &mut packets[2].clone()).is_ok());
}

/// An expired SA says so even for packets it would also reject otherwise.
#[test]
fn expiry_is_checked_after_length_before_replay() {
    let p = with_lifetime(
        LifetimeLimits::default(),
        LifetimeLimits {
            packets: Some(1),
            ..Default::default()
        },
    );
    let now = Instant::now();
    let (mut out, mut sa) = pair(&p, now);
    let packet = seal(&mut out, now, &inner(10)).expect("seal");
    let opened = sa.open(now, &mut packet.clone()).expect("open");
    assert_eq!(opened.event, hard(LimitKind::Packets));
    assert_eq!(open(&mut sa, now, &packet), Err(DropReason::Expired));
    assert_eq!(
        open(&mut sa, now, &packet[..20]),
        Err(DropReason::Malformed)
    );
}
