//! The mesh's epoch keys: every negotiated SA mixes the key of its epoch
//! into its derivation, so only appliances that can obtain that key form
//! SAs, and retiring an epoch retires every SA derived from it.
//!
//! Where the key comes from is behind [`KeyProvider`]: `local` derives it
//! from a master key file shared by the mesh's appliances; `kms`
//! (`keys::kms`) takes AWS KMS data keys under the user's own KMS key.

use std::path::{Path, PathBuf};

use ring::hkdf;
use zeroize::Zeroizing;

/// An epoch number; `meshgate keys rotate` moves the mesh to the next one.
pub type Epoch = u32;

/// Bytes of an epoch key and of the local master key.
pub const KEY_LEN: usize = 32;

/// One epoch's key. Zeroized on drop, never printed.
pub struct EpochKey {
    pub epoch: Epoch,
    key: Zeroizing<[u8; KEY_LEN]>,
}

impl EpochKey {
    pub(crate) fn new(epoch: Epoch, key: Zeroizing<[u8; KEY_LEN]>) -> EpochKey {
        EpochKey { epoch, key }
    }

    pub(crate) fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.key
    }
}

impl std::fmt::Debug for EpochKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EpochKey({}, <redacted>)", self.epoch)
    }
}

/// Why an epoch key cannot be had: the appliance then forms no SA.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EpochKeyError {
    #[error("master key file {path}: {reason}")]
    MasterKey { path: String, reason: String },
    #[error("epoch {0} is revoked")]
    Revoked(Epoch),
    /// Why KMS gives no key (the key disabled, access denied, not yet).
    #[error("KMS: {0}")]
    Kms(String),
}

/// Where epoch keys come from.
pub trait KeyProvider: Send + Sync {
    /// The key of `epoch`, or why there is none.
    fn epoch_key(&self, epoch: Epoch) -> Result<EpochKey, EpochKeyError>;
    /// A short name for logs and metrics (`local`, `kms`).
    fn kind(&self) -> &'static str;
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// Epoch keys derived from a master key file: HKDF-SHA256 with the master
/// key as input keying material and the epoch number as context.
pub struct LocalKeys {
    master: Zeroizing<[u8; KEY_LEN]>,
    path: PathBuf,
}

impl LocalKeys {
    /// Reads a master key file: 64 hex digits (32 bytes).
    pub fn load(path: &Path) -> Result<LocalKeys, EpochKeyError> {
        let err = |reason: String| EpochKeyError::MasterKey {
            path: path.display().to_string(),
            reason,
        };
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?);
        let hex = text.trim().as_bytes();
        if hex.len() != 2 * KEY_LEN {
            return Err(err(format!(
                "expected {} hex digits, found {}",
                2 * KEY_LEN,
                hex.len()
            )));
        }
        let mut master = Zeroizing::new([0u8; KEY_LEN]);
        for (i, pair) in hex.chunks_exact(2).enumerate() {
            let digit = |c: u8| (c as char).to_digit(16);
            match (digit(pair[0]), digit(pair[1])) {
                (Some(h), Some(l)) => master[i] = (h << 4 | l) as u8,
                _ => return Err(err(format!("invalid hex digit near offset {}", 2 * i))),
            }
        }
        Ok(LocalKeys {
            master,
            path: path.to_path_buf(),
        })
    }

    /// Writes a fresh random master key to `path` (mode 0600, refusing to
    /// overwrite an existing file).
    pub fn generate(path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key[..])
            .map_err(|_| std::io::Error::other("the system random source failed"))?;
        let hex: Zeroizing<String> =
            Zeroizing::new(key.iter().map(|b| format!("{b:02x}")).collect());
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        f.write_all(hex.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl KeyProvider for LocalKeys {
    fn epoch_key(&self, epoch: Epoch) -> Result<EpochKey, EpochKeyError> {
        let prk =
            hkdf::Salt::new(hkdf::HKDF_SHA256, b"meshgate epoch key v1").extract(&self.master[..]);
        let info = epoch.to_be_bytes();
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        prk.expand(&[&info], Len(KEY_LEN))
            .and_then(|okm| okm.fill(&mut key[..]))
            .map_err(|_| EpochKeyError::MasterKey {
                path: self.path.display().to_string(),
                reason: "key derivation failed".into(),
            })?;
        Ok(EpochKey { epoch, key })
    }

    fn kind(&self) -> &'static str {
        "local"
    }
}

/// For tests and the fuzzer: epoch keys from a fixed master key.
#[cfg(any(test, fuzzing))]
pub(crate) fn test_keys(master: u8) -> LocalKeys {
    LocalKeys {
        master: Zeroizing::new([master; KEY_LEN]),
        path: PathBuf::from("test-master.key"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_have_distinct_keys_and_the_same_master_gives_the_same_keys() {
        let (a, b, other) = (test_keys(7), test_keys(7), test_keys(8));
        let k = |p: &LocalKeys, e| *p.epoch_key(e).unwrap().bytes();
        assert_eq!(k(&a, 1), k(&b, 1));
        assert_ne!(k(&a, 1), k(&a, 2));
        assert_ne!(k(&a, 1), k(&other, 1));
        assert_eq!(
            format!("{:?}", a.epoch_key(3).unwrap()),
            "EpochKey(3, <redacted>)"
        );
    }

    #[test]
    fn master_key_files_are_written_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("meshgate-master-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("master.key");
        LocalKeys::generate(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(LocalKeys::generate(&path).is_err(), "never overwritten");
        let keys = LocalKeys::load(&path).unwrap();
        assert!(keys.epoch_key(1).is_ok());
        std::fs::write(&path, "abcd\n").unwrap();
        let e = LocalKeys::load(&path).err().unwrap().to_string();
        assert!(
            e.contains("master.key") && e.contains("expected 64 hex digits, found 4"),
            "{e}"
        );
        std::fs::write(&path, "zz".repeat(32)).unwrap();
        let e = LocalKeys::load(&path).err().unwrap().to_string();
        assert!(e.contains("invalid hex digit near offset 0"), "{e}");
        let e = LocalKeys::load(&dir.join("missing.key"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("missing.key"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
