//! Sequence numbers that survive restarts.
//!
//! (Configured peers no longer run on their configured keys: each start
//! keys fresh SAs with them, `keys::session`, which need no state. This
//! file serves SAs installed with their configured keys, as the data
//! plane's own tests and fuzz harness do.)
//!
//! Manually keyed SAs keep their keys across restarts, and our AES-GCM IV
//! is the sequence number: a sender that started again from 1 would reuse
//! (key, nonce) pairs, which breaks GCM outright, and a receiver that
//! started with an empty window would accept every packet it had already
//! accepted. So, per SA (its SPI and a fingerprint of its key), this file
//! keeps:
//! - `out`: the sequence number a restarted sender resumes at. The sender
//!   only uses numbers below it, reserved in blocks and persisted (with
//!   fsync) before use, so every number a crashed run used lies below it.
//! - `in`: the top of the receiver's replay window, written every few
//!   hundred milliseconds; a restarted receiver refuses everything up to it.
//!
//! The file is written to a temporary name and renamed, so a crash leaves
//! either the old or the new version, never half of one.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// How many sequence numbers a sender reserves at a time: seconds of
/// traffic at full rate, so renewals are rare, and few enough that a
/// restart wastes a negligible part of the 32-bit space.
pub const BLOCK: u64 = 1 << 22;

/// Which half of an SA an entry belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Half {
    Out,
    In,
}

impl Half {
    fn as_str(self) -> &'static str {
        match self {
            Half::Out => "out",
            Half::In => "in",
        }
    }
}

type Key = (Half, u32, String);

/// The state file of one gateway, in memory.
#[derive(Debug)]
pub struct SeqFile {
    path: PathBuf,
    entries: BTreeMap<Key, u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {msg}")]
    Io { path: String, msg: String },
    #[error("{path}:{line}: {msg} (the file is written by meshgate; if it was edited or damaged, the SAs it names need new keys)")]
    Parse {
        path: String,
        line: usize,
        msg: String,
    },
}

impl SeqFile {
    /// Reads `path`; a missing file is an empty state (first start). A
    /// damaged file is an error: guessing could reuse nonces.
    pub fn load(path: &Path) -> Result<SeqFile, StateError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                return Err(StateError::Io {
                    path: path.display().to_string(),
                    msg: e.to_string(),
                })
            }
        };
        let mut entries = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |msg: &str| StateError::Parse {
                path: path.display().to_string(),
                line: i + 1,
                msg: msg.to_string(),
            };
            let f: Vec<&str> = line.split_whitespace().collect();
            let [half, spi, fp, value] = f[..] else {
                return Err(err("expected: out|in SPI FINGERPRINT VALUE"));
            };
            let half = match half {
                "out" => Half::Out,
                "in" => Half::In,
                _ => return Err(err("the first field must be `out` or `in`")),
            };
            let spi = u32::from_str_radix(spi.trim_start_matches("0x"), 16)
                .map_err(|_| err("bad SPI"))?;
            let value = value
                .parse::<u64>()
                .map_err(|_| err("bad sequence number"))?;
            entries.insert((half, spi, fp.to_string()), value);
        }
        Ok(SeqFile {
            path: path.to_path_buf(),
            entries,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, half: Half, spi: u32, fingerprint: &str) -> Option<u64> {
        self.entries
            .get(&(half, spi, fingerprint.to_string()))
            .copied()
    }

    pub fn set(&mut self, half: Half, spi: u32, fingerprint: &str, value: u64) {
        self.entries
            .insert((half, spi, fingerprint.to_string()), value);
    }

    /// Writes the file atomically; with `sync`, durably (fsync of the file
    /// and its directory) before returning.
    pub fn save(&self, sync: bool) -> Result<(), StateError> {
        let io = |e: std::io::Error| StateError::Io {
            path: self.path.display().to_string(),
            msg: e.to_string(),
        };
        let mut text = String::from("# meshgate SA sequence state: half spi key-fingerprint value. Written by meshgate; do not edit.\n");
        for ((half, spi, fp), value) in &self.entries {
            text.push_str(&format!("{} {spi:#010x} {fp} {value}\n", half.as_str()));
        }
        let tmp = self.path.with_extension("tmp");
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
        if sync {
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if sync {
            if let Some(dir) = self.path.parent() {
                File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_damage() {
        let dir = std::env::temp_dir().join(format!("meshgate-seqstate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gw.seq");
        let _ = std::fs::remove_file(&path);
        let mut s = SeqFile::load(&path).unwrap();
        assert_eq!(
            s.get(Half::Out, 0x1001, "abc"),
            None,
            "a missing file is an empty state"
        );
        s.set(Half::Out, 0x1001, "abc", BLOCK + 1);
        s.set(Half::In, 0x2001, "def", 77);
        s.save(true).unwrap();
        let t = SeqFile::load(&path).unwrap();
        assert_eq!(t.get(Half::Out, 0x1001, "abc"), Some(BLOCK + 1));
        assert_eq!(t.get(Half::In, 0x2001, "def"), Some(77));
        assert_eq!(
            t.get(Half::Out, 0x1001, "other-key"),
            None,
            "a new key starts afresh"
        );

        std::fs::write(&path, "out 0x00001001 abc 12\nout 0x00001002 abc twelve\n").unwrap();
        let e = SeqFile::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("gw.seq:2:") && e.contains("bad sequence number"),
            "{e}"
        );
        std::fs::write(&path, "sideways 1 2 3\n").unwrap();
        assert!(SeqFile::load(&path)
            .unwrap_err()
            .to_string()
            .contains(":1:"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
