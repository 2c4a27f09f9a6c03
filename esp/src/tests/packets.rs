//! Framing, backend interop and hostile input.

use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::super::sa::Transform;
use super::*;

/// Same SA, same sequence number: ring and RustCrypto emit the same bytes
/// and open each other's packets.
#[test]
fn backends_are_interchangeable() {
    let now = Instant::now();
    for suite in CipherSuite::ALL {
        for esn in [false, true] {
            let ring = params(suite, Backend::Ring, esn);
            let rc = params(suite, Backend::RustCrypto, esn);
            let (mut out_ring, mut in_ring) = pair(&ring, now);
            let (mut out_rc, mut in_rc) = pair(&rc, now);
            let start = if esn { (1 << 32) - 2 } else { 100 };
            out_ring.set_next_seq_for_test(start);
            out_rc.set_next_seq_for_test(start);
            for len in [0, 1, 40, 61, 1400] {
                let data = inner(len);
                let a = seal(&mut out_ring, now, &data).expect("ring seal");
                let b = seal(&mut out_rc, now, &data).expect("rustcrypto seal");
                assert_eq!(a, b, "{suite:?} esn={esn} len={len}");
                assert_eq!(
                    open(&mut in_rc, now, &a).expect("rustcrypto opens ring").0,
                    data
                );
                assert_eq!(
                    open(&mut in_ring, now, &b)
                        .expect("ring opens rustcrypto")
                        .0,
                    data
                );
            }
        }
    }
}

/// Every inner length pads to 4 bytes with 1, 2, 3, checked here by
/// decrypting with the raw AEAD rather than with our own `open`.
#[test]
fn round_trip_pads_every_length() {
    let now = Instant::now();
    for backend in Backend::ALL {
        let p = params(CipherSuite::Aes128Gcm, backend, false);
        let (mut out, mut sa) = pair(&p, now);
        let aead = Aead::new(p.suite, backend, &p.key).expect("aead");
        let lengths = (0..=80).chain([1400]);
        for (len, next_header) in
            lengths.flat_map(|l| [(l, NEXT_HEADER_IPV4), (l, NEXT_HEADER_IPV6)])
        {
            let data = inner(len);
            let seq = out.next_seq();
            let mut buf = vec![0u8; ESP_HEADER_LEN + len + MAX_TRAILER_LEN];
            buf[ESP_HEADER_LEN..][..len].copy_from_slice(&data);
            let sealed = out.seal(now, &mut buf, len, next_header).expect("seal");
            let payload_len = (len + 2).next_multiple_of(4);
            assert_eq!(
                sealed.len,
                ESP_HEADER_LEN + payload_len + ICV_LEN,
                "len {len}"
            );
            assert_eq!(sealed.event, None);
            let packet = buf[..sealed.len].to_vec();
            assert_eq!(packet[..4], SPI.to_be_bytes());
            assert_eq!(packet[4..8], (seq as u32).to_be_bytes());
            assert_eq!(
                packet[8..16],
                seq.to_be_bytes(),
                "IV is the sequence number"
            );

            let mut plain = packet[ESP_HEADER_LEN..][..payload_len].to_vec();
            let tag: [u8; ICV_LEN] = packet[ESP_HEADER_LEN + payload_len..]
                .try_into()
                .expect("icv");
            let mut nonce = [0u8; 12];
            nonce[..4].copy_from_slice(&p.key.salt());
            nonce[4..].copy_from_slice(&packet[8..16]);
            aead.open_in_place(&nonce, &packet[..8], &mut plain, &tag)
                .expect("raw open");
            let pad_len = payload_len - len - 2;
            let expected_trailer: Vec<u8> = (1..=pad_len as u8)
                .chain([pad_len as u8, next_header])
                .collect();
            assert_eq!(plain[..len], data[..]);
            assert_eq!(plain[len..], expected_trailer[..], "len {len}");

            let mut rx = packet.clone();
            let opened = sa.open(now, &mut rx).expect("open");
            assert_eq!(opened.inner, ESP_HEADER_LEN..ESP_HEADER_LEN + len);
            assert_eq!(rx[opened.inner], data[..]);
            assert_eq!(
                (opened.next_header, opened.seq, opened.event),
                (next_header, seq, None)
            );
        }
    }
}

