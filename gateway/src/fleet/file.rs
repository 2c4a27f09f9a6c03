//! The fleet file: what `meshgate plan`, `up` and `down` build. One mesh,
//! its regions (each in this account or another one, reached through a
//! role), per region the VPC to join and its route tables, and per
//! availability zone one appliance. Every mistake is said with file, line
//! and field, as in the gateway's config.

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::config::{is_role_arn, parse_toml, ConfigError};
use crate::prefix::Prefix;

/// The default instance type: network-optimized, two vCPUs.
pub const DEFAULT_INSTANCE_TYPE: &str = "c6in.large";

/// A fleet, as the file describes it (validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fleet {
    /// Names every resource and is the `meshgate:mesh` tag.
    pub mesh: String,
    /// The directory `meshgate ca init` wrote: `up` issues each
    /// appliance's certificate with it.
    pub ca: PathBuf,
    /// The KMS key of the epoch keys (an ARN: its region is where every
    /// appliance asks KMS).
    pub kms_key: String,
    /// Where appliances download the Debian package, and its SHA-256.
    pub package_url: String,
    pub package_sha256: String,
    pub signal_port: u16,
    /// The routing policy every appliance runs (a built-in name).
    pub policy: String,
    /// Another endpoint than AWS's for every service (an emulator).
    pub endpoint_url: Option<String>,
    pub regions: Vec<FleetRegion>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetRegion {
    pub name: String,
    /// The role `up` acts through in this region's account; `None`: the
    /// caller's own account.
    pub account_role: Option<String>,
    /// The AMI the appliances boot (Debian 12 or later, amd64).
    pub image: String,
    pub vpc: String,
    /// What the region's appliances advertise (their certificates grant
    /// exactly these).
    pub prefixes: Vec<Prefix>,
    /// The VPC route tables the active appliance claims; `up` tags them.
    pub route_tables: Vec<String>,
    /// The KMS key Secrets Manager encrypts this region's appliance secrets
    /// with (it must be in this region).
    pub secrets_key: String,
    pub zones: Vec<FleetZone>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetZone {
    /// The availability zone, which is also the appliance's member id.
    pub zone: String,
    pub subnet: String,
    pub market: Market,
}

/// How an availability zone's appliance is bought.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Market {
    OnDemand {
        instance_type: String,
    },
    /// Spot across these instance types (diversified: the group takes
    /// whichever has capacity at the best price).
    Spot {
        instance_types: Vec<String>,
    },
}

