//! The gateway's TOML configuration: parsing, validation and key loading.
//!
//! Every error names the file, the line and column, and the field
//! (`gw.toml:14:9: peers[1].inbound.spi: ...`), because an operator who
//! mistypes one value among hundreds should not have to guess which one.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::esp::{Backend, CipherSuite, KeyMaterial, Lifetime, LifetimeLimits, SaParams};
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

/// A configuration error, already rendered with its location.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl ConfigError {
    fn at(
        file: &Path,
        text: &str,
        span: Option<Range<usize>>,
        field: &str,
        msg: impl fmt::Display,
    ) -> Self {
        let loc = match span {
            Some(span) => {
                let (line, col) = line_col(text, span.start);
                format!("{}:{line}:{col}", file.display())
            }
            None => file.display().to_string(),
        };
        if field.is_empty() {
            ConfigError(format!("{loc}: {msg}"))
        } else {
            ConfigError(format!("{loc}: {field}: {msg}"))
        }
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, col)
}

/// The validated configuration of one gateway.
#[derive(Debug)]
pub struct Config {
    pub id: String,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
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
    /// `gateway.listen`).
    pub advertise: SocketAddr,
    pub peers: Vec<PeerConfig>,
    /// Membership and negotiated keys over the signalling channel.
    pub signal: Option<SignalConfig>,
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
}

/// Where epoch keys come from.
#[derive(Debug, Clone)]
pub struct KeysConfig {
    /// The `local` provider's master key file.
    pub master_key: PathBuf,
    /// The epoch new SAs are negotiated under.
    pub epoch: u32,
}

impl Config {
    /// The file that keeps this gateway's SA sequence numbers across restarts.
    pub fn state_file(&self) -> PathBuf {
        self.state_dir.join(format!("{}.seq", self.id))
    }
}

/// Where a member stands: what policies decide by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub region: String,
    pub zone: String,
    pub account: String,
    pub role: meshgate_sdk::Role,
    /// Its redundancy group, if it is one of an active/passive pair.
    pub group: Option<String>,
}

/// Which policy module runs, and its operator parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    pub module: PolicySource,
    pub params: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    /// A policy embedded in the binary, by name.
    Builtin(String),
    /// A component file.
    File(PathBuf),
}

/// The policy a config without `[policy]` runs.
pub const DEFAULT_POLICY: &str = "full-mesh";

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

