//! Hostile peers against real nodes on loopback: a peer that serves wrong
//! bytes is blocked while the file arrives intact from an honest one, and
//! garbage, truncated and oversized frames leave a node serving, and block
//! streams answer in order and refuse what is over their limits. The hostile
//! peers are raw libp2p swarms built here, over the same TCP+Noise+Yamux.

mod net_support;
use net_support::{Sink, data, store};

use std::{
    io::{self, Cursor},
    sync::{Arc, Mutex},
    time::Duration,
};

use dfs_p2p::{
    net::blocks::MAX_BLOCK_STREAMS_PER_PEER,
    net::codec::{self, FileCodec, PROTOCOL, Request, RequestFrame, Response},
    node::{Node, NodeConfig},
};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::{
    Multiaddr, StreamProtocol, Swarm, noise,
    request_response::{self, Codec, ProtocolSupport},
    swarm::SwarmEvent,
    tcp, yamux,
};
use tempfile::TempDir;

const CHUNK: usize = 64 * 1024;
const TEST_TIMEOUT: Duration = Duration::from_secs(90);

async fn start(bootstrap: Vec<Multiaddr>) -> (Node, Multiaddr, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = NodeConfig::new(dir.path().to_path_buf());
    c.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    c.bootstrap = bootstrap;
    c.replicas = 1;
    c.chunk_size = CHUNK;
    let node = Node::start(c).await.unwrap();
    let addr = node.listen_addrs().await.into_iter().next().unwrap();
    (node, addr, dir)
}

fn raw_swarm<B: libp2p::swarm::NetworkBehaviour>(behaviour: B) -> Swarm<B> {
    raw_swarm_as(libp2p::identity::Keypair::generate_ed25519(), behaviour)
}

/// [`raw_swarm`] under the identity `key`.
fn raw_swarm_as<B: libp2p::swarm::NetworkBehaviour>(
    key: libp2p::identity::Keypair,
    behaviour: B,
) -> Swarm<B> {
    libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|_| behaviour)
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_sending_wrong_blocks_is_blocked_and_the_file_still_arrives() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (honest, honest_addr, _d1) = start(vec![]).await;
        let (getter, getter_addr, _d2) = start(vec![honest_addr]).await;
        assert!(getter.wait_for_peers(1, Duration::from_secs(20)).await >= 1);
        let bytes = data(64 * CHUNK, 1);
        let report =
            honest.put(Box::new(Cursor::new(bytes.clone())), None, None, None).await.unwrap();

        // The liar claims to hold everything and answers every GetBlock
        // with bytes that do not match the CID.
        let behaviour = request_response::Behaviour::<FileCodec>::new(
            [(codec::STREAM_PROTOCOL, ProtocolSupport::Full)],
            request_response::Config::default(),
        );
        let mut liar = raw_swarm(behaviour);
        let liar_id = *liar.local_peer_id();
        liar.dial(getter_addr).unwrap();
        let served = Arc::new(Mutex::new(0u64));
        let served_by_liar = served.clone();
        let liar_task = tokio::spawn(async move {
            while let Some(event) = liar.next().await {
                if let SwarmEvent::Behaviour(request_response::Event::Message {
                    message: request_response::Message::Request { request, channel, .. },
                    ..
                }) = event
                {
                    let response = match request {
                        RequestFrame::Valid(Request::GetBlock { .. }) => {
                            *served_by_liar.lock().unwrap() += 1;
                            Response::Block { data: data(CHUNK + 16, 99).into() }
                        }
                        RequestFrame::Valid(Request::Have { cids }) => {
                            Response::Have { present: vec![true; cids.len()] }
                        }
                        _ => Response::error(codec::ErrorCode::Refused, "no"),
                    };
                    let _ = liar.behaviour_mut().send_response(channel, response);
                }
            }
        });
        assert!(getter.wait_for_peers(2, Duration::from_secs(20)).await >= 2);

        let sink = Sink::default();
        let r = getter.get(report.ticket.clone(), Box::new(sink.clone()), None).await.unwrap();
        assert_eq!(*sink.0.lock().unwrap(), bytes, "the file arrives intact");
        assert_eq!(r.size, bytes.len() as u64);
        assert!(*served.lock().unwrap() > 0, "the liar was asked");
        assert!(getter.blocked_peers().await.contains(&liar_id));
        // The liar's connection is closed and refused from now on.
        for p in getter.peers().await {
            assert_ne!(p.peer_id, liar_id);
        }
        // Nothing wrong was stored.
        store(&getter)
            .walk(&report.ticket.root, &mut |c| store(&getter).get(c).map(|_| ()))
            .unwrap();
        liar_task.abort();
    })
    .await
    .expect("test timed out");
}