impl FleetRegion {
    /// The appliances' member ids (their zones).
    pub fn slots(&self) -> impl Iterator<Item = &FleetZone> {
        self.zones.iter()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFleet {
    mesh: Spanned<String>,
    ca: Spanned<String>,
    kms_key: Spanned<String>,
    package_url: Spanned<String>,
    package_sha256: Spanned<String>,
    instance_type: Option<Spanned<String>>,
    market: Option<Spanned<String>>,
    #[serde(default)]
    spot_types: Vec<Spanned<String>>,
    signal_port: Option<Spanned<u16>>,
    policy: Option<Spanned<String>>,
    endpoint_url: Option<Spanned<String>>,
    regions: Spanned<Vec<RawRegion>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegion {
    name: Spanned<String>,
    account_role: Option<Spanned<String>>,
    image: Spanned<String>,
    vpc: Spanned<String>,
    prefixes: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    route_tables: Vec<Spanned<String>>,
    secrets_key: Option<Spanned<String>>,
    market: Option<Spanned<String>>,
    zones: Spanned<Vec<RawZone>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawZone {
    zone: Spanned<String>,
    subnet: Spanned<String>,
    market: Option<Spanned<String>>,
}

impl Fleet {
    pub fn load(path: &Path) -> Result<Fleet, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::at(
                path,
                "",
                None,
                "",
                format!("cannot read the fleet file: {e}"),
            )
        })?;
        Fleet::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Fleet, ConfigError> {
        let raw: RawFleet = parse_toml(path, text)?;
        Check { path, text }.fleet(raw)
    }
}

/// What the fleet buys in each market.
struct Buy {
    instance_type: String,
    spot_types: Vec<String>,
}

impl Buy {
    fn market(
        &self,
        check: &Check,
        v: &Spanned<String>,
        field: &str,
    ) -> Result<Market, ConfigError> {
        match v.get_ref().as_str() {
            "on-demand" => Ok(Market::OnDemand { instance_type: self.instance_type.clone() }),
            "spot" if self.spot_types.len() >= 2 => Ok(Market::Spot { instance_types: self.spot_types.clone() }),
            "spot" => check.err(
                v.span(),
                field,
                "spot needs spot_types at the top of the file: at least two instance types, so a spot shortage of one type does not leave a zone without its appliance",
            ),
            other => check.err(v.span(), field, format!("'{other}' is not a market; expected on-demand or spot")),
        }
    }
}

struct Check<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Check<'_> {
    fn err<T>(
        &self,
        span: Range<usize>,
        field: &str,
        msg: impl std::fmt::Display,
    ) -> Result<T, ConfigError> {
        Err(ConfigError::at(
            self.path,
            self.text,
            Some(span),
            field,
            msg,
        ))
    }

    /// A name made of lowercase letters, digits and `-` (what AWS accepts
    /// in every resource name built from it).
    fn label(
        &self,
        v: &Spanned<String>,
        field: &str,
        max: usize,
        what: &str,
    ) -> Result<String, ConfigError> {
        let s = v.get_ref().trim();
        let ok = !s.is_empty()
            && s.len() <= max
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-');
        if !ok {
            return self.err(
                v.span(),
                field,
                format!("'{s}' is not {what} (lowercase letters, digits and '-', at most {max})"),
            );
        }
        Ok(s.to_string())
    }

    /// An AWS id with its prefix (`vpc-`, `subnet-`, `rtb-`, `ami-`).
    fn aws_id(
        &self,
        v: &Spanned<String>,
        field: &str,
        prefix: &str,
    ) -> Result<String, ConfigError> {
        let s = v.get_ref().trim();
        let ok = s.strip_prefix(prefix).is_some_and(|h| {
            !h.is_empty() && h.len() <= 32 && h.bytes().all(|b| b.is_ascii_hexdigit())
        });
        if !ok {
            return self.err(
                v.span(),
                field,
                format!("'{s}' is not an id of the form {prefix}0123456789abcdef0"),
            );
        }
        Ok(s.to_string())
    }

    fn kms_arn(&self, v: &Spanned<String>, field: &str) -> Result<(String, String), ConfigError> {
        let s = v.get_ref().trim();
        let parts: Vec<&str> = s.splitn(6, ':').collect();
        match parts.as_slice() {
            // A key, not an alias: IAM's `Resource` for kms:Decrypt must
            // name the key itself, or the appliances are refused.
            ["arn", "aws", "kms", region, account, resource]
                if !region.is_empty()
                    && account.len() == 12
                    && account.bytes().all(|b| b.is_ascii_digit())
                    && resource.starts_with("key/") =>
            {
                Ok((s.to_string(), region.to_string()))
            }
            _ => self.err(
                v.span(),
                field,
                format!("'{s}' is not a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID, not an alias: the appliances' IAM policy names the key; the ARN names its region)"),
            ),
        }
    }

    /// A market named at a region or zone (else the one it inherits).
    fn market(
        &self,
        v: Option<&Spanned<String>>,
        field: &str,
        inherited: &Market,
        buy: &Buy,
    ) -> Result<Market, ConfigError> {
        let Some(v) = v else {
            return Ok(inherited.clone());
        };
        buy.market(self, v, field)
    }

    fn fleet(&self, raw: RawFleet) -> Result<Fleet, ConfigError> {
        let mesh = self.label(&raw.mesh, "mesh", 24, "a mesh name")?;
        let (kms_key, _) = self.kms_arn(&raw.kms_key, "kms_key")?;
        let url = raw.package_url.get_ref().trim();
        if !url.starts_with("https://") && !url.starts_with("http://")
            || url.contains(['\'', '"', '\\', '$', '`', ' '])
            || url.chars().any(char::is_control)
        {
            return self.err(
                raw.package_url.span(),
                "package_url",
                format!("'{url}' is not an http(s) URL without quotes, spaces or '$'"),
            );
        }
        let sha = raw.package_sha256.get_ref().trim().to_ascii_lowercase();
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return self.err(
                raw.package_sha256.span(),
                "package_sha256",
                "the package's SHA-256: 64 hex digits (sha256sum)",
            );
        }
        let instance_type = match &raw.instance_type {
            Some(t) => self.instance_type(t, "instance_type")?,
            None => DEFAULT_INSTANCE_TYPE.to_string(),
        };
        let mut spot_types = Vec::new();
        for (i, t) in raw.spot_types.iter().enumerate() {
            spot_types.push(self.instance_type(t, &format!("spot_types[{i}]"))?);
        }
        let buy = Buy {
            instance_type,
            spot_types,
        };
        let market = match &raw.market {
            Some(m) => buy.market(self, m, "market")?,
            None => Market::OnDemand {
                instance_type: buy.instance_type.clone(),
            },
        };
        let signal_port = match &raw.signal_port {
            Some(p) if *p.get_ref() == 0 || *p.get_ref() == 4500 => {
                return self.err(
                    p.span(),
                    "signal_port",
                    "a UDP port other than 0 and 4500 (ESP-in-UDP)",
                )
            }
            Some(p) => *p.get_ref(),
            None => crate::config::DEFAULT_SIGNAL_PORT,
        };
        let policy = match &raw.policy {
            Some(p) => match crate::policy::PolicySource::parse(p.get_ref(), Path::new("")) {
                Ok(crate::policy::PolicySource::Builtin(name)) => name,
                Ok(crate::policy::PolicySource::File(_)) => {
                    return self.err(
                        p.span(),
                        "policy",
                        "a built-in policy's name: the package carries no module file",
                    )
                }
                Err(e) => return self.err(p.span(), "policy", e),
            },
            None => crate::policy::DEFAULT_POLICY.to_string(),
        };
        let endpoint_url = match &raw.endpoint_url {
            // It goes into the user data's shell and the appliance's TOML.
            Some(u)
                if !(u.get_ref().starts_with("http://") || u.get_ref().starts_with("https://"))
                    || u.get_ref().contains(['\'', '"', '\\', '$', '`', ' '])
                    || u.get_ref().chars().any(char::is_control) =>
            {
                return self.err(
                    u.span(),
                    "endpoint_url",
                    format!(
                        "'{}' is not an http(s) URL without quotes, spaces or '$'",
                        u.get_ref().escape_debug()
                    ),
                )
            }
            u => u.as_ref().map(|u| u.get_ref().clone()),
        };
        if raw.regions.get_ref().is_empty() {
            return self.err(
                raw.regions.span(),
                "regions",
                "name at least one region ([[regions]])",
            );
        }
        let mut regions: Vec<FleetRegion> = Vec::new();
        for (i, r) in raw.regions.get_ref().iter().enumerate() {
            let region = self.region(r, i, &kms_key, &market, &buy)?;
            if regions.iter().any(|x| x.name == region.name) {
                return self.err(
                    r.name.span(),
                    &format!("regions[{i}].name"),
                    format!("region {} is listed twice", region.name),
                );
            }
            regions.push(region);
        }
        Ok(Fleet {
            mesh,
            ca: self.relative(raw.ca.get_ref()),
            kms_key,
            package_url: url.to_string(),
            package_sha256: sha,
            signal_port,
            policy,
            endpoint_url,
            regions,
        })
    }

