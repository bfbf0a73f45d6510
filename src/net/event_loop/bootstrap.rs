//! The bootstrap addresses: dialing them at start and while the node is
//! alone, the peer each leads to, and how each fares ([`BootstrapState`],
//! which the handles see). What happens once a bootstrap peer is connected
//! (joining the DHT) is `join`'s.

use libp2p::{
    Multiaddr, PeerId,
    multiaddr::Protocol,
    swarm::{ConnectionId, DialError, dial_opts::DialOpts, dial_opts::PeerCondition},
};
use std::time::Duration;

use super::EventLoop;

/// Dials of every bootstrap address that fail in a row before a one-shot
/// command or a get gives up waiting for a peer (a node keeps trying).
pub const BOOTSTRAP_ATTEMPTS: u32 = 2;
/// How often unreachable bootstrap addresses are dialed again, while the
/// node is connected to no peer.
pub const BOOTSTRAP_RETRY: Duration = Duration::from_secs(3);

/// A bootstrap address and the peer it led to, once known.
pub(super) struct Bootstrap {
    /// The address as given, and without its `/p2p` part.
    pub(super) given: Multiaddr,
    pub(super) addr: Multiaddr,
    pub(super) peer: Option<PeerId>,
    pub(super) dialing: Option<ConnectionId>,
    /// Why the last dial failed, until one succeeds.
    pub(super) error: Option<String>,
    /// Dials failed since the last success.
    pub(super) failures: u32,
}

/// How a bootstrap address fares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapState {
    /// The address as given.
    pub addr: Multiaddr,
    pub connected: bool,
    /// Why the last dial failed, if it did and none succeeded since.
    pub error: Option<String>,
    /// Dials failed since the last success.
    pub failures: u32,
}

impl Bootstrap {
    pub(super) fn new(given: Multiaddr) -> Bootstrap {
        let (addr, peer) = split_peer_id(given.clone());
        Bootstrap { given, addr, peer, dialing: None, error: None, failures: 0 }
    }

    /// A connection to `peer` was established: returns whether this
    /// address led to it (its dial, or its peer), and if so forgets its
    /// failures.
    pub(super) fn connected(&mut self, peer: PeerId, connection: ConnectionId) -> bool {
        if self.dialing != Some(connection) && self.peer != Some(peer) {
            return false;
        }
        self.dialing = None;
        self.error = None;
        self.failures = 0;
        self.peer = Some(peer);
        true
    }

    /// This address's dial failed, for `reason`: returns whether it is the
    /// first failure since the last success (the one worth a warning).
    pub(super) fn dial_failed(&mut self, reason: String) -> bool {
        let first = self.error.is_none();
        self.dialing = None;
        self.error = Some(reason);
        self.failures += 1;
        first
    }
}

impl EventLoop {
    /// Whether `peer` is the peer of one of the bootstrap addresses.
    pub(super) fn is_bootstrap_peer(&self, peer: &PeerId) -> bool {
        self.bootstrap.iter().any(|b| b.peer.as_ref() == Some(peer))
    }

    /// Tells the handles how the bootstrap addresses fare.
    pub(super) fn publish_bootstrap(&self) {
        let states = self
            .bootstrap
            .iter()
            .map(|b| BootstrapState {
                addr: b.given.clone(),
                connected: b.peer.is_some_and(|p| self.swarm.is_connected(&p)),
                error: b.error.clone(),
                failures: b.failures,
            })
            .collect();
        self.bootstrap_state.send_replace(states);
    }

    /// Dials every bootstrap address that is neither connected nor dialing.
    pub(super) fn dial_bootstrap(&mut self) {
        for b in &mut self.bootstrap {
            if b.dialing.is_some() || b.peer.is_some_and(|p| self.swarm.is_connected(&p)) {
                continue;
            }
            let mut addr = b.addr.clone();
            let opts = match b.peer {
                Some(peer) => {
                    addr.push(Protocol::P2p(peer));
                    DialOpts::peer_id(peer)
                        .addresses(vec![b.addr.clone()])
                        .condition(PeerCondition::DisconnectedAndNotDialing)
                        .build()
                }
                None => DialOpts::unknown_peer_id().address(addr.clone()).build(),
            };
            let id = opts.connection_id();
            match self.swarm.dial(opts) {
                Ok(()) => b.dialing = Some(id),
                Err(e) => tracing::debug!("cannot dial bootstrap {addr}: {e}"),
            }
        }
    }

    /// A connection was established: returns whether it is to a bootstrap
    /// address, whose peer then goes (back) into the routing table.
    pub(super) fn bootstrap_connected(&mut self, peer: PeerId, connection: ConnectionId) -> bool {
        let mut to_bootstrap = false;
        for b in &mut self.bootstrap {
            if b.connected(peer, connection) {
                to_bootstrap = true;
                // Back in the table if a failed dial took it out.
                self.swarm.behaviour_mut().kad.add_address(&peer, b.addr.clone());
            }
        }
        self.publish_bootstrap();
        to_bootstrap
    }

