//! What each member advertises of itself: placement (region, zone,
//! account, role, redundancy group), the prefixes behind it, its underlay
//! endpoints, its policy version and load. Spread with SWIM's gossip as a
//! versioned record per member: a newer version replaces an older one
//! everywhere, and a member sends its record straight to each member it
//! sees join, so a newcomer learns everyone.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use foca::{BroadcastHandler, Invalidates};
use serde::{Deserialize, Serialize};

use super::admission::Admission;
use super::MemberId;
use crate::keys::order::{CertId, SignedOrder, MAX_SIGNED_ORDER_LEN};

/// The largest record (signed, as it travels) that fits in one membership
/// datagram beside SWIM's own framing.
pub const MAX_RECORD_LEN: usize = 900;

/// Records larger than this are refused (a member has a few dozen prefixes).
pub const MAX_PREFIXES: usize = 256;
pub const MAX_ENDPOINTS: usize = 8;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub id: String,
    /// Grows with every change the member makes to its record.
    pub version: u64,
    pub region: String,
    pub zone: String,
    pub account: String,
    /// edge, leaf or hub.
    pub role: String,
    pub group: Option<String>,
    /// Address and length.
    pub prefixes: Vec<(IpAddr, u8)>,
    /// Label (`internet`, `dx`) and address.
    pub endpoints: Vec<(String, SocketAddr)>,
    pub policy_version: u32,
    pub load_permille: u32,
    /// The health the protocol measures from this member: the median
    /// smoothed round-trip time and the mean inbound loss of its paths to
    /// the others (each member also measures its own path to this one).
    pub rtt_us: u32,
    pub loss_ppm: u32,
    /// The key epoch this member negotiates under.
    pub epoch: u32,
    /// The newest epoch order of the mesh CA this member holds: how `keys
    /// rotate` and `keys revoke` reach the whole mesh (see `keys::order`).
    pub order: Option<SignedOrder>,
    /// Where this member's signalling endpoint listens, and its SWIM
    /// generation: the only word on them that counts besides its own
    /// (gossip moving either is deferred until a record vouches for it,
    /// see `membership::vouch`), and the only addresses dialed.
    pub signal: Option<SocketAddr>,
    pub generation: u64,
}

impl MemberInfo {
    /// What is wrong with a record that came off the wire, if anything.
    fn problem(&self) -> Option<String> {
        if !super::valid_id(&self.id) {
            return Some("the member id is not one".into());
        }
        if let Some(o) = self
            .order
            .as_ref()
            .filter(|o| o.len() > MAX_SIGNED_ORDER_LEN)
        {
            return Some(format!("an epoch order of {} bytes", o.len()));
        }
        if self.prefixes.len() > MAX_PREFIXES || self.endpoints.len() > MAX_ENDPOINTS {
            return Some(format!(
                "{} prefixes and {} endpoints (at most {MAX_PREFIXES} and {MAX_ENDPOINTS})",
                self.prefixes.len(),
                self.endpoints.len()
            ));
        }
        // Canonical (no host bits: the policies' validation refuses those,
        // which froze every member's tables), and never a default route.
        self.prefixes
            .iter()
            .find_map(|(a, l)| match crate::prefix::Prefix::new(*a, *l) {
                None => Some(format!(
                    "{a}/{l} is not a prefix (host bits set, or a length past its family)"
                )),
                Some(p) if *l == 0 => Some(format!("{p} is a default route")),
                Some(_) => None,
            })
    }
}

/// Refuses a record of this member's own that would not fit in one
/// membership datagram once signed (an ECDSA signature is at most 72
/// bytes) and carrying the largest epoch order: its prefixes must be
/// aggregated.
pub fn check_fits(info: &MemberInfo) -> Result<(), String> {
    let len = Infos::default().seal(info).len() + 72 + MAX_SIGNED_ORDER_LEN + 4;
    if len > MAX_RECORD_LEN {
        return Err(format!(
            "{} prefixes make a member record of {len} bytes, over the {MAX_RECORD_LEN} one membership datagram carries; advertise fewer, aggregated prefixes (gateway.prefixes)",
            info.prefixes.len()
        ));
    }
    Ok(())
}

