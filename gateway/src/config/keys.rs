//! `[keys]`: where the mesh's epoch keys come from. `local` derives them
//! from a master key file every appliance holds; `kms` decrypts each
//! epoch's data key, made under the user's own KMS key, with the
//! appliance's role, so no key of the mesh is ever at rest in plaintext.

use std::time::Duration;

use super::raw::RawKeys;
use super::*;

/// How often a KMS epoch key is decrypted again by default: a key the
/// user disabled, or a role that may no longer decrypt, stops new SAs
/// within this.
pub const DEFAULT_KMS_RECHECK: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The `local` provider's master key file.
    Local {
        master_key: PathBuf,
    },
    Kms(KmsConfig),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsConfig {
    /// The user's KMS key: an id, ARN or alias (`alias/meshgate`).
    pub key: String,
    /// The mesh's name, in every data key's encryption context.
    pub mesh: String,
    /// The configured epoch's data key as KMS encrypted it (`meshgate keys
    /// init --kms`); later epochs' arrive with the CA's orders.
    pub wrapped_key: PathBuf,
    /// The KMS region, and another endpoint than AWS's (an emulator).
    pub region: String,
    pub endpoint_url: Option<String>,
    /// How often each held key is decrypted again.
    pub recheck: Duration,
}

impl Validator<'_> {
    pub(super) fn keys(&self, k: &Spanned<RawKeys>) -> Result<KeysConfig, ConfigError> {
        let span = k.span();
        let k = k.get_ref();
        let epoch = *k.epoch.get_ref();
        let Ok(epoch) = u32::try_from(epoch) else {
            return self.err(
                k.epoch.span(),
                "keys.epoch",
                format!("{epoch} is above {}", u32::MAX),
            );
        };
        if epoch == 0 {
            return self.err(k.epoch.span(), "keys.epoch", "epochs start at 1");
        }
        let kms_fields = [
            ("keys.kms_key", k.kms_key.as_ref().map(Spanned::span)),
            ("keys.mesh", k.mesh.as_ref().map(Spanned::span)),
            (
                "keys.wrapped_key",
                k.wrapped_key.as_ref().map(Spanned::span),
            ),
            ("keys.region", k.region.as_ref().map(Spanned::span)),
            (
                "keys.endpoint_url",
                k.endpoint_url.as_ref().map(Spanned::span),
            ),
            (
                "keys.recheck_secs",
                k.recheck_secs.as_ref().map(Spanned::span),
            ),
        ];
        let source = match k.provider.get_ref().as_str() {
            "local" => {
                if let Some((field, Some(at))) = kms_fields.iter().find(|(_, s)| s.is_some()) {
                    return self.err(at.clone(), field, "only the kms provider takes this");
                }
                let Some(master) = &k.master_key else {
                    return self.err(
                        span,
                        "keys.master_key",
                        "the local provider needs master_key, a file made by `meshgate keys init`",
                    );
                };
                self.note("keys.master_key", master.span());
                KeySource::Local {
                    master_key: self.relative_path(master.get_ref()),
                }
            }
            "kms" if !cfg!(feature = "aws") => {
                return self.err(k.provider.span(), "keys.provider", "this build has no AWS SDK (built without the aws feature): use the local provider");
            }
            "kms" => {
                if let Some(m) = &k.master_key {
                    return self.err(
                        m.span(),
                        "keys.master_key",
                        "the kms provider takes no master key: each epoch's key is a KMS data key",
                    );
                }
                let need = |v: &Option<Spanned<String>>, field: &str, what: &str| match v {
                    Some(s) if !s.get_ref().trim().is_empty() => Ok(s.get_ref().trim().to_string()),
                    Some(s) => self.err(s.span(), field, format!("{what} is empty")),
                    None => self.err(
                        span.clone(),
                        field,
                        format!("the kms provider needs {what}"),
                    ),
                };
                let key = need(
                    &k.kms_key,
                    "keys.kms_key",
                    "kms_key, the KMS key's id, ARN or alias",
                )?;
                let mesh = need(
                    &k.mesh,
                    "keys.mesh",
                    "mesh, the mesh's name in the data keys' encryption context",
                )?;
                let wrapped = need(
                    &k.wrapped_key,
                    "keys.wrapped_key",
                    "wrapped_key, the file `meshgate keys init --kms` wrote",
                )?;
                let region = need(&k.region, "keys.region", "region, the KMS key's region")?;
                let recheck = match &k.recheck_secs {
                    None => DEFAULT_KMS_RECHECK,
                    Some(s) if (5..=3600).contains(s.get_ref()) => {
                        Duration::from_secs(*s.get_ref())
                    }
                    Some(s) => {
                        return self.err(
                            s.span(),
                            "keys.recheck_secs",
                            format!("{} is outside 5 to 3600 seconds", s.get_ref()),
                        )
                    }
                };
                if let Some(w) = &k.wrapped_key {
                    self.note("keys.wrapped_key", w.span());
                }
                KeySource::Kms(KmsConfig {
                    key,
                    mesh,
                    wrapped_key: self.relative_path(&wrapped),
                    region,
                    endpoint_url: self.http_url(k.endpoint_url.as_ref(), "keys.endpoint_url")?,
                    recheck,
                })
            }
            other => {
                return self.err(
                    k.provider.span(),
                    "keys.provider",
                    format!("unknown key provider '{other}'; expected local or kms"),
                );
            }
        };
        Ok(KeysConfig { source, epoch })
    }
}