/// A connected peer closest to the root that takes requests and never
/// answers (an identity near a popular root costs an attacker nothing)
/// delays a get by the root probe's timeout at most: the get asks it for
/// the root first, then goes to the provider discovery found. The honest
/// provider is reached through a link with a round trip of 200 ms, so that
/// discovery cannot name it before the get asks for the root, as on any
/// real network. The link is the benchmarks' (`--features bench`).
#[cfg(feature = "bench")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_closest_to_the_root_delays_a_get_by_the_probe_timeout_at_most() {
    use dfs_p2p::{
        bench::proxy::{Link, LinkProxy},
        net::{behaviour::provider_key, get::ROOT_PROBE_TIMEOUT},
    };
    use libp2p::{kad::KBucketKey, multiaddr::Protocol};
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (honest, honest_addr, _d1) = start(vec![]).await;
        let honest_port = honest_addr
            .iter()
            .find_map(|p| if let Protocol::Tcp(port) = p { Some(port) } else { None })
            .unwrap();
        let link = LinkProxy::start(
            ([127, 0, 0, 1], honest_port).into(),
            Link::from_rtt_and_rate(200.0, None),
        )
        .await
        .unwrap();
        let through: Multiaddr =
            format!("/ip4/127.0.0.1/tcp/{}/p2p/{}", link.local_addr().port(), honest.peer_id())
                .parse()
                .unwrap();
        let (getter, getter_addr, _d2) = start(vec![through]).await;
        assert!(getter.wait_for_peers(1, Duration::from_secs(20)).await >= 1);
        let bytes = data(16 * CHUNK, 3);
        let report =
            honest.put(Box::new(Cursor::new(bytes.clone())), None, None, None).await.unwrap();

        // An identity closer to the root than the honest node.
        let target = KBucketKey::new(provider_key(&report.ticket.root));
        let honest_distance = target.distance(&KBucketKey::from(honest.peer_id()));
        let key = loop {
            let key = libp2p::identity::Keypair::generate_ed25519();
            if target.distance(&KBucketKey::from(key.public().to_peer_id())) < honest_distance {
                break key;
            }
        };
        let behaviour = request_response::Behaviour::<FileCodec>::new(
            [(codec::STREAM_PROTOCOL, ProtocolSupport::Full)],
            request_response::Config::default().with_request_timeout(TEST_TIMEOUT),
        );
        let mut silent = raw_swarm_as(key, behaviour);
        silent.dial(getter_addr).unwrap();
        let asked = Arc::new(Mutex::new(0u64));
        let asked_silent = asked.clone();
        let silent_task = tokio::spawn(async move {
            // Every request is kept open, unanswered.
            let mut held = Vec::new();
            while let Some(event) = silent.next().await {
                if let SwarmEvent::Behaviour(request_response::Event::Message {
                    message: request_response::Message::Request { request, channel, .. },
                    ..
                }) = event
                {
                    if matches!(request, RequestFrame::Valid(Request::GetBlock { .. })) {
                        *asked_silent.lock().unwrap() += 1;
                    }
                    held.push(channel);
                }
            }
        });
        assert!(getter.wait_for_peers(2, Duration::from_secs(20)).await >= 2);

        let started = std::time::Instant::now();
        let sink = Sink::default();
        getter.get(report.ticket.clone(), Box::new(sink.clone()), None).await.unwrap();
        let took = started.elapsed();
        assert_eq!(*sink.0.lock().unwrap(), bytes, "the file arrives intact");
        assert_eq!(*asked.lock().unwrap(), 1, "the silent peer was asked for the root, once");
        // Its block stream is refused, then `GetBlock` waits out the probe.
        let bound = 2 * ROOT_PROBE_TIMEOUT + Duration::from_secs(5);
        assert!(took < bound, "the get took {took:?}, more than {bound:?}");
        silent_task.abort();
    })
    .await
    .expect("test timed out");
}