/// Which record a broadcast carries: a newer version of the same member's
/// record replaces one still being spread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InfoKey {
    id: String,
    version: u64,
}

impl Invalidates for InfoKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.id == other.id && self.version >= other.version
    }
}

#[derive(Debug, thiserror::Error)]
#[error("member record refused: {0}")]
pub struct InfoError(String);

/// Who vouches for records: each is signed by its member's appliance key,
/// so a member relaying gossip cannot speak for another (the signalling
/// layer implements this with the mesh certificates).
pub trait RecordAuthority: Send + Sync {
    /// Signs this member's own record.
    fn sign(&self, body: &[u8]) -> Vec<u8>;
    /// Whether `signature` over `body` is by the member `info` names, and
    /// `info` agrees with what its certificate binds.
    fn check(&self, info: &MemberInfo, body: &[u8], signature: &[u8]) -> Check;
    /// The certificate of member `id` known here (DER), for a member whose
    /// records wait on it.
    fn cert_of(&self, id: &str) -> Option<Vec<u8>>;
    /// A certificate relayed by another member: kept if the mesh CA issued
    /// it, it is valid now and not revoked. Its member id.
    fn learn_cert(&self, der: &[u8]) -> Result<String, String>;
    /// The mesh CA revoked `cert`: records under it are refused from now on.
    fn revoke(&self, cert: CertId);
}

/// A record's standing with the [`RecordAuthority`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    Valid,
    /// Forged, or at odds with the member's certificate.
    Invalid(String),
    /// The member's certificate is not known here yet.
    Unknown,
}

/// A record as it travels: the encoded record and its member's signature.
#[derive(Serialize, Deserialize)]
struct Envelope {
    body: Vec<u8>,
    signature: Vec<u8>,
}

/// Records waiting for their member's certificate, at most one each.
const MAX_PENDING: usize = 1024;

#[derive(Default)]
struct State {
    known: BTreeMap<String, MemberInfo>,
    /// Records whose signer is not known yet: the record, its body and
    /// signature.
    pending: BTreeMap<String, (MemberInfo, Vec<u8>, Vec<u8>)>,
    /// Members whose certificate a record newly waits on, and who relayed
    /// it (and so holds the certificate).
    wanted: Vec<(String, String)>,
    authority: Option<Arc<dyn RecordAuthority>>,
    /// This gateway's own checks of what a record may route here.
    admission: Option<Admission>,
    /// Refusals of forged records: (who relayed it, why).
    refused: Vec<(String, String)>,
    /// Grows with every record taken.
    changes: u64,
    /// Members placed anew since the member last looked.
    placements: Vec<(String, String, Option<String>)>,
}

/// The records known, shared between SWIM's broadcast handler and the
/// member that reads them.
#[derive(Clone, Default)]
pub struct Infos(Arc<Mutex<State>>);

impl Infos {
    /// Records must be signed, and are checked, by `authority`. Without one
    /// (simulations), records are taken as they come.
    pub fn with_authority(authority: Arc<dyn RecordAuthority>) -> Infos {
        Infos(Arc::new(Mutex::new(State {
            authority: Some(authority),
            ..State::default()
        })))
    }

    /// Records are also refused if they would route what is not theirs
    /// here (`admission`).
    pub fn admitting(self, admission: Admission) -> Infos {
        if let Ok(mut s) = self.0.lock() {
            s.admission = Some(admission);
        }
        self
    }

    pub fn get(&self, id: &str) -> Option<MemberInfo> {
        self.0.lock().ok()?.known.get(id).cloned()
    }

    /// A count that grows whenever a record is taken: a reader compares it
    /// with the last it saw to learn that records changed.
    pub fn changes(&self) -> u64 {
        self.0.lock().map_or(0, |s| s.changes)
    }

    /// The version of `id`'s record known here.
    pub fn version_of(&self, id: &str) -> Option<u64> {
        self.0.lock().ok()?.known.get(id).map(|i| i.version)
    }

