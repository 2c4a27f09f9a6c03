//! `meshgate keygen`: key material for configured peers. One key (hex of
//! key and salt) for a manual SA, or with `--pair` both directions of a
//! pair of gateways: two key files (mode 0600, never overwritten) and the
//! `[[peers]]` section each side's config needs, SPIs matched crosswise.

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use zeroize::Zeroizing;

use crate::esp::CipherSuite;
use crate::prefix::Prefix;

/// Fresh random key material for `suite`, as hex (zeroized when dropped).
pub fn key_hex(suite: CipherSuite) -> Zeroizing<String> {
    let mut key = Zeroizing::new(vec![0u8; suite.key_material_len()]);
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut key);
    Zeroizing::new(key.iter().map(|b| format!("{b:02x}")).collect())
}

/// One side of a pair: its member id, and what the other side needs to
/// know of it (where to send, what lies behind it).
pub struct Side {
    pub id: String,
    pub endpoint: Option<SocketAddr>,
    pub prefixes: Vec<Prefix>,
}

/// A random SPI outside the reserved range (RFC 4303: 1-255).
fn spi() -> u32 {
    rand::random_range(0x0000_1000..=u32::MAX)
}

/// Writes `hex` to a new file of mode 0600 (never overwrites).
fn write_key(path: &Path, hex: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {} (never overwritten)", path.display()))?;
    writeln!(f, "{hex}").with_context(|| format!("writing {}", path.display()))
}

/// The `[[peers]]` section `me` needs for `peer`.
fn section(
    me: &Side,
    peer: &Side,
    (out_spi, out_file): (u32, &str),
    (in_spi, in_file): (u32, &str),
) -> String {
    let endpoint = peer.endpoint.map_or(
        format!(
            "\"EDIT:{}'s address:4500\"  # where {} takes ESP-in-UDP",
            peer.id, peer.id
        ),
        |e| format!("\"{e}\""),
    );
    let prefixes = if peer.prefixes.is_empty() {
        format!(
            "[\"EDIT:{}'s prefix\"]  # what lies behind {}",
            peer.id, peer.id
        )
    } else {
        let list: Vec<String> = peer.prefixes.iter().map(|p| format!("\"{p}\"")).collect();
        format!("[{}]", list.join(", "))
    };
    format!(
        "# In {me}'s config: its peer {peer}.\n[[peers]]\nid = \"{peer}\"\nendpoint = {endpoint}\nprefixes = {prefixes}\noutbound = {{ spi = {out_spi:#010x}, key_file = \"{out_file}\" }}\ninbound = {{ spi = {in_spi:#010x}, key_file = \"{in_file}\" }}\n",
        me = me.id,
        peer = peer.id,
    )
}

/// Makes the pair's keys in `dir` (`A-to-B.hex`, `B-to-A.hex`) and
/// returns both sides' `[[peers]]` sections.
pub fn pair(a: &Side, b: &Side, suite: CipherSuite, dir: &Path) -> Result<String> {
    if a.id == b.id {
        anyhow::bail!(
            "the two sides of a pair need different ids (both are {})",
            a.id
        );
    }
    // An id also names the key files: no path in it.
    if let Some(s) = [a, b]
        .into_iter()
        .find(|s| !crate::ids::valid_id(&s.id) || s.id.starts_with('.'))
    {
        anyhow::bail!(
            "'{}' is not a member id (1 to {} letters, digits, '-', '_' or '.', not starting with '.')",
            s.id,
            crate::ids::MAX_ID_LEN
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("making {}", dir.display()))?;
    let name = |from: &Side, to: &Side| format!("{}-to-{}.hex", from.id, to.id);
    let (ab, ba) = (name(a, b), name(b, a));
    let paths: [PathBuf; 2] = [dir.join(&ab), dir.join(&ba)];
    if let Some(p) = paths.iter().find(|p| p.exists()) {
        anyhow::bail!(
            "{} exists; not overwriting a key (remove it, or give another --dir)",
            p.display()
        );
    }
    write_key(&paths[0], &key_hex(suite))?;
    write_key(&paths[1], &key_hex(suite))?;
    let (spi_ab, mut spi_ba) = (spi(), spi());
    while spi_ba == spi_ab {
        spi_ba = spi();
    }
    Ok(format!(
        "# Keys ({}): {} and {} (mode 0600). Copy both beside each side's config;\n# key_file is read relative to the config file.\n\n{}\n{}",
        suite.name(),
        paths[0].display(),
        paths[1].display(),
        section(a, b, (spi_ab, &ab), (spi_ba, &ba)),
        section(b, a, (spi_ba, &ba), (spi_ab, &ab)),
    ))
}