#[test]
fn seal_checks_buffer_without_consuming_sequence() {
    let now = Instant::now();
    let (mut out, _) = pair(&params(CipherSuite::Aes128Gcm, Backend::Ring, false), now);
    let len = 61; // pads to 64
    let needed = ESP_HEADER_LEN + 64 + ICV_LEN;
    let mut buf = vec![0u8; needed - 1];
    assert_eq!(
        out.seal(now, &mut buf, len, NEXT_HEADER_IPV4),
        Err(SealError::BufferTooSmall)
    );
    assert_eq!(
        out.seal(now, &mut [], 0, NEXT_HEADER_IPV4),
        Err(SealError::BufferTooSmall)
    );
    let mut huge = vec![0u8; ESP_HEADER_LEN + MAX_INNER_LEN + 1 + MAX_TRAILER_LEN];
    assert_eq!(
        out.seal(now, &mut huge, MAX_INNER_LEN + 1, NEXT_HEADER_IPV4),
        Err(SealError::TooLong)
    );
    assert_eq!(
        out.seal(now, &mut buf, usize::MAX, NEXT_HEADER_IPV4),
        Err(SealError::TooLong)
    );
    assert_eq!(out.next_seq(), 1);
    let mut buf = vec![0u8; needed];
    assert_eq!(
        out.seal(now, &mut buf, len, NEXT_HEADER_IPV4)
            .map(|s| s.len),
        Ok(needed)
    );
    assert_eq!(out.next_seq(), 2);
}

/// Builds an authentic packet whose decrypted payload is `payload` verbatim,
/// so the receiver's trailer checks can be exercised.
fn authentic(p: &SaParams, seq: u64, payload: &[u8]) -> Vec<u8> {
    let t = Transform::new(p).expect("transform");
    let mut buf = vec![0u8; ESP_HEADER_LEN + payload.len() + ICV_LEN];
    buf[ESP_HEADER_LEN..][..payload.len()].copy_from_slice(payload);
    let len = t
        .seal_payload(seq, seq.to_be_bytes(), &mut buf, payload.len())
        .expect("seal");
    buf.truncate(len);
    buf
}

#[test]
fn bad_trailer_is_malformed() {
    let now = Instant::now();
    let p = params(CipherSuite::Aes256Gcm, Backend::Ring, false);
    let mut sa = InboundSa::new(p.clone(), now).expect("inbound SA");
    let mut good = inner(8);
    good.extend([1, 2, 2, NEXT_HEADER_IPV4]);
    assert!(open(&mut sa, now, &authentic(&p, 1, &good)).is_ok());

    let mut wrong_pad = inner(8);
    wrong_pad.extend([2, 1, 2, NEXT_HEADER_IPV4]);
    let mut too_long_pad = inner(8);
    too_long_pad.extend([1, 2, 9, NEXT_HEADER_IPV4]);
    let only_trailer = [0, 0, 200, NEXT_HEADER_IPV4];
    for (seq, payload) in [
        (2, &wrong_pad[..]),
        (3, &too_long_pad[..]),
        (4, &only_trailer[..]),
    ] {
        let packet = authentic(&p, seq, payload);
        assert_eq!(
            open(&mut sa, now, &packet),
            Err(DropReason::Malformed),
            "seq {seq}"
        );
        // Authentic, so its sequence number is used up all the same.
        assert_eq!(
            open(&mut sa, now, &packet),
            Err(DropReason::Replay),
            "seq {seq}"
        );
    }

    // Pad length may exceed 3 (RFC 4303 §2.4 allows up to 255 for TFC).
    let mut long_pad = inner(2);
    long_pad.extend((1..=8).chain([8, NEXT_HEADER_IPV6]));
    let (data, _) = open(&mut sa, now, &authentic(&p, 5, &long_pad)).expect("long padding");
    assert_eq!(data, inner(2));
}

#[test]
fn length_sanity() {
    let now = Instant::now();
    let p = params(CipherSuite::Aes128Gcm, Backend::Ring, false);
    let (mut out, mut sa) = pair(&p, now);
    let packet = seal(&mut out, now, &inner(100)).expect("seal");
    for cut in 0..packet.len() {
        let expected =
            if cut < MIN_ESP_PACKET_LEN || !(cut - ESP_HEADER_LEN - ICV_LEN).is_multiple_of(4) {
                DropReason::Malformed
            } else {
                DropReason::Icv
            };
        assert_eq!(
            open(&mut sa, now, &packet[..cut]),
            Err(expected),
            "truncated to {cut}"
        );
    }
    let mut padded = packet.clone();
    padded.push(0);
    assert_eq!(
        open(&mut sa, now, &padded),
        Err(DropReason::Malformed),
        "misaligned"
    );
    padded.extend([0; 3]);
    assert_eq!(
        open(&mut sa, now, &padded),
        Err(DropReason::Icv),
        "trailing bytes"
    );
    let mut oversized = packet.clone();
    oversized.resize(MAX_ESP_PACKET_LEN + 1, 0);
    assert_eq!(open(&mut sa, now, &oversized), Err(DropReason::Malformed));
    oversized.resize(1 << 20, 0);
    assert_eq!(open(&mut sa, now, &oversized), Err(DropReason::Malformed));
    assert_eq!(
        open(&mut sa, now, &packet).map(|o| o.0),
        Ok(inner(100)),
        "untouched original"
    );
}