    pub fn all(&self) -> Vec<MemberInfo> {
        self.0
            .lock()
            .map(|m| m.known.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The wire form of this member's own record (signed when records are).
    pub fn seal(&self, info: &MemberInfo) -> Vec<u8> {
        let body = encode(info);
        let signature = self
            .0
            .lock()
            .ok()
            .and_then(|s| s.authority.as_ref().map(|a| a.sign(&body)))
            .unwrap_or_default();
        postcard::to_allocvec(&Envelope { body, signature }).unwrap_or_default()
    }

    /// `id`'s certificate became known: a record of it that waited is
    /// checked now. True if it was taken.
    pub fn certified(&self, id: &str) -> bool {
        let Ok(mut s) = self.0.lock() else {
            return false;
        };
        let Some((info, body, signature)) = s.pending.remove(id) else {
            return false;
        };
        let check = match &s.authority {
            Some(a) => a.check(&info, &body, &signature),
            None => Check::Valid,
        };
        match check {
            Check::Valid => match s.admission_refusal(&info) {
                None => s.take(info),
                Some(why) => {
                    s.refused.push((id.to_string(), why));
                    false
                }
            },
            Check::Invalid(why) => {
                s.refused.push((id.to_string(), why));
                false
            }
            Check::Unknown => {
                s.pending.insert(id.to_string(), (info, body, signature));
                false
            }
        }
    }

    /// Whether records are signed and checked (every gateway; simulations
    /// run without).
    pub fn signed(&self) -> bool {
        self.0.lock().is_ok_and(|s| s.authority.is_some())
    }

    /// Certificates records newly wait on since the last call: the member,
    /// and who relayed its record.
    pub fn take_wanted(&self) -> Vec<(String, String)> {
        self.0
            .lock()
            .map(|mut s| std::mem::take(&mut s.wanted))
            .unwrap_or_default()
    }

    /// Whether a record of `id` waits on its certificate.
    pub fn waits_on(&self, id: &str) -> bool {
        self.0.lock().is_ok_and(|s| s.pending.contains_key(id))
    }

    /// The certificate of `id` known here, for a member that asks.
    pub fn cert_of(&self, id: &str) -> Option<Vec<u8>> {
        let s = self.0.lock().ok()?;
        s.authority.as_ref()?.cert_of(id)
    }

    /// A certificate relayed by another member: learnt if the mesh CA
    /// vouches for it, and what waited on it is checked. Its member id.
    pub fn learn_cert(&self, der: &[u8]) -> Result<String, String> {
        let authority = self
            .0
            .lock()
            .ok()
            .and_then(|s| s.authority.clone())
            .ok_or("is not wanted: records are not signed here")?;
        let id = authority.learn_cert(der)?;
        self.certified(&id);
        Ok(id)
    }

    /// The mesh CA revoked these certificates.
    pub fn revoke_certs(&self, certs: impl IntoIterator<Item = CertId>) {
        if let Some(a) = self.0.lock().ok().and_then(|s| s.authority.clone()) {
            certs.into_iter().for_each(|c| a.revoke(c));
        }
    }

    /// Members placed anew (region and group) since the last call: a new
    /// member's record, or one that moved.
    pub fn take_placements(&self) -> Vec<(String, String, Option<String>)> {
        self.0
            .lock()
            .map(|mut s| std::mem::take(&mut s.placements))
            .unwrap_or_default()
    }

    /// Forged records refused since the last call: who sent each, and why.
    pub fn take_refused(&self) -> Vec<(String, String)> {
        self.0
            .lock()
            .map(|mut s| std::mem::take(&mut s.refused))
            .unwrap_or_default()
    }
}

impl State {
    fn admission_refusal(&self, info: &MemberInfo) -> Option<String> {
        self.admission.as_ref()?.refusal(info, &self.known)
    }

    /// Keeps `info` if it is newer than what is known; true if it was.
    fn take(&mut self, info: MemberInfo) -> bool {
        let newer = self
            .known
            .get(&info.id)
            .is_none_or(|k| k.version < info.version);
        if newer {
            let placed = |k: &MemberInfo| (k.region.clone(), k.group.clone());
            if self.known.get(&info.id).map(placed) != Some(placed(&info)) {
                self.placements
                    .push((info.id.clone(), info.region.clone(), info.group.clone()));
            }
            self.known.insert(info.id.clone(), info);
            self.changes += 1;
        }
        newer
    }
}

impl BroadcastHandler<MemberId> for Infos {
    type Key = InfoKey;
    type Error = InfoError;

    fn receive_item(
        &mut self,
        data: &[u8],
        sender: Option<&MemberId>,
    ) -> Result<Option<InfoKey>, InfoError> {
        let envelope: Envelope =
            postcard::from_bytes(data).map_err(|e| InfoError(e.to_string()))?;
        let info: MemberInfo =
            postcard::from_bytes(&envelope.body).map_err(|e| InfoError(e.to_string()))?;
        if let Some(p) = info.problem() {
            return Err(InfoError(p));
        }
        let key = InfoKey {
            id: info.id.clone(),
            version: info.version,
        };
        let mut s = self
            .0
            .lock()
            .map_err(|_| InfoError("state poisoned".into()))?;
        // A local add (sender None) is our own record: always spread.
        if sender.is_none() {
            s.take(info);
            return Ok(Some(key));
        }
        if s.known
            .get(&info.id)
            .is_some_and(|k| k.version >= info.version)
        {
            return Ok(None); // Stale: checked before, or older.
        }
        let check = match &s.authority {
            Some(a) => a.check(&info, &envelope.body, &envelope.signature),
            None => Check::Valid,
        };
        let check = match check {
            Check::Valid => match s.admission_refusal(&info) {
                Some(why) => Check::Invalid(why),
                None => Check::Valid,
            },
            other => other,
        };
        match check {
            Check::Valid => Ok(s.take(info).then_some(key)),
            Check::Invalid(why) => {
                // Refused, named and counted; the rest of the packet's
                // gossip is still taken (an error would drop it all).
                let by = sender.map_or_else(String::new, |m| m.id.clone());
                s.refused
                    .push((by, format!("a record in the name of {}: {why}", info.id)));
                Ok(None)
            }
            Check::Unknown => {
                // Kept until the member's certificate is known; not spread
                // on our word meanwhile.
                let newer_pending = s
                    .pending
                    .get(&info.id)
                    .is_none_or(|(p, _, _)| p.version < info.version);
                if newer_pending
                    && (s.pending.len() < MAX_PENDING || s.pending.contains_key(&info.id))
                {
                    if let Some(by) = sender.filter(|m| m.id != info.id) {
                        s.wanted.push((info.id.clone(), by.id.clone()));
                    }
                    s.pending
                        .insert(info.id.clone(), (info, envelope.body, envelope.signature));
                }
                Ok(None)
            }
        }
    }
}

/// The encoded record (what its member signs).
pub fn encode(info: &MemberInfo) -> Vec<u8> {
    postcard::to_allocvec(info).unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn record(prefixes: usize) -> MemberInfo {
        MemberInfo {
            id: "m1".into(),
            version: 1,
            region: "eu-west-1".into(),
            zone: "eu-west-1a".into(),
            account: "123456789012".into(),
            role: "edge".into(),
            group: None,
            prefixes: (0..prefixes)
                .map(|k| (IpAddr::from([10, 0, (k % 256) as u8, 0]), 24))
                .collect(),
            endpoints: vec![("internet".into(), "192.0.2.1:4433".parse().unwrap())],
            policy_version: 1,
            load_permille: 10,
            epoch: 1,
            ..Default::default()
        }
    }

    /// The wire form of `info`, unsigned (no authority).
    fn encode(info: &MemberInfo) -> Vec<u8> {
        Infos::default().seal(info)
    }

    /// Signatures and certificates are the member's name; a certificate is
    /// known once learnt (here, or fetched: `membership::certs`).
    pub(crate) struct Names {
        me: String,
        pub(crate) known: Mutex<Vec<String>>,
    }

    impl RecordAuthority for Names {
        fn sign(&self, _: &[u8]) -> Vec<u8> {
            self.me.as_bytes().to_vec()
        }
        fn check(&self, info: &MemberInfo, _: &[u8], signature: &[u8]) -> Check {
            if !self.known.lock().unwrap().contains(&info.id) {
                Check::Unknown
            } else if signature == info.id.as_bytes() {
                Check::Valid
            } else {
                Check::Invalid("signed by another member".into())
            }
        }
        fn cert_of(&self, id: &str) -> Option<Vec<u8>> {
            let known = self.known.lock().unwrap().iter().any(|k| k == id);
            known.then(|| id.as_bytes().to_vec())
        }
        fn learn_cert(&self, der: &[u8]) -> Result<String, String> {
            let id = String::from_utf8(der.to_vec()).map_err(|e| e.to_string())?;
            self.known.lock().unwrap().push(id.clone());
            Ok(id)
        }
        fn revoke(&self, _: CertId) {}
    }

    pub(crate) fn authority(me: &str, known: &[&str]) -> Arc<Names> {
        Arc::new(Names {
            me: me.into(),
            known: Mutex::new(known.iter().map(|k| k.to_string()).collect()),
        })
    }

    #[test]
    fn only_a_members_own_signature_makes_its_record_and_unknown_signers_wait() {
        let relay = MemberId {
            id: "m3".into(),
            addr: "192.0.2.3:4433".parse().unwrap(),
            generation: 0,
        };
        let checker = authority("m2", &["m3"]);
        let mut infos = Infos::with_authority(checker.clone());
        // m3 forges a record in m1's name... once m1's certificate is known.
        checker.known.lock().unwrap().push("m1".into());
        let forged = Infos::with_authority(authority("m3", &[])).seal(&record(1));
        assert_eq!(infos.receive_item(&forged, Some(&relay)).unwrap(), None);
        assert_eq!(
            infos.take_refused(),
            [(
                "m3".to_string(),
                "a record in the name of m1: signed by another member".to_string()
            )]
        );
        assert!(infos.get("m1").is_none());
        // m1's own, relayed by m3, is taken and spread on.
        let genuine = Infos::with_authority(authority("m1", &[])).seal(&record(1));
        assert!(infos
            .receive_item(&genuine, Some(&relay))
            .unwrap()
            .is_some());
        assert_eq!(infos.get("m1").unwrap().version, 1);

        // A member whose certificate is not known yet: its record waits,
        // unspread, until it is.
        let mut m4 = record(1);
        m4.id = "m4".into();
        let sealed = Infos::with_authority(authority("m4", &[])).seal(&m4);
        assert!(infos.receive_item(&sealed, Some(&relay)).unwrap().is_none());
        assert!(infos.get("m4").is_none());
        assert!(!infos.certified("m4"), "still unknown");
        checker.known.lock().unwrap().push("m4".into());
        assert!(infos.certified("m4"));
        assert_eq!(infos.get("m4").unwrap().id, "m4");
    }

    #[test]
    fn records_off_the_wire_are_checked_and_stale_ones_not_spread() {
        let mut infos = Infos::default();
        let from = MemberId {
            id: "m2".into(),
            addr: "192.0.2.2:4433".parse().unwrap(),
            generation: 0,
        };
        assert!(infos
            .receive_item(&encode(&record(2)), Some(&from))
            .unwrap()
            .is_some());
        assert!(
            infos
                .receive_item(&encode(&record(2)), Some(&from))
                .unwrap()
                .is_none(),
            "stale"
        );
        assert!(
            infos
                .receive_item(&encode(&record(2)), None)
                .unwrap()
                .is_some(),
            "a local re-advertisement"
        );
        let e = infos
            .receive_item(b"\xff\xff garbage", Some(&from))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("member record refused"), "{e}");
        let mut big = record(MAX_PREFIXES + 1);
        big.version = 9;
        let e = infos
            .receive_item(&encode(&big), Some(&from))
            .unwrap_err()
            .to_string();
        assert!(e.contains("257 prefixes"), "{e}");
        let mut bad = record(1);
        bad.version = 9;
        bad.prefixes = vec![(IpAddr::from([10, 0, 0, 0]), 33)];
        assert!(infos.receive_item(&encode(&bad), Some(&from)).is_err());
        assert_eq!(
            infos.get("m1").unwrap().version,
            1,
            "refused records change nothing"
        );
    }
}
