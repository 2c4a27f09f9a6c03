//! The file as written: serde's view of the TOML, every value with its
//! span so that validation can say where a mistake is.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;
use crate::esp::LifetimeLimits;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) gateway: RawGateway,
    pub(super) tun: RawTun,
    #[serde(default)]
    pub(super) sa: RawSaDefaults,
    #[serde(default)]
    pub(super) policy: RawPolicy,
    #[serde(default)]
    pub(super) peers: Vec<RawPeer>,
    pub(super) signal: Option<Spanned<RawSignal>>,
    pub(super) keys: Option<Spanned<RawKeys>>,
    pub(super) cloud: Option<Spanned<RawCloud>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCloud {
    pub(super) backend: Spanned<String>,
    pub(super) interface: Spanned<String>,
    #[serde(default)]
    pub(super) route_tables: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) routers: std::collections::BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pub(super) addresses: Vec<Spanned<String>>,
    pub(super) region: Option<Spanned<String>>,
    pub(super) endpoint_url: Option<Spanned<String>>,
    pub(super) mesh: Option<Spanned<String>>,
    pub(super) dns_zone: Option<Spanned<String>>,
    pub(super) dns_name: Option<Spanned<String>>,
    pub(super) dns_ttl: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSignal {
    pub(super) listen: Spanned<String>,
    pub(super) ca: Spanned<String>,
    pub(super) cert: Spanned<String>,
    pub(super) key: Spanned<String>,
    #[serde(default)]
    pub(super) seeds: Vec<Spanned<String>>,
    /// The most members (up and down) this member keeps.
    pub(super) max_members: Option<Spanned<u64>>,
    /// Seconds a member declared down is remembered, then forgotten.
    pub(super) forget_down_after: Option<Spanned<u64>>,
    /// Seeds found by EC2 tags (`[signal.discovery]`).
    pub(super) discovery: Option<Spanned<RawDiscovery>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDiscovery {
    #[serde(default = "default_discovery_backend")]
    pub(super) backend: Spanned<String>,
    pub(super) mesh: Spanned<String>,
    pub(super) regions: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(super) roles: Vec<Spanned<String>>,
    pub(super) endpoint_url: Option<Spanned<String>>,
}

pub(super) fn default_discovery_backend() -> Spanned<String> {
    Spanned::new(0..0, "ec2-tags".to_string())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKeys {
    #[serde(default = "default_provider")]
    pub(super) provider: Spanned<String>,
    pub(super) master_key: Option<Spanned<String>>,
    #[serde(default = "default_epoch")]
    pub(super) epoch: Spanned<u64>,
    pub(super) kms_key: Option<Spanned<String>>,
    pub(super) mesh: Option<Spanned<String>>,
    pub(super) wrapped_key: Option<Spanned<String>>,
    pub(super) region: Option<Spanned<String>>,
    pub(super) endpoint_url: Option<Spanned<String>>,
    pub(super) recheck_secs: Option<Spanned<u64>>,
}

pub(super) fn default_provider() -> Spanned<String> {
    Spanned::new(0..0, "local".to_string())
}
pub(super) fn default_epoch() -> Spanned<u64> {
    Spanned::new(0..0, 1)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGateway {
    pub(super) id: Spanned<String>,
    pub(super) listen: Spanned<String>,
    #[serde(default = "default_admin")]
    pub(super) admin: Spanned<String>,
    pub(super) control: Option<Spanned<String>>,
    pub(super) control_group: Option<Spanned<String>>,
    pub(super) state_dir: Option<Spanned<String>>,
    pub(super) region: Option<Spanned<String>>,
    pub(super) zone: Option<Spanned<String>>,
    pub(super) account: Option<Spanned<String>>,
    pub(super) role: Option<Spanned<String>>,
    pub(super) group: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) prefixes: Vec<Spanned<String>>,
    pub(super) advertise: Option<Spanned<String>>,
    /// Further underlays by label (`dx`): where the mesh reaches this
    /// gateway over each.
    #[serde(default)]
    pub(super) endpoints: std::collections::BTreeMap<String, Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub(super) module: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) params: std::collections::BTreeMap<String, Spanned<String>>,
}

pub(super) fn default_admin() -> Spanned<String> {
    Spanned::new(0..0, "127.0.0.1:9100".to_string())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTun {
    #[serde(default = "default_tun_name")]
    pub(super) name: Spanned<String>,
    #[serde(default = "default_mtu")]
    pub(super) mtu: Spanned<u32>,
    #[serde(default)]
    pub(super) addresses: Vec<Spanned<String>>,
}

pub(super) fn default_tun_name() -> Spanned<String> {
    Spanned::new(0..0, "mg0".to_string())
}
pub(super) fn default_mtu() -> Spanned<u32> {
    Spanned::new(0..0, 1400)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSaDefaults {
    pub(super) cipher: Option<Spanned<String>>,
    pub(super) esn: Option<bool>,
    pub(super) backend: Option<Spanned<String>>,
    pub(super) replay_window: Option<Spanned<u64>>,
    #[serde(default)]
    pub(super) lifetime: RawLifetime,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLifetime {
    #[serde(default)]
    pub(super) soft: RawLimits,
    #[serde(default)]
    pub(super) hard: RawLimits,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) packets: Option<Spanned<u64>>,
    pub(super) bytes: Option<Spanned<u64>>,
    pub(super) seconds: Option<Spanned<u64>>,
}

impl RawLimits {
    pub(super) fn to_limits(&self) -> LifetimeLimits {
        let v = |x: &Option<Spanned<u64>>| x.as_ref().map(|s| *s.get_ref());
        LifetimeLimits {
            packets: v(&self.packets),
            bytes: v(&self.bytes),
            time: v(&self.seconds).map(Duration::from_secs),
        }
    }

    pub(super) fn named(&self) -> [(&'static str, &Option<Spanned<u64>>); 3] {
        [
            ("packets", &self.packets),
            ("bytes", &self.bytes),
            ("seconds", &self.seconds),
        ]
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPeer {
    pub(super) id: Spanned<String>,
    pub(super) endpoint: Spanned<String>,
    pub(super) region: Option<Spanned<String>>,
    pub(super) zone: Option<Spanned<String>>,
    pub(super) account: Option<Spanned<String>>,
    pub(super) role: Option<Spanned<String>>,
    pub(super) group: Option<Spanned<String>>,
    pub(super) prefixes: Spanned<Vec<Spanned<String>>>,
    pub(super) outbound: Spanned<RawSa>,
    pub(super) inbound: Spanned<RawSa>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSa {
    pub(super) spi: Spanned<u64>,
    pub(super) key_file: Option<Spanned<String>>,
    pub(super) key_env: Option<Spanned<String>>,
}

// ---- loading and validation ----------------------------------------------

/// Parses TOML into `T`, every error said with file, line and field.
pub(crate) fn parse_toml<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
) -> Result<T, ConfigError> {
    let de = toml::Deserializer::parse(text)
        .map_err(|e| ConfigError::at(path, text, e.span(), "", e.message()))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        // Spanned<T> shows up in the path as a private key; hide it.
        let field = field.replace(".$__serde_spanned_private_value", "");
        let field = if field == "." { String::new() } else { field };
        ConfigError::at(path, text, inner.span(), &field, in_words(inner.message()))
    })
}

/// serde's type errors (`invalid type: string "big", expected u32`) as a
/// person says them (`found the string "big", expected a whole number`);
/// other messages as they are.
fn in_words(message: &str) -> String {
    let Some(rest) = message.strip_prefix("invalid type: ") else {
        return message.to_string();
    };
    let Some((found, expected)) = rest.rsplit_once(", expected ") else {
        return message.to_string();
    };
    let found = match found.split_once(' ') {
        Some(("string", v)) => format!("the string {v}"),
        Some(("integer" | "floating", v)) => format!(
            "the number {}",
            v.trim_start_matches("point ").trim_matches('`')
        ),
        Some(("boolean", v)) => v.trim_matches('`').to_string(),
        _ => match found {
            "sequence" => "a list".to_string(),
            "map" => "a table".to_string(),
            other => other.to_string(),
        },
    };
    let expected = match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" | "i8" | "i16" | "i32" | "i64" | "isize" => {
            "a whole number"
        }
        "f32" | "f64" => "a number",
        "a sequence" => "a list",
        "a map" | "struct" => "a table",
        "a boolean" => "true or false",
        other => other,
    };
    format!("found {found}, expected {expected}")
}
