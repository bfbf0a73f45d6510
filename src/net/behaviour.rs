//! Transport and behaviour set-up: TCP (nodelay) + Noise + Yamux with DNS
//! resolution, and the protocols a node speaks — identify, ping, Kademlia
//! under our own protocol name, the file protocol over `request_response`
//! and its block streams over `libp2p_stream`,
//! connection limits and a block list. Owns every tuning constant of the
//! swarm; knows nothing of the store or of the event loop.

use std::{num::NonZeroUsize, time::Duration};

use libp2p::{
    PeerId, StreamProtocol, Swarm, Transport, allow_block_list, connection_limits,
    core::{
        muxing::StreamMuxerBox,
        transport::{Boxed, MemoryTransport},
        upgrade,
    },
    identify,
    identity::Keypair,
    kad, noise, ping, request_response,
    swarm::NetworkBehaviour,
    tcp, yamux,
};

use crate::net::{
    codec::{FileCodec, STREAM_PROTOCOL, STREAM_PROTOCOL_4},
    limits::IpLimits,
    records::ProviderRecords,
};

/// Kademlia protocol name: our own DHT, never the public IPFS one.
/// Must not change (nodes with different names do not see each other).
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/dfs-p2p/kad/1.0.0");

/// Identify protocol version string.
pub const IDENTIFY_PROTOCOL_VERSION: &str = "/dfs-p2p/1.0.0";

/// The `request_response` stream timeout, inbound and outbound. libp2p has one
/// timeout per behaviour; `Replicate` may take longer than this and is
/// re-sent by the requester (it is idempotent, see the spec §6), so this is
/// the spec's 30 s. Callers that want a shorter wait use their own deadline.
pub const FILE_REQUEST_TIMEOUT: Duration = crate::net::codec::DEFAULT_REQUEST_TIMEOUT;

/// Inbound streams of the file protocol per connection (libp2p's default
/// is 100; more are reset). Above what a get keeps in flight to one
/// provider (`net::providers`). With [`MAX_ESTABLISHED`] connections,
/// bounds what streams that never finish their request frame cost: see
/// `codec::FileCodec` and the README's limits.
pub const MAX_CONCURRENT_STREAMS: usize = 128;

/// How long a connection without open streams stays up. Long enough that
/// the peers a node bootstrapped to remain its neighbours between uses.
pub const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(300);

/// Established connections in all (the libp2p default is unlimited).
pub const MAX_ESTABLISHED: u32 = 512;
/// Established connections per peer (two covers a simultaneous dial).
pub const MAX_ESTABLISHED_PER_PEER: u32 = 2;
/// Inbound connections being set up: room for a crowd of sockets that
/// never finish their handshake, until [`HANDSHAKE_TIMEOUT`] drops them
/// (see also `net::limits` for the share of one address). Each costs a file
/// descriptor and a few KiB.
pub const MAX_PENDING: u32 = 1024;
/// Outbound connections being set up.
pub const MAX_PENDING_OUTGOING: u32 = 256;
/// How long a connection may take to be set up (TCP accepted, then
/// multistream-select, Noise and Yamux); libp2p has no limit by default.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Kademlia query timeout (libp2p default 60 s): bounds a provider lookup.
pub const KAD_QUERY_TIMEOUT: Duration = Duration::from_secs(20);
/// How often a node refreshes its routing table: a Kademlia bootstrap (a
/// lookup of the node's own id, then one in every bucket farther than its
/// closest neighbour: 300–500 requests per node at 200–300 nodes in `bench
/// dht`), run by the event loop on its own timer. IPFS refreshes every 10
/// minutes too. libp2p would also bootstrap whenever a peer enters a table
/// of fewer than 20, that is on every join, and again if more joined
/// meanwhile; the event loop ends those at once (a join is a lookup of the
/// node's own id, see `EventLoop::end_automatic_bootstraps`).
pub const PERIODIC_BOOTSTRAP: Duration = Duration::from_secs(600);
/// Kademlia's replication factor: the peers a provider record is stored on
/// and a lookup converges to (libp2p's default, the `k` of the paper).
pub const KAD_REPLICATION: usize = 20;

