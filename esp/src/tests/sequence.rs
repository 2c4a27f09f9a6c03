//! Anti-replay through the SA, ESN rollover and sequence exhaustion.

use std::time::Instant;

use super::*;

#[test]
fn replays_are_dropped_before_decryption() {
    let now = Instant::now();
    let p = params(CipherSuite::Aes128Gcm, Backend::Ring, false);
    let (mut out, mut sa) = pair(&p, now);
    let packets: Vec<_> = (0..8)
        .map(|_| seal(&mut out, now, &inner(50)).expect("seal"))
        .collect();

    assert_eq!(open(&mut sa, now, &packets[4]).map(|o| o.1), Ok(5));
    assert_eq!(
        open(&mut sa, now, &packets[4]),
        Err(DropReason::Replay),
        "duplicate"
    );
    // A replay with a broken ICV is a replay: the window is consulted first.
    let mut broken = packets[4].clone();
    let last = broken.len() - 1;
    broken[last] ^= 0xff;
    assert_eq!(open(&mut sa, now, &broken), Err(DropReason::Replay));
    assert_eq!(
        open(&mut sa, now, &packets[2]).map(|o| o.1),
        Ok(3),
        "reordered, inside window"
    );
}

#[test]
fn forgery_does_not_move_the_window() {
    let now = Instant::now();
    let p = params(CipherSuite::Aes128Gcm, Backend::RustCrypto, false);
    let (mut out, mut sa) = pair(&p, now);
    let early = seal(&mut out, now, &inner(20)).expect("seal");

    // A packet far ahead with a bad ICV...
    out.set_next_seq_for_test(50_000);
    let mut forged = seal(&mut out, now, &inner(20)).expect("seal");
    forged[ESP_HEADER_LEN] ^= 1;
    assert_eq!(open(&mut sa, now, &forged), Err(DropReason::Icv));
    // ...must not have slid the window past the genuine early packet.
    assert_eq!(open(&mut sa, now, &early).map(|o| o.1), Ok(1));
}

#[test]
fn sequence_zero_is_never_accepted() {
    let now = Instant::now();
    let p = params(CipherSuite::Aes128Gcm, Backend::Ring, false);
    let (mut out, mut sa) = pair(&p, now);
    let mut packet = seal(&mut out, now, &inner(20)).expect("seal");
    packet[4..8].copy_from_slice(&[0; 4]);
    assert_eq!(open(&mut sa, now, &packet), Err(DropReason::Replay));
}

#[test]
fn window_edges_through_the_sa() {
    let now = Instant::now();
    for window in [1024u64, 4096] {
        let p = SaParams {
            replay_window: window as usize,
            ..params(CipherSuite::Aes128Gcm, Backend::Ring, false)
        };
        let (mut out, mut sa) = pair(&p, now);
        let top = 3 * window;
        let at = |seq: u64, out: &mut OutboundSa| {
            out.set_next_seq_for_test(seq);
            seal(out, now, &inner(8)).expect("seal")
        };
        let inside = at(top - window + 1, &mut out);
        let outside = at(top - window, &mut out);
        let head = at(top, &mut out);
        assert!(open(&mut sa, now, &head).is_ok());
        assert_eq!(
            open(&mut sa, now, &outside),
            Err(DropReason::Replay),
            "window {window}"
        );
        assert_eq!(
            open(&mut sa, now, &inside).map(|o| o.1),
            Ok(top - window + 1)
        );
        assert_eq!(open(&mut sa, now, &inside), Err(DropReason::Replay));
        let far = at(top + 100 * window, &mut out);
        assert!(open(&mut sa, now, &far).is_ok());
        assert_eq!(
            open(&mut sa, now, &head),
            Err(DropReason::Replay),
            "left behind by the jump"
        );
    }
}

/// The sender crosses 2^32; the receiver infers the high half, including for
/// a late packet sent before the rollover.
#[test]
fn esn_rollover() {
    let now = Instant::now();
    for backend in Backend::ALL {
        let p = params(CipherSuite::Aes256Gcm, backend, true);
        let (mut out, mut sa) = pair(&p, now);
        let start = (1u64 << 32) - 3;
        out.set_next_seq_for_test(start);
        let packets: Vec<_> = (0..6)
            .map(|i| (start + i, seal(&mut out, now, &inner(30)).expect("seal")))
            .collect();
        assert_eq!(out.next_seq(), (1 << 32) + 3);
        for (seq, packet) in &packets {
            assert_eq!(
                packet[4..8],
                (*seq as u32).to_be_bytes(),
                "only the low half is sent"
            );
        }

        let late = &packets[2]; // 2^32 - 1
        for (seq, packet) in packets.iter().filter(|(s, _)| *s != late.0) {
            assert_eq!(open(&mut sa, now, packet).map(|o| o.1), Ok(*seq));
        }
        assert_eq!(
            open(&mut sa, now, &late.1).map(|o| o.1),
            Ok((1 << 32) - 1),
            "late, pre-rollover"
        );
        assert_eq!(open(&mut sa, now, &late.1), Err(DropReason::Replay));
        assert_eq!(open(&mut sa, now, &packets[5].1), Err(DropReason::Replay));
    }
}

