//! Which connection carries what to each peer: the decisions about the
//! signalling channel's connections, without the connections themselves.
//!
//! A peer may have two open connections for a while (both sides dialed at
//! once, or the peer restarted while its old connection has not yet timed
//! out); everything read on either counts, and sends go on the newest. A
//! redial by the same side supersedes its older connection. When a peer
//! restarts, its open connections may belong to the old incarnation, which
//! no longer answers: a fresh one is dialed, and sends wait for it rather
//! than vanish into a connection that only its idle timeout would close.
//! While a connection is being set up, what is to be sent waits (bounded:
//! SWIM tolerates loss, and a peer that never answers must not grow it).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use super::{ConnId, Output, Payload};

/// What is kept for a peer while its connection is being set up.
pub const QUEUED_PER_PEER: usize = 64;

#[derive(Default)]
pub(super) struct Conns {
    /// Each peer's open connections and whether this side dialed each,
    /// newest last.
    open: HashMap<String, Vec<(ConnId, bool)>>,
    /// Peers being dialed, and what waits to be sent to them.
    dialing: HashMap<String, Vec<Payload>>,
}

impl Conns {
    /// Sends `payload` to `peer`: queued while a connection is being set up
    /// (a fresh one after a restart goes before those already open), else on
    /// its newest connection, else queued behind a dial to `addr` (where the
    /// membership knows the peer). Without an address it is dropped.
    pub fn send(
        &mut self,
        peer: String,
        payload: Payload,
        addr: Option<SocketAddr>,
        out: &mut VecDeque<Output>,
    ) {
        if let Some(queue) = self.dialing.get_mut(&peer) {
            if queue.len() < QUEUED_PER_PEER {
                queue.push(payload);
            }
        } else if let Some(&(conn, _)) = self.open.get(&peer).and_then(|v| v.last()) {
            out.push_back(Output::Send { conn, payload });
        } else if let Some(addr) = addr {
            self.dialing.insert(peer.clone(), vec![payload]);
            out.push_back(Output::Dial { peer, addr });
        }
    }

    /// Whether a send to `peer` would dial it (no connection, no dial under
    /// way): only then is its address needed.
    pub fn would_dial(&self, peer: &str) -> bool {
        !self.dialing.contains_key(peer) && self.open.get(peer).and_then(|v| v.last()).is_none()
    }

    /// Dials `peer` at `addr` unless it is connected or being dialed.
    pub fn ensure(&mut self, peer: &str, addr: SocketAddr, out: &mut VecDeque<Output>) {
        if !self.open.contains_key(peer) && !self.dialing.contains_key(peer) {
            self.dialing.insert(peer.to_string(), Vec::new());
            out.push_back(Output::Dial {
                peer: peer.to_string(),
                addr,
            });
        }
    }

    /// `peer` restarted at `addr`: a fresh connection is dialed (unless one
    /// is being dialed) and sends wait for it. The open ones stay for what
    /// they still carry in; if the dial fails, sends go on them again.
    pub fn restarted(&mut self, peer: &str, addr: SocketAddr, out: &mut VecDeque<Output>) {
        if !self.dialing.contains_key(peer) {
            self.dialing.insert(peer.to_string(), Vec::new());
            out.push_back(Output::Dial {
                peer: peer.to_string(),
                addr,
            });
        }
    }

    /// A connection to `peer` is up (dialed by this side or accepted): what
    /// waited goes on it, and an older connection dialed by the same side
    /// is closed.
    pub fn connected(
        &mut self,
        peer: &str,
        conn: ConnId,
        dialed_here: bool,
        out: &mut VecDeque<Output>,
    ) {
        for payload in self.dialing.remove(peer).unwrap_or_default() {
            out.push_back(Output::Send { conn, payload });
        }
        let open = self.open.entry(peer.to_string()).or_default();
        open.retain(|&(old, old_dialed_here)| {
            let superseded = old_dialed_here == dialed_here;
            if superseded {
                out.push_back(Output::Close { conn: old });
            }
            !superseded
        });
        open.push((conn, dialed_here));
    }

    /// A connection closed: the one before it (if any) takes over.
    pub fn closed(&mut self, conn: ConnId) {
        self.open.retain(|_, v| {
            v.retain(|&(c, _)| c != conn);
            !v.is_empty()
        });
    }

    /// Dialing `peer` failed: what waited for it is dropped.
    pub fn dial_failed(&mut self, peer: &str) {
        self.dialing.remove(peer);
    }

    /// `peer` is cut off: its connections close, and what waited for it
    /// is dropped.
    pub fn drop_peer(&mut self, peer: &str, out: &mut VecDeque<Output>) {
        self.dialing.remove(peer);
        for (conn, _) in self.open.remove(peer).unwrap_or_default() {
            out.push_back(Output::Close { conn });
        }
    }

