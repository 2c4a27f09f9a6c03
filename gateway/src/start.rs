//! What a start needs beyond the config, loaded and checked before
//! anything on the host changes: the mesh credentials (the certificate
//! chains to the CA, is this gateway's, grants its prefixes, and the key
//! is its key), the epoch key, and the policy (it loads, passes its
//! contract check and answers valid decisions on the first view). `run`
//! and `check` share it, so `check` refuses what `run` would, and both
//! name the file, line and field at fault.

use std::sync::Arc;

use anyhow::{Context, Result};

use crate::config::{Config, KeySource, SignalConfig};
use crate::keys::{KeyProvider, LocalKeys};
use crate::membership::info::MemberInfo;
use crate::mesh;
use crate::metrics::Metrics;
use crate::policy::runtime;
use crate::signal::node;
use crate::signal::transport::Credentials;
use crate::tunnels::{SharedSlots, Slots};

/// The credentials of `signal`, each file checked in turn so an error
/// names the field that points at it.
fn credentials(config: &Config, signal: &SignalConfig) -> Result<Credentials> {
    use crate::signal::transport::CredentialPart;
    let o = &config.origin;
    let creds =
        Credentials::load_each(&signal.ca, &signal.cert, &signal.key).map_err(|(part, e)| {
            match part {
                CredentialPart::Ca => o.error("signal.ca", e),
                CredentialPart::Cert => o.error("signal.cert", e),
                CredentialPart::Chain => o.error(
                    "signal.cert",
                    format!(
                        "{}: {e} (the mesh CA is {})",
                        signal.cert.display(),
                        signal.ca.display()
                    ),
                ),
                CredentialPart::Key => o.error("signal.key", e),
            }
        })?;
    creds.keys_match().map_err(|e| {
        o.error(
            "signal.key",
            format!(
                "{} is not the key of {} ({e}): give the key `meshgate cert issue` wrote beside it",
                signal.key.display(),
                signal.cert.display()
            ),
        )
    })?;
    Ok(creds)
}

/// The view the first policy evaluation sees: a mesh member alone, or the
/// configured peers.
pub fn first_view(config: &Config, mesh_start: Option<&MeshStart>) -> meshgate_sdk::View {
    match mesh_start {
        Some(m) => crate::policy::view::from_observed(
            &m.local,
            &[],
            &config.policy.params,
            std::time::Instant::now(),
            crate::time::unix_ms(),
        ),
        None => config.policy_view(crate::time::unix_ms()),
    }
}

/// `meshgate check`: the config, then everything `run` checks before it
/// changes anything (credentials, epoch key, policy), each named.
pub fn check(config_path: &std::path::Path) -> Result<()> {
    let config = Config::load(config_path)?;
    let mesh_start = match &config.signal {
        Some(s) => Some(MeshStart::load(&config, s)?),
        None => None,
    };
    let view = first_view(&config, mesh_start.as_ref());
    let policy = runtime::preflight(&config.policy.module, &view)
        .map_err(|e| config.origin.error("policy.module", e))?;
    let n = config.peers.len();
    println!("{}: ok", config_path.display());
    if mesh_start.is_some() {
        println!(
            "  config: gateway {}, a mesh member (its peers come from membership)",
            config.id
        );
    } else {
        println!(
            "  config: gateway {}, {n} configured {}",
            config.id,
            if n == 1 { "peer" } else { "peers" }
        );
    }
    if let Some(m) = &mesh_start {
        let c = &m.creds.claims;
        let granted: Vec<String> = c.prefixes.iter().map(ToString::to_string).collect();
        println!(
            "  certificate: {} ({}, region {}, role {}, grants {}), chains to {}, its key matches",
            m.signal.cert.display(),
            c.id,
            c.region,
            c.role,
            if granted.is_empty() {
                "no prefix".to_string()
            } else {
                granted.join(", ")
            },
            m.signal.ca.display()
        );
        println!("  epoch key: epoch {} obtainable", m.signal.keys.epoch);
    }
    println!("  policy: {}", policy.summary);
    // A route another put there for a prefix the policy routes wins: run
    // leaves it (and says so), so the prefix never reaches the tunnel.
    let mut foreign = Vec::new();
    for prefix in &policy.routes {
        match crate::tun::foreign_route(prefix, &config.tun.name) {
            Ok(Some(route)) => foreign.push(format!(
                "{prefix}: the host's main table routes it elsewhere ({route}); run leaves that route, so {prefix} is not routed into {}: remove it, or stop advertising {prefix} to this gateway",
                config.tun.name
            )),
            Ok(None) => {}
            Err(e) => foreign.push(format!("{prefix}: cannot read the host's routes: {e}")),
        }
    }
    if foreign.is_empty() {
        println!(
            "  routes: {} into {}, none taken by another route of the host",
            policy.routes.len(),
            config.tun.name
        );
        return Ok(());
    }
    Err(anyhow::Error::new(config.origin.error(
        "policy.module",
        format!(
            "the first decisions route {} that the host routes elsewhere:\n  {}",
            if foreign.len() == 1 {
                "a prefix"
            } else {
                "prefixes"
            },
            foreign.join("\n  ")
        ),
    )))
}

