//! The shell around KMS epoch keys (`keys::kms`): decrypts each data key
//! the member holds with this appliance's role, decrypts it again every
//! `recheck` so a key the user disabled or deleted, or a role that lost
//! `kms:Decrypt`, stops new SAs within that time, and retries with
//! backoff when KMS is throttled, failing or unreachable (a key already
//! decrypted stays in use through such an outage: only KMS's refusal
//! withdraws it). Never per packet: a few calls an hour per epoch.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use meshgate_aws::{Kms, Settings};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::KmsConfig;
use crate::keys::kms::{encryption_context, KeyState, KmsKeys};
use crate::keys::Epoch;
use crate::metrics::Metrics;

use super::aws::cloud_error;

const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// The settings of `cfg`'s KMS client.
pub fn settings(cfg: &KmsConfig) -> Settings {
    Settings {
        call_timeout: CALL_TIMEOUT,
        ..Settings::new(&cfg.region, cfg.endpoint_url.clone())
    }
}

/// Decrypts `ciphertext`, `epoch`'s data key, into `keys`: what the
/// gateway does once at start, failing closed with KMS's reason.
pub async fn decrypt_into(
    kms: &Kms,
    cfg: &KmsConfig,
    keys: &KmsKeys,
    epoch: Epoch,
    ciphertext: &[u8],
) -> Result<(), String> {
    let context = encryption_context(&cfg.mesh, epoch);
    match kms.decrypt(&cfg.key, ciphertext, &context).await {
        Ok(plaintext) => {
            keys.ready(epoch, &plaintext);
            match keys.states().into_iter().find(|(e, _)| *e == epoch) {
                Some((_, KeyState::Refused(r))) => Err(r),
                _ => Ok(()),
            }
        }
        Err(e) => Err(format!("the data key of epoch {epoch}: {e}")),
    }
}

struct Held {
    ciphertext: Vec<u8>,
    next: Instant,
    backoff: Duration,
}

