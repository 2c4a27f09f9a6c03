//! `meshgate lab --cloud moto --kms`: the mesh's epoch keys are KMS data
//! keys, as on AWS. The lab makes a KMS key in its AWS and the first
//! epoch's data key under it (only its ciphertext is written, as `keys
//! init --kms-key` does); the gateways decrypt it at start and every
//! later epoch's as orders bring it (`keys rotate --kms-key`).

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::moto::{aws_region, mesh_name, LAB_CREDENTIALS};
use super::Lab;

/// The lab's KMS key and where the first epoch's ciphertext is.
#[derive(Clone, Debug)]
pub struct LabKms {
    pub key: String,
    pub region: String,
    pub url: String,
    pub wrapped: PathBuf,
}

impl Lab {
    /// Makes the lab's KMS key and epoch 1's data key in the lab's AWS
    /// (call after [`Lab::start_moto`] and before the configs are written).
    pub fn use_kms(&mut self) -> Result<()> {
        let url = self
            .moto
            .as_ref()
            .context("KMS keys need the lab's AWS (--cloud moto)")?
            .url
            .clone();
        let region = aws_region(0);
        let mesh = mesh_name(self);
        let (u, r) = (url.clone(), region.clone());
        let (key, ciphertext) = self.underlay.run(move || -> Result<(String, Vec<u8>)> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let kms = meshgate_aws::Kms::connect(&meshgate_aws::Settings {
                    region: r,
                    endpoint_url: Some(u),
                    call_timeout: std::time::Duration::from_secs(5),
                    static_credentials: Some(LAB_CREDENTIALS),
                    assume_role: None,
                })
                .await;
                let key = kms
                    .create_key("meshgate lab: the mesh's epoch keys")
                    .await?;
                let context = crate::keys::kms::encryption_context(&mesh, 1);
                let data_key = kms.generate_data_key(&key, &context).await?;
                Ok((key, data_key.ciphertext))
            })
        })??;
        let wrapped = self.dir.join("epoch-1.kms");
        std::fs::write(&wrapped, crate::keys::wrapped::to_hex(&ciphertext) + "\n")
            .with_context(|| format!("writing {}", wrapped.display()))?;
        self.kms = Some(LabKms {
            key,
            region,
            url,
            wrapped,
        });
        Ok(())
    }

    /// The `[keys]` section of the configs with KMS keys.
    pub(super) fn kms_keys_section(&self) -> Option<String> {
        let k = self.kms.as_ref()?;
        Some(format!(
            "[keys]\nprovider = \"kms\"\nkms_key = \"{key}\"\nmesh = \"{mesh}\"\nwrapped_key = \"{wrapped}\"\nregion = \"{region}\"\nendpoint_url = \"{url}\"\nepoch = 1\n",
            key = k.key,
            mesh = mesh_name(self),
            wrapped = k.wrapped.display(),
            region = k.region,
            url = k.url,
        ))
    }

    /// The options `keys rotate` and `keys revoke` take to make a new
    /// epoch's data key in the lab's KMS.
    pub fn kms_args(&self) -> Vec<String> {
        match &self.kms {
            Some(k) => vec![
                "--kms-key".into(),
                k.key.clone(),
                "--mesh".into(),
                mesh_name(self),
                "--region".into(),
                k.region.clone(),
                "--endpoint-url".into(),
                k.url.clone(),
            ],
            None => Vec::new(),
        }
    }
}