/// What a mesh member needs besides its config: its credentials and
/// epoch keys, checked before anything starts.
pub struct MeshStart {
    pub(crate) creds: Arc<Credentials>,
    pub(crate) keys: Arc<dyn KeyProvider>,
    /// With KMS epoch keys: what the member and the KMS task start from.
    pub(crate) kms: Option<KmsStart>,
    pub(crate) signal: SignalConfig,
    pub(crate) slots: SharedSlots,
    pub(crate) local: MemberInfo,
}

impl MeshStart {
    /// Loads and checks the credentials and the epoch key. The certificate
    /// must be this gateway's (id, region and role as configured), and the
    /// current epoch's key must be obtainable: otherwise the gateway does
    /// not start (fail closed, and said at once rather than by silence).
    pub fn load(config: &Config, signal: &SignalConfig) -> Result<MeshStart> {
        let creds = credentials(config, signal)?;
        let mut local = mesh::local_info(config);
        // A restart is a new generation; the same start time in this
        // gateway's SWIM identity, its record and its own view.
        local.generation = crate::time::unix_ms();
        crate::membership::info::check_fits(&local).map_err(anyhow::Error::msg)?;
        let c = &creds.claims;
        let o = &config.origin;
        let differs = [
            ("gateway.id", c.id != config.id),
            ("gateway.region", c.region != local.region),
            ("gateway.role", c.role != local.role),
        ];
        if let Some((field, _)) = differs.iter().find(|(_, d)| *d) {
            return Err(o
                .error(field, format!(
                    "{} certifies {} (region {}, role {}), but this gateway is {} (region {}, role {}): issue it a certificate of its own",
                    signal.cert.display(), c.id, c.region, c.role, config.id, local.region, local.role
                ))
                .into());
        }
        // Every member would refuse a record with a prefix the certificate
        // does not grant: say so here, not by silence there.
        if let Some(p) = config.prefixes.iter().find(|p| !c.grants(p)) {
            let granted: Vec<String> = c.prefixes.iter().map(ToString::to_string).collect();
            return Err(o
                .error("gateway.prefixes", format!(
                    "{p} is not granted by {} (it grants {}); issue the certificate with --prefix {p}",
                    signal.cert.display(),
                    if granted.is_empty() { "none".to_string() } else { granted.join(", ") }
                ))
                .into());
        }
        let (keys, kms): (Arc<dyn KeyProvider>, Option<KmsStart>) = match &signal.keys.source {
            KeySource::Local { master_key } => {
                let keys = LocalKeys::load(master_key).map_err(|e| {
                    o.error("keys.master_key", format!("{}: {e}", master_key.display()))
                })?;
                keys.epoch_key(signal.keys.epoch).map_err(|e| {
                    o.error(
                        "keys.master_key",
                        format!("the key of epoch {}: {e}", signal.keys.epoch),
                    )
                })?;
                (Arc::new(keys), None)
            }
            KeySource::Kms(k) => {
                let start = KmsStart::load(k, signal.keys.epoch)
                    .map_err(|e| o.error("keys.wrapped_key", format!("{e:#}")))?;
                (start.keys.clone(), Some(start))
            }
        };
        Ok(MeshStart {
            creds: Arc::new(creds),
            keys,
            kms,
            signal: signal.clone(),
            slots: Slots::starting_at(config.peers.len()),
            local,
        })
    }
}

