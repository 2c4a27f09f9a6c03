//! Mesh identity: one CA per mesh and one certificate per appliance. The
//! appliance's member id, region and role are bound into its certificate
//! as DNS names under `meshgate` (`<id>.member.meshgate`,
//! `<region>.region.meshgate`, `<role>.role.meshgate`), so the standard
//! name check of TLS (webpki, as rustls runs it) proves which member a
//! peer is, and a peer whose certificate does not chain to the mesh CA, or
//! names another member, is refused before anything it says is read.
//!
//! The prefixes an appliance may advertise are bound the same way, one
//! name each (`10-1-0-0-16.v4.prefix.meshgate`, `fd00-1-0-0-0-0-0-0-48.v6.prefix.meshgate`),
//! as Nebula's certificates carry the subnets a host may route for: a
//! member's record is taken only for prefixes its certificate grants.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::prefix::Prefix;

/// What an appliance certificate says of its holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    pub id: String,
    pub region: String,
    pub role: String,
    /// What the holder may advertise: a prefix of its record must lie
    /// within one of these.
    pub prefixes: Vec<Prefix>,
}

impl Claims {
    /// Whether `prefix` lies within a prefix this certificate grants.
    pub fn grants(&self, prefix: &Prefix) -> bool {
        self.prefixes
            .iter()
            .any(|g| g.prefix_len() <= prefix.prefix_len() && g.contains(prefix.addr()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("{what} '{value}' must be 1 to 63 lowercase letters, digits or '-' (it becomes a DNS name in the certificate)")]
    Name { what: &'static str, value: String },
    #[error("role '{0}' is not edge, leaf or hub")]
    Role(String),
    #[error("prefix {0} cannot be granted: {1}")]
    Grant(Prefix, &'static str),
    #[error("making the certificate: {0}")]
    Generate(String),
    #[error("the certificate does not chain to the mesh CA: {0}")]
    Untrusted(String),
    #[error("the certificate names no member (it is not an appliance certificate of this mesh)")]
    NoClaims,
    #[error("the peer claims to be {claimed} but its certificate is {certified}'s")]
    Impersonation { claimed: String, certified: String },
}

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";
const ROLES: [&str; 3] = ["edge", "leaf", "hub"];

fn file_err(path: &Path, e: impl std::fmt::Display) -> IdentityError {
    IdentityError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Whether `s` is a DNS label, so it can be bound into a name.
fn label(what: &'static str, s: &str) -> Result<(), IdentityError> {
    let ok = (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(IdentityError::Name {
            what,
            value: s.to_string(),
        })
    }
}

fn member_name(id: &str) -> String {
    format!("{id}.member.meshgate")
}

const PREFIX_SUFFIX: &str = ".prefix.meshgate";

/// The name that grants `p`: its address's parts and its length as one
/// DNS label (lowercase hex for IPv6, all eight groups), then its family.
fn prefix_name(p: &Prefix) -> String {
    let (parts, family): (Vec<String>, &str) = match p.addr() {
        std::net::IpAddr::V4(a) => (a.octets().iter().map(u8::to_string).collect(), "v4"),
        std::net::IpAddr::V6(a) => (
            a.segments().iter().map(|s| format!("{s:x}")).collect(),
            "v6",
        ),
    };
    format!(
        "{}-{}.{family}{PREFIX_SUFFIX}",
        parts.join("-"),
        p.prefix_len()
    )
}

/// The prefix a name of [`prefix_name`]'s form grants; `None` for any
/// other name (which grants nothing).
fn parse_prefix_name(name: &str) -> Option<Prefix> {
    let (label, family) = name.strip_suffix(PREFIX_SUFFIX)?.split_once('.')?;
    let parts: Vec<&str> = label.split('-').collect();
    let (len, addr) = parts.split_last()?;
    let len: u8 = len.parse().ok()?;
    let addr = match (family, addr.len()) {
        ("v4", 4) => {
            let mut o = [0u8; 4];
            for (o, a) in o.iter_mut().zip(addr) {
                *o = a.parse().ok()?;
            }
            std::net::IpAddr::from(o)
        }
        ("v6", 8) => {
            let mut g = [0u16; 8];
            for (g, a) in g.iter_mut().zip(addr) {
                *g = u16::from_str_radix(a, 16).ok()?;
            }
            std::net::IpAddr::from(g)
        }
        _ => return None,
    };
    Prefix::new(addr, len)
}

/// Refuses a grant no record could use: a default route, or a prefix that
/// is not canonical.
fn check_grant(p: &Prefix) -> Result<(), IdentityError> {
    if p.prefix_len() == 0 {
        return Err(IdentityError::Grant(
            *p,
            "a default route is never advertised in the mesh",
        ));
    }
    if p.network() != p.addr() {
        return Err(IdentityError::Grant(*p, "its host bits are set"));
    }
    Ok(())
}

/// The CA's parameters, the same each time for one CA key: an issuer is
/// rebuilt from them and the key, without parsing the CA certificate. The
/// name carries a fingerprint of the key, so two meshes' CAs never share a
/// name (a foreign certificate then fails as an unknown issuer).
fn ca_params(key: &KeyPair) -> CertificateParams {
    let fingerprint: String = ring::digest::digest(&ring::digest::SHA256, key.public_key_raw())
        .as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!("meshgate mesh CA {fingerprint}"),
    );
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

/// Writes a private file (mode 0600), refusing to overwrite one.
fn write_new(path: &Path, text: &str, private: bool) -> Result<(), IdentityError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .map_err(|e| file_err(path, e))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| file_err(path, e))
}

fn read(path: &Path) -> Result<String, IdentityError> {
    std::fs::read_to_string(path).map_err(|e| file_err(path, e))
}

fn days_from_now(days: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::days(days)
}

/// `meshgate ca init`: a new mesh CA in `dir` (`ca.pem`, `ca.key`).
pub fn init_ca(dir: &Path, days: u32) -> Result<PathBuf, IdentityError> {
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    let key = KeyPair::generate().map_err(|e| IdentityError::Generate(e.to_string()))?;
    let mut params = ca_params(&key);
    params.not_before = days_from_now(-1);
    params.not_after = days_from_now(i64::from(days));
    let cert = params
        .self_signed(&key)
        .map_err(|e| IdentityError::Generate(e.to_string()))?;
    let cert_path = dir.join(CA_CERT);
    write_new(&dir.join(CA_KEY), &key.serialize_pem(), true)?;
    write_new(&cert_path, &cert.pem(), false)?;
    Ok(cert_path)
}

/// `meshgate cert issue`: a certificate and key for the appliance `claims`
/// names, signed by the CA in `ca_dir`, written to `out_dir` as
/// `<id>.pem` and `<id>.key`.
pub fn issue(
    ca_dir: &Path,
    claims: &Claims,
    out_dir: &Path,
    days: u32,
) -> Result<(PathBuf, PathBuf), IdentityError> {
    let issued = issue_pem(ca_dir, claims, days)?;
    std::fs::create_dir_all(out_dir).map_err(|e| file_err(out_dir, e))?;
    let (cert_path, key_path) = (
        out_dir.join(format!("{}.pem", claims.id)),
        out_dir.join(format!("{}.key", claims.id)),
    );
    write_new(&key_path, &issued.key, true)?;
    write_new(&cert_path, &issued.cert, false)?;
    Ok((cert_path, key_path))
}

/// A certificate issued in memory: its PEM and its key's (zeroized when
/// dropped), for what hands them on without a file (`meshgate up` puts
/// them in the appliance's secret).
pub struct IssuedPem {
    pub cert: String,
    pub key: zeroize::Zeroizing<String>,
}

/// As [`issue`], in memory.
pub fn issue_pem(ca_dir: &Path, claims: &Claims, days: u32) -> Result<IssuedPem, IdentityError> {
    label("member id", &claims.id)?;
    label("region", &claims.region)?;
    if !ROLES.contains(&claims.role.as_str()) {
        return Err(IdentityError::Role(claims.role.clone()));
    }
    for p in &claims.prefixes {
        check_grant(p)?;
    }
    let ca_key_path = ca_dir.join(CA_KEY);
    let ca_key = KeyPair::from_pem(&read(&ca_key_path)?).map_err(|e| file_err(&ca_key_path, e))?;
    let issuer = Issuer::new(ca_params(&ca_key), ca_key);
    let mut names = vec![
        member_name(&claims.id),
        format!("{}.region.meshgate", claims.region),
        format!("{}.role.meshgate", claims.role),
    ];
    names.extend(claims.prefixes.iter().map(prefix_name));
    let mut params =
        CertificateParams::new(names).map_err(|e| IdentityError::Generate(e.to_string()))?;
    params.distinguished_name.push(
        DnType::CommonName,
        format!("meshgate appliance {}", claims.id),
    );
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = days_from_now(-1);
    params.not_after = days_from_now(i64::from(days));
    let key = KeyPair::generate().map_err(|e| IdentityError::Generate(e.to_string()))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| IdentityError::Generate(e.to_string()))?;
    Ok(IssuedPem {
        cert: cert.pem(),
        key: zeroize::Zeroizing::new(key.serialize_pem()),
    })
}

/// The first certificate of a PEM file, as DER.
pub fn load_cert(path: &Path) -> Result<CertificateDer<'static>, IdentityError> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_file(path).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => file_err(
            path,
            "no certificate in it (a PEM block BEGIN CERTIFICATE; is it a key?)",
        ),
        e => file_err(path, e),
    })
}

