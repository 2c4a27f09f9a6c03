//! Validation of the sections beside `[gateway]`: `[signal]` and
//! `[keys]`, placement, `[policy]` and `[tun]`.

use super::*;

/// The largest member cap a config may set (a table a member keeps whole).
const MAX_MEMBERS_LIMIT: u64 = 65_536;
/// The longest a down member may be remembered: a week.
const FORGET_LIMIT_SECS: u64 = 7 * 24 * 3600;

impl Validator<'_> {
    /// `[signal]` and `[keys]`: both or neither.
    pub(super) fn signal(
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
            if !crate::membership::valid_id(sid) {
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
        let keys = self.keys(k)?;
        if !crate::membership::valid_id(id) {
            return self.err(
                raw.gateway.id.span(),
                "gateway.id",
                format!(
                    "'{id}' cannot be a member id (at most {} letters, digits, '-', '_' or '.')",
                    crate::membership::MAX_ID_LEN
                ),
            );
        }
        let defaults = crate::membership::Settings::default();
        let max_members = match &s.max_members {
            None => defaults.max_members,
            Some(m) if (2..=MAX_MEMBERS_LIMIT).contains(m.get_ref()) => *m.get_ref() as usize,
            Some(m) => {
                return self.err(
                    m.span(),
                    "signal.max_members",
                    format!("{} is outside 2..={MAX_MEMBERS_LIMIT} members", m.get_ref()),
                )
            }
        };
        let forget_down_after = match &s.forget_down_after {
            None => defaults.forget_down_after,
            Some(f) if (60..=FORGET_LIMIT_SECS).contains(f.get_ref()) => {
                std::time::Duration::from_secs(*f.get_ref())
            }
            Some(f) => {
                return self.err(
                    f.span(),
                    "signal.forget_down_after",
                    format!(
                        "{} s is outside 60..={FORGET_LIMIT_SECS} s (a member forgotten sooner could be brought back by stale gossip)",
                        f.get_ref()
                    ),
                )
            }
        };
        self.note("signal.ca", s.ca.span());
        self.note("signal.cert", s.cert.span());
        self.note("signal.key", s.key.span());
        Ok(Some(SignalConfig {
            listen: listen_sig,
            max_members,
            forget_down_after,
            discovery: match &s.discovery {
                Some(d) => Some(self.discovery(d)?),
                None => None,
            },
            ca: self.relative_path(s.ca.get_ref()),
            cert: self.relative_path(s.cert.get_ref()),
            key: self.relative_path(s.key.get_ref()),
            seeds,
            keys,
        }))
    }

    /// Region, zone, account, role and group of the gateway or a peer.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn placement(
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
            Some(r) => match meshgate_sdk::Role::from_name(r.get_ref()) {
                Some(role) => role,
                None => {
                    return self.err(
                        r.span(),
                        &format!("{field}role"),
                        format!("unknown role '{}'; expected edge, leaf or hub", r.get_ref()),
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

    pub(super) fn policy(&self, p: &RawPolicy) -> Result<PolicyConfig, ConfigError> {
        let module = match &p.module {
            None => PolicySource::Builtin(DEFAULT_POLICY.to_string()),
            Some(m) => match PolicySource::parse(m.get_ref(), &self.relative_path("")) {
                Ok(source) => {
                    self.note("policy.module", m.span());
                    source
                }
                Err(e) => return self.err(m.span(), "policy.module", e),
            },
        };
        let params = p
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.get_ref().clone()))
            .collect();
        Ok(PolicyConfig { module, params })
    }

    pub(super) fn tun(&self, t: &RawTun) -> Result<TunConfig, ConfigError> {
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
                format!("{mtu} is outside {MIN_MTU}..={MAX_MTU} (IPv6 needs {MIN_MTU}; on a 9001-byte jumbo-frame underlay, ESP in UDP leaves room for {MAX_MTU})"),
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
}
