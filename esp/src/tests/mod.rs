//! SA-level tests: published vectors, backend interop, framing, replay,
//! ESN, lifetimes and hostile input.

mod lifetimes;
mod packets;
mod sequence;
mod vectors;

use std::time::Instant;

use super::*;

pub(super) const SPI: u32 = 0x0000_1001;

pub(super) fn params(suite: CipherSuite, backend: Backend, esn: bool) -> SaParams {
    let key: Vec<u8> = (0..suite.key_material_len() as u8)
        .map(|i| i.wrapping_mul(37) ^ 0x5c)
        .collect();
    SaParams {
        spi: SPI,
        suite,
        key: KeyMaterial::new(suite, &key).expect("valid key"),
        esn,
        backend,
        lifetime: Lifetime::default(),
        replay_window: 1024,
    }
}

pub(super) fn pair(p: &SaParams, now: Instant) -> (OutboundSa, InboundSa) {
    (
        OutboundSa::new(p.clone(), now).expect("outbound SA"),
        InboundSa::new(p.clone(), now).expect("inbound SA"),
    )
}

/// A recognisable inner packet of `len` bytes.
pub(super) fn inner(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 3) as u8).collect()
}

/// Seals `inner` and returns the ESP packet alone.
pub(super) fn seal(out: &mut OutboundSa, now: Instant, inner: &[u8]) -> Result<Vec<u8>, SealError> {
    let mut buf = vec![0u8; ESP_HEADER_LEN + inner.len() + MAX_TRAILER_LEN];
    buf[ESP_HEADER_LEN..][..inner.len()].copy_from_slice(inner);
    let sealed = out.seal(now, &mut buf, inner.len(), NEXT_HEADER_IPV4)?;
    buf.truncate(sealed.len);
    Ok(buf)
}

/// Opens a copy of `packet` and returns the inner packet and its sequence number.
pub(super) fn open(
    sa: &mut InboundSa,
    now: Instant,
    packet: &[u8],
) -> Result<(Vec<u8>, u64), DropReason> {
    let mut buf = packet.to_vec();
    let opened = sa.open(now, &mut buf)?;
    Ok((buf[opened.inner].to_vec(), opened.seq))
}

#[test]
fn drop_reasons_index_and_label() {
    let labels: Vec<_> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(
        labels,
        [
            "malformed",
            "replay",
            "icv",
            "unknown_spi",
            "expired",
            "no_route",
            "spoofed",
            "too_big",
            "send_failed",
            "tun_write_failed",
            "seq_not_reserved",
            "no_sa"
        ]
    );
    for (i, r) in DropReason::ALL.iter().enumerate() {
        assert_eq!(r.index(), i);
        assert_eq!(r.to_string(), r.as_str());
    }
}

#[test]
fn sa_params_are_validated() {
    let now = Instant::now();
    let base = params(CipherSuite::Aes128Gcm, Backend::Ring, false);
    for spi in [0, 1, 255] {
        let p = SaParams {
            spi,
            ..base.clone()
        };
        assert_eq!(
            OutboundSa::new(p.clone(), now).err(),
            Some(SaError::ReservedSpi(spi))
        );
        assert_eq!(
            InboundSa::new(p, now).err(),
            Some(SaError::ReservedSpi(spi))
        );
    }
    assert!(OutboundSa::new(
        SaParams {
            spi: 256,
            ..base.clone()
        },
        now
    )
    .is_ok());

    let p = SaParams {
        replay_window: 1023,
        ..base.clone()
    };
    assert_eq!(
        InboundSa::new(p, now).err(),
        Some(SaError::ReplayWindowTooSmall { got: 1023 })
    );
    let p = SaParams {
        replay_window: MAX_REPLAY_WINDOW + 1,
        ..base.clone()
    };
    assert!(matches!(
        InboundSa::new(p, now),
        Err(SaError::ReplayWindowTooLarge { .. })
    ));
    assert!(InboundSa::new(
        SaParams {
            replay_window: 4096,
            ..base.clone()
        },
        now
    )
    .is_ok());

    let mut p = base.clone();
    p.lifetime.soft.bytes = Some(2000);
    p.lifetime.hard.bytes = Some(1000);
    let err = OutboundSa::new(p, now).err().expect("soft above hard");
    assert_eq!(
        err,
        SaError::InvalidLifetime {
            which: "soft",
            kind: "bytes"
        }
    );
    assert_eq!(
        err.to_string(),
        "soft lifetime limit on bytes must be non-zero and not above the hard limit"
    );

    let p = SaParams {
        suite: CipherSuite::Aes256Gcm,
        ..base
    };
    assert!(matches!(
        InboundSa::new(p, now),
        Err(SaError::Key(KeyError::SuiteMismatch { .. }))
    ));
}
