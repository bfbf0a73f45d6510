//! The checks behind the fuzz targets of `fuzz/`, one function per target,
//! shared with `tests/fuzz_regressions.rs` (which runs the committed seeds
//! and every kept crash input through them). Each takes arbitrary bytes,
//! feeds them to a parser that peers or users reach, and panics if that
//! parser panics or breaks one of its properties: whatever it accepts is in
//! its one canonical form (it encodes back to the same bytes) and within
//! its limits, and the parser's two routes to a value agree.
//!
//! Not part of the library's API: it exists for the fuzzer and the tests.

use std::{
    io,
    pin::Pin,
    sync::OnceLock,
    task::{Context, Poll},
};

use cid::Cid;
use futures::{AsyncRead, executor::block_on, io::Cursor};
use libp2p::request_response::Codec;

use crate::{
    block::{self, DAG_CBOR, RAW},
    crypto::{self, Domain, Key},
    dag::{self, MAX_LINKS_LIMIT, MAX_NAME_LEN, Node},
    error::Error,
    lease::{DeleteRecord, Lease},
    net::codec::{
        self, ErrorCode, FileCodec, MAX_REQUEST_SIZE, MAX_RESPONSE_SIZE, RequestFrame, Response,
        STREAM_PROTOCOL,
    },
    ticket::{TICKET_PREFIX, Ticket, TicketOrCid},
};

/// A fuzz target's check: panics if the input breaks a property.
pub type Check = fn(&[u8]);

/// The fuzz targets by name (the directory names under `fuzz/seeds/` and
/// `fuzz/regressions/`), with their checks.
pub const TARGETS: &[(&str, Check)] = &[
    ("request_frame", request_frame),
    ("response_frame", response_frame),
    ("structure_node", structure_node),
    ("sealed_part", sealed_part),
    ("ticket", ticket),
    ("signed_record", signed_record),
];

/// The key [`sealed_part`] seals its input with.
pub const SEALED_PART_KEY: Key = [0x5e; crypto::KEY_LEN];

/// A reader that hands out at most `step` bytes per read, so that the
/// codec's reads see a frame cut at every place.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let n = buf.len().min(self.step).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(n))
    }
}

/// The step of the trickling reader for `data`: 1 to 7 bytes.
fn step(data: &[u8]) -> usize {
    1 + data.len() % 7
}

/// One request frame, as [`codec::decode_request`] reads it and as the
/// responder's [`FileCodec`] reads it off a stream (whole and trickled):
/// both agree; a request they accept is valid, within
/// [`MAX_REQUEST_SIZE`], and encodes (and is written) back to the same
/// bytes; the reason for a malformed one makes a valid `BadRequest` answer.
pub fn request_frame(data: &[u8]) {
    let decoded = codec::decode_request(data);
    match &decoded {
        Ok(request) => {
            assert!(data.len() <= MAX_REQUEST_SIZE, "accepted a request of {} bytes", data.len());
            request.validate().expect("a decoded request is valid");
            assert_eq!(codec::encode_request(request), data, "a request re-encodes differently");
            let mut written = Cursor::new(Vec::new());
            let frame = RequestFrame::Valid(request.clone());
            block_on(FileCodec::default().write_request(&STREAM_PROTOCOL, &mut written, frame))
                .expect("a decoded request can be written");
            assert_eq!(written.into_inner(), data, "a request is written differently");
        }
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}"),
    }
    let whole =
        block_on(FileCodec::default().read_request(&STREAM_PROTOCOL, &mut Cursor::new(data)));
    let trickled = block_on(
        FileCodec::default()
            .read_request(&STREAM_PROTOCOL, &mut Trickle { data, step: step(data) }),
    );
    for read in [whole, trickled] {
        match (&decoded, read.expect("a stream that does not fail reads a request frame")) {
            (Ok(a), RequestFrame::Valid(b)) => assert_eq!(a, &b),
            (Err(_), RequestFrame::Malformed(reason)) => {
                // The responder answers it as it is (spec §7).
                let answer = Response::error(ErrorCode::BadRequest, reason);
                answer.validate().expect("a BadRequest answer is valid");
                let bytes = codec::encode_response(&answer);
                assert_eq!(codec::decode_response(&bytes).expect("a BadRequest answer"), answer);
            }
            (a, b) => panic!("decode_request and read_request disagree: {a:?} vs {b:?}"),
        }
    }
}

