//! Member records signed with the appliance key and checked against the
//! member's certificate: gossip relays records, and a member relaying
//! must not be able to speak for another (claim its id, move its
//! prefixes, change its region or role), nor a member advertise a prefix
//! its certificate does not grant.
//!
//! A member's certificate is learnt from a direct connection to it (every
//! connection is mutual TLS with the mesh CA), or from the member that
//! relayed its record, which has it (checked here against the mesh CA as
//! a handshake would); until then its records wait (see
//! [`Infos::certified`](crate::membership::info::Infos::certified)).
//! Certificates the mesh CA revoked vouch for nothing.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use ring::rand::SystemRandom;
use ring::signature::EcdsaKeyPair;
use rustls_pki_types::CertificateDer;

use super::transport::{Credentials, PeerCert, TransportError};
use crate::identity::Claims;
use crate::keys::order::CertId;
use crate::membership::info::{Check, MemberInfo, RecordAuthority};

pub struct CertRecords {
    signer: EcdsaKeyPair,
    ca: std::sync::Arc<crate::identity::MeshCa>,
    rng: SystemRandom,
    certs: Mutex<HashMap<String, (Claims, CertificateDer<'static>)>>,
    revoked: Mutex<HashSet<CertId>>,
}

impl CertRecords {
    pub fn new(creds: &Credentials) -> Result<CertRecords, TransportError> {
        Ok(CertRecords {
            signer: creds.record_signer()?,
            ca: creds.ca().clone(),
            rng: SystemRandom::new(),
            certs: Mutex::new(HashMap::new()),
            revoked: Mutex::new(HashSet::new()),
        })
    }

    fn is_revoked(&self, der: &[u8]) -> bool {
        let id = crate::identity::cert_id(der);
        self.revoked.lock().is_ok_and(|r| r.contains(&id))
    }

    /// A peer's certificate, from a connection with it.
    pub fn learn(&self, peer: &PeerCert) {
        if let Ok(mut c) = self.certs.lock() {
            c.insert(
                peer.claims.id.clone(),
                (peer.claims.clone(), peer.cert.clone()),
            );
        }
    }
}

impl RecordAuthority for CertRecords {
    fn sign(&self, body: &[u8]) -> Vec<u8> {
        match self.signer.sign(&self.rng, body) {
            Ok(s) => s.as_ref().to_vec(),
            Err(_) => {
                // Every member will refuse the unsigned record; say why here.
                tracing::error!("signing this member's record failed; the mesh will refuse it");
                Vec::new()
            }
        }
    }

    fn cert_of(&self, id: &str) -> Option<Vec<u8>> {
        let certs = self.certs.lock().ok()?;
        Some(certs.get(id)?.1.as_ref().to_vec())
    }

    fn learn_cert(&self, der: &[u8]) -> Result<String, String> {
        if self.is_revoked(der) {
            return Err("the mesh CA revoked".into());
        }
        let der = CertificateDer::from(der.to_vec());
        let claims = self
            .ca
            .verify(&der, None, rustls_pki_types::UnixTime::now())
            .map_err(|e| format!("does not hold: {e}"))?;
        let mut certs = self
            .certs
            .lock()
            .map_err(|_| "the certificate store is poisoned")?;
        // One learnt from the member itself, still good, is kept: a relayed
        // one only fills a gap (or replaces one revoked or expired).
        let known_good = certs.get(&claims.id).is_some_and(|(_, k)| {
            !self.is_revoked(k)
                && self
                    .ca
                    .verify(k, Some(&claims.id), rustls_pki_types::UnixTime::now())
                    .is_ok()
        });
        if !known_good {
            certs.insert(claims.id.clone(), (claims.clone(), der));
        }
        Ok(claims.id)
    }

    fn revoke(&self, cert: CertId) {
        if let Ok(mut r) = self.revoked.lock() {
            r.insert(cert);
        }
    }

    fn check(&self, info: &MemberInfo, body: &[u8], signature: &[u8]) -> Check {
        let Some((claims, der)) = self
            .certs
            .lock()
            .ok()
            .and_then(|c| c.get(&info.id).cloned())
        else {
            return Check::Unknown;
        };
        if self.is_revoked(&der) {
            return Check::Invalid("the member's certificate is revoked by the mesh CA".into());
        }
        // Still valid now (certificates expire while members run).
        if let Err(e) = self
            .ca
            .verify(&der, Some(&info.id), rustls_pki_types::UnixTime::now())
        {
            return Check::Invalid(format!("the member's certificate: {e}"));
        }
        let Ok(cert) = webpki::EndEntityCert::try_from(&der) else {
            return Check::Invalid("the member's certificate does not parse".into());
        };
        if cert
            .verify_signature(webpki::ring::ECDSA_P256_SHA256, body, signature)
            .is_err()
        {
            return Check::Invalid("the signature is not the member's".into());
        }
        if info.region != claims.region || info.role != claims.role {
            return Check::Invalid(format!(
                "it says region {} and role {}, the member's certificate {} and {}",
                info.region, info.role, claims.region, claims.role
            ));
        }
        // Prefixes off the wire are canonical by now (`MemberInfo::problem`).
        let ungranted = info
            .prefixes
            .iter()
            .filter_map(|(a, l)| crate::prefix::Prefix::new(*a, *l))
            .find(|p| !claims.grants(p));
        if let Some(p) = ungranted {
            return Check::Invalid(format!(
                "it advertises {p}, which its certificate does not grant"
            ));
        }
        Check::Valid
    }
}