/// The mesh CA as a trust anchor.
pub struct MeshCa {
    der: CertificateDer<'static>,
}

impl MeshCa {
    pub fn load(path: &Path) -> Result<MeshCa, IdentityError> {
        Ok(MeshCa {
            der: load_cert(path)?,
        })
    }

    /// The CA's certificate, as loaded.
    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    /// Checks `cert` chains to this CA for mutual TLS, at `now`, and returns
    /// what it certifies. With `claimed`, the certificate must name that
    /// member.
    pub fn verify(
        &self,
        cert: &CertificateDer<'_>,
        claimed: Option<&str>,
        now: UnixTime,
    ) -> Result<Claims, IdentityError> {
        let untrusted = |e: webpki::Error| IdentityError::Untrusted(format!("{e:?}"));
        let anchor = webpki::anchor_from_trusted_cert(&self.der).map_err(untrusted)?;
        let ee = webpki::EndEntityCert::try_from(cert).map_err(untrusted)?;
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &[],
            now,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(untrusted)?;
        let names: Vec<&str> = ee.valid_dns_names().collect();
        let claims = claims_of_names(&names).ok_or(IdentityError::NoClaims)?;
        let id = &claims.id;
        if let Some(c) = claimed {
            let name =
                ServerName::try_from(member_name(c)).map_err(|_| IdentityError::Impersonation {
                    claimed: c.to_string(),
                    certified: id.clone(),
                })?;
            if ee.verify_is_valid_for_subject_name(&name).is_err() {
                return Err(IdentityError::Impersonation {
                    claimed: c.to_string(),
                    certified: id.clone(),
                });
            }
        }
        Ok(claims)
    }
}