/// The configured epoch's KMS data key, decrypted before anything starts
/// (KMS's refusal stops the start, and says why).
#[cfg(feature = "aws")]
pub struct KmsStart {
    config: crate::config::KmsConfig,
    keys: Arc<crate::keys::kms::KmsKeys>,
    wrapped: crate::keys::wrapped::WrappedKeys,
}

#[cfg(feature = "aws")]
impl KmsStart {
    fn load(k: &crate::config::KmsConfig, epoch: crate::keys::Epoch) -> Result<KmsStart> {
        let path = k.wrapped_key.display();
        let text =
            std::fs::read_to_string(&k.wrapped_key).with_context(|| format!("reading {path}"))?;
        let ciphertext = crate::keys::wrapped::from_hex(text.trim())
            .filter(|c| !c.is_empty() && c.len() <= crate::keys::wrapped::MAX_WRAPPED_LEN)
            .with_context(|| format!("{path}: not the hex of a KMS data key's ciphertext (what `meshgate keys init --kms` writes)"))?;
        let keys = Arc::new(crate::keys::kms::KmsKeys::default());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("a runtime for KMS")?;
        rt.block_on(async {
            let kms = meshgate_aws::Kms::connect(&crate::cloud::kms::settings(k)).await;
            crate::cloud::kms::decrypt_into(&kms, k, &keys, epoch, &ciphertext).await
        })
        .map_err(|e| {
            anyhow::anyhow!(
                "the epoch keys ([keys] kms_key {}, wrapped_key {path}): {e}",
                k.key
            )
        })?;
        Ok(KmsStart {
            config: k.clone(),
            keys,
            wrapped: crate::keys::wrapped::WrappedKeys::configured(epoch, ciphertext),
        })
    }

    /// The task that keeps the held keys decrypted, and the member's link
    /// to it.
    pub(crate) fn spawn(
        self,
        node: tokio::sync::mpsc::UnboundedSender<node::NodeCommand>,
        metrics: Arc<Metrics>,
    ) -> node::KmsLink {
        let (unwrap, held) = tokio::sync::mpsc::unbounded_channel();
        let KmsStart {
            config,
            keys,
            wrapped,
        } = self;
        tokio::spawn(async move {
            let kms = meshgate_aws::Kms::connect(&crate::cloud::kms::settings(&config)).await;
            let ready = move || {
                let _ = node.send(node::NodeCommand::EpochKeyReady);
            };
            crate::cloud::kms::run(config, kms, keys, held, ready, metrics).await
        });
        node::KmsLink { wrapped, unwrap }
    }
}

/// Without the AWS SDK there are no KMS keys (the config refuses them).
#[cfg(not(feature = "aws"))]
pub struct KmsStart {
    keys: Arc<dyn KeyProvider>,
}

#[cfg(not(feature = "aws"))]
impl KmsStart {
    fn load(_: &crate::config::KmsConfig, _: crate::keys::Epoch) -> Result<KmsStart> {
        anyhow::bail!("keys.provider: this build has no AWS SDK (built without the aws feature)")
    }

    pub(crate) fn spawn(
        self,
        _: tokio::sync::mpsc::UnboundedSender<node::NodeCommand>,
        _: Arc<Metrics>,
    ) -> node::KmsLink {
        unreachable!("KmsStart::load refuses KMS keys without the aws feature")
    }
}
