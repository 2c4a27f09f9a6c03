//! `meshgate cert show FILE`: what a certificate grants (member id,
//! region, role, prefixes), how long it is valid, who issued it, and the
//! id `cert revoke` takes, as `nebula-cert print` shows a Nebula
//! certificate. Read without the CA: `check` and every peer verify the
//! chain; this says what the file claims.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

/// What one certificate file says.
#[derive(Debug, Serialize)]
pub struct CertInfo {
    pub file: String,
    /// `appliance` (names a member), `ca` (a CA certificate) or `other`.
    pub kind: &'static str,
    /// The id `cert revoke` takes (hex).
    pub cert_id: String,
    pub member: Option<String>,
    pub region: Option<String>,
    pub role: Option<String>,
    /// The prefixes the holder may advertise.
    pub prefixes: Vec<String>,
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    /// UTC, `YYYY-MM-DD HH:MM:SS UTC`.
    pub not_before: String,
    pub not_after: String,
    /// Whole days until it expires (negative: expired that long ago).
    pub expires_in_days: i64,
}

fn utc(t: x509_parser::time::ASN1Time) -> String {
    let d = t.to_datetime();
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        d.year(),
        u8::from(d.month()),
        d.day(),
        d.hour(),
        d.minute(),
        d.second()
    )
}

/// Reads `path` (PEM) and says what it grants.
pub fn read(path: &Path) -> Result<CertInfo> {
    let der = crate::identity::load_cert(path)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| anyhow::anyhow!("{}: not an X.509 certificate: {e}", path.display()))?;
    let names: Vec<&str> = cert
        .subject_alternative_name()
        .with_context(|| format!("{}: its subject alternative names", path.display()))?
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(*d),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let claims = crate::identity::claims_of_names(&names);
    let is_ca = cert
        .basic_constraints()
        .ok()
        .flatten()
        .is_some_and(|b| b.value.ca);
    let validity = cert.validity();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    Ok(CertInfo {
        file: path.display().to_string(),
        kind: match (&claims, is_ca) {
            (Some(_), _) => "appliance",
            (None, true) => "ca",
            (None, false) => "other",
        },
        cert_id: crate::keys::order::cert_hex(&crate::identity::cert_id(&der)),
        member: claims.as_ref().map(|c| c.id.clone()),
        region: claims.as_ref().map(|c| c.region.clone()),
        role: claims.as_ref().map(|c| c.role.clone()),
        prefixes: claims
            .iter()
            .flat_map(|c| c.prefixes.iter().map(ToString::to_string))
            .collect(),
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial: cert.raw_serial_as_string(),
        not_before: utc(validity.not_before),
        not_after: utc(validity.not_after),
        expires_in_days: (validity.not_after.timestamp() - now).div_euclid(86_400),
    })
}

impl std::fmt::Display for CertInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}", self.file)?;
        match (&self.member, &self.region, &self.role) {
            (Some(m), Some(r), Some(role)) => {
                writeln!(f, "  member:   {m} (region {r}, role {role})")?;
                let prefixes = if self.prefixes.is_empty() {
                    "none (it may advertise no prefix)".to_string()
                } else {
                    self.prefixes.join(", ")
                };
                writeln!(f, "  grants:   {prefixes}")?;
            }
            _ if self.kind == "ca" => writeln!(f, "  a CA certificate (it grants nothing itself)")?,
            _ => writeln!(
                f,
                "  names no mesh member: not a meshgate appliance certificate"
            )?,
        }
        let expiry = match self.expires_in_days {
            d if d < 0 => format!("EXPIRED {} days ago", -d),
            d => format!("expires in {d} days"),
        };
        writeln!(
            f,
            "  valid:    {} to {} ({expiry})",
            self.not_before, self.not_after
        )?;
        writeln!(f, "  issuer:   {}", self.issuer)?;
        writeln!(f, "  subject:  {}", self.subject)?;
        writeln!(f, "  serial:   {}", self.serial)?;
        writeln!(f, "  id:       {} (what cert revoke takes)", self.cert_id)
    }
}

/// `meshgate cert show`.
pub fn show(path: &Path, json: bool) -> Result<()> {
    let info = read(path)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        print!("{info}");
    }
    Ok(())
}