/// How long a provider record from another peer is kept unless published
/// again (libp2p's and IPFS's default). A node publishes its own records
/// again every reprovide interval (`node::REPROVIDE_INTERVAL`, 12 h by
/// default), so a record outlives three missed rounds.
pub const PROVIDER_TTL: Duration = Duration::from_secs(48 * 3600);

/// The longest a value record (an owner's delete record) is kept; each
/// says itself how long it wants (the owner's lease length).
pub const MAX_RECORD_TTL: Duration = Duration::from_secs(400 * 24 * 3600);

/// The DHT key of the provider records of `root`: its whole binary CID
/// (see `protocols/data-format.md` for why not the multihash).
pub fn provider_key(root: &cid::Cid) -> kad::RecordKey {
    kad::RecordKey::new(&root.to_bytes())
}

/// Everything a node speaks.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    pub blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    pub limits: connection_limits::Behaviour,
    pub ip_limits: IpLimits,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub kad: kad::Behaviour<ProviderRecords>,
    pub file: request_response::Behaviour<FileCodec>,
    /// Block streams (`net::lanes`): opened and accepted through its
    /// `libp2p_stream::Control`, outside the event loop.
    pub blocks: libp2p_stream::Behaviour,
}

impl Behaviour {
    fn new(key: &Keypair, kad_server: bool, provider_ttl: Duration) -> Self {
        let peer_id = key.public().to_peer_id();
        let mut kad_config = kad::Config::new(KAD_PROTOCOL);
        kad_config
            .set_query_timeout(KAD_QUERY_TIMEOUT)
            .set_periodic_bootstrap_interval(None)
            .set_provider_record_ttl(Some(provider_ttl))
            // The node publishes its records again itself, on a timer with
            // jitter (`node`), and only for roots it still holds whole.
            .set_provider_publication_interval(None)
            // Value records are owners' delete records only: each is
            // checked before it is stored (`records::put_from`), and kept
            // no longer than its signer asked, at most this long.
            .set_record_filtering(kad::StoreInserts::FilterBoth)
            .set_record_ttl(Some(MAX_RECORD_TTL))
            .set_replication_factor(NonZeroUsize::new(KAD_REPLICATION).expect("non-zero"))
            // The event loop decides who enters the routing table
            // (`EventLoop::add_to_routing`).
            .set_kbucket_inserts(kad::BucketInserts::Manual);
        let mut kad =
            kad::Behaviour::with_config(peer_id, ProviderRecords::new(peer_id), kad_config);
        // Containers and loopback never confirm an external address, so the
        // automatic mode would leave every node a client.
        // A node that does not listen (a one-shot client) cannot be dialed,
        // so it only asks.
        kad.set_mode(Some(if kad_server { kad::Mode::Server } else { kad::Mode::Client }));

        let limits = connection_limits::ConnectionLimits::default()
            .with_max_established(Some(MAX_ESTABLISHED))
            .with_max_established_per_peer(Some(MAX_ESTABLISHED_PER_PEER))
            .with_max_pending_incoming(Some(MAX_PENDING))
            .with_max_pending_outgoing(Some(MAX_PENDING_OUTGOING));

        Behaviour {
            blocked: Default::default(),
            limits: connection_limits::Behaviour::new(limits),
            ip_limits: IpLimits::default(),
            identify: identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL_VERSION.into(), key.public())
                    .with_agent_version(format!("dfs-p2p/{}", env!("CARGO_PKG_VERSION"))),
            ),
            ping: ping::Behaviour::default(),
            kad,
            file: request_response::Behaviour::with_codec(
                FileCodec::default(),
                [
                    (STREAM_PROTOCOL_4, request_response::ProtocolSupport::Full),
                    (STREAM_PROTOCOL, request_response::ProtocolSupport::Full),
                ],
                request_response::Config::default()
                    .with_request_timeout(FILE_REQUEST_TIMEOUT)
                    .with_max_concurrent_streams(MAX_CONCURRENT_STREAMS),
            ),
            blocks: libp2p_stream::Behaviour::new(),
        }
    }
}