    /// The connection `send` would use for `peer` now.
    #[cfg(test)]
    pub fn current(&self, peer: &str) -> Option<ConnId> {
        self.open.get(peer).and_then(|v| v.last()).map(|&(c, _)| c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(out: &mut VecDeque<Output>) -> Vec<String> {
        out.drain(..).map(|o| format!("{o:?}")).collect()
    }

    /// The case a peer's second connection taking over covers end to end:
    /// both sides dial at once, then the peer restarts and dials again.
    #[test]
    fn sends_go_on_the_newest_connection_and_a_redial_supersedes_its_own_side() {
        let addr: SocketAddr = "192.0.2.1:4433".parse().unwrap();
        let mut c = Conns::default();
        let mut out = VecDeque::new();
        c.send(
            "m2".into(),
            Payload::Datagram(vec![1]),
            Some(addr),
            &mut out,
        );
        c.send(
            "m2".into(),
            Payload::Datagram(vec![2]),
            Some(addr),
            &mut out,
        );
        assert_eq!(
            drain(&mut out),
            ["Dial { peer: \"m2\", addr: 192.0.2.1:4433 }"]
        );
        // Ours comes up: what waited goes on it.
        c.connected("m2", ConnId(1), true, &mut out);
        assert_eq!(
            drain(&mut out),
            [
                "Send { conn: ConnId(1), payload: Datagram(1 bytes) }",
                "Send { conn: ConnId(1), payload: Datagram(1 bytes) }"
            ]
        );
        // The peer dialed too: both stay open, the newest carries.
        c.connected("m2", ConnId(2), false, &mut out);
        assert!(out.is_empty());
        assert_eq!(c.current("m2"), Some(ConnId(2)));
        // The peer restarts and dials again: its old connection goes.
        c.connected("m2", ConnId(3), false, &mut out);
        assert_eq!(drain(&mut out), ["Close { conn: ConnId(2) }"]);
        c.closed(ConnId(2));
        assert_eq!(c.current("m2"), Some(ConnId(3)));
        // The newest closes: ours takes over.
        c.closed(ConnId(3));
        assert_eq!(c.current("m2"), Some(ConnId(1)));
        c.closed(ConnId(1));
        assert_eq!(c.current("m2"), None);
        // Unknown address: nothing to dial, nothing kept.
        c.send("m3".into(), Payload::Message(vec![0; 3]), None, &mut out);
        assert!(out.is_empty());
    }

    /// The peer restarted while this side's connection to the old
    /// incarnation was still open: sends wait for a fresh connection, and
    /// go on the old one again only if that dial fails.
    #[test]
    fn a_restart_dials_afresh_and_sends_wait_for_it() {
        let addr: SocketAddr = "192.0.2.1:4433".parse().unwrap();
        let mut c = Conns::default();
        let mut out = VecDeque::new();
        c.ensure("m2", addr, &mut out);
        c.connected("m2", ConnId(1), true, &mut out);
        out.clear();
        c.restarted("m2", addr, &mut out);
        c.restarted("m2", addr, &mut out);
        assert_eq!(
            drain(&mut out),
            ["Dial { peer: \"m2\", addr: 192.0.2.1:4433 }"],
            "one fresh dial"
        );
        c.send("m2".into(), Payload::Message(vec![1]), Some(addr), &mut out);
        assert!(
            out.is_empty(),
            "nothing goes on the old incarnation's connection"
        );
        c.connected("m2", ConnId(3), true, &mut out);
        assert_eq!(
            drain(&mut out),
            [
                "Send { conn: ConnId(3), payload: Message(1 bytes) }",
                "Close { conn: ConnId(1) }"
            ]
        );
        // A fresh dial that fails: the open connection carries again.
        c.restarted("m2", addr, &mut out);
        out.clear();
        c.dial_failed("m2");
        c.send("m2".into(), Payload::Message(vec![1]), Some(addr), &mut out);
        assert_eq!(
            drain(&mut out),
            ["Send { conn: ConnId(3), payload: Message(1 bytes) }"]
        );
    }

    #[test]
    fn what_waits_for_a_dial_is_bounded_and_dropped_when_it_fails() {
        let addr: SocketAddr = "192.0.2.1:4433".parse().unwrap();
        let mut c = Conns::default();
        let mut out = VecDeque::new();
        for i in 0..QUEUED_PER_PEER + 10 {
            c.send(
                "m2".into(),
                Payload::Datagram(vec![i as u8]),
                Some(addr),
                &mut out,
            );
        }
        assert_eq!(out.len(), 1, "one dial");
        out.clear();
        c.dial_failed("m2");
        c.send(
            "m2".into(),
            Payload::Datagram(vec![0]),
            Some(addr),
            &mut out,
        );
        assert_eq!(out.len(), 1, "a fresh dial, the old queue gone");
        out.clear();
        c.connected("m2", ConnId(7), true, &mut out);
        assert_eq!(out.len(), 1, "only what was queued after the failure");
    }
}