/// A codec that sends any bytes as a request and reads whatever comes back.
#[derive(Clone, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
    ) -> io::Result<Vec<u8>> {
        Err(io::Error::other("this side only asks"))
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        io.take(4 << 20).read_to_end(&mut buf).await?;
        Ok(buf)
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: Vec<u8>,
    ) -> io::Result<()> {
        io.write_all(&request).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
        _: Vec<u8>,
    ) -> io::Result<()> {
        Err(io::Error::other("this side only asks"))
    }
}

/// Sends each frame on its own stream; returns what came back for each
/// (`None`: the stream failed or was reset).
async fn send_raw(
    swarm: &mut Swarm<request_response::Behaviour<RawCodec>>,
    peer: libp2p::PeerId,
    frames: Vec<Vec<u8>>,
) -> Vec<Option<Vec<u8>>> {
    let mut ids = std::collections::HashMap::new();
    for (i, f) in frames.into_iter().enumerate() {
        ids.insert(swarm.behaviour_mut().send_request(&peer, f), i);
    }
    let mut answers = vec![None; ids.len()];
    let mut left = ids.len();
    while left > 0 {
        match swarm.select_next_some().await {
            SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Response { request_id, response },
                ..
            }) => {
                answers[ids[&request_id]] = Some(response);
                left -= 1;
            }
            SwarmEvent::Behaviour(request_response::Event::OutboundFailure { .. }) => left -= 1,
            _ => {}
        }
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_truncated_and_oversized_frames_leave_the_node_serving() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (node, addr, _d) = start(vec![]).await;
        let bytes = data(3 * CHUNK, 2);
        let report =
            node.put(Box::new(Cursor::new(bytes.clone())), None, None, None).await.unwrap();
        let root = report.ticket.root;

        let behaviour = request_response::Behaviour::<RawCodec>::new(
            [(StreamProtocol::new(PROTOCOL), ProtocolSupport::Outbound)],
            request_response::Config::default()
                .with_request_timeout(Duration::from_secs(5))
                .with_max_concurrent_streams(256),
        );
        let mut raw = raw_swarm(behaviour);
        raw.dial(addr.clone()).unwrap();
        let peer = node.peer_id();

        let valid = codec::encode_request(&Request::GetBlock { cid: root });
        let mut truncated = valid.clone();
        truncated.truncate(valid.len() - 10);
        let mut oversized = vec![0x01, 0xFF, 0xFF, 0xFF, 0xFF];
        oversized.extend(data(100_000, 3));
        let mut big_have = vec![0x02, 0x00, 0x10, 0x00, 0x00];
        big_have.extend(vec![0u8; 0x10_0000]);
        let mut trailing = valid.clone();
        trailing.push(0);
        let mut frames = vec![
            data(1000, 4),
            vec![],
            vec![0xFF],
            truncated,
            oversized,
            big_have,
            trailing,
            vec![0x00, 0, 0, 0, 0],
            vec![0x81, 0, 0, 0, 1, 0], // a response type sent as a request
        ];
        // Many at once, too.
        for i in 0..100 {
            frames.push(data(37 + i, i as u64));
        }
        let small = frames.len() - 100;
        let answers = send_raw(&mut raw, peer, frames).await;
        for (i, a) in answers.iter().enumerate() {
            // Every malformed request is answered `Error BadRequest` and
            // the stream closed cleanly (the raw codec reads the answer to
            // the end of the stream: a reset would fail it). A requester
            // still pushing a body past the window (the two oversized
            // frames) may see the stream reset instead.
            match a {
                Some(bytes) => match codec::decode_response(bytes) {
                    Ok(Response::Error { code: codec::ErrorCode::BadRequest, .. }) => {}
                    other => panic!("frame {i} got {other:?}"),
                },
                None if i == 4 || i == 5 => {}
                None => panic!("frame {i} got no answer"),
            }
        }
        assert!(answers[small..].iter().all(Option::is_some));

        // Byte for byte, as the spec's example: a CID whose multihash is
        // not sha2-256.
        let mut bad_hash = valid.clone();
        bad_hash[8] = 0x13;
        let answers = send_raw(&mut raw, peer, vec![bad_hash]).await;
        let message = b"CID multihash is not sha2-256";
        let mut expected = vec![0x86, 0, 0, 0, 2 + message.len() as u8, 0x00, 0x06];
        expected.extend_from_slice(message);
        assert_eq!(answers[0].as_deref(), Some(&expected[..]));

        // Still serving: a valid request on the same connection...
        let answers = send_raw(&mut raw, peer, vec![valid]).await;
        let frame = answers[0].clone().expect("a valid request is answered");
        match codec::decode_response(&frame).unwrap() {
            Response::Block { data } => assert!(dfs_p2p::block::verify(&root, &data)),
            other => panic!("unexpected {other:?}"),
        }
        // ...and a real node gets the whole file.
        let (other, _, _d2) = start(vec![addr]).await;
        let sink = Sink::default();
        other.get(report.ticket, Box::new(sink.clone()), None).await.unwrap();
        assert_eq!(*sink.0.lock().unwrap(), bytes);
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_streams_answer_in_order_and_refuse_what_is_over_their_limits() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (node, addr, _d) = start(vec![]).await;
        let bytes = data(3 * CHUNK, 5);
        let report =
            node.put(Box::new(Cursor::new(bytes.clone())), None, None, None).await.unwrap();
        let root = report.ticket.root;
        let missing = dfs_p2p::block::cid_of(dfs_p2p::block::RAW, b"nobody has this");

        // A raw swarm that speaks only block streams.
        let mut swarm = raw_swarm(libp2p_stream::Behaviour::new());
        let mut control = swarm.behaviour().new_control();
        swarm.dial(addr).unwrap();
        let swarm_task = tokio::spawn(async move { while swarm.next().await.is_some() {} });
        let peer = node.peer_id();

        // Pipelined requests, answered in the order asked.
        let mut first = control.open_stream(peer, codec::BLOCKS_STREAM_PROTOCOL).await.unwrap();
        for cid in [root, missing, root] {
            codec::write_block_request(&mut first, &cid).await.unwrap();
        }
        first.flush().await.unwrap();
        let answers = [
            codec::read_block_response(&mut first).await.unwrap(),
            codec::read_block_response(&mut first).await.unwrap(),
            codec::read_block_response(&mut first).await.unwrap(),
        ];
        assert!(
            matches!(&answers[0], Response::Block { data } if dfs_p2p::block::verify(&root, data))
        );
        assert!(matches!(answers[1], Response::NotFound), "{:?}", answers[1]);
        assert!(matches!(&answers[2], Response::Block { .. }));

        // More streams are served up to the limit per peer (opened one
        // after the other: streams that arrive at once may be dropped
        // before the responder takes them); one more is reset.
        let mut open = Vec::new();
        for _ in 1..MAX_BLOCK_STREAMS_PER_PEER {
            let mut more = control.open_stream(peer, codec::BLOCKS_STREAM_PROTOCOL).await.unwrap();
            codec::write_block_request(&mut more, &root).await.unwrap();
            more.flush().await.unwrap();
            assert!(matches!(
                codec::read_block_response(&mut more).await.unwrap(),
                Response::Block { .. }
            ));
            open.push(more);
        }
        let mut second = open.pop().expect("a limit of 2 or more");
        let third = async {
            let mut third = control.open_stream(peer, codec::BLOCKS_STREAM_PROTOCOL).await?;
            codec::write_block_request(&mut third, &root).await?;
            third.flush().await?;
            codec::read_block_response(&mut third).await.map_err(Into::into)
        };
        let third: Result<Response, Box<dyn std::error::Error>> = third.await;
        assert!(third.is_err(), "a block stream over the limit was served: {third:?}");
        drop(open);

        // Anything but a GetBlock ends the stream without an answer.
        let have = codec::encode_request(&Request::Have { cids: vec![root] });
        second.write_all(&have).await.unwrap();
        second.flush().await.unwrap();
        assert!(codec::read_block_response(&mut second).await.is_err());
        first.write_all(&data(100, 6)).await.unwrap();
        first.flush().await.unwrap();
        assert!(codec::read_block_response(&mut first).await.is_err());

        // Their slots are free again, and the node still serves.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let again = async {
                let mut s = control.open_stream(peer, codec::BLOCKS_STREAM_PROTOCOL).await?;
                codec::write_block_request(&mut s, &root).await?;
                s.flush().await?;
                codec::read_block_response(&mut s).await.map_err(Into::into)
            };
            let again: Result<Response, Box<dyn std::error::Error>> = again.await;
            if matches!(again, Ok(Response::Block { .. })) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no block stream served again: {again:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        swarm_task.abort();
    })
    .await
    .expect("test timed out");
}

