//! ESP encap/decap per packet against the raw AEAD of the same backend, so
//! the cost of framing, replay and lifetime bookkeeping shows as the gap.
//!
//! `cargo bench -p meshgate-esp --bench esp` (about two minutes). Ids read
//! `<operation>/<backend>/<bytes>`; AES-128-GCM, no ESN.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use meshgate_esp::aead::NONCE_LEN;
use meshgate_esp::{
    Aead, Backend, CipherSuite, InboundSa, KeyMaterial, Lifetime, OutboundSa, SaParams,
    ESP_HEADER_LEN, ICV_LEN, MAX_TRAILER_LEN, NEXT_HEADER_IPV4,
};

const SIZES: [usize; 3] = [64, 1400, 8192];
const SUITE: CipherSuite = CipherSuite::Aes128Gcm;

fn params(backend: Backend) -> SaParams {
    SaParams {
        spi: 0x1000,
        suite: SUITE,
        key: KeyMaterial::new(SUITE, &[0x42; 20]).expect("valid key"),
        esn: false,
        backend,
        lifetime: Lifetime::default(),
        replay_window: 4096,
    }
}

fn outbound(backend: Backend, now: Instant) -> OutboundSa {
    OutboundSa::new(params(backend), now).expect("outbound SA")
}

fn inbound(backend: Backend, now: Instant) -> InboundSa {
    InboundSa::new(params(backend), now).expect("inbound SA")
}

/// A buffer holding an inner packet of `size` bytes at the ESP payload offset.
fn packet_buf(size: usize) -> Vec<u8> {
    let mut buf = vec![0u8; ESP_HEADER_LEN + size + MAX_TRAILER_LEN];
    buf[ESP_HEADER_LEN..][..size].fill(0xa5);
    buf
}

fn esp(c: &mut Criterion) {
    let now = Instant::now();

    let mut group = c.benchmark_group("encap");
    group.throughput(Throughput::Elements(1));
    for backend in Backend::ALL {
        for size in SIZES {
            let mut out = outbound(backend, now);
            let mut buf = packet_buf(size);
            group.bench_function(BenchmarkId::new(backend.name(), size), |b| {
                b.iter(|| {
                    out.seal(now, black_box(&mut buf), size, NEXT_HEADER_IPV4)
                        .expect("seal")
                })
            });
        }
    }
    group.finish();

    // Each iteration opens a freshly sealed packet, in sequence order so the
    // replay window always accepts it; only the open is timed.
    let mut group = c.benchmark_group("decap");
    group.throughput(Throughput::Elements(1));
    for backend in Backend::ALL {
        for size in SIZES {
            let mut out = outbound(backend, now);
            let mut sa = inbound(backend, now);
            group.bench_function(BenchmarkId::new(backend.name(), size), |b| {
                b.iter_batched_ref(
                    || {
                        let mut buf = packet_buf(size);
                        let len = out
                            .seal(now, &mut buf, size, NEXT_HEADER_IPV4)
                            .expect("seal")
                            .len;
                        buf.truncate(len);
                        buf
                    },
                    |packet| sa.open(now, black_box(packet)).expect("open"),
                    BatchSize::SmallInput,
                )
            });
        }
    }
    group.finish();

    let mut group = c.benchmark_group("encap+decap");
    group.throughput(Throughput::Elements(1));
    for backend in Backend::ALL {
        for size in SIZES {
            let mut out = outbound(backend, now);
            let mut sa = inbound(backend, now);
            let mut buf = packet_buf(size);
            group.bench_function(BenchmarkId::new(backend.name(), size), |b| {
                b.iter(|| {
                    let len = out
                        .seal(now, &mut buf, size, NEXT_HEADER_IPV4)
                        .expect("seal")
                        .len;
                    sa.open(now, black_box(&mut buf[..len])).expect("open")
                })
            });
        }
    }
    group.finish();
}

/// The AEAD alone on `size` bytes with an ESP-sized AAD. The nonce repeats:
/// harmless for timing, never done on the wire.
fn raw_aead(c: &mut Criterion) {
    let key = KeyMaterial::new(SUITE, &[0x42; 20]).expect("valid key");
    let nonce = [7u8; NONCE_LEN];
    let aad = [1u8; 8];

    let mut group = c.benchmark_group("aead_seal");
    group.throughput(Throughput::Elements(1));
    for backend in Backend::ALL {
        let aead = Aead::new(SUITE, backend, &key).expect("aead");
        for size in SIZES {
            let mut data = vec![0xa5u8; size];
            let mut tag = [0u8; ICV_LEN];
            group.bench_function(BenchmarkId::new(backend.name(), size), |b| {
                b.iter(|| {
                    aead.seal_in_place(&nonce, &aad, black_box(&mut data), &mut tag)
                        .expect("seal")
                })
            });
        }
    }
    group.finish();

    let mut group = c.benchmark_group("aead_open");
    group.throughput(Throughput::Elements(1));
    for backend in Backend::ALL {
        let aead = Aead::new(SUITE, backend, &key).expect("aead");
        for size in SIZES {
            let mut sealed = vec![0xa5u8; size];
            let mut tag = [0u8; ICV_LEN];
            aead.seal_in_place(&nonce, &aad, &mut sealed, &mut tag)
                .expect("seal");
            group.bench_function(BenchmarkId::new(backend.name(), size), |b| {
                b.iter_batched_ref(
                    || sealed.clone(),
                    |data| {
                        aead.open_in_place(&nonce, &aad, black_box(data), &tag)
                            .expect("open")
                    },
                    BatchSize::SmallInput,
                )
            });
        }
    }
    group.finish();

    let mut group = c.benchmark_group("aead_seal+open");
    group.throughput(Throughput::Elements(1));
    for backend in Backend::ALL {
        let aead = Aead::new(SUITE, backend, &key).expect("aead");
        for size in SIZES {
            let mut data = vec![0xa5u8; size];
            let mut tag = [0u8; ICV_LEN];
            group.bench_function(BenchmarkId::new(backend.name(), size), |b| {
                b.iter(|| {
                    aead.seal_in_place(&nonce, &aad, &mut data, &mut tag)
                        .expect("seal");
                    aead.open_in_place(&nonce, &aad, black_box(&mut data), &tag)
                        .expect("open")
                })
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = esp, raw_aead
}
criterion_main!(benches);
