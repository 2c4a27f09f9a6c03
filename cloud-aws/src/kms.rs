//! The mesh's epoch keys as KMS data keys: made under the user's KMS key
//! by the operator (`GenerateDataKey`), decrypted by each appliance with
//! its own role (`Decrypt`), both under an encryption context naming the
//! mesh and the epoch. Plaintext keys are returned zeroizing; the SDK's
//! own response buffers are out of our hands.

use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;
use zeroize::Zeroizing;

use crate::{sdk_config, AwsError, Settings};

/// A KMS client of one region.
#[derive(Clone, Debug)]
pub struct Kms {
    client: aws_sdk_kms::Client,
}

/// A data key as `GenerateDataKey` returns it.
pub struct DataKey {
    pub plaintext: Zeroizing<Vec<u8>>,
    pub ciphertext: Vec<u8>,
}

fn context(pairs: &[(&str, String)]) -> std::collections::HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

impl Kms {
    pub async fn connect(s: &Settings) -> Kms {
        Kms {
            client: aws_sdk_kms::Client::new(&sdk_config(s).await),
        }
    }

    /// A new 256-bit data key under `key`, bound to `context`.
    pub async fn generate_data_key(
        &self,
        key: &str,
        context_pairs: &[(&str, String)],
    ) -> Result<DataKey, AwsError> {
        const API: &str = "GenerateDataKey";
        let out = self
            .client
            .generate_data_key()
            .key_id(key)
            .key_spec(DataKeySpec::Aes256)
            .set_encryption_context(Some(context(context_pairs)))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk(API, key, e))?;
        let missing = |field: &str| AwsError::missing(API, key, field);
        let plaintext = Zeroizing::new(
            out.plaintext()
                .ok_or_else(|| missing("Plaintext"))?
                .as_ref()
                .to_vec(),
        );
        let ciphertext = out
            .ciphertext_blob()
            .ok_or_else(|| missing("CiphertextBlob"))?
            .as_ref()
            .to_vec();
        Ok(DataKey {
            plaintext,
            ciphertext,
        })
    }

    /// The plaintext of `ciphertext`, made under `key` with `context`. KMS
    /// refuses it when the key is disabled, pending deletion or gone, when
    /// this role may not decrypt, or when the context is not the one it
    /// was made with.
    pub async fn decrypt(
        &self,
        key: &str,
        ciphertext: &[u8],
        context_pairs: &[(&str, String)],
    ) -> Result<Zeroizing<Vec<u8>>, AwsError> {
        const API: &str = "Decrypt";
        let out = self
            .client
            .decrypt()
            .key_id(key)
            .ciphertext_blob(Blob::new(ciphertext.to_vec()))
            .set_encryption_context(Some(context(context_pairs)))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk(API, key, e))?;
        match out.plaintext() {
            Some(p) => Ok(Zeroizing::new(p.as_ref().to_vec())),
            None => Err(AwsError::missing(API, key, "Plaintext")),
        }
    }

    /// A new symmetric key (the lab's, and the tests'): its id.
    pub async fn create_key(&self, description: &str) -> Result<String, AwsError> {
        const API: &str = "CreateKey";
        let out = self
            .client
            .create_key()
            .description(description)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk(API, description, e))?;
        out.key_metadata()
            .map(|m| m.key_id().to_string())
            .ok_or_else(|| AwsError::missing(API, description, "KeyMetadata"))
    }
}