/// What the DNS names of an appliance certificate claim: exactly one
/// member id, region and role, and the prefixes it grants; `None` for a
/// certificate that is not an appliance's of a mesh.
pub fn claims_of_names(names: &[&str]) -> Option<Claims> {
    let under = |suffix: &str| -> Vec<String> {
        names
            .iter()
            .filter_map(|n| n.strip_suffix(suffix).map(str::to_string))
            .collect()
    };
    let (ids, regions, roles) = (
        under(".member.meshgate"),
        under(".region.meshgate"),
        under(".role.meshgate"),
    );
    let ([id], [region], [role]) = (&ids[..], &regions[..], &roles[..]) else {
        return None;
    };
    Some(Claims {
        id: id.clone(),
        region: region.clone(),
        role: role.clone(),
        prefixes: names
            .iter()
            .copied()
            .filter_map(parse_prefix_name)
            .collect(),
    })
}

/// How orders name a certificate: the first 128 bits of the SHA-256 of
/// its DER encoding (what `cert issue` prints, and `cert revoke` takes).
pub fn cert_id(der: &[u8]) -> crate::keys::order::CertId {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest.as_ref()[..16]);
    id
}

/// The mesh CA's signature over `message`, with its key (`ca.key`): how
/// the operator signs epoch orders. The key is read, used and wiped here;
/// it never reaches a running gateway.
pub fn ca_sign(ca_key: &Path, message: &[u8]) -> Result<Vec<u8>, IdentityError> {
    use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
    let pem = zeroize::Zeroizing::new(read(ca_key)?);
    let key = KeyPair::from_pem(&pem).map_err(|e| file_err(ca_key, e))?;
    let der = zeroize::Zeroizing::new(key.serialize_der());
    let rng = ring::rand::SystemRandom::new();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &der, &rng).map_err(|_| {
            file_err(
                ca_key,
                "not an ECDSA P-256 key (a mesh CA key from `meshgate ca init`)",
            )
        })?;
    pair.sign(&rng, message)
        .map(|s| s.as_ref().to_vec())
        .map_err(|_| IdentityError::Generate("signing with the CA key failed".into()))
}

