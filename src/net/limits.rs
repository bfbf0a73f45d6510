//! Connections per remote IP address: a behaviour that refuses a pending
//! or established inbound connection once the address it comes from holds
//! its share, so that one machine cannot take every slot of the node's
//! global limits (`connection_limits`, in `behaviour`). Loopback addresses
//! are exempt: every process of this machine shares them, the node's own
//! tools and tests included; the global limits, the handshake timeout and
//! the eviction of idle connections (`event_loop`) cover them.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::IpAddr,
    task::{Context, Poll},
};

use libp2p::{
    Multiaddr, PeerId,
    core::{Endpoint, multiaddr::Protocol, transport::PortUse},
    swarm::{
        ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler,
        THandlerInEvent, THandlerOutEvent, ToSwarm,
        behaviour::{ConnectionEstablished, ListenFailure},
        dummy,
    },
};

/// Inbound connections one remote IP address may have being set up.
pub const MAX_PENDING_PER_IP: usize = 16;
/// Inbound connections one remote IP address may hold.
pub const MAX_ESTABLISHED_PER_IP: usize = 32;

/// Counts inbound connections per remote IP; see the module docs.
#[derive(Debug, Default)]
pub struct IpLimits {
    counts: Counts,
}

/// The counting, apart from libp2p so it can be checked on its own.
#[derive(Debug, Default)]
pub struct Counts {
    pending: HashMap<IpAddr, usize>,
    established: HashMap<IpAddr, usize>,
    /// The address of each connection counted, and whether it is
    /// established yet.
    connections: HashMap<ConnectionId, (IpAddr, bool)>,
}

#[derive(Debug, thiserror::Error)]
#[error("{ip} already has {count} {what} connections (at most {limit})")]
pub struct TooManyFromIp {
    ip: IpAddr,
    count: usize,
    limit: usize,
    what: &'static str,
}

/// The IP address of a remote multiaddr, unless it is a loopback address
/// (exempt) or has none.
fn counted_ip(addr: &Multiaddr) -> Option<IpAddr> {
    let ip = addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })?;
    (!ip.is_loopback()).then_some(ip)
}

impl Counts {
    /// A new inbound connection from `ip` being set up, if it has room.
    pub fn pending(&mut self, id: ConnectionId, ip: IpAddr) -> Result<(), TooManyFromIp> {
        let count = self.pending.get(&ip).copied().unwrap_or(0);
        if count >= MAX_PENDING_PER_IP {
            return Err(TooManyFromIp { ip, count, limit: MAX_PENDING_PER_IP, what: "pending" });
        }
        *self.pending.entry(ip).or_default() += 1;
        self.connections.insert(id, (ip, false));
        Ok(())
    }

    /// The connection `id` from `ip` is set up, if `ip` has room for it.
    pub fn established(&mut self, id: ConnectionId, ip: IpAddr) -> Result<(), TooManyFromIp> {
        self.forget(id);
        let count = self.established.get(&ip).copied().unwrap_or(0);
        if count >= MAX_ESTABLISHED_PER_IP {
            return Err(TooManyFromIp {
                ip,
                count,
                limit: MAX_ESTABLISHED_PER_IP,
                what: "established",
            });
        }
        *self.established.entry(ip).or_default() += 1;
        self.connections.insert(id, (ip, true));
        Ok(())
    }

    /// The connection `id` is gone (closed, failed or refused).
    pub fn forget(&mut self, id: ConnectionId) {
        let Some((ip, established)) = self.connections.remove(&id) else { return };
        let map = if established { &mut self.established } else { &mut self.pending };
        if let Some(n) = map.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&ip);
            }
        }
    }

    /// Connections counted from `ip`: pending, established.
    pub fn of(&self, ip: &IpAddr) -> (usize, usize) {
        (self.pending.get(ip).copied().unwrap_or(0), self.established.get(ip).copied().unwrap_or(0))
    }
}

impl NetworkBehaviour for IpLimits {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        match counted_ip(remote) {
            Some(ip) => self.counts.pending(connection_id, ip).map_err(ConnectionDenied::new),
            None => Ok(()),
        }
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if let Some(ip) = counted_ip(remote) {
            self.counts.established(connection_id, ip).map_err(ConnectionDenied::new)?;
        }
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. })
            | FromSwarm::ListenFailure(ListenFailure { connection_id, .. }) => {
                self.counts.forget(connection_id);
            }
            FromSwarm::ConnectionEstablished(ConnectionEstablished { .. }) => {}
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        e: THandlerOutEvent<Self>,
    ) {
        libp2p::core::util::unreachable(e)
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_ip_gets_its_share_and_loopback_is_exempt() {
        let mut counts = Counts::default();
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        let other: IpAddr = "203.0.113.8".parse().unwrap();
        let ids: Vec<ConnectionId> =
            (0..=MAX_ESTABLISHED_PER_IP).map(ConnectionId::new_unchecked).collect();
        for id in &ids[..MAX_PENDING_PER_IP] {
            counts.pending(*id, ip).unwrap();
        }
        assert!(counts.pending(ids[MAX_PENDING_PER_IP], ip).is_err(), "pending share");
        counts.pending(ids[MAX_PENDING_PER_IP], other).unwrap();
        // Established ones free their pending slot.
        for id in &ids[..MAX_PENDING_PER_IP] {
            counts.established(*id, ip).unwrap();
        }
        assert_eq!(counts.of(&ip), (0, MAX_PENDING_PER_IP));
        for id in &ids[MAX_PENDING_PER_IP + 1..MAX_ESTABLISHED_PER_IP + 1] {
            counts.pending(*id, ip).unwrap();
            let result = counts.established(*id, ip);
            assert_eq!(result.is_ok(), counts.of(&ip).1 <= MAX_ESTABLISHED_PER_IP);
        }
        assert_eq!(counts.of(&ip).1, MAX_ESTABLISHED_PER_IP);
        let refused = ConnectionId::new_unchecked(1000);
        counts.pending(refused, ip).unwrap();
        assert!(counts.established(refused, ip).is_err(), "established share");
        counts.forget(refused);
        counts.forget(ids[0]);
        assert_eq!(counts.of(&ip), (0, MAX_ESTABLISHED_PER_IP - 1));

        let loopback: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
        assert_eq!(counted_ip(&loopback), None);
        let remote: Multiaddr = "/ip4/203.0.113.7/tcp/1".parse().unwrap();
        assert_eq!(counted_ip(&remote), Some(ip));
    }
}