/// What carries a node's bytes below Noise and Yamux.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Wire {
    /// TCP (nodelay) with DNS resolution: every real node.
    #[default]
    Tcp,
    /// libp2p's in-process memory transport (`/memory/<port>` addresses),
    /// for many nodes in one process (`bench dht`): no sockets, no file
    /// descriptors, no kernel, and everything above the byte pipe (Noise,
    /// Yamux, the handshake timeout, every protocol and limit) as on TCP.
    Memory,
}

/// Builds the swarm: TCP with nodelay (or the memory transport, see
/// [`Wire`]), Noise, Yamux (every connection set up within
/// [`HANDSHAKE_TIMEOUT`]), DNS, and [`Behaviour`]; Kademlia answers queries
/// (server mode) only on a node that listens. Records of other peers are
/// kept `provider_ttl` unless published again.
pub fn build_swarm(
    key: Keypair,
    wire: Wire,
    listens: bool,
    provider_ttl: Duration,
) -> Result<Swarm<Behaviour>, String> {
    let builder = libp2p::SwarmBuilder::with_existing_identity(key).with_tokio();
    let swarm = match wire {
        Wire::Tcp => builder
            .with_other_transport(|key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
                let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
                Ok(secure(tcp, key)?)
            })
            .map_err(|e| format!("cannot set up TCP/Noise/Yamux: {e}"))?
            .with_dns()
            .map_err(|e| format!("cannot read the system DNS configuration: {e}"))?
            .with_behaviour(|key| Behaviour::new(key, listens, provider_ttl))
            .map_err(|e| format!("cannot set up the behaviour: {e}"))?
            .with_swarm_config(swarm_config)
            .build(),
        Wire::Memory => builder
            .with_other_transport(|key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
                Ok(secure(MemoryTransport::default(), key)?)
            })
            .map_err(|e| format!("cannot set up Noise/Yamux: {e}"))?
            .with_behaviour(|key| Behaviour::new(key, listens, provider_ttl))
            .map_err(|e| format!("cannot set up the behaviour: {e}"))?
            .with_swarm_config(swarm_config)
            .build(),
    };
    Ok(swarm)
}

/// The swarm's settings: idle connections close after
/// [`IDLE_CONNECTION_TIMEOUT`], and a stream opened to a peer names its one
/// protocol and sends its first message at once, without waiting a round
/// trip for the peer to confirm the protocol (multistream-select's
/// `V1Lazy`, as the connection's own upgrades do). Each new stream (a
/// `Have` probe, a block stream, a DHT request) then costs no round trip
/// before its request leaves: at 80 ms, two of the round trips before a
/// get's first block. A peer that does not speak the protocol answers `na`,
/// which the opener reads as the stream's first error (see `net::lanes`).
/// With eight block streams per peer, each opened with `V1` (a round trip
/// before its first request), `bench net --size 512MiB --rtt 80 --rate
/// 1000` filled 75% of the link (0.88 of the raw stream); with `V1Lazy`,
/// 89–90% (1.04–1.05), two runs of each, interleaved.
fn swarm_config(config: libp2p::swarm::Config) -> libp2p::swarm::Config {
    config
        .with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT)
        .with_substream_upgrade_protocol_override(upgrade::Version::V1Lazy)
}

/// Noise and Yamux over `transport`, each connection set up within
/// [`HANDSHAKE_TIMEOUT`]: the same on every [`Wire`].
fn secure<T>(transport: T, key: &Keypair) -> Result<Boxed<(PeerId, StreamMuxerBox)>, noise::Error>
where
    T: Transport + Send + Unpin + 'static,
    T::Output: futures::AsyncRead + futures::AsyncWrite + Unpin + Send + 'static,
    T::Error: Send + Sync + 'static,
    T::Dial: Send + 'static,
    T::ListenerUpgrade: Send + 'static,
{
    Ok(transport
        .upgrade(upgrade::Version::V1Lazy)
        .authenticate(noise::Config::new(key)?)
        .multiplex(yamux::Config::default())
        .timeout(HANDSHAKE_TIMEOUT)
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
        .boxed())
}