#[test]
fn sequence_space_without_esn_ends_at_u32_max() {
    let now = Instant::now();
    let p = params(CipherSuite::Aes128Gcm, Backend::Ring, false);
    let (mut out, mut sa) = pair(&p, now);
    out.set_next_seq_for_test(u64::from(u32::MAX) - 1);
    let before_last = seal(&mut out, now, &inner(10)).expect("2^32-2");
    let mut buf = vec![0u8; 64];
    let sealed = out
        .seal(now, &mut buf, 10, NEXT_HEADER_IPV4)
        .expect("2^32-1 is usable");
    assert_eq!(
        sealed.event,
        Some(LifetimeEvent::Hard {
            spi: SPI,
            kind: LimitKind::SequenceSpace
        })
    );
    assert!(out.is_expired());
    assert_eq!(
        out.seal(now, &mut buf, 10, NEXT_HEADER_IPV4),
        Err(SealError::Expired)
    );
    assert_eq!(out.poll_lifetime(now), None, "reported once");

    assert_eq!(
        open(&mut sa, now, &before_last).map(|o| o.1),
        Ok(u64::from(u32::MAX) - 1)
    );
    assert_eq!(
        open(&mut sa, now, &buf[..sealed.len]).map(|o| o.1),
        Ok(u64::from(u32::MAX))
    );
}

#[test]
fn sequence_space_with_esn_ends_at_u64_max() {
    let now = Instant::now();
    let p = params(CipherSuite::Aes128Gcm, Backend::RustCrypto, true);
    let (mut out, mut sa) = pair(&p, now);
    out.set_next_seq_for_test(u64::MAX - 1);
    let a = seal(&mut out, now, &inner(10)).expect("2^64-2");
    let b = seal(&mut out, now, &inner(10)).expect("2^64-1");
    assert!(out.is_expired());
    assert_eq!(seal(&mut out, now, &inner(10)), Err(SealError::Expired));
    assert_eq!(
        out.poll_lifetime(now),
        None,
        "the hard event went out with the last packet"
    );
    // A receiver whose window is near the end infers the last epoch.
    sa.mark_received_for_test(u64::MAX - 100);
    assert_eq!(open(&mut sa, now, &a).map(|o| o.1), Ok(u64::MAX - 1));
    assert_eq!(open(&mut sa, now, &b).map(|o| o.1), Ok(u64::MAX));
}

#[test]
fn soft_event_at_half_the_sequence_space() {
    let now = Instant::now();
    for (esn, half) in [(false, 1u64 << 31), (true, 1u64 << 63)] {
        let p = params(CipherSuite::Aes128Gcm, Backend::Ring, esn);
        let (mut out, _) = pair(&p, now);
        out.set_next_seq_for_test(half - 1);
        let mut buf = vec![0u8; 64];
        assert_eq!(
            out.seal(now, &mut buf, 4, NEXT_HEADER_IPV4)
                .map(|s| s.event),
            Ok(None)
        );
        assert_eq!(
            out.seal(now, &mut buf, 4, NEXT_HEADER_IPV4)
                .map(|s| s.event),
            Ok(Some(LifetimeEvent::Soft {
                spi: SPI,
                kind: LimitKind::SequenceSpace
            }))
        );
        assert_eq!(
            out.seal(now, &mut buf, 4, NEXT_HEADER_IPV4)
                .map(|s| s.event),
            Ok(None)
        );
        assert!(!out.is_expired());
    }
}

#[test]
fn sealing_stops_at_the_reserved_limit_and_resumes_forward_only() {
    let now = Instant::now();
    let p = params(CipherSuite::Aes128Gcm, Backend::Ring, true);
    let (mut out, mut sa) = pair(&p, now);
    out.set_seq_limit(3);
    for _ in 0..3 {
        seal(&mut out, now, &inner(20)).expect("within the reservation");
    }
    assert_eq!(
        seal(&mut out, now, &inner(20)).err(),
        Some(SealError::NotReserved),
        "fails closed past the limit"
    );
    assert_eq!(out.next_seq(), 4, "a refused seal uses no sequence number");
    out.set_seq_limit(100);
    out.resume_at(50);
    assert_eq!(out.next_seq(), 50);
    out.resume_at(10);
    assert_eq!(out.next_seq(), 50, "never backwards");
    let p50 = seal(&mut out, now, &inner(20)).unwrap();
    // A receiver resumed above 50 refuses it; one resumed below takes it.
    sa.resume_after(50);
    assert_eq!(
        open(&mut sa, now, &p50).map(|o| o.1),
        Err(DropReason::Replay)
    );
    let (_, mut fresh) = pair(&p, now);
    fresh.resume_after(49);
    assert_eq!(open(&mut fresh, now, &p50).map(|o| o.1), Ok(50));
    assert_eq!(fresh.window_top(), 50);
}