impl crate::keys::order::OrderAuthority for MeshCa {
    fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        webpki::EndEntityCert::try_from(&self.der).is_ok_and(|ca| {
            ca.verify_signature(webpki::ring::ECDSA_P256_SHA256, message, signature)
                .is_ok()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("meshgate-identity-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn claims(id: &str) -> Claims {
        Claims {
            id: id.into(),
            region: "eu-west-1".into(),
            role: "edge".into(),
            prefixes: vec![
                "10.1.0.0/16".parse().unwrap(),
                "fd00:1::/48".parse().unwrap(),
            ],
        }
    }

    #[test]
    fn granted_prefixes_round_trip_and_bound_what_may_be_advertised() {
        let d = dir("grants");
        let ca = MeshCa::load(&init_ca(&d, 30).unwrap()).unwrap();
        let (cert, _) = issue(&d, &claims("r1"), &d, 30).unwrap();
        let c = ca
            .verify(&load_cert(&cert).unwrap(), Some("r1"), UnixTime::now())
            .unwrap();
        assert_eq!(c, claims("r1"));
        for (p, granted) in [
            ("10.1.0.0/16", true),
            ("10.1.200.0/24", true),
            ("10.0.0.0/15", false),
            ("10.2.0.0/16", false),
            ("fd00:1:0:5::/64", true),
            ("fd00:2::/48", false),
        ] {
            assert_eq!(c.grants(&p.parse().unwrap()), granted, "{p}");
        }
        for name in [
            "10-1-0-0-16.v4.prefix.meshgate",
            "fd00-1-0-0-0-0-0-0-48.v6.prefix.meshgate",
        ] {
            assert_eq!(prefix_name(&parse_prefix_name(name).unwrap()), name);
        }
        // Names that grant nothing: host bits, bad lengths, wrong counts.
        for name in [
            "10-1-0-1-16.v4.prefix.meshgate",
            "10-1-0-0-33.v4.prefix.meshgate",
            "10-1-0-16.v4.prefix.meshgate",
            "10-1-0-0-16.v6.prefix.meshgate",
            "10-1-0-0-16.prefix.meshgate",
        ] {
            assert_eq!(parse_prefix_name(name), None, "{name}");
        }
        let mut bad = claims("r2");
        bad.prefixes = vec!["0.0.0.0/0".parse().unwrap()];
        assert_eq!(
            issue(&d, &bad, &d, 30).unwrap_err().to_string(),
            "prefix 0.0.0.0/0 cannot be granted: a default route is never advertised in the mesh"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn an_issued_certificate_proves_its_member_and_nothing_else() {
        let d = dir("ok");
        let ca_path = init_ca(&d, 3650).unwrap();
        let (cert, key) = issue(&d, &claims("region-1"), &d.join("certs"), 365).unwrap();
        use std::os::unix::fs::PermissionsExt;
        for k in [d.join("ca.key"), key] {
            assert_eq!(
                std::fs::metadata(&k).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let ca = MeshCa::load(&ca_path).unwrap();
        let der = load_cert(&cert).unwrap();
        let now = UnixTime::now();
        assert_eq!(
            ca.verify(&der, Some("region-1"), now).unwrap(),
            claims("region-1")
        );
        let e = ca
            .verify(&der, Some("region-2"), now)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "the peer claims to be region-2 but its certificate is region-1's"
        );
        // Past its validity.
        let later = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            now.as_secs() + 400 * 86_400,
        ));
        assert!(ca
            .verify(&der, None, later)
            .unwrap_err()
            .to_string()
            .contains("Expired"));
        assert!(init_ca(&d, 1).is_err(), "a CA is never overwritten");
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Epoch orders: signed with `ca.key`, verified with `ca.pem`; an
    /// appliance's key or another mesh's CA key makes a forgery.
    #[test]
    fn only_the_mesh_ca_key_signs_epoch_orders() {
        use crate::keys::order::{MeshOrder, OrderError};
        let (ours, theirs) = (dir("orders-ours"), dir("orders-theirs"));
        let ca = MeshCa::load(&init_ca(&ours, 30).unwrap()).unwrap();
        init_ca(&theirs, 30).unwrap();
        let (_, appliance_key) = issue(&ours, &claims("region-1"), &ours, 30).unwrap();
        let order = MeshOrder {
            wrapped: Vec::new(),
            serial: 1,
            current: 2,
            floor: 1,
            revoked: vec![],
            certs: vec![],
        };
        let sealed = |key: &Path| {
            order
                .seal(|m| ca_sign(key, m).map_err(|e| e.to_string()))
                .unwrap()
        };
        assert_eq!(sealed(&ours.join("ca.key")).open(&ca), Ok(order.clone()));
        for forger in [appliance_key, theirs.join("ca.key")] {
            assert_eq!(
                sealed(&forger).open(&ca),
                Err(OrderError::Forged),
                "{}",
                forger.display()
            );
        }
        let e = ca_sign(&ours.join("ca.pem"), b"x").unwrap_err().to_string();
        assert!(e.contains("ca.pem"), "{e}");
        let _ = std::fs::remove_dir_all(&ours);
        let _ = std::fs::remove_dir_all(&theirs);
    }

    #[test]
    fn a_certificate_of_another_mesh_is_refused() {
        let (ours, theirs) = (dir("ours"), dir("theirs"));
        let ca = MeshCa::load(&init_ca(&ours, 30).unwrap()).unwrap();
        init_ca(&theirs, 30).unwrap();
        let (cert, _) = issue(&theirs, &claims("region-1"), &theirs, 30).unwrap();
        let e = ca
            .verify(
                &load_cert(&cert).unwrap(),
                Some("region-1"),
                UnixTime::now(),
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("the certificate does not chain to the mesh CA"),
            "{e}"
        );
        // Nor is the CA itself an appliance.
        let e = ca
            .verify(
                &load_cert(&ours.join("ca.pem")).unwrap(),
                None,
                UnixTime::now(),
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("does not chain") || e.contains("names no member"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&ours);
        let _ = std::fs::remove_dir_all(&theirs);
    }

    #[test]
    fn names_that_cannot_be_bound_are_refused_clearly() {
        let d = dir("names");
        init_ca(&d, 30).unwrap();
        let e = issue(&d, &claims("Region_1"), &d, 30)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("member id 'Region_1' must be 1 to 63 lowercase letters"),
            "{e}"
        );
        let mut c = claims("r1");
        c.role = "router".into();
        assert_eq!(
            issue(&d, &c, &d, 30).unwrap_err().to_string(),
            "role 'router' is not edge, leaf or hub"
        );
        let e = issue(&dir("none"), &claims("r1"), &d, 30)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ca.key"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