// ---- the file as written -------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    gateway: RawGateway,
    tun: RawTun,
    #[serde(default)]
    sa: RawSaDefaults,
    #[serde(default)]
    policy: RawPolicy,
    #[serde(default)]
    peers: Vec<RawPeer>,
    signal: Option<Spanned<RawSignal>>,
    keys: Option<Spanned<RawKeys>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSignal {
    listen: Spanned<String>,
    ca: Spanned<String>,
    cert: Spanned<String>,
    key: Spanned<String>,
    #[serde(default)]
    seeds: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeys {
    #[serde(default = "default_provider")]
    provider: Spanned<String>,
    master_key: Option<Spanned<String>>,
    #[serde(default = "default_epoch")]
    epoch: Spanned<u64>,
}

fn default_provider() -> Spanned<String> {
    Spanned::new(0..0, "local".to_string())
}
fn default_epoch() -> Spanned<u64> {
    Spanned::new(0..0, 1)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    id: Spanned<String>,
    listen: Spanned<String>,
    #[serde(default = "default_admin")]
    admin: Spanned<String>,
    state_dir: Option<Spanned<String>>,
    region: Option<Spanned<String>>,
    zone: Option<Spanned<String>>,
    account: Option<Spanned<String>>,
    role: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
    #[serde(default)]
    prefixes: Vec<Spanned<String>>,
    advertise: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    module: Option<Spanned<String>>,
    #[serde(default)]
    params: std::collections::BTreeMap<String, Spanned<String>>,
}

fn default_admin() -> Spanned<String> {
    Spanned::new(0..0, "127.0.0.1:9100".to_string())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTun {
    #[serde(default = "default_tun_name")]
    name: Spanned<String>,
    #[serde(default = "default_mtu")]
    mtu: Spanned<u32>,
    #[serde(default)]
    addresses: Vec<Spanned<String>>,
}

fn default_tun_name() -> Spanned<String> {
    Spanned::new(0..0, "mg0".to_string())
}
fn default_mtu() -> Spanned<u32> {
    Spanned::new(0..0, 1400)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSaDefaults {
    cipher: Option<Spanned<String>>,
    esn: Option<bool>,
    backend: Option<Spanned<String>>,
    replay_window: Option<Spanned<u64>>,
    #[serde(default)]
    lifetime: RawLifetime,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawLifetime {
    #[serde(default)]
    soft: RawLimits,
    #[serde(default)]
    hard: RawLimits,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    packets: Option<Spanned<u64>>,
    bytes: Option<Spanned<u64>>,
    seconds: Option<Spanned<u64>>,
}

impl RawLimits {
    fn to_limits(&self) -> LifetimeLimits {
        let v = |x: &Option<Spanned<u64>>| x.as_ref().map(|s| *s.get_ref());
        LifetimeLimits {
            packets: v(&self.packets),
            bytes: v(&self.bytes),
            time: v(&self.seconds).map(Duration::from_secs),
        }
    }

    fn named(&self) -> [(&'static str, &Option<Spanned<u64>>); 3] {
        [
            ("packets", &self.packets),
            ("bytes", &self.bytes),
            ("seconds", &self.seconds),
        ]
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    id: Spanned<String>,
    endpoint: Spanned<String>,
    region: Option<Spanned<String>>,
    zone: Option<Spanned<String>>,
    account: Option<Spanned<String>>,
    role: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
    prefixes: Spanned<Vec<Spanned<String>>>,
    outbound: Spanned<RawSa>,
    inbound: Spanned<RawSa>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSa {
    spi: Spanned<u64>,
    key_file: Option<Spanned<String>>,
    key_env: Option<Spanned<String>>,
}

// ---- loading and validation ----------------------------------------------

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
        let raw: RawConfig = parse_raw(path, text)?;
        Validator {
            file: path,
            text,
            env,
        }
        .validate(raw)
    }
}

fn parse_raw(path: &Path, text: &str) -> Result<RawConfig, ConfigError> {
    let de = toml::Deserializer::parse(text)
        .map_err(|e| ConfigError::at(path, text, e.span(), "", e.message()))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        // Spanned<T> shows up in the path as a private key; hide it.
        let field = field.replace(".$__serde_spanned_private_value", "");
        let field = if field == "." { String::new() } else { field };
        ConfigError::at(path, text, inner.span(), &field, inner.message())
    })
}

struct Validator<'a> {
    file: &'a Path,
    text: &'a str,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl Validator<'_> {
    fn err<T>(
        &self,
        span: Range<usize>,
        field: &str,
        msg: impl fmt::Display,
    ) -> Result<T, ConfigError> {
        let span = if span.is_empty() && span.start == 0 {
            None
        } else {
            Some(span)
        };
        Err(ConfigError::at(self.file, self.text, span, field, msg))
    }

    fn validate(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let id = raw.gateway.id.get_ref().trim().to_string();
        if id.is_empty() {
            return self.err(raw.gateway.id.span(), "gateway.id", "must not be empty");
        }
        let listen = self.socket_addr(
            &raw.gateway.listen,
            "gateway.listen",
            Some(DEFAULT_ESP_PORT),
        )?;
        let admin = self.socket_addr(&raw.gateway.admin, "gateway.admin", None)?;
        if !admin.ip().is_loopback() {
            return self.err(
                raw.gateway.admin.span(),
                "gateway.admin",
                format!("{admin} is not a loopback address; the admin listener has no authentication and must stay on loopback"),
            );
        }
        let tun = self.tun(&raw.tun)?;
        let defaults = self.sa_defaults(&raw.sa)?;

        let mut peers = Vec::with_capacity(raw.peers.len());
        let mut ids = HashSet::new();
        let mut inbound_spis = HashSet::new();
        for (i, p) in raw.peers.iter().enumerate() {
            let at = |f: &str| format!("peers[{i}].{f}");
            let pid = p.id.get_ref().trim().to_string();
            if pid.is_empty() {
                return self.err(p.id.span(), &at("id"), "must not be empty");
            }
            if pid == id {
                return self.err(
                    p.id.span(),
                    &at("id"),
                    format!("'{pid}' is this gateway's own id"),
                );
            }
            if !ids.insert(pid.clone()) {
                return self.err(p.id.span(), &at("id"), format!("duplicate peer id '{pid}'"));
            }
            let endpoint =
                self.socket_addr(&p.endpoint, &at("endpoint"), Some(DEFAULT_ESP_PORT))?;
            if p.prefixes.get_ref().is_empty() {
                return self.err(
                    p.prefixes.span(),
                    &at("prefixes"),
                    "a peer needs at least one prefix to route to it",
                );
            }
            let mut prefixes = Vec::new();
            for (j, s) in p.prefixes.get_ref().iter().enumerate() {
                prefixes.push(self.prefix(s, &format!("peers[{i}].prefixes[{j}]"))?);
            }
            let outbound = self.sa(&p.outbound, &at("outbound"), &defaults)?;
            let inbound = self.sa(&p.inbound, &at("inbound"), &defaults)?;
            if !inbound_spis.insert(inbound.spi) {
                return self.err(
                    p.inbound.get_ref().spi.span(),
                    &at("inbound.spi"),
                    format!("inbound SPI {:#010x} is already used by another peer; inbound SPIs must be unique", inbound.spi),
                );
            }
            let placement =
                self.placement(&at(""), &p.region, &p.zone, &p.account, &p.role, &p.group)?;
            peers.push(PeerConfig {
                id: pid,
                placement,
                endpoint,
                prefixes,
                outbound,
                inbound,
            });
        }
        // The socket is of the listen address's family; a peer of the
        // other family could never be sent to.
        for (i, p) in peers.iter().enumerate() {
            if p.endpoint.is_ipv4() != listen.is_ipv4() {
                return self.err(
                    raw.peers[i].endpoint.span(),
                    &format!("peers[{i}].endpoint"),
                    format!(
                        "{} is not of the same address family as gateway.listen ({listen})",
                        p.endpoint
                    ),
                );
            }
        }
        // A prefix routed into the tunnel that holds a tunnel endpoint would
        // send the ESP packets themselves into the tunnel: a routing loop.
        for (i, p) in peers.iter().enumerate() {
            let endpoints = peers
                .iter()
                .map(|q| (q.endpoint.ip(), format!("the endpoint of peer '{}'", q.id)));
            for (ip, what) in endpoints.chain([(listen.ip(), "gateway.listen".to_string())]) {
                if let Some(prefix) = p.prefixes.iter().find(|pr| pr.contains(ip)) {
                    return self.err(
                        raw.peers[i].prefixes.span(),
                        &format!("peers[{i}].prefixes"),
                        format!("{prefix} contains {ip}, {what}: its ESP packets would be routed into the tunnel itself"),
                    );
                }
            }
        }
        // Two SAs with the same key start from the same sequence numbers,
        // so AES-GCM would see the same nonces twice: refuse.
        let sas: Vec<(usize, &str, &SaParams)> = peers
            .iter()
            .enumerate()
            .flat_map(|(i, p)| [(i, "outbound", &p.outbound), (i, "inbound", &p.inbound)])
            .collect();
        for (n, (i, dir, sa)) in sas.iter().enumerate() {
            if let Some((j, other, _)) = sas[..n].iter().find(|(_, _, o)| o.key.same_as(&sa.key)) {
                let raw_sa = if *dir == "outbound" {
                    &raw.peers[*i].outbound
                } else {
                    &raw.peers[*i].inbound
                };
                return self.err(
                    raw_sa.span(),
                    &format!("peers[{i}].{dir}"),
                    format!("uses the same key as peers[{j}].{other}; every SA needs its own key (AES-GCM nonces would repeat)"),
                );
            }
        }
        // Overlapping prefixes between peers would make routing ambiguous and
        // anti-spoofing unsound; refuse them.
        for (i, a) in peers.iter().enumerate() {
            for b in &peers[i + 1..] {
                for pa in &a.prefixes {
                    if let Some(pb) = b.prefixes.iter().find(|pb| pa.overlaps(pb)) {
                        return self.err(
                            raw.peers[i].prefixes.span(),
                            &format!("peers[{i}].prefixes"),
                            format!("{pa} of peer '{}' overlaps {pb} of peer '{}'", a.id, b.id),
                        );
                    }
                }
            }
        }
        let state_dir = match &raw.gateway.state_dir {
            None => PathBuf::from(DEFAULT_STATE_DIR),
            Some(d) => self.relative_path(d.get_ref()),
        };
        if !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return self.err(raw.gateway.id.span(), "gateway.id", format!("'{id}' may hold only letters, digits, '-', '_' and '.' (it names the state file)"));
        }
        let g = &raw.gateway;
        let placement = self.placement(
            "gateway.", &g.region, &g.zone, &g.account, &g.role, &g.group,
        )?;
        let policy = self.policy(&raw.policy)?;
        let mut prefixes = Vec::new();
        for (j, p) in g.prefixes.iter().enumerate() {
            let prefix = self.prefix(p, &format!("gateway.prefixes[{j}]"))?;
            if prefix.contains(listen.ip()) {
                return self.err(p.span(), &format!("gateway.prefixes[{j}]"), format!("{prefix} contains gateway.listen ({}): the mesh would route its ESP packets into the tunnel itself", listen.ip()));
            }
            prefixes.push(prefix);
        }
        let advertise = match &g.advertise {
            Some(a) => {
                let a = self.socket_addr(a, "gateway.advertise", Some(listen.port()))?;
                if a.ip().is_unspecified() || a.port() == 0 {
                    return self.err(
                        g.advertise.as_ref().map_or(0..0, |a| a.span()),
                        "gateway.advertise",
                        format!("{a} is not an address peers can send to"),
                    );
                }
                a
            }
            None => listen,
        };
        let signal = self.signal(&raw, &id, listen, advertise)?;
        let config = Config {
            id,
            listen,
            admin,
            state_dir,
            placement,
            policy,
            tun,
            sa: defaults,
            prefixes,
            advertise,
            peers,
            signal,
        };
        if config.signal.is_some() {
            // Signed (an ECDSA signature is at most 72 bytes), the member
            // record must fit in one membership datagram.
            let local = crate::mesh::local_info(&config);
            let len = crate::membership::info::Infos::default().seal(&local).len() + 72;
            if len > crate::membership::info::MAX_RECORD_LEN {
                let span = g.prefixes.first().map_or(0..0, |p| p.span());
                return self.err(span, "gateway.prefixes", format!("{} prefixes make a member record of {len} bytes, over the {} one membership datagram carries; advertise fewer, aggregated prefixes", config.prefixes.len(), crate::membership::info::MAX_RECORD_LEN));
            }
        }
        Ok(config)
    }

    /// `[signal]` and `[keys]`: both or neither.
    fn signal(
        &self,
        raw: &RawConfig,
        id: &str,
        listen: SocketAddr,
        advertise: SocketAddr,
    ) -> Result<Option<SignalConfig>, ConfigError> {
        let (s, k) = match (&raw.signal, &raw.keys) {
            (None, None) => return Ok(None),
            (Some(s), Some(k)) => (s, k),
            (Some(s), None) => return self.err(s.span(), "signal", "a mesh member needs a [keys] section too (where its epoch keys come from); without it no SA could be negotiated"),
            (None, Some(k)) => return self.err(k.span(), "keys", "[keys] without [signal]: keys are negotiated over the signalling channel"),
        };
        if let Some(p) = raw.peers.first() {
            return self.err(p.id.span(), "peers[0]", "configured peers and [signal] cannot be combined: in a mesh, peers are learnt from membership and keyed by negotiation");
        }
        if advertise.ip().is_unspecified() {
            return self.err(s.span(), "gateway.advertise", format!("gateway.listen is {listen}: say in gateway.advertise where the mesh should send ESP to this gateway"));
        }
        let s = s.get_ref();
        let listen_sig = self.socket_addr(&s.listen, "signal.listen", Some(DEFAULT_SIGNAL_PORT))?;
        let mut seeds = Vec::new();
        for (j, seed) in s.seeds.iter().enumerate() {
            let field = format!("signal.seeds[{j}]");
            let v = seed.get_ref().trim();
            let Some((sid, addr)) = v.split_once('@') else {
                return self.err(seed.span(), &field, format!("'{v}' is not member-id@address:port (for example region-2@198.51.100.7:4433)"));
            };
            if !crate::keys::message::valid_id(sid) {
                return self.err(seed.span(), &field, format!("'{sid}' is not a member id"));
            }
            if sid == id {
                continue; // Every member may share one seed list.
            }
            let at = self.socket_addr(
                &Spanned::new(seed.span(), addr.to_string()),
                &field,
                Some(DEFAULT_SIGNAL_PORT),
            )?;
            seeds.push((sid.to_string(), at));
        }
        let k = k.get_ref();
        if k.provider.get_ref() != "local" {
            return self.err(
                k.provider.span(),
                "keys.provider",
                format!(
                    "unknown key provider '{}'; expected local",
                    k.provider.get_ref()
                ),
            );
        }
        let Some(master) = &k.master_key else {
            return self.err(
                raw.keys.as_ref().map_or(0..0, |k| k.span()),
                "keys.master_key",
                "the local provider needs master_key, a file made by `meshgate keys init`",
            );
        };
        let epoch = *k.epoch.get_ref();
        let Ok(epoch) = u32::try_from(epoch) else {
            return self.err(
                k.epoch.span(),
                "keys.epoch",
                format!("{epoch} is above {}", u32::MAX),
            );
        };
        if epoch == 0 {
            return self.err(k.epoch.span(), "keys.epoch", "epochs start at 1");
        }
        if !crate::keys::message::valid_id(id) {
            return self.err(
                raw.gateway.id.span(),
                "gateway.id",
                format!(
                    "'{id}' cannot be a member id (at most {} letters, digits, '-', '_' or '.')",
                    crate::keys::message::MAX_ID_LEN
                ),
            );
        }
        Ok(Some(SignalConfig {
            listen: listen_sig,
            ca: self.relative_path(s.ca.get_ref()),
            cert: self.relative_path(s.cert.get_ref()),
            key: self.relative_path(s.key.get_ref()),
            seeds,
            keys: KeysConfig {
                master_key: self.relative_path(master.get_ref()),
                epoch,
            },
        }))
    }

    /// Region, zone, account, role and group of the gateway or a peer.
    #[allow(clippy::too_many_arguments)]
    fn placement(
        &self,
        field: &str,
        region: &Option<Spanned<String>>,
        zone: &Option<Spanned<String>>,
        account: &Option<Spanned<String>>,
        role: &Option<Spanned<String>>,
        group: &Option<Spanned<String>>,
    ) -> Result<Placement, ConfigError> {
        let text = |v: &Option<Spanned<String>>| v.as_ref().map(|s| s.get_ref().trim().to_string());
        let role = match role {
            None => meshgate_sdk::Role::Edge,
            Some(r) => match r.get_ref().as_str() {
                "edge" => meshgate_sdk::Role::Edge,
                "leaf" => meshgate_sdk::Role::Leaf,
                "hub" => meshgate_sdk::Role::Hub,
                other => {
                    return self.err(
                        r.span(),
                        &format!("{field}role"),
                        format!("unknown role '{other}'; expected edge, leaf or hub"),
                    )
                }
            },
        };
        let region = text(region).unwrap_or_default();
        Ok(Placement {
            zone: text(zone).unwrap_or_else(|| region.clone()),
            region,
            account: text(account).unwrap_or_default(),
            role,
            group: text(group).filter(|g| !g.is_empty()),
        })
    }

    fn policy(&self, p: &RawPolicy) -> Result<PolicyConfig, ConfigError> {
        let module = match &p.module {
            None => PolicySource::Builtin(DEFAULT_POLICY.to_string()),
            Some(m) => {
                let v = m.get_ref().trim();
                if v.ends_with(".wasm") || v.contains('/') {
                    PolicySource::File(self.relative_path(v))
                } else if crate::policy::builtin(v).is_some() {
                    PolicySource::Builtin(v.to_string())
                } else {
                    let names: Vec<&str> = crate::policy::BUILTIN.iter().map(|(n, _)| *n).collect();
                    return self.err(m.span(), "policy.module", format!("no built-in policy '{v}' (built in: {}; a file needs a path ending in .wasm)", names.join(", ")));
                }
            }
        };
        let params = p
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.get_ref().clone()))
            .collect();
        Ok(PolicyConfig { module, params })
    }

    /// A path from the config, relative to the config file's folder.
    fn relative_path(&self, p: &str) -> PathBuf {
        let p = PathBuf::from(p);
        if p.is_relative() {
            self.file.parent().unwrap_or(Path::new(".")).join(p)
        } else {
            p
        }
    }

    fn socket_addr(
        &self,
        s: &Spanned<String>,
        field: &str,
        default_port: Option<u16>,
    ) -> Result<SocketAddr, ConfigError> {
        let v = s.get_ref().trim();
        if let Ok(a) = v.parse::<SocketAddr>() {
            return Ok(a);
        }
        if let (Some(port), Ok(ip)) = (default_port, v.parse::<std::net::IpAddr>()) {
            return Ok(SocketAddr::new(ip, port));
        }
        self.err(
            s.span(),
            field,
            format!(
                "'{v}' is not an address:port (for example 192.0.2.1:4500 or [2001:db8::1]:4500)"
            ),
        )
    }

    fn prefix(&self, s: &Spanned<String>, field: &str) -> Result<Prefix, ConfigError> {
        match s.get_ref().parse::<Prefix>() {
            Ok(p) => Ok(p),
            Err(e) => self.err(s.span(), field, e),
        }
    }

    fn tun(&self, t: &RawTun) -> Result<TunConfig, ConfigError> {
        let name = t.name.get_ref().clone();
        if name.is_empty()
            || name.len() > 15
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return self.err(
                t.name.span(),
                "tun.name",
                format!(
                    "'{name}' is not a valid interface name (1-15 characters of [A-Za-z0-9._-])"
                ),
            );
        }
        let mtu = *t.mtu.get_ref();
        if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
            return self.err(
                t.mtu.span(),
                "tun.mtu",
                format!("{mtu} is outside {MIN_MTU}..={MAX_MTU} (IPv6 needs 1280; a jumbo-frame underlay allows 9000)"),
            );
        }
        let mut addresses = Vec::new();
        for (j, a) in t.addresses.iter().enumerate() {
            addresses.push(self.prefix_host(a, &format!("tun.addresses[{j}]"))?);
        }
        Ok(TunConfig {
            name,
            mtu: mtu as u16,
            addresses,
        })
    }

    /// Interface addresses keep their host bits (10.1.255.1/24).
    fn prefix_host(&self, s: &Spanned<String>, field: &str) -> Result<Prefix, ConfigError> {
        match Prefix::parse_host(s.get_ref()) {
            Ok(p) => Ok(p),
            Err(e) => self.err(s.span(), field, e),
        }
    }

    fn sa_defaults(&self, d: &RawSaDefaults) -> Result<SaDefaults, ConfigError> {
        let suite = match &d.cipher {
            None => CipherSuite::Aes128Gcm,
            Some(c) => match c.get_ref().as_str() {
                "aes128gcm16" => CipherSuite::Aes128Gcm,
                "aes256gcm16" => CipherSuite::Aes256Gcm,
                other => {
                    return self.err(
                        c.span(),
                        "sa.cipher",
                        format!("unknown cipher '{other}'; expected aes128gcm16 or aes256gcm16"),
                    )
                }
            },
        };
        let backend = match &d.backend {
            None => Backend::Ring,
            Some(b) => match b.get_ref().as_str() {
                "ring" => Backend::Ring,
                "rustcrypto" => Backend::RustCrypto,
                other => {
                    return self.err(
                        b.span(),
                        "sa.backend",
                        format!("unknown AEAD backend '{other}'; expected ring or rustcrypto"),
                    )
                }
            },
        };
        let replay_window = match &d.replay_window {
            None => 4096,
            Some(w) => {
                let v = *w.get_ref();
                if v < MIN_REPLAY_WINDOW as u64 || v > 1 << 20 {
                    return self.err(
                        w.span(),
                        "sa.replay_window",
                        format!("{v} is outside {MIN_REPLAY_WINDOW}..=1048576 packets"),
                    );
                }
                v as usize
            }
        };
        let lifetime = Lifetime {
            soft: d.lifetime.soft.to_limits(),
            hard: d.lifetime.hard.to_limits(),
        };
        for (stage, limits) in [("soft", &d.lifetime.soft), ("hard", &d.lifetime.hard)] {
            for (kind, v) in limits.named() {
                if let Some(v) = v.as_ref().filter(|v| *v.get_ref() == 0) {
                    return self.err(
                        v.span(),
                        &format!("sa.lifetime.{stage}.{kind}"),
                        "a limit of 0 would expire the SA at once; leave it out for no limit",
                    );
                }
            }
        }
        for ((kind, soft), (_, hard)) in d
            .lifetime
            .soft
            .named()
            .into_iter()
            .zip(d.lifetime.hard.named())
        {
            if let (Some(s), Some(h)) = (soft, hard) {
                if s.get_ref() >= h.get_ref() {
                    return self.err(
                        s.span(),
                        &format!("sa.lifetime.soft.{kind}"),
                        format!(
                            "soft limit {} must be below the hard limit {}",
                            s.get_ref(),
                            h.get_ref()
                        ),
                    );
                }
            }
        }
        Ok(SaDefaults {
            suite,
            esn: d.esn.unwrap_or(true),
            backend,
            replay_window,
            lifetime,
        })
    }

    fn sa(&self, s: &Spanned<RawSa>, field: &str, d: &SaDefaults) -> Result<SaParams, ConfigError> {
        let raw = s.get_ref();
        let spi = *raw.spi.get_ref();
        if !(256..=u32::MAX as u64).contains(&spi) {
            return self.err(
                raw.spi.span(),
                &format!("{field}.spi"),
                format!(
                    "{spi} is not a usable SPI (256..=4294967295; 0-255 are reserved by RFC 4303)"
                ),
            );
        }
        let hex = match (&raw.key_file, &raw.key_env) {
            (Some(f), None) => {
                let p = self.relative_path(f.get_ref());
                match std::fs::read_to_string(&p) {
                    Ok(t) => (t, f.span(), format!("{field}.key_file")),
                    Err(e) => {
                        return self.err(
                            f.span(),
                            &format!("{field}.key_file"),
                            format!("cannot read {}: {e}", p.display()),
                        )
                    }
                }
            }
            (None, Some(v)) => match (self.env)(v.get_ref()) {
                Some(t) => (t, v.span(), format!("{field}.key_env")),
                None => {
                    return self.err(
                        v.span(),
                        &format!("{field}.key_env"),
                        format!("environment variable {} is not set", v.get_ref()),
                    )
                }
            },
            _ => return self.err(s.span(), field, "give exactly one of key_file or key_env"),
        };
        let parsed = KeyMaterial::from_hex(d.suite, hex.0.trim());
        // The text of the key file is dropped here; wipe it, whatever the outcome.
        let mut text = hex.0;
        zeroize::Zeroize::zeroize(&mut text);
        let key = match parsed {
            Ok(k) => k,
            Err(e) => return self.err(hex.1, &hex.2, e),
        };
        Ok(SaParams {
            spi: spi as u32,
            suite: d.suite,
            key,
            esn: d.esn,
            backend: d.backend,
            lifetime: d.lifetime,
            replay_window: d.replay_window,
        })
    }
}

