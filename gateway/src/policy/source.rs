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
            PolicySource::File(p) => std::fs::read(p)
                .map(|b| (p.display().to_string(), b))
                .map_err(|e| format!("reading policy {}: {e}", p.display())),
        }
    }
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
