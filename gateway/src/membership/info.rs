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

use super::MemberId;

/// Records larger than this are refused (a member has a few dozen prefixes).
pub const MAX_PREFIXES: usize = 256;
pub const MAX_ENDPOINTS: usize = 8;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
    /// The key epoch this member negotiates under, and the epochs it knows
    /// revoked: how `keys rotate` and `keys revoke` reach the whole mesh.
    pub epoch: u32,
    pub revoked: Vec<u32>,
}

impl MemberInfo {
    /// What is wrong with a record that came off the wire, if anything.
    fn problem(&self) -> Option<String> {
        if !crate::keys::message::valid_id(&self.id) {
            return Some("the member id is not one".into());
        }
        if self.revoked.len() > crate::keys::rotation::MAX_REVOKED {
            return Some(format!("{} revoked epochs", self.revoked.len()));
        }
        if self.prefixes.len() > MAX_PREFIXES || self.endpoints.len() > MAX_ENDPOINTS {
            return Some(format!(
                "{} prefixes and {} endpoints (at most {MAX_PREFIXES} and {MAX_ENDPOINTS})",
                self.prefixes.len(),
                self.endpoints.len()
            ));
        }
        let bad_len = self
            .prefixes
            .iter()
            .any(|(a, l)| *l > if a.is_ipv4() { 32 } else { 128 });
        bad_len.then(|| "a prefix length past its address family".into())
    }
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

/// The records known, shared between SWIM's broadcast handler and the
/// member that reads them.
#[derive(Clone, Default)]
pub struct Infos(Arc<Mutex<BTreeMap<String, MemberInfo>>>);

impl Infos {
    pub fn get(&self, id: &str) -> Option<MemberInfo> {
        self.0.lock().ok()?.get(id).cloned()
    }

    pub fn all(&self) -> Vec<MemberInfo> {
        self.0
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
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
        let info: MemberInfo = postcard::from_bytes(data).map_err(|e| InfoError(e.to_string()))?;
        if let Some(p) = info.problem() {
            return Err(InfoError(p));
        }
        let key = InfoKey {
            id: info.id.clone(),
            version: info.version,
        };
        let mut known = self
            .0
            .lock()
            .map_err(|_| InfoError("state poisoned".into()))?;
        let newer = known.get(&info.id).is_none_or(|k| k.version < info.version);
        if newer {
            known.insert(info.id.clone(), info);
        }
        // A local add (sender None) is always spread.
        Ok((newer || sender.is_none()).then_some(key))
    }
}

/// The wire form of a record.
pub fn encode(info: &MemberInfo) -> Vec<u8> {
    postcard::to_allocvec(info).unwrap_or_default()
}

#[cfg(test)]
mod tests {
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
            revoked: vec![],
        }
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