/// The `[sa]` section: what every SA of this gateway uses, configured or
/// negotiated.
#[derive(Debug, Clone)]
pub struct SaDefaults {
    pub suite: CipherSuite,
    pub esn: bool,
    pub backend: Backend,
    pub replay_window: usize,
    pub lifetime: Lifetime,
}

/// When a negotiated SA is rekeyed and when it expires if `[sa.lifetime]`
/// sets no time: after an hour, like IKEv2 deployments, with 10% margin.
pub const NEGOTIATED_SOFT_SECONDS: u64 = 3600;
pub const NEGOTIATED_HARD_SECONDS: u64 = 3960;

impl SaDefaults {
    /// The lifetime of a negotiated SA: the configured one, with a time
    /// limit added where none is set (keys must not live forever).
    pub fn negotiated_lifetime(&self) -> Lifetime {
        let mut l = self.lifetime;
        match (l.soft.time, l.hard.time) {
            (None, None) => {
                l.soft.time = Some(Duration::from_secs(NEGOTIATED_SOFT_SECONDS));
                l.hard.time = Some(Duration::from_secs(NEGOTIATED_HARD_SECONDS));
            }
            (Some(soft), None) => l.hard.time = Some(soft * 11 / 10),
            (None, Some(hard)) => l.soft.time = Some(hard * 10 / 11),
            (Some(_), Some(_)) => {}
        }
        l
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "00112233445566778899aabbccddeeff01020304";
    const KEY_B: &str = "ffeeddccbbaa99887766554433221100a1a2a3a4";

    fn env(name: &str) -> Option<String> {
        match name {
            "KEY_A" => Some(KEY_A.into()),
            "KEY_B" => Some(KEY_B.into()),
            "KEY_C" => Some("0102030405060708090a0b0c0d0e0f1011121314".into()),
            "KEY_D" => Some("1112131415161718191a1b1c1d1e1f2021222324".into()),
            "SHORT" => Some("0011".into()),
            _ => None,
        }
    }

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(Path::new("gw.toml"), text, &env).map_err(|e| e.to_string())
    }

