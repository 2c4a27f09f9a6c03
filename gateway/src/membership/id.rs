//! How a member is named inside SWIM: its member id (the one its
//! certificate binds), where its signalling endpoint listens, and a
//! generation that grows each time it (re)joins, so a restarted appliance
//! supersedes its earlier self.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

pub use crate::ids::{valid_id, MAX_ID_LEN};

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemberId {
    pub id: String,
    pub addr: SocketAddr,
    pub generation: u64,
}

impl foca::Identity for MemberId {
    /// Members are unique by id: two identities with one id are the same
    /// appliance at two generations.
    type Addr = String;

    fn renew(&self) -> Option<Self> {
        Some(MemberId {
            generation: self.generation + 1,
            ..self.clone()
        })
    }

    fn addr(&self) -> String {
        self.id.clone()
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}
