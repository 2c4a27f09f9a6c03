//! Compiled policies kept on disk across restarts. A cached artifact is
//! native code that wasmtime maps and runs without checking it, so it is
//! loaded only from a directory this process owns and no one else may
//! write, only from a regular file this process owns, and only if its
//! SHA-256 (stored in front of it when it was written) still matches:
//! anything else is ignored and the module compiled again.

use std::fs::Metadata;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use wasmtime::component::Component;
use wasmtime::Engine;

const DIGEST_LEN: usize = 32;

/// The largest artifact read back (a module is capped at 8 MiB; its
/// machine code is a few times that).
const MAX_ARTIFACT_BYTES: u64 = 256 << 20;

pub struct DiskCache {
    dir: PathBuf,
    /// This engine's compatibility hash: artifacts of another wasmtime
    /// version or configuration are never looked at.
    compat: u64,
}

/// Why a file or directory may not hold code this process runs: not ours,
/// or writable by others.
fn untrusted(m: &Metadata) -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if m.uid() != me {
        return Some(format!("owned by uid {}, not this process's {me}", m.uid()));
    }
    if m.mode() & 0o022 != 0 {
        return Some(format!("mode {:o} lets others write", m.mode() & 0o777));
    }
    None
}

impl DiskCache {
    /// The cache in `dir` (created, mode 0700) for `engine`.
    pub fn open(dir: PathBuf, engine: &Engine) -> io::Result<DiskCache> {
        use std::hash::{Hash, Hasher};
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        let m = std::fs::symlink_metadata(&dir)?;
        if !m.is_dir() {
            return Err(io::Error::other("not a directory"));
        }
        if let Some(why) = untrusted(&m) {
            return Err(io::Error::other(why));
        }
        let mut h = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        Ok(DiskCache {
            dir,
            compat: h.finish(),
        })
    }

    fn path(&self, hash: &str) -> PathBuf {
        self.dir.join(format!("{hash}-{:016x}.cwasm", self.compat))
    }

    /// The compiled component for module `hash`, if a trusted artifact of
    /// it is here.
    pub fn load(&self, engine: &Engine, hash: &str) -> Option<Component> {
        let path = self.path(hash);
        match self.read_trusted(&path) {
            Ok(None) => None,
            Ok(Some(artifact)) => {
                // SAFETY: the artifact is one this process wrote (checked:
                // owner, mode, and its digest), for this engine's
                // configuration (the file name carries its compatibility
                // hash, and wasmtime checks it again).
                match unsafe { Component::deserialize(engine, &artifact) } {
                    Ok(c) => Some(c),
                    Err(e) => {
                        tracing::warn!("ignoring policy cache file {}: {e}", path.display());
                        None
                    }
                }
            }
            Err(why) => {
                tracing::warn!(
                    "ignoring policy cache file {}: {why}; compiling again",
                    path.display()
                );
                None
            }
        }
    }

    /// The artifact in `path` after its checks; `Ok(None)` if there is none.
    fn read_trusted(&self, path: &Path) -> Result<Option<Vec<u8>>, String> {
        use std::io::Read;
        let dir = std::fs::symlink_metadata(&self.dir).map_err(|e| e.to_string())?;
        if let Some(why) = untrusted(&dir) {
            return Err(format!("its directory is {why}"));
        }
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let m = file.metadata().map_err(|e| e.to_string())?;
        if !m.is_file() {
            return Err("not a regular file".into());
        }
        if let Some(why) = untrusted(&m) {
            return Err(format!("it is {why}"));
        }
        let mut bytes = Vec::new();
        file.take(MAX_ARTIFACT_BYTES)
            .read_to_end(&mut bytes)
            .map_err(|e| e.to_string())?;
        if bytes.len() < DIGEST_LEN {
            return Err("truncated".into());
        }
        let (digest, artifact) = bytes.split_at(DIGEST_LEN);
        if ring::digest::digest(&ring::digest::SHA256, artifact).as_ref() != digest {
            return Err("its digest does not match its contents".into());
        }
        Ok(Some(artifact.to_vec()))
    }

    /// Keeps `component`, compiled from module `hash` (mode 0600, its
    /// digest in front, replaced atomically).
    pub fn store(&self, hash: &str, component: &Component) {
        use std::io::Write;
        let path = self.path(hash);
        let tmp = path.with_extension("tmp");
        let written = component
            .serialize()
            .map_err(|e| e.to_string())
            .and_then(|artifact| {
                let _ = std::fs::remove_file(&tmp);
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(|e| e.to_string())?;
                f.write_all(ring::digest::digest(&ring::digest::SHA256, &artifact).as_ref())
                    .and_then(|()| f.write_all(&artifact))
                    .and_then(|()| std::fs::rename(&tmp, &path))
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = written {
            tracing::warn!(
                "cannot cache the compiled policy at {}: {e}",
                path.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn only_untampered_artifacts_in_a_private_directory_are_loaded() {
        let dir = std::env::temp_dir().join(format!("meshgate-cache-trust-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let engine = Engine::new(wasmtime::Config::new().wasm_component_model(true)).unwrap();
        let cache = DiskCache::open(dir.clone(), &engine).unwrap();
        // The smallest component.
        let component = Component::new(&engine, b"\0asm\x0d\0\x01\0").unwrap();
        cache.store("abc", &component);
        let path = cache.path("abc");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(cache.load(&engine, "abc").is_some());
        assert!(cache.load(&engine, "other").is_none());
        // A flipped byte: refused.
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(
            cache.read_trusted(&path).unwrap_err(),
            "its digest does not match its contents"
        );
        cache.store("abc", &component);
        // Writable by others: the file, then the directory.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(cache
            .read_trusted(&path)
            .unwrap_err()
            .contains("lets others write"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(cache
            .read_trusted(&path)
            .unwrap_err()
            .contains("its directory is mode 777"));
        assert!(DiskCache::open(dir.clone(), &engine).is_err());
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        // A link to an artifact elsewhere: refused.
        std::fs::rename(&path, dir.join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(dir.join("elsewhere"), &path).unwrap();
        assert!(cache.read_trusted(&path).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