/// One response frame, as [`codec::decode_response`] reads it and as the
/// requester's [`FileCodec`] reads it off a stream (whole and trickled):
/// both agree, and fail only as `InvalidData`; a response they accept is
/// valid, within [`MAX_RESPONSE_SIZE`], and encodes (and is written) back
/// to the same bytes.
pub fn response_frame(data: &[u8]) {
    let decoded = codec::decode_response(data);
    match &decoded {
        Ok(response) => {
            assert!(data.len() <= MAX_RESPONSE_SIZE, "accepted a response of {} bytes", data.len());
            response.validate().expect("a decoded response is valid");
            assert_eq!(codec::encode_response(response), data, "a response re-encodes differently");
            let mut written = Cursor::new(Vec::new());
            block_on(FileCodec::default().write_response(
                &STREAM_PROTOCOL,
                &mut written,
                response.clone(),
            ))
            .expect("a decoded response can be written");
            assert_eq!(written.into_inner(), data, "a response is written differently");
        }
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}"),
    }
    let whole =
        block_on(FileCodec::default().read_response(&STREAM_PROTOCOL, &mut Cursor::new(data)));
    let trickled = block_on(
        FileCodec::default()
            .read_response(&STREAM_PROTOCOL, &mut Trickle { data, step: step(data) }),
    );
    for read in [whole, trickled] {
        match (&decoded, read) {
            (Ok(a), Ok(b)) => assert_eq!(a, &b),
            (Err(_), Err(e)) => assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}"),
            (a, b) => panic!("decode_response and read_response disagree: {a:?} vs {b:?}"),
        }
    }
}

/// One structure block, as [`Node::decode`] reads it under its own CID: a
/// node it accepts encodes back to the same bytes and has at most
/// [`MAX_LINKS_LIMIT`] links, each a supported CID.
pub fn structure_node(data: &[u8]) {
    let cid = block::cid_of(DAG_CBOR, data);
    match Node::decode(&cid, data) {
        Ok(node) => {
            assert_eq!(node.encode(), data, "a node re-encodes differently");
            assert!(node.links.len() <= MAX_LINKS_LIMIT, "{} links", node.links.len());
            for link in &node.links {
                block::check_supported(link).expect("a node's link is a supported CID");
            }
        }
        Err(e) => assert_malformed(&e, &cid),
    }
}

/// The links [`sealed_part`] gives its node: leaves and structure blocks.
fn sealed_part_links() -> &'static [Cid] {
    static LINKS: OnceLock<Vec<Cid>> = OnceLock::new();
    LINKS.get_or_init(|| {
        (0..=u8::MAX)
            .map(|i| block::cid_of(if i % 2 == 0 { RAW } else { DAG_CBOR }, &[i]))
            .collect()
    })
}

/// The plaintext of a sealed part, as [`Node::open`] reads it: the first
/// byte is the node's number of links, the rest the plaintext, sealed with
/// [`SEALED_PART_KEY`]. A part it accepts pairs one key and size with each
/// link, and the same children and metadata seal back to the same
/// plaintext; one it refuses is malformed (never a decryption failure).
pub fn sealed_part(data: &[u8]) {
    let Some((&links, plaintext)) = data.split_first() else { return };
    let mut sealed = plaintext.to_vec();
    crypto::seal(&SEALED_PART_KEY, Domain::Node, &mut sealed);
    let node = Node { links: sealed_part_links()[..usize::from(links)].to_vec(), sealed };
    let cid = block::cid_of(DAG_CBOR, &node.encode());
    match node.open(&cid, &SEALED_PART_KEY) {
        Ok(opened) => {
            let cids: Vec<Cid> = opened.children.iter().map(|c| c.cid).collect();
            assert_eq!(cids, node.links, "children and links differ");
            if let Some(meta) = &opened.meta {
                let name = meta.name.as_deref().unwrap_or_default();
                assert!(name.len() <= MAX_NAME_LEN, "a name of {} bytes", name.len());
            }
            let _ = opened.size();
            // Sealed again (under its own convergent key), the same children
            // and metadata give back the same plaintext.
            let secret = crypto::ConvergenceSecret::from_bytes(SEALED_PART_KEY);
            let (_, key, bytes) = dag::build_node(&secret, &opened.children, opened.meta.as_ref());
            let rebuilt = Node::decode(&cid, &bytes).expect("a built node decodes");
            let mut again = rebuilt.sealed;
            assert!(crypto::open(&key, Domain::Node, &mut again), "a built node does not open");
            assert_eq!(again, plaintext, "a sealed part re-encodes differently");
        }
        Err(e) => assert_malformed(&e, &cid),
    }
}

/// A structure block refused as malformed, naming its CID, with a message.
fn assert_malformed(e: &Error, cid: &Cid) {
    assert!(matches!(e, Error::Malformed { cid: named, .. } if named == cid), "{e:?}");
    assert!(!e.to_string().is_empty());
}

