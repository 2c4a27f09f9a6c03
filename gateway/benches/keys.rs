//! One full key exchange between two appliances (init, response, confirm,
//! both sides' derivations and MACs), in memory: the CPU cost behind
//! keying a mesh. 30 appliances hold 435 pairs.
//!
//! `cargo bench -p meshgate --bench keys`

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use meshgate::esp::CipherSuite;
use meshgate::keys::{Epoch, EpochKey, EpochKeyError, Event, KeyProvider, LocalKeys, Negotiator};

fn provider() -> Arc<dyn KeyProvider> {
    let dir = std::env::temp_dir().join(format!("meshgate-bench-keys-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("master.key");
    let _ = std::fs::remove_file(&path);
    LocalKeys::generate(&path).expect("master key");
    let keys = LocalKeys::load(&path).expect("master key");
    let _ = std::fs::remove_dir_all(&dir);
    Arc::new(Cached(keys))
}

/// The provider as a gateway would hold it.
struct Cached(LocalKeys);
impl KeyProvider for Cached {
    fn epoch_key(&self, epoch: Epoch) -> Result<EpochKey, EpochKeyError> {
        self.0.epoch_key(epoch)
    }
    fn kind(&self) -> &'static str {
        "local"
    }
}

fn sent(n: &mut Negotiator) -> Vec<u8> {
    let mut out = None;
    while let Some(e) = n.poll_event() {
        if let Event::Send { message, .. } = e {
            out = Some(message);
        }
    }
    out.expect("a message to send")
}

fn exchange(c: &mut Criterion) {
    let keys = provider();
    let mut a = Negotiator::new("a", CipherSuite::Aes128Gcm, keys.clone(), 1);
    let mut b = Negotiator::new("b", CipherSuite::Aes128Gcm, keys, 1);
    let mut group = c.benchmark_group("key_exchange");
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("full", |bench| {
        bench.iter(|| {
            let now = Instant::now();
            a.initiate("b", now).expect("starts");
            let init = sent(&mut a);
            b.handle("a", &init, now).expect("init");
            let resp = sent(&mut b);
            a.handle("b", &resp, now).expect("response");
            let confirm = sent(&mut a);
            b.handle("a", &confirm, now).expect("confirm");
            while b.poll_event().is_some() {}
        })
    });
    group.finish();
}

criterion_group!(benches, exchange);
criterion_main!(benches);
