//! ESP encap+decap against the raw AEAD, measured in pairs: each round
//! times a batch of one and then a batch of the other (the order swapped
//! every round), and the ratio is taken per round. Drift of a noisy
//! machine (other tenants, frequency) falls on both halves of a round
//! alike, which it does not between criterion's groups, measured minutes
//! apart. Prints the median ratio and its quartiles per backend and size,
//! and exits 2 when ring at 1400 B is above 1.1x.
//!
//! `cargo bench -p meshgate-esp --bench paired` (about a minute).
//! `PAIRED_ROUNDS` sets the rounds per case (default 101).

use std::hint::black_box;
use std::time::{Duration, Instant};

// One line to change to run this against the gateway crate of before the
// ESP core became a crate of its own (`use meshgate::esp;`).
use meshgate_esp as esp;

use esp::aead::NONCE_LEN;
use esp::{
    Aead, Backend, CipherSuite, InboundSa, KeyMaterial, Lifetime, OutboundSa, SaParams,
    ESP_HEADER_LEN, ICV_LEN, MAX_TRAILER_LEN, NEXT_HEADER_IPV4,
};

const SUITE: CipherSuite = CipherSuite::Aes128Gcm;
/// Each half of a round runs about this long.
const HALF: Duration = Duration::from_millis(5);

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

/// (median, first quartile, third quartile) of `v`.
fn quartiles(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.25), at(0.75))
}

fn main() {
    // `cargo test --benches` runs this too, unoptimized and without
    // `--bench`: then three rounds check that it runs, and no verdict.
    let benching = std::env::args().any(|a| a == "--bench");
    let rounds: usize = if benching {
        std::env::var("PAIRED_ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(101)
            .max(3)
    } else {
        3
    };
    let now = Instant::now();
    let key = KeyMaterial::new(SUITE, &[0x42; 20]).expect("valid key");
    let (nonce, aad) = ([7u8; NONCE_LEN], [1u8; 8]);
    println!(
        "{:<11} {:>6} {:>11} {:>11} {:>7} {:>15}",
        "backend", "bytes", "esp ns", "aead ns", "ratio", "ratio q1-q3"
    );
    let mut verdict = None;
    for backend in Backend::ALL {
        for size in [64usize, 1400, 8192] {
            let mut out = OutboundSa::new(params(backend), now).expect("outbound SA");
            let mut inb = InboundSa::new(params(backend), now).expect("inbound SA");
            let aead = Aead::new(SUITE, backend, &key).expect("aead");
            let mut buf = vec![0xa5u8; ESP_HEADER_LEN + size + MAX_TRAILER_LEN];
            let (mut data, mut tag) = (vec![0xa5u8; size], [0u8; ICV_LEN]);
            let mut esp_batch = |n: u32| {
                let t = Instant::now();
                for _ in 0..n {
                    let len = out
                        .seal(now, &mut buf, size, NEXT_HEADER_IPV4)
                        .expect("seal")
                        .len;
                    inb.open(now, black_box(&mut buf[..len])).expect("open");
                }
                t.elapsed()
            };
            let mut raw_batch = |n: u32| {
                let t = Instant::now();
                for _ in 0..n {
                    aead.seal_in_place(&nonce, &aad, &mut data, &mut tag)
                        .expect("seal");
                    aead.open_in_place(&nonce, &aad, black_box(&mut data), &tag)
                        .expect("open");
                }
                t.elapsed()
            };
            // Batch size from a warm-up, so each half lasts about HALF.
            let warm = if benching { 1000 } else { 10 };
            let one = esp_batch(warm).as_secs_f64() / f64::from(warm);
            raw_batch(warm);
            let n = ((HALF.as_secs_f64() / one) as u32).max(10);
            let (mut ratios, mut esp_ns, mut raw_ns) = (Vec::new(), Vec::new(), Vec::new());
            for round in 0..rounds {
                let (e, r) = if round % 2 == 0 {
                    let e = esp_batch(n);
                    (e, raw_batch(n))
                } else {
                    let r = raw_batch(n);
                    (esp_batch(n), r)
                };
                ratios.push(e.as_secs_f64() / r.as_secs_f64());
                esp_ns.push(e.as_secs_f64() * 1e9 / f64::from(n));
                raw_ns.push(r.as_secs_f64() * 1e9 / f64::from(n));
            }
            let (ratio, q1, q3) = quartiles(&mut ratios);
            println!(
                "{:<11} {:>6} {:>11.0} {:>11.0} {:>7.3} {:>7.3}-{:<7.3}",
                backend.name(),
                size,
                quartiles(&mut esp_ns).0,
                quartiles(&mut raw_ns).0,
                ratio,
                q1,
                q3
            );
            if backend == Backend::Ring && size == 1400 {
                verdict = Some(ratio);
            }
        }
    }
    if !benching {
        return;
    }
    match verdict {
        Some(r) if r <= 1.1 => {
            println!("target met: ring at 1400 B is {r:.3}x the raw AEAD (at most 1.1x)")
        }
        Some(r) => {
            println!("TARGET NOT MET: ring at 1400 B is {r:.3}x the raw AEAD; the target is at most 1.1x");
            std::process::exit(2);
        }
        None => println!("ring at 1400 B was not measured"),
    }
}