/// A ticket or a CID as a user types it, parsed as a [`Ticket`] and as a
/// [`TicketOrCid`]: the two agree; a ticket they accept is displayed as the
/// input's trimmed, lowercased form, which parses back to it; a CID is a
/// supported one, and its display parses back to it.
pub fn ticket(data: &[u8]) {
    let Ok(input) = std::str::from_utf8(data) else { return };
    let ticket = input.parse::<Ticket>();
    match &ticket {
        Ok(t) => {
            let shown = t.to_string();
            let body = input.trim().strip_prefix(TICKET_PREFIX).expect("a ticket's prefix");
            assert_eq!(shown, format!("{TICKET_PREFIX}{}", body.to_ascii_lowercase()));
            assert_eq!(shown.parse::<Ticket>().as_ref(), Ok(t), "a ticket does not re-parse");
            assert_eq!(t.root.codec(), DAG_CBOR);
            block::check_supported(&t.root).expect("a ticket's root is a supported CID");
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    match input.parse::<TicketOrCid>() {
        Ok(TicketOrCid::Ticket(t)) => assert_eq!(ticket.as_ref(), Ok(&t)),
        Ok(TicketOrCid::Cid(cid)) => {
            assert!(!input.trim().starts_with(TICKET_PREFIX), "a ticket parsed as a CID");
            block::check_supported(&cid).expect("a parsed CID is supported");
            let shown = cid.to_string();
            assert_eq!(block::parse_cid(&shown).as_ref(), Ok(&cid), "a CID does not re-parse");
            assert_eq!(shown.parse::<TicketOrCid>(), Ok(TicketOrCid::Cid(cid)));
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            if input.trim().starts_with(TICKET_PREFIX) {
                assert!(ticket.is_err(), "a ticket parsed alone but not as ticket-or-CID");
            }
        }
    }
}

/// A lease (as `Replicate` carries it) or a delete record (as a DHT value):
/// whatever decodes has a valid signature, is in its one encoding, and a
/// delete record belongs under the key made from its own root and signer.
/// Inputs are signed with a fixed key when they are long enough, so that
/// the fuzzer reaches past the signature check.
pub fn signed_record(data: &[u8]) {
    if let Ok(lease) = Lease::decode(data) {
        assert_eq!(lease.encode(), data, "a lease is not in its one encoding");
        assert!(lease.replicas > 0 && lease.expires > lease.issued);
        let _ = lease.check(&lease.root, lease.issued);
    }
    if let Ok(record) = DeleteRecord::decode(data) {
        assert_eq!(record.encode(), data, "a delete record is not in its one encoding");
        let key = DeleteRecord::dht_key(&record.root, &record.owner());
        let now = record.deleted;
        assert_eq!(DeleteRecord::from_dht(&key, data, now).as_ref(), Ok(&record));
        let mut other = key.clone();
        if let Some(last) = other.last_mut() {
            *last ^= 1;
        }
        assert!(DeleteRecord::from_dht(&other, data, now).is_err(), "a record under any key");
    }
    // The same bytes as fields of a record signed for real.
    if data.len() >= 1 + 36 + 16 {
        let owner = fuzz_owner();
        let Ok(root) = block::cid_from_bytes(&data[1..37]) else { return };
        if root.codec() != DAG_CBOR {
            return;
        }
        let word = |at: usize| u64::from_be_bytes(data[at..at + 8].try_into().expect("8 bytes"));
        let a = word(37).min(u64::MAX - 1);
        let b = word(45).max(a + 1);
        if let Ok(lease) = Lease::issue_at(owner, root, data[0].max(1), a, b) {
            assert_eq!(Lease::decode(&lease.encode()).as_ref(), Ok(&lease));
        }
        if let Ok(record) = DeleteRecord::issue_at(owner, root, a, b) {
            assert_eq!(DeleteRecord::decode(&record.encode()).as_ref(), Ok(&record));
        }
    }
}

/// The key [`signed_record`] signs with: Ed25519 from 32 bytes of 0x01.
fn fuzz_owner() -> &'static libp2p::identity::Keypair {
    static OWNER: OnceLock<libp2p::identity::Keypair> = OnceLock::new();
    OWNER.get_or_init(|| {
        let mut secret = [1u8; 32];
        let secret = libp2p::identity::ed25519::SecretKey::try_from_bytes(&mut secret)
            .expect("32 bytes are a secret key");
        libp2p::identity::ed25519::Keypair::from(secret).into()
    })
}