    const GOOD: &str = r#"
[gateway]
id = "gw-a"
listen = "198.18.0.1:4500"

[tun]
name = "mg0"
mtu = 1400

[[peers]]
id = "gw-b"
endpoint = "198.18.0.2"
prefixes = ["10.2.0.0/16", "fd00:2::/48"]
outbound = { spi = 0x1001, key_env = "KEY_A" }
inbound = { spi = 0x2001, key_env = "KEY_B" }
"#;

    #[test]
    fn parses_a_good_config() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.id, "gw-a");
        assert_eq!(c.admin, "127.0.0.1:9100".parse().unwrap());
        assert_eq!(c.peers[0].endpoint, "198.18.0.2:4500".parse().unwrap());
        assert_eq!(c.peers[0].outbound.spi, 0x1001);
        assert_eq!(c.peers[0].prefixes.len(), 2);
        assert!(c.peers[0].inbound.esn);
        assert_eq!(c.peers[0].inbound.replay_window, 4096);
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let bad = GOOD.replace("spi = 0x2001", "spi = 7");
        let e = parse(&bad).unwrap_err();
        assert!(e.starts_with("gw.toml:15:"), "{e}");
        assert!(e.contains("peers[0].inbound.spi"), "{e}");

        let bad = GOOD.replace("\"10.2.0.0/16\"", "\"10.2.0.0/33\"");
        let e = parse(&bad).unwrap_err();
        assert!(e.starts_with("gw.toml:13:"), "{e}");
        assert!(e.contains("peers[0].prefixes[0]"), "{e}");

        let bad = GOOD.replace("mtu = 1400", "mtu = \"big\"");
        let e = parse(&bad).unwrap_err();
        assert!(e.starts_with("gw.toml:8:"), "{e}");
        assert!(e.contains(": tun.mtu: "), "{e}");

        let bad = GOOD.replace("mtu = 1400", "mtu = 1400\ncolour = 3");
        let e = parse(&bad).unwrap_err();
        assert!(e.contains("gw.toml:9:") && e.contains("colour"), "{e}");

        let bad = GOOD.replace("KEY_B", "SHORT");
        let e = parse(&bad).unwrap_err();
        assert!(
            e.contains("peers[0].inbound.key_env") && e.contains("gw.toml:15:"),
            "{e}"
        );
        assert!(
            !e.contains("0011"),
            "key material leaked into an error: {e}"
        );

        let bad = GOOD.replace("KEY_B", "NOPE");
        let e = parse(&bad).unwrap_err();
        assert!(e.contains("NOPE is not set"), "{e}");

        let e = parse("[gateway\nid=1").unwrap_err();
        assert!(e.starts_with("gw.toml:1:"), "{e}");
    }

    #[test]
    fn refuses_ambiguous_peers() {
        let two = format!(
            "{GOOD}\n[[peers]]\nid = \"gw-c\"\nendpoint = \"198.18.0.3:4500\"\nprefixes = [\"10.2.128.0/17\"]\noutbound = {{ spi = 0x1002, key_env = \"KEY_C\" }}\ninbound = {{ spi = 0x2002, key_env = \"KEY_D\" }}\n"
        );
        let e = parse(&two).unwrap_err();
        assert!(e.contains("overlaps"), "{e}");
        let dup = two
            .replace("10.2.128.0/17", "10.3.0.0/16")
            .replace("0x2002", "0x2001");
        let e = parse(&dup).unwrap_err();
        assert!(
            e.contains("peers[1].inbound.spi") && e.contains("unique"),
            "{e}"
        );
        let ok = two.replace("10.2.128.0/17", "10.3.0.0/16");
        assert_eq!(parse(&ok).unwrap().peers.len(), 2);
    }

    #[test]
    fn admin_must_be_loopback() {
        let bad = GOOD.replace(
            "listen = \"198.18.0.1:4500\"",
            "listen = \"198.18.0.1:4500\"\nadmin = \"0.0.0.0:9100\"",
        );
        let e = parse(&bad).unwrap_err();
        assert!(e.contains("gateway.admin") && e.contains("loopback"), "{e}");
    }

    #[test]
    fn the_shipped_examples_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/two-gateways");
        let a = Config::load(&dir.join("a.toml")).unwrap();
        let b = Config::load(&dir.join("b.toml")).unwrap();
        assert_eq!(a.peers[0].outbound.spi, b.peers[0].inbound.spi);
        assert_eq!(a.peers[0].inbound.spi, b.peers[0].outbound.spi);
        assert_eq!(
            a.peers[0].outbound.lifetime.hard.time,
            Some(Duration::from_secs(3600))
        );
    }

    #[test]
    fn refuses_configs_that_would_break_the_tunnel() {
        let e = parse(&GOOD.replace("KEY_B", "KEY_A")).unwrap_err();
        assert!(
            e.contains("peers[0].inbound") && e.contains("same key as peers[0].outbound"),
            "{e}"
        );
        let e = parse(&GOOD.replace("\"10.2.0.0/16\"", "\"198.18.0.0/16\"")).unwrap_err();
        assert!(
            e.contains("peers[0].prefixes") && e.contains("routed into the tunnel itself"),
            "{e}"
        );
        let e = parse(&GOOD.replace(
            "endpoint = \"198.18.0.2\"",
            "endpoint = \"[2001:db8::2]:4500\"",
        ))
        .unwrap_err();
        assert!(
            e.contains("peers[0].endpoint") && e.contains("address family"),
            "{e}"
        );
        let e = parse(&GOOD.replace("mtu = 1400", "mtu = 1000")).unwrap_err();
        assert!(e.contains("gw.toml:8:") && e.contains("tun.mtu"), "{e}");
        let lt = GOOD.replace(
            "mtu = 1400\n",
            "mtu = 1400\n\n[sa]\nlifetime.soft = { packets = 0 }\n",
        );
        let e = parse(&lt).unwrap_err();
        assert!(
            e.contains("gw.toml:11:")
                && e.contains("sa.lifetime.soft.packets")
                && e.contains("limit of 0"),
            "{e}"
        );
        let lt = GOOD.replace("mtu = 1400\n", "mtu = 1400\n\n[sa]\nlifetime.soft = { seconds = 60 }\nlifetime.hard = { seconds = 60 }\n");
        let e = parse(&lt).unwrap_err();
        assert!(
            e.contains("gw.toml:11:")
                && e.contains("sa.lifetime.soft.seconds")
                && e.contains("below the hard limit"),
            "{e}"
        );
    }

    const MESH: &str = r#"