/// Runs until the member's side of `held` closes: each set of held
/// ciphertexts replaces the last; `ready` is called when a key becomes
/// usable (so waiting exchanges go at once).
pub async fn run(
    cfg: KmsConfig,
    kms: Kms,
    keys: Arc<KmsKeys>,
    mut held: mpsc::UnboundedReceiver<Vec<(Epoch, Vec<u8>)>>,
    ready: impl Fn() + Send + 'static,
    metrics: Arc<Metrics>,
) {
    let mut epochs: BTreeMap<Epoch, Held> = BTreeMap::new();
    loop {
        let now = Instant::now();
        let due: Vec<Epoch> = epochs
            .iter()
            .filter(|(_, h)| h.next <= now)
            .map(|(e, _)| *e)
            .collect();
        for epoch in due {
            let Some(h) = epochs.get_mut(&epoch) else {
                continue;
            };
            let was_ready = keys
                .states()
                .iter()
                .any(|(e, s)| *e == epoch && *s == KeyState::Ready);
            let context = encryption_context(&cfg.mesh, epoch);
            let started = std::time::Instant::now();
            let result = kms.decrypt(&cfg.key, &h.ciphertext, &context).await;
            metrics
                .cloud
                .call_seconds
                .with_label_values(&["Decrypt"])
                .observe(started.elapsed().as_secs_f64());
            match result {
                Ok(plaintext) => {
                    metrics
                        .cloud
                        .calls
                        .with_label_values(&["Decrypt", "ok"])
                        .inc();
                    keys.ready(epoch, &plaintext);
                    h.next = Instant::now() + cfg.recheck;
                    h.backoff = FIRST_RETRY;
                    if !was_ready {
                        tracing::info!(epoch, "KMS decrypted the data key of epoch {epoch}");
                        ready();
                    }
                }
                Err(e) => {
                    let e = cloud_error(e);
                    metrics
                        .cloud
                        .calls
                        .with_label_values(&["Decrypt", e.label()])
                        .inc();
                    if e.transient() {
                        // An outage of KMS keeps a key in use; one not yet
                        // decrypted waits.
                        tracing::warn!(epoch, "KMS did not decrypt the data key of epoch {epoch}: {e}; retrying in {:?}", h.backoff);
                        h.next = Instant::now() + h.backoff;
                        h.backoff = (h.backoff * 2).min(MAX_RETRY).min(cfg.recheck);
                    } else {
                        if was_ready
                            || !matches!(
                                keys.states().iter().find(|(x, _)| *x == epoch),
                                Some((_, KeyState::Refused(_)))
                            )
                        {
                            tracing::error!(epoch, "KMS refused the data key of epoch {epoch}: {e}; no new SA of this epoch forms until it decrypts again");
                        }
                        keys.refuse(epoch, format!("KMS refused its data key: {e}"));
                        h.next = Instant::now() + cfg.recheck.min(MAX_RETRY);
                    }
                }
            }
        }
        count(&keys, &metrics);
        let wake = epochs.values().map(|h| h.next).min();
        tokio::select! {
            set = held.recv() => match set {
                Some(set) => {
                    let set: BTreeMap<Epoch, Vec<u8>> = set.into_iter().collect();
                    epochs.retain(|e, h| {
                        let keep = set.get(e) == Some(&h.ciphertext);
                        if !keep {
                            keys.forget(*e);
                        }
                        keep
                    });
                    for (e, ciphertext) in set {
                        epochs.entry(e).or_insert_with(|| {
                            keys.waiting(e);
                            Held { ciphertext, next: Instant::now(), backoff: FIRST_RETRY }
                        });
                    }
                }
                None => return,
            },
            _ = sleep_until(wake) => {}
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

fn count(keys: &KmsKeys, metrics: &Metrics) {
    let states = keys.states();
    for (label, want) in [("ready", 0u8), ("waiting", 1), ("refused", 2)] {
        let n = states
            .iter()
            .filter(|(_, s)| {
                matches!(
                    (s, want),
                    (KeyState::Ready, 0) | (KeyState::Waiting, 1) | (KeyState::Refused(_), 2)
                )
            })
            .count();
        metrics
            .cloud
            .kms_keys
            .with_label_values(&[label])
            .set(n as i64);
    }
}

/// `keys init --kms-key` and `keys rotate --kms-key`: a new data key for
/// `epoch` under `key` (the operator's own credentials), of which only the
/// ciphertext is returned; the plaintext is zeroized here.
pub fn new_data_key(
    key: &str,
    mesh: &str,
    region: &str,
    endpoint_url: Option<&str>,
    epoch: Epoch,
) -> Result<Vec<u8>, String> {
    let settings = Settings {
        region: region.to_string(),
        endpoint_url: endpoint_url.map(str::to_string),
        call_timeout: Duration::from_secs(10),
        static_credentials: None,
        assume_role: None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("a runtime for KMS: {e}"))?;
    rt.block_on(async {
        let kms = Kms::connect(&settings).await;
        make_data_key(&kms, key, mesh, epoch).await
    })
}

/// A new data key for `epoch` under `key`: its ciphertext only.
pub async fn make_data_key(
    kms: &Kms,
    key: &str,
    mesh: &str,
    epoch: Epoch,
) -> Result<Vec<u8>, String> {
    let context = encryption_context(mesh, epoch);
    let data_key = kms
        .generate_data_key(key, &context)
        .await
        .map_err(|e| e.to_string())?;
    if data_key.plaintext.len() != crate::keys::epoch::KEY_LEN
        || data_key.ciphertext.len() > crate::keys::wrapped::MAX_WRAPPED_LEN
    {
        return Err(format!(
            "KMS made a data key of {} bytes with a ciphertext of {} bytes (expected 32, and at most {})",
            data_key.plaintext.len(),
            data_key.ciphertext.len(),
            crate::keys::wrapped::MAX_WRAPPED_LEN
        ));
    }
    Ok(data_key.ciphertext)
}
