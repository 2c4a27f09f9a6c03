//! Where negotiated keys become SAs: the exchanges that are due start,
//! and the negotiator's events reach the tunnels (and so the data plane)
//! *before* any message of the exchange goes out.

use std::time::Instant;

use super::{Member, NodeEvent, Output, Payload};
use crate::keys;
use crate::tunnels::{Action, Tunnels};

impl Member {
    /// Starts the exchanges that are due, and turns the negotiator's
    /// events into SAs in the data plane *before* any message goes out, so
    /// a peer told to use an SA finds it installed; the tunnels' own
    /// actions may in turn start exchanges. Until quiet.
    pub(super) fn key(&mut self, now: Instant) {
        let Some(n) = self.negotiator.as_mut() else {
            return;
        };
        for peer in self.keying.due(now) {
            if let Err(err) = n.initiate(&peer, now) {
                tracing::warn!("no SA with {peer}: {err}");
            }
        }
        loop {
            let mut busy = false;
            while let Some(e) = n.poll_event() {
                busy = true;
                let other = match e {
                    keys::Event::Send { peer, message } => {
                        self.sends.push((peer, Payload::Message(message)));
                        continue;
                    }
                    other => other,
                };
                match &other {
                    keys::Event::InstallOutbound { peer, .. } => self.keying.keyed(peer),
                    keys::Event::Failed { peer, .. } => {
                        let up = self
                            .agent
                            .membership()
                            .members()
                            .any(|(m, s)| m.id == *peer && s == foca::State::Alive);
                        let keyed = self.tunnels.as_ref().is_some_and(|t| t.keyed(peer));
                        self.keying.failed(peer, up, keyed, now);
                    }
                    _ => {}
                }
                let event = match self.tunnels.as_mut() {
                    Some(t) => install(t, other, now),
                    None => NodeEvent::Keys(other),
                };
                self.events.push_back(event);
            }
            while let Some(a) = self.tunnels.as_mut().and_then(Tunnels::poll_action) {
                busy = true;
                match a {
                    Action::Outbound(c) => self.out.push_back(Output::Outbound(c)),
                    Action::Inbound(c) => self.out.push_back(Output::Inbound(c)),
                    Action::Release(spi) => n.release_spi(spi),
                    Action::Rekey(peer) if self.keying.wants(&peer) => {
                        tracing::debug!(peer, "rekeying with {peer}");
                        if let Err(err) = n.initiate(&peer, now) {
                            // Tried again with the unkeyed (the epoch's key
                            // may be on its way: KMS, or a peer's order).
                            tracing::warn!("cannot rekey with {peer}: {err}; trying again");
                            self.keying.failed(&peer, true, true, now);
                        }
                    }
                    Action::Rekey(peer) => {
                        // Its SAs live out their lifetime unrenewed (unless
                        // the peer's policy still wants the pair and rekeys).
                        tracing::debug!(
                            peer,
                            "not rekeying with {peer}: the policy no longer connects it"
                        );
                    }
                }
            }
            if !busy {
                break;
            }
        }
    }
}

/// Hands a negotiated SA to the tunnels; returns what the owner is told
/// (never the key).
fn install(t: &mut Tunnels, event: keys::Event, now: Instant) -> NodeEvent {
    match event {
        keys::Event::InstallInbound {
            peer,
            spi,
            key,
            epoch,
        } => {
            t.install_inbound(&peer, spi, key, epoch);
            NodeEvent::Installed {
                peer,
                spi,
                epoch,
                outbound: false,
            }
        }
        keys::Event::InstallOutbound {
            peer,
            spi,
            key,
            epoch,
        } => {
            t.install_outbound(&peer, spi, key, epoch, now);
            NodeEvent::Installed {
                peer,
                spi,
                epoch,
                outbound: true,
            }
        }
        keys::Event::RemoveInbound { peer, spi } => {
            t.remove_inbound(&peer, spi);
            NodeEvent::Keys(keys::Event::RemoveInbound { peer, spi })
        }
        other => NodeEvent::Keys(other),
    }
}