    /// A dial failed: if it was a bootstrap address's, notes why.
    pub(super) fn bootstrap_dial_failed(&mut self, connection: ConnectionId, error: &DialError) {
        let mut changed = false;
        for b in &mut self.bootstrap {
            if b.dialing != Some(connection) {
                continue;
            }
            let reason = dial_error_reason(error, b.peer);
            let given = b.given.clone();
            if b.dial_failed(reason.clone()) && self.listens {
                // A one-shot client reports it itself.
                tracing::warn!(
                    "cannot reach bootstrap {given}: {reason}; trying again every {} s",
                    BOOTSTRAP_RETRY.as_secs()
                );
            }
            changed = true;
        }
        if changed {
            self.publish_bootstrap();
        }
    }
}

/// Why a dial failed, in a few words a user can act on.
pub(super) fn dial_error_reason(error: &DialError, expected: Option<PeerId>) -> String {
    match error {
        DialError::WrongPeerId { obtained, .. } => match expected {
            Some(expected) => format!("it is peer {obtained}, not {expected}"),
            None => format!("it is peer {obtained}"),
        },
        DialError::Transport(errors) => {
            let reasons: Vec<String> = errors
                .iter()
                .map(|(_, e)| {
                    // The innermost cause says it best ("connection refused").
                    let mut cause: &dyn std::error::Error = e;
                    while let Some(inner) = cause.source() {
                        cause = inner;
                    }
                    let text = cause.to_string();
                    let text = text.split(" (os error").next().unwrap_or(&text).to_lowercase();
                    if text.is_empty() {
                        e.to_string()
                    } else if text.starts_with("no records found") {
                        "its host name does not resolve (no DNS record)".into()
                    } else if text == "invalid data" || text.contains("handshake") {
                        "it does not speak dfs-p2p (the encrypted handshake failed: is it \
                         another kind of server, or another port?)"
                            .into()
                    } else {
                        text
                    }
                })
                .collect();
            if reasons.iter().any(|r| r.contains("timeout") || r.contains("timed out")) {
                "no answer (timed out)".into()
            } else {
                reasons.join("; ")
            }
        }
        DialError::Denied { cause } => format!("refused by this node's limits: {cause}"),
        DialError::LocalPeerId { .. } => "that is this node itself".into(),
        DialError::NoAddresses => "no address to dial".into(),
        DialError::Aborted => "the dial was aborted".into(),
        DialError::DialPeerConditionFalse(_) => "already connected or dialing".into(),
    }
}

/// Splits a trailing `/p2p/<id>` off an address.
pub fn split_peer_id(mut addr: Multiaddr) -> (Multiaddr, Option<PeerId>) {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => {
            addr.pop();
            (addr, Some(peer))
        }
        _ => (addr, None),
    }
}

#[cfg(test)]
mod tests {
    use libp2p::TransportError;

    use super::*;

    fn transport_error(messages: &[&str]) -> DialError {
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
        DialError::Transport(
            messages
                .iter()
                .map(|m| (addr.clone(), TransportError::Other(std::io::Error::other(*m))))
                .collect(),
        )
    }

    #[test]
    fn a_trailing_peer_id_is_split_off() {
        let peer = PeerId::random();
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().unwrap();
        let with_id = addr.clone().with(Protocol::P2p(peer));
        assert_eq!(split_peer_id(with_id), (addr.clone(), Some(peer)));
        assert_eq!(split_peer_id(addr.clone()), (addr, None));
    }

    #[test]
    fn a_dial_error_is_told_in_words_a_user_can_act_on() {
        let refused = transport_error(&["Connection refused (os error 111)"]);
        assert_eq!(dial_error_reason(&refused, None), "connection refused");
        let slow = transport_error(&["Connection refused", "Timed out"]);
        assert_eq!(dial_error_reason(&slow, None), "no answer (timed out)");
        let (expected, obtained) = (PeerId::random(), PeerId::random());
        let wrong =
            DialError::WrongPeerId { obtained, address: "/ip4/127.0.0.1/tcp/1".parse().unwrap() };
        assert_eq!(
            dial_error_reason(&wrong, Some(expected)),
            format!("it is peer {obtained}, not {expected}")
        );
    }

    #[test]
    fn failures_count_until_a_connection_and_only_the_first_is_news() {
        let peer = PeerId::random();
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().unwrap();
        let mut b = Bootstrap::new(addr.clone().with(Protocol::P2p(peer)));
        assert_eq!((b.addr.clone(), b.peer), (addr.clone(), Some(peer)));
        let dial = ConnectionId::new_unchecked(1);
        b.dialing = Some(dial);
        assert!(b.dial_failed("connection refused".into()));
        assert!(!b.dial_failed("connection refused".into()));
        assert_eq!((b.failures, b.dialing), (2, None));
        assert!(!b.connected(PeerId::random(), ConnectionId::new_unchecked(2)), "another peer");
        assert!(b.connected(peer, ConnectionId::new_unchecked(3)), "its peer, dialed by anyone");
        assert_eq!((b.failures, b.error.clone()), (0, None));

        // An address without a peer id learns it from the connection its
        // dial made.
        let mut anon = Bootstrap::new(addr);
        anon.dialing = Some(dial);
        let found = PeerId::random();
        assert!(anon.connected(found, dial));
        assert_eq!(anon.peer, Some(found));
    }
}
