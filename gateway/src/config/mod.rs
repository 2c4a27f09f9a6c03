//! The gateway's TOML configuration: parsing, validation and key loading.
//!
//! Every error names the file, the line and column, and the field
//! (`gw.toml:14:9: peers[1].inbound.spi: ...`), because an operator who
//! mistypes one value among hundreds should not have to guess which one.

mod cloud;
mod discovery;
mod error;
mod keys;
mod raw;
mod sa;
mod sections;
#[cfg(test)]
mod tests;
mod validate;

pub(crate) use discovery::is_role_arn;
pub use error::ConfigError;
pub use keys::{KeySource, KmsConfig, DEFAULT_KMS_RECHECK};
pub(crate) use raw::parse_toml;
use raw::*;

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::Spanned;

use crate::esp::{Backend, CipherSuite, KeyMaterial, Lifetime, SaDefaults, SaParams};
pub use crate::policy::view::Placement;
pub use crate::policy::{PolicySource, DEFAULT_POLICY};
use crate::prefix::Prefix;

/// Where sequence-number state lives unless `gateway.state_dir` says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/meshgate";
/// The default ESP-in-UDP port (RFC 3948).
pub const DEFAULT_ESP_PORT: u16 = 4500;
/// TUN MTU bounds: IPv6's minimum link MTU, and a jumbo-frame underlay's
/// 9001 bytes less ESP-in-UDP overhead.
pub const MIN_MTU: u32 = 1280;
pub const MAX_MTU: u32 = 8900;
/// The smallest anti-replay window we accept; the issue asks for at least 1,024.
pub const MIN_REPLAY_WINDOW: usize = 1024;

/// Where the config's fields stand in its file, for what is found wrong
/// after parsing (a file a field names, a certificate of another member):
/// such errors name file, line and field as parse errors do.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub file: PathBuf,
    /// Field to (line, column).
    places: std::collections::BTreeMap<String, (usize, usize)>,
}

impl Origin {
    /// `file:line:col: field: msg` (without line and column when the
    /// field is not in the file: a default).
    pub fn error(&self, field: &str, msg: impl std::fmt::Display) -> ConfigError {
        match self.places.get(field) {
            Some((line, col)) => ConfigError(format!(
                "{}:{line}:{col}: {field}: {msg}",
                self.file.display()
            )),
            None => ConfigError(format!("{}: {field}: {msg}", self.file.display())),
        }
    }
}

/// The validated configuration of one gateway.
#[derive(Debug)]
pub struct Config {
    /// The file it came from, and where its fields are.
    pub origin: Origin,
    pub id: String,
    pub listen: SocketAddr,
    /// The read-only admin listener (metrics, health, what is in force).
    pub admin: SocketAddr,
    /// The control socket, where the operator's changes go (reloads, key
    /// epochs): a Unix socket only root, this process's user or the
    /// members of `control.group` may use.
    pub control: ControlConfig,
    /// Where the sequence-number state of the SAs lives (see `seqstate`).
    pub state_dir: PathBuf,
    /// Where this gateway stands in the mesh, as its policy sees it.
    pub placement: Placement,
    pub policy: PolicyConfig,
    pub tun: TunConfig,
    /// What every SA uses (the `[sa]` section).
    pub sa: SaDefaults,
    /// The VPC prefixes behind this gateway, advertised to the mesh.
    pub prefixes: Vec<Prefix>,
    /// Where the mesh sends ESP to this gateway (`gateway.advertise`, else
    /// `gateway.listen`): its `internet` endpoint.
    pub advertise: SocketAddr,
    /// Its endpoints on further underlays, by label (`gateway.endpoints`).
    pub endpoints: Vec<(String, SocketAddr)>,
    pub peers: Vec<PeerConfig>,
    /// Membership and negotiated keys over the signalling channel.
    pub signal: Option<SignalConfig>,
    /// Route claims on the cloud while this gateway is its group's active
    /// member (the `[cloud]` section).
    pub cloud: Option<CloudConfig>,
}

/// Where this gateway claims its redundancy group's routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudConfig {
    pub backend: CloudBackendKind,
    /// This appliance's network interface: what the claimed routes point
    /// at (an ENI id on AWS; in the lab, its address on the VPC subnet).
    pub interface: String,
    /// The VPC route tables of the group.
    pub route_tables: Vec<String>,
    /// Or, when none are listed, find them by their tags:
    /// `meshgate:mesh` = this, `meshgate:group` = the gateway's group.
    pub mesh: Option<String>,
    /// The group's name in a private hosted zone, while this is active.
    pub dns: Option<DnsRecord>,
}

/// A record the active member of a group points at itself (Route 53).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsRecord {
    /// The private hosted zone's id.
    pub zone: String,
    pub name: String,
    pub ttl: u64,
    /// This appliance's address (gateway.advertise).
    pub address: std::net::IpAddr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloudBackendKind {
    /// The lab's router namespaces: route table id -> namespace, and the
    /// addresses of this appliance's interface on the VPC subnet (the next
    /// hops the routers use, one per family).
    Lab {
        routers: std::collections::BTreeMap<String, String>,
        addresses: Vec<std::net::IpAddr>,
    },
    /// EC2 through the AWS SDK, in `region`; `endpoint_url` for another
    /// endpoint than AWS's (a VPC endpoint, or an emulator in the lab).
    Aws {
        region: String,
        endpoint_url: Option<String>,
    },
}