/// A liar on the block stream: it answers every GetBlock there with bytes
/// that do not match the CID (and claims every block over `Have`).
#[derive(libp2p::swarm::NetworkBehaviour)]
struct StreamLiar {
    file: request_response::Behaviour<FileCodec>,
    blocks: libp2p_stream::Behaviour,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_sending_wrong_blocks_on_a_block_stream_is_blocked_and_the_file_still_arrives() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (honest, honest_addr, _d1) = start(vec![]).await;
        let (getter, getter_addr, _d2) = start(vec![honest_addr]).await;
        assert!(getter.wait_for_peers(1, Duration::from_secs(20)).await >= 1);
        let bytes = data(64 * CHUNK, 7);
        let report =
            honest.put(Box::new(Cursor::new(bytes.clone())), None, None, None).await.unwrap();

        let mut liar = raw_swarm(StreamLiar {
            file: request_response::Behaviour::<FileCodec>::new(
                [(codec::STREAM_PROTOCOL, ProtocolSupport::Full)],
                request_response::Config::default(),
            ),
            blocks: libp2p_stream::Behaviour::new(),
        });
        let liar_id = *liar.local_peer_id();
        let mut incoming =
            liar.behaviour().blocks.new_control().accept(codec::BLOCKS_STREAM_PROTOCOL).unwrap();
        let served = Arc::new(Mutex::new(0u64));
        let served_on_streams = served.clone();
        let streams_task = tokio::spawn(async move {
            while let Some((_, mut stream)) = incoming.next().await {
                let served = served_on_streams.clone();
                tokio::spawn(async move {
                    while let Ok(Some(_)) = codec::read_block_request(&mut stream).await {
                        *served.lock().unwrap() += 1;
                        let wrong = Response::Block { data: data(CHUNK + 16, 98).into() };
                        if codec::write_block_response(&mut stream, wrong).await.is_err() {
                            return;
                        }
                        let _ = stream.flush().await;
                    }
                });
            }
        });
        liar.dial(getter_addr).unwrap();
        let liar_task = tokio::spawn(async move {
            while let Some(event) = liar.next().await {
                if let SwarmEvent::Behaviour(StreamLiarEvent::File(
                    request_response::Event::Message {
                        message: request_response::Message::Request { request, channel, .. },
                        ..
                    },
                )) = event
                {
                    let response = match request {
                        RequestFrame::Valid(Request::Have { cids }) => {
                            Response::Have { present: vec![true; cids.len()] }
                        }
                        _ => Response::error(codec::ErrorCode::Refused, "no"),
                    };
                    let _ = liar.behaviour_mut().file.send_response(channel, response);
                }
            }
        });
        assert!(getter.wait_for_peers(2, Duration::from_secs(20)).await >= 2);

        let sink = Sink::default();
        let r = getter.get(report.ticket.clone(), Box::new(sink.clone()), None).await.unwrap();
        assert_eq!(*sink.0.lock().unwrap(), bytes, "the file arrives intact");
        assert_eq!(r.size, bytes.len() as u64);
        assert!(*served.lock().unwrap() > 0, "the liar was asked on its block stream");
        assert!(getter.blocked_peers().await.contains(&liar_id));
        store(&getter)
            .walk(&report.ticket.root, &mut |c| store(&getter).get(c).map(|_| ()))
            .unwrap();
        liar_task.abort();
        streams_task.abort();
    })
    .await
    .expect("test timed out");
}