[gateway]
id = "gw-a"
listen = "198.18.0.1:4500"
prefixes = ["10.1.0.0/16"]

[tun]
name = "mg0"

[signal]
listen = "198.18.0.1"
ca = "ca.pem"
cert = "gw-a.pem"
key = "gw-a.key"
seeds = ["gw-a@198.18.0.1:4433", "gw-b@198.18.0.2"]

[keys]
master_key = "/etc/meshgate/master.key"
"#;

    #[test]
    fn a_mesh_member_config_and_its_mistakes() {
        let c = parse(MESH).unwrap();
        let sig = c.signal.as_ref().unwrap();
        assert_eq!(sig.listen, "198.18.0.1:4433".parse().unwrap());
        assert_eq!(
            sig.seeds,
            [("gw-b".to_string(), "198.18.0.2:4433".parse().unwrap())],
            "its own entry in a shared seed list is skipped"
        );
        assert_eq!(sig.ca, Path::new("ca.pem"));
        assert_eq!(sig.keys.epoch, 1);
        assert_eq!(c.advertise, c.listen);

        let cases = [
            (MESH.replace("\n[keys]\nmaster_key = \"/etc/meshgate/master.key\"\n", ""), "needs a [keys] section"),
            (format!("{MESH}\n[[peers]]\nid = \"gw-c\"\nendpoint = \"198.18.0.3\"\nprefixes = [\"10.3.0.0/16\"]\noutbound = {{ spi = 0x1001, key_env = \"KEY_A\" }}\ninbound = {{ spi = 0x2001, key_env = \"KEY_B\" }}\n"), "cannot be combined"),
            (MESH.replace("\"gw-b@198.18.0.2\"", "\"198.18.0.2:4433\""), "is not member-id@address:port"),
            (MESH.replace("listen = \"198.18.0.1:4500\"", "listen = \"0.0.0.0:4500\""), "gateway.advertise"),
            (MESH.replace("master_key =", "epoch = 0\nmaster_key ="), "epochs start at 1"),
            (MESH.replace("[\"10.1.0.0/16\"]", "[\"198.18.0.0/24\"]"), "contains gateway.listen"),
        ];
        for (text, expected) in cases {
            let e = parse(&text).unwrap_err();
            assert!(e.contains(expected), "{expected}: {e}");
        }
        let many: Vec<String> = (0..60).map(|i| format!("\"fd00:{i:x}::/48\"")).collect();
        let e = parse(&MESH.replace("[\"10.1.0.0/16\"]", &format!("[{}]", many.join(", "))))
            .unwrap_err();
        assert!(
            e.contains("gateway.prefixes") && e.contains("aggregated"),
            "{e}"
        );
    }
}