/// The default port of the QUIC signalling channel.
pub const DEFAULT_SIGNAL_PORT: u16 = 4433;

/// The `[signal]` and `[keys]` sections: how this gateway joins the mesh.
#[derive(Debug, Clone)]
pub struct SignalConfig {
    pub listen: SocketAddr,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Members to join through: id and signalling address.
    pub seeds: Vec<(String, SocketAddr)>,
    pub keys: KeysConfig,
    /// The most members (up and down) kept: gossip of new ones past it is
    /// refused.
    pub max_members: usize,
    /// How long a member declared down is remembered, then forgotten.
    pub forget_down_after: std::time::Duration,
    /// Seeds found by EC2 tags, beside (or instead of) `seeds`.
    pub discovery: Option<TagDiscovery>,
}

/// Discovery by EC2 tags (`[signal.discovery]`): the running instances
/// tagged `meshgate:mesh = mesh` in each region, in this account and in
/// the account of each role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagDiscovery {
    pub mesh: String,
    pub regions: Vec<String>,
    /// Roles (ARNs) in other accounts to look in, through STS AssumeRole.
    pub roles: Vec<String>,
    pub endpoint_url: Option<String>,
}

/// Where epoch keys come from.
#[derive(Debug, Clone)]
pub struct KeysConfig {
    /// Where the epoch keys come from.
    pub source: KeySource,
    /// The epoch new SAs are negotiated under.
    pub epoch: u32,
}

impl Config {
    /// The file that keeps this gateway's SA sequence numbers across restarts.
    pub fn state_file(&self) -> PathBuf {
        self.state_dir.join(format!("{}.seq", self.id))
    }

    /// Where peers send ESP to this gateway, by underlay label: its
    /// `internet` endpoint (`advertise`), then `gateway.endpoints`.
    pub fn labelled_endpoints(&self) -> Vec<(String, SocketAddr)> {
        std::iter::once(("internet".to_string(), self.advertise))
            .chain(self.endpoints.iter().cloned())
            .collect()
    }

    /// What the data plane is built from.
    pub fn dataplane(&self) -> crate::dataplane::DataplaneSettings {
        crate::dataplane::DataplaneSettings {
            peers: self
                .peers
                .iter()
                .map(|p| crate::dataplane::StaticPeer {
                    id: p.id.clone(),
                    endpoint: p.endpoint,
                    prefixes: p.prefixes.clone(),
                    outbound: p.outbound.clone(),
                    inbound: p.inbound.clone(),
                })
                .collect(),
            state_file: self.state_file(),
            mtu: self.tun.mtu,
            hellos: None,
            by_magic: Vec::new(),
        }
    }

    /// The view of the mesh this config describes (a gateway with
    /// configured peers: itself and them, all alive).
    pub fn policy_view(&self, now_ms: u64) -> meshgate_sdk::View {
        let peers: Vec<crate::policy::view::ConfiguredPeer<'_>> = self
            .peers
            .iter()
            .map(|p| crate::policy::view::ConfiguredPeer {
                id: &p.id,
                placement: &p.placement,
                prefixes: &p.prefixes,
                endpoint: p.endpoint,
            })
            .collect();
        crate::policy::view::from_peers(
            &self.id,
            &self.placement,
            &self.policy.params,
            &peers,
            now_ms,
        )
    }
}

/// Which policy module runs, and its operator parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    pub module: PolicySource,
    pub params: Vec<(String, String)>,
}

/// The control socket (`gateway.control`, `gateway.control_group`).
#[derive(Debug, Clone)]
pub struct ControlConfig {
    pub path: PathBuf,
    /// A group whose members may use it besides root (mode 0660 then,
    /// else 0600).
    pub group: Option<String>,
}

/// Where the control socket is unless `gateway.control` says otherwise.
pub const DEFAULT_CONTROL: &str = "/run/meshgate/control.sock";

#[derive(Debug, Clone)]
pub struct TunConfig {
    pub name: String,
    pub mtu: u16,
    pub addresses: Vec<Prefix>,
}

/// One remote gateway and the pair of manually keyed SAs to it.
#[derive(Debug)]
pub struct PeerConfig {
    pub id: String,
    pub placement: Placement,
    pub endpoint: SocketAddr,
    pub prefixes: Vec<Prefix>,
    pub outbound: SaParams,
    pub inbound: SaParams,
}

impl Config {
    /// Reads, parses and validates `path`, loading the keys it names.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: cannot read config: {e}", path.display())))?;
        Self::parse(path, &text, &|name| std::env::var(name).ok())
    }

    /// Parses `text` as if read from `path`; `env` resolves `key_env` names.
    pub fn parse(
        path: &Path,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let raw: RawConfig = parse_toml(path, text)?;
        Validator {
            file: path,
            text,
            env,
            places: Default::default(),
        }
        .validate(raw)
    }
}

struct Validator<'a> {
    file: &'a Path,
    text: &'a str,
    env: &'a dyn Fn(&str) -> Option<String>,
    /// The fields later checks name (see [`Origin`]), as met.
    places: std::cell::RefCell<std::collections::BTreeMap<String, (usize, usize)>>,
}
