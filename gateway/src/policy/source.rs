//! Where a policy module comes from: a built-in by name, or a component
//! file. One parser, for the config's `[policy] module`, the admin API's
//! reload and `meshgate policy reload --module`.

use std::path::{Path, PathBuf};

use super::{builtin, BUILTIN};

/// The policy a config without `[policy]` runs.
pub const DEFAULT_POLICY: &str = "full-mesh";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    /// A policy embedded in the binary, by name.
    Builtin(String),
    /// A component file (or a core module the gateway wraps).
    File(PathBuf),
}

/// A name that is neither a built-in nor a file's path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no built-in policy '{name}' (built in: {builtin}; a file needs a path ending in .wasm)")]
pub struct UnknownPolicy {
    pub name: String,
    builtin: String,
}

impl PolicySource {
    /// `text` as a path (it ends in `.wasm` or holds a `/`; relative to
    /// `base`), else as a built-in's name.
    pub fn parse(text: &str, base: &Path) -> Result<PolicySource, UnknownPolicy> {
        let text = text.trim();
        if text.ends_with(".wasm") || text.contains('/') {
            Ok(PolicySource::File(base.join(text)))
        } else if builtin(text).is_some() {
            Ok(PolicySource::Builtin(text.to_string()))
        } else {
            let names: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
            Err(UnknownPolicy {
                name: text.to_string(),
                builtin: names.join(", "),
            })
        }
    }

    /// The module's name (for logs) and bytes.
    pub fn read(&self) -> Result<(String, Vec<u8>), String> {
        match self {
            PolicySource::Builtin(n) => builtin(n)
                .map(|b| (n.clone(), b.to_vec()))
                .ok_or_else(|| format!("no built-in policy {n}")),
            PolicySource::File(p) => read_module(p)
                .map(|b| (p.display().to_string(), b))
                .map_err(|e| format!("reading policy {}: {e}", p.display())),
        }
    }
}

/// The largest policy module read (the built-ins are about 100 KB).
pub const MAX_MODULE_BYTES: u64 = 8 << 20;

/// Reads a policy file the way a root process should read a path it was
/// given: the file itself, not where a link points; only a regular file
/// (a FIFO would block the engine, `/dev/zero` never ends); at most
/// [`MAX_MODULE_BYTES`].
fn read_module(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::{Error, ErrorKind, Read};
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        // Opening a FIFO for reading does not wait for a writer.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => Error::other("it is a symbolic link; name the file itself"),
            _ => e,
        })?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(Error::other("not a regular file"));
    }
    if meta.len() > MAX_MODULE_BYTES {
        return Err(Error::other(format!(
            "{} bytes, over the {MAX_MODULE_BYTES} a policy module may have",
            meta.len()
        )));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // A file that grows while read is cut at the cap, and then refused.
    file.take(MAX_MODULE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_MODULE_BYTES {
        return Err(Error::new(
            ErrorKind::InvalidData,
            "it grew past the size cap while read",
        ));
    }
    Ok(bytes)
}

impl std::fmt::Display for PolicySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PolicySource::Builtin(n) => f.write_str(n),
            PolicySource::File(p) => write!(f, "{}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_of_bounded_size_are_read_as_policies() {
        let dir = std::env::temp_dir().join(format!("meshgate-source-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("p.wasm");
        std::fs::write(&good, b"\0asm").unwrap();
        assert_eq!(read_module(&good).unwrap(), b"\0asm");
        let link = dir.join("link.wasm");
        std::os::unix::fs::symlink(&good, &link).unwrap();
        let fifo = dir.join("fifo.wasm");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let big = dir.join("big.wasm");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(MAX_MODULE_BYTES + 1)
            .unwrap();
        for (path, why) in [
            (link.as_path(), "symbolic link"),
            (fifo.as_path(), "not a regular file"),
            (Path::new("/dev/zero"), "not a regular file"),
            (big.as_path(), "over the"),
        ] {
            let source = PolicySource::File(path.to_path_buf());
            let e = source.read().unwrap_err();
            assert!(e.contains(why), "{}: {e}", path.display());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn names_are_built_ins_and_paths_are_files() {
        let base = Path::new("/etc/meshgate");
        assert_eq!(
            PolicySource::parse("hub-spoke", base),
            Ok(PolicySource::Builtin("hub-spoke".into()))
        );
        assert_eq!(
            PolicySource::parse("mine.wasm", base),
            Ok(PolicySource::File("/etc/meshgate/mine.wasm".into()))
        );
        assert_eq!(
            PolicySource::parse("/opt/p/mine", base),
            Ok(PolicySource::File("/opt/p/mine".into()))
        );
        let e = PolicySource::parse("hub-spokes", base).unwrap_err();
        assert!(
            e.to_string()
                .contains("no built-in policy 'hub-spokes' (built in: full-mesh"),
            "{e}"
        );
    }
}