    fn relative(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        match self.path.parent() {
            Some(dir) if p.is_relative() => dir.join(p),
            _ => p.to_path_buf(),
        }
    }

    fn instance_type(&self, v: &Spanned<String>, field: &str) -> Result<String, ConfigError> {
        let s = v.get_ref().trim();
        let ok = s.split_once('.').is_some_and(|(f, size)| {
            !f.is_empty()
                && !size.is_empty()
                && s.len() <= 32
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        });
        if !ok {
            return self.err(
                v.span(),
                field,
                format!("'{s}' is not an instance type (for example c6in.large)"),
            );
        }
        Ok(s.to_string())
    }

    fn region(
        &self,
        r: &RawRegion,
        i: usize,
        kms_key: &str,
        market: &Market,
        buy: &Buy,
    ) -> Result<FleetRegion, ConfigError> {
        let f = |name: &str| format!("regions[{i}].{name}");
        let name = self.label(&r.name, &f("name"), 32, "a region name")?;
        let account_role = match &r.account_role {
            Some(a) if !is_role_arn(a.get_ref().trim()) => {
                return self.err(
                    a.span(),
                    &f("account_role"),
                    format!(
                        "'{}' is not a role ARN (arn:aws:iam::123456789012:role/NAME)",
                        a.get_ref()
                    ),
                )
            }
            a => a.as_ref().map(|a| a.get_ref().trim().to_string()),
        };
        let image = self.aws_id(&r.image, &f("image"), "ami-")?;
        let vpc = self.aws_id(&r.vpc, &f("vpc"), "vpc-")?;
        let mut prefixes = Vec::new();
        for (j, p) in r.prefixes.get_ref().iter().enumerate() {
            match p.get_ref().parse::<Prefix>() {
                Ok(v) => prefixes.push(v),
                Err(e) => return self.err(p.span(), &f(&format!("prefixes[{j}]")), e),
            }
        }
        if prefixes.is_empty() {
            return self.err(
                r.prefixes.span(),
                &f("prefixes"),
                "the VPC prefixes behind the region's appliances (at least one)",
            );
        }
        let mut route_tables = Vec::new();
        for (j, t) in r.route_tables.iter().enumerate() {
            route_tables.push(self.aws_id(t, &f(&format!("route_tables[{j}]")), "rtb-")?);
        }
        let secrets_key = match &r.secrets_key {
            Some(k) => {
                let (arn, key_region) = self.kms_arn(k, &f("secrets_key"))?;
                if key_region != name {
                    return self.err(k.span(), &f("secrets_key"), format!("the key is in {key_region}; Secrets Manager in {name} encrypts only with a key of {name}"));
                }
                arn
            }
            None => {
                let key_region = kms_key.split(':').nth(3).unwrap_or_default();
                if key_region != name {
                    return self.err(r.name.span(), &f("secrets_key"), format!("name a KMS key of {name} for its appliances' secrets (kms_key is in {key_region}, and Secrets Manager encrypts only with a key of its own region)"));
                }
                kms_key.to_string()
            }
        };
        let region_market = self.market(r.market.as_ref(), &f("market"), market, buy)?;
        if r.zones.get_ref().is_empty() {
            return self.err(
                r.zones.span(),
                &f("zones"),
                "at least one availability zone (two for a redundant pair)",
            );
        }
        let mut zones: Vec<FleetZone> = Vec::new();
        for (j, z) in r.zones.get_ref().iter().enumerate() {
            let zf = |n: &str| f(&format!("zones[{j}].{n}"));
            let zone = self.label(&z.zone, &zf("zone"), 32, "an availability zone name")?;
            if !zone.starts_with(&name) {
                return self.err(
                    z.zone.span(),
                    &zf("zone"),
                    format!("{zone} is not a zone of {name}"),
                );
            }
            if zones.iter().any(|x| x.zone == zone) {
                return self.err(
                    z.zone.span(),
                    &zf("zone"),
                    format!("zone {zone} is listed twice"),
                );
            }
            zones.push(FleetZone {
                subnet: self.aws_id(&z.subnet, &zf("subnet"), "subnet-")?,
                market: self.market(z.market.as_ref(), &zf("market"), &region_market, buy)?,
                zone,
            });
        }
        Ok(FleetRegion {
            name,
            account_role,
            image,
            vpc,
            prefixes,
            route_tables,
            secrets_key,
            zones,
        })
    }
}