#[test]
fn wrong_sa_fails_icv() {
    let now = Instant::now();
    let p = params(CipherSuite::Aes128Gcm, Backend::Ring, false);
    let (mut out, _) = pair(&p, now);
    let packet = seal(&mut out, now, &inner(40)).expect("seal");

    let other_key = SaParams {
        spi: SPI + 1,
        key: KeyMaterial::new(p.suite, &[0x11; 20]).expect("key"),
        ..p.clone()
    };
    let mut sa = InboundSa::new(other_key, now).expect("inbound SA");
    assert_eq!(open(&mut sa, now, &packet), Err(DropReason::Icv));

    // Same key under another SPI: the SA's own SPI is authenticated.
    let mut sa = InboundSa::new(
        SaParams {
            spi: SPI + 1,
            ..p.clone()
        },
        now,
    )
    .expect("inbound SA");
    assert_eq!(open(&mut sa, now, &packet), Err(DropReason::Icv));

    // Same key, ESN on one side only: the AAD differs.
    let mut sa = InboundSa::new(SaParams { esn: true, ..p }, now).expect("inbound SA");
    assert_eq!(open(&mut sa, now, &packet), Err(DropReason::Icv));
}

#[test]
fn bad_icv_and_ciphertext_bits() {
    let now = Instant::now();
    let p = params(CipherSuite::Aes256Gcm, Backend::RustCrypto, true);
    let (mut out, mut sa) = pair(&p, now);
    let packet = seal(&mut out, now, &inner(64)).expect("seal");
    for i in 8..packet.len() {
        let mut bad = packet.clone();
        bad[i] ^= 0x01;
        assert_eq!(
            open(&mut sa, now, &bad),
            Err(DropReason::Icv),
            "bit flip at {i}"
        );
    }
    assert!(open(&mut sa, now, &packet).is_ok());
}

/// Thousands of random buffers, and random damage to genuine packets:
/// every one is refused with the reason its shape predicts, none panics.
#[test]
fn random_input_never_panics() {
    let now = Instant::now();
    let mut rng = StdRng::seed_from_u64(4303);
    for esn in [false, true] {
        let p = params(CipherSuite::Aes128Gcm, Backend::Ring, esn);
        let (mut out, mut sa) = pair(&p, now);
        for _ in 0..3000 {
            let len = if rng.random_bool(0.9) {
                rng.random_range(0..200)
            } else {
                rng.random_range(0..3000)
            };
            let mut buf = vec![0u8; len];
            rng.fill(&mut buf[..]);
            if len >= 4 && rng.random_bool(0.5) {
                buf[..4].copy_from_slice(&SPI.to_be_bytes());
            }
            let _ = classify_udp_payload(&buf);
            let _ = peek_spi(&buf);
            let shape_ok =
                len >= MIN_ESP_PACKET_LEN && (len - ESP_HEADER_LEN - ICV_LEN).is_multiple_of(4);
            let seq_zero = len >= 8 && buf[4..8] == [0; 4];
            let expected = match (shape_ok, seq_zero) {
                (false, _) => DropReason::Malformed,
                (true, true) => DropReason::Replay,
                (true, false) => DropReason::Icv,
            };
            assert_eq!(sa.open(now, &mut buf).err(), Some(expected), "len {len}");
        }
        for _ in 0..1000 {
            let mut packet = seal(&mut out, now, &inner(rng.random_range(0..300))).expect("seal");
            // The SPI bytes are left alone: they pick the SA before `open`.
            match rng.random_range(0..3) {
                0 => {
                    let i = rng.random_range(4..packet.len());
                    packet[i] ^= rng.random_range(1..=255);
                }
                1 => packet.truncate(rng.random_range(0..packet.len())),
                _ => {
                    let at = rng.random_range(4..packet.len());
                    let was = packet[at];
                    rng.fill(&mut packet[at..]);
                    packet[at] = was ^ 0x5a;
                }
            }
            assert!(sa.open(now, &mut packet).is_err());
        }
    }
}
