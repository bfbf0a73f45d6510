//! Golden, rejection and property tests for the file protocol codec.
//!
//! The hex vectors below are copied verbatim from the examples in
//! `protocols/file-protocol.md` (section 9); `spec_examples_are_the_test_vectors`
//! fails if the two ever differ. The delete record and its DHT key are read
//! from `protocols/data-format.md` (section 9), where they are specified.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use cid::Cid;
use cid::multihash::Multihash;
use dfs_p2p::lease::{DELETE_RECORD_LEN, DeleteRecord, LEASE_LEN, Lease, RecordError};
use dfs_p2p::net::codec::{
    ErrorCode, FRAME_HEADER_LEN, FileCodec, MAX_BLOCK_SIZE, MAX_ERROR_MESSAGE_LEN, MAX_HAVE_CIDS,
    MAX_PROVE_CIDS, MAX_REQUEST_SIZE, MAX_RESPONSE_SIZE, PROTOCOL, PROTOCOL_4, Request,
    RequestFrame, Response, STREAM_PROTOCOL, STREAM_PROTOCOL_4, decode_request, decode_response,
    encode_request, encode_response, is_supported_cid,
};
use futures::executor::block_on;
use futures::io::{AsyncRead, Cursor};
use libp2p::PeerId;
use libp2p::identity::{Keypair, ed25519};
use libp2p::request_response::Codec;
use proptest::collection::vec;
use proptest::prelude::*;
use sha2::{Digest, Sha256};

/// Records the largest single allocation this test binary makes, so a test
/// can prove that an absurd length prefix was rejected before allocating.
struct LargestAllocation;

static LARGEST_ALLOCATION: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged; the only addition is an atomic counter update.
unsafe impl GlobalAlloc for LargestAllocation {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST_ALLOCATION.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded from our caller.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST_ALLOCATION.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded from our caller.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST_ALLOCATION.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: forwarded from our caller.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded from our caller.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

/// No test in this binary legitimately allocates this much at once.
const ABSURD_ALLOCATION: usize = 256 * 1024 * 1024;

// ---- Test vectors: identical to the ```hex blocks of the spec. ----

const GET_BLOCK: &str = r#"
01                                                # type 0x01: GetBlock
00 00 00 25                                       # body length: 37
24                                                # CID length: 36
01 55 12 20                                       # CIDv1, raw, sha2-256, 32-byte digest
2c f2 4d ba 5f b0 a3 0e 26 e8 3b 2a c5 b9 e2 9e
1b 16 1e 5c 1f a7 42 5e 73 04 33 62 93 8b 98 24   # digest = sha256("hello")
"#;

const BLOCK: &str = r#"
81                                                # type 0x81: Block
00 00 00 05                                       # body length: 5
68 65 6c 6c 6f                                    # block bytes: "hello"
"#;

const HAVE_REQUEST: &str = r#"
02                                                # type 0x02: Have
00 00 00 4c                                       # body length: 76
00 02                                             # CID count: 2
24                                                # CID length: 36
01 55 12 20                                       # CIDv1, raw, sha2-256, 32-byte digest
2c f2 4d ba 5f b0 a3 0e 26 e8 3b 2a c5 b9 e2 9e
1b 16 1e 5c 1f a7 42 5e 73 04 33 62 93 8b 98 24   # digest = sha256("hello")
24                                                # CID length: 36
01 55 12 20                                       # CIDv1, raw, sha2-256, 32-byte digest
48 6e a4 62 24 d1 bb 4f b6 80 f3 4f 7c 9a d9 6a
8f 24 ec 88 be 73 ea 8e 5a 6c 65 26 0e 9c b8 a7   # digest = sha256("world")
"#;

const HAVE_RESPONSE: &str = r#"
82                                                # type 0x82: Have
00 00 00 03                                       # body length: 3
00 02                                             # answer count: 2
80                                                # bitmap 1000_0000: "hello" held, "world" not
"#;

const REPLICATE: &str = r"
03                                                # type 0x03: Replicate
00 00 00 cb                                       # body length: 203
24                                                # CID length: 36
01 71 12 20                                       # CIDv1, dag-cbor, sha2-256, 32-byte digest
c1 9a 79 7f a1 fd 59 0c d2 e5 b4 2d 1c f5 f2 46
e2 9b 91 68 4e 2f 87 40 4b 81 dc 34 5c 7a 56 a0   # digest = sha256(a0), the empty dag-cbor map
00 00 00 00 00 00 00 03                           # blocks: 3
00 00 00 00 00 10 04 00                           # bytes: 1,049,600
01                                                # lease (150 bytes): kind 0x01
01 71 12 20                                       # the root's CID again, without a length
c1 9a 79 7f a1 fd 59 0c d2 e5 b4 2d 1c f5 f2 46
e2 9b 91 68 4e 2f 87 40 4b 81 dc 34 5c 7a 56 a0
03                                                # replicas: 3
00 00 00 00 69 55 b9 00                           # issued: 1,767,225,600 (2026-01-01 00:00 UTC)
00 00 00 00 69 7d 46 00                           # expires: 1,769,817,600 (30 days later)
8a 88 e3 dd 74 09 f1 95 fd 52 db 2d 3c ba 5d 72
ca 67 09 bf 1d 94 12 1b f3 74 88 01 b4 0f 6f 5c   # owner's Ed25519 public key
6e bb 1d b2 82 59 f8 58 9a 6c 54 af 95 ab 20 c0
ee 4a df df f9 3c b0 46 2b 87 4f d6 4d 5c 1d 0d
16 e5 24 70 58 c0 d3 19 7d 20 f8 c4 bb 01 83 ec
b8 9b ed 34 fd a8 3d a6 61 8b 36 a5 d7 49 5c 00   # Ed25519 signature
";

const REPLICATED: &str = r"
83                                                # type 0x83: Replicated
00 00 00 08                                       # body length: 8
00 00 00 00 00 00 00 03                           # blocks: 3
";

const DELETE: &str = r"
04                                                # type 0x04: Delete
00 00 00 25                                       # body length: 37
24                                                # CID length: 36
01 71 12 20                                       # CIDv1, dag-cbor, sha2-256, 32-byte digest
c1 9a 79 7f a1 fd 59 0c d2 e5 b4 2d 1c f5 f2 46
e2 9b 91 68 4e 2f 87 40 4b 81 dc 34 5c 7a 56 a0   # digest = sha256(a0), the empty dag-cbor map
";

const HOLDS: &str = r"
07                                                # type 0x07: Holds
00 00 00 25                                       # body length: 37
24                                                # CID length: 36
01 71 12 20                                       # CIDv1, dag-cbor, sha2-256, 32-byte digest
c1 9a 79 7f a1 fd 59 0c d2 e5 b4 2d 1c f5 f2 46
e2 9b 91 68 4e 2f 87 40 4b 81 dc 34 5c 7a 56 a0   # digest = sha256(a0), the empty dag-cbor map
";

const HOLDING: &str = r"
87                                                # type 0x87: Holding
00 00 00 0a                                       # body length: 10
01                                                # pinned: yes
03                                                # replicas: 3
00 00 00 00 69 57 0a 80                           # repaired: 1,767,312,000 (2026-01-02 00:00 UTC)
";

const PROVE: &str = r#"
08                                                # type 0x08: Prove (4.0.0)
00 00 00 6c                                       # body length: 108
24                                                # root: CID length 36
01 71 12 20                                       # CIDv1, dag-cbor, sha2-256, 32-byte digest
c1 9a 79 7f a1 fd 59 0c d2 e5 b4 2d 1c f5 f2 46
e2 9b 91 68 4e 2f 87 40 4b 81 dc 34 5c 7a 56 a0   # digest = sha256(a0), the empty dag-cbor map
00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f
10 11 12 13 14 15 16 17 18 19 1a 1b 1c 1d 1e 1f   # nonce: bytes 0 to 31
00 01                                             # count: 1
24                                                # CID length: 36
01 55 12 20                                       # CIDv1, raw, sha2-256, 32-byte digest
2c f2 4d ba 5f b0 a3 0e 26 e8 3b 2a c5 b9 e2 9e
1b 16 1e 5c 1f a7 42 5e 73 04 33 62 93 8b 98 24   # digest = sha256("hello")
"#;

const PROOF: &str = r#"
88                                                # type 0x88: Proof (4.0.0)
00 00 00 22                                       # body length: 34
00 01                                             # count: 1
e3 01 c3 73 33 05 cb 98 21 00 a8 c4 44 67 52 4d
44 e8 92 e4 fe 2f 59 29 6e 38 c7 8b df 94 0b 47   # sha256(nonce ‖ "hello")
"#;

const DELETED: &str = r"
84                                                # type 0x84: Deleted
00 00 00 00                                       # body length: 0
";

const NOT_FOUND: &str = r"
85                                                # type 0x85: NotFound
00 00 00 00                                       # body length: 0
";

const ERROR: &str = r#"
86                                                # type 0x86: Error
00 00 00 0f                                       # body length: 15
00 02                                             # code: 2 = Refused
6e 6f 74 20 74 68 65 20 6f 77 6e 65 72            # message: "not the owner" (13 bytes)
"#;

const BAD_REQUEST: &str = r#"
86                                                # type 0x86: Error
00 00 00 1f                                       # body length: 31
00 06                                             # code: 6 = BadRequest
43 49 44 20 6d 75 6c 74 69 68 61 73 68 20 69 73
20 6e 6f 74 20 73 68 61 32 2d 32 35 36            # message: "CID multihash is not sha2-256" (29 bytes)
"#;

/// Every vector, in the order the spec lists them.
const VECTORS: [&str; 15] = [
    GET_BLOCK,
    BLOCK,
    NOT_FOUND,
    HAVE_REQUEST,
    HAVE_RESPONSE,
    REPLICATE,
    REPLICATED,
    DELETE,
    DELETED,
    HOLDS,
    HOLDING,
    PROVE,
    PROOF,
    ERROR,
    BAD_REQUEST,
];

/// Bytes of an annotated hex dump: `#` starts a comment, whitespace is
/// ignored.
fn hex(dump: &str) -> Vec<u8> {
    dump.lines()
        .flat_map(|line| line.split('#').next().unwrap_or("").split_whitespace())
        .map(|byte| {
            assert_eq!(byte.len(), 2, "bad hex byte {byte:?}");
            u8::from_str_radix(byte, 16).expect("hex digit")
        })
        .collect()
}

fn raw_cid(data: &[u8]) -> Cid {
    cid_of(0x55, data)
}

fn cid_of(codec: u64, data: &[u8]) -> Cid {
    let digest = Sha256::digest(data);
    Cid::new_v1(codec, Multihash::wrap(0x12, &digest).expect("32-byte digest"))
}

fn hello() -> Cid {
    raw_cid(b"hello")
}

fn world() -> Cid {
    raw_cid(b"world")
}

/// The nonce of the `Prove` example: bytes 0 to 31.
const NONCE: [u8; 32] = {
    let mut nonce = [0; 32];
    let mut i = 0;
    while i < 32 {
        nonce[i] = i as u8;
        i += 1;
    }
    nonce
};

fn empty_map() -> Cid {
    cid_of(0x71, &[0xa0])
}

/// The owner of the examples' lease and delete record: the Ed25519 key
/// whose secret is 32 bytes of 0x01 (peer id
/// 12D3KooWK99VoVxNE7XzyBwXEzW7xhK7Gpv85r9F3V3fyKSUKPH5).
fn example_owner() -> Keypair {
    let mut secret = [1u8; 32];
    let secret = ed25519::SecretKey::try_from_bytes(&mut secret).unwrap();
    let owner = Keypair::from(ed25519::Keypair::from(secret));
    assert_eq!(
        owner.public().to_peer_id().to_string(),
        "12D3KooWK99VoVxNE7XzyBwXEzW7xhK7Gpv85r9F3V3fyKSUKPH5"
    );
    owner
}

/// The lease of the Replicate example: 3 copies of the empty map, from
/// 2026-01-01 for 30 days.
fn example_lease() -> Lease {
    let owner = example_owner();
    let lease = Lease::issue_at(&owner, empty_map(), 3, 1_767_225_600, 1_769_817_600).unwrap();
    assert_eq!(Lease::decode(&lease.encode()).unwrap().owner(), owner.public().to_peer_id());
    lease
}

fn assert_invalid_data<T: std::fmt::Debug>(result: io::Result<T>, what: &str) {
    match result {
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{what}: wrong error kind: {e}"),
        Ok(value) => panic!("{what}: accepted as {value:?}"),
    }
}

/// A frame header followed by `body`, for hand-made malformed frames.
fn frame(message_type: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![message_type];
    out.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn cid_field(cid_bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![u8::try_from(cid_bytes.len()).unwrap()];
    out.extend_from_slice(cid_bytes);
    out
}

// ---- Golden tests ----

#[test]
fn spec_examples_are_the_test_vectors() {
    let spec =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/protocols/file-protocol.md"))
            .expect("read the spec");
    let mut blocks = Vec::new();
    let mut lines = spec.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "```hex" {
            let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            blocks.push(block.join("\n"));
        }
    }
    let vectors: Vec<&str> = VECTORS.iter().map(|v| v.trim_matches('\n')).collect();
    assert_eq!(blocks, vectors, "spec hex examples differ from the test vectors");
}

/// The bytes of the ```` ```hex <label> ```` block of
/// `protocols/data-format.md`.
fn data_format_vector(label: &str) -> Vec<u8> {
    let spec =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/protocols/data-format.md"))
            .expect("read the data format spec");
    let mut lines = spec.lines();
    while let Some(line) = lines.next() {
        if line.trim().strip_prefix("```hex").map(str::trim) == Some(label) {
            let dump: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            return hex(&dump.join("\n"));
        }
    }
    panic!("the data format spec has no hex block {label}");
}

/// 2026-01-01 00:00 UTC and 30 days later: the delete record's times.
const DELETED_AT: u64 = 1_767_225_600;
const KEEP_UNTIL: u64 = 1_769_817_600;

#[test]
fn golden_delete_record_and_its_dht_key() {
    let owner = example_owner();
    let peer = owner.public().to_peer_id();
    let record = DeleteRecord::issue_at(&owner, empty_map(), DELETED_AT, KEEP_UNTIL).unwrap();
    let bytes = data_format_vector("delete-record");
    let key = data_format_vector("delete-record-key");

    // Built from the fixed inputs: exactly the spec's bytes.
    assert_eq!(bytes.len(), DELETE_RECORD_LEN);
    assert_eq!(record.encode(), bytes, "the delete record");
    assert_eq!(DeleteRecord::dht_key(&empty_map(), &peer), key, "its DHT key");

    // Read back: the same record, signed by the same owner.
    let back = DeleteRecord::decode(&bytes).unwrap();
    assert_eq!(back, record);
    assert_eq!(back.owner(), peer);
    assert_eq!((back.root, back.deleted, back.keep_until), (empty_map(), DELETED_AT, KEEP_UNTIL));
    assert_eq!(key.len(), 16 + 36 + 38);
    assert_eq!(&key[..16], b"/dfs-p2p/delete/");
    assert_eq!(Cid::try_from(&key[16..52]).unwrap(), empty_map());
    assert_eq!(PeerId::from_bytes(&key[52..]).unwrap(), peer);

    // As a node that is sent it checks it: kept between its times, only
    // under its own key.
    let day = 86_400;
    assert_eq!(DeleteRecord::from_dht(&key, &bytes, DELETED_AT + day), Ok(record.clone()));
    assert_eq!(DeleteRecord::from_dht(&key, &bytes, KEEP_UNTIL), Err(RecordError::Expired));
    assert_eq!(
        DeleteRecord::from_dht(&key, &bytes, DELETED_AT - 601),
        Err(RecordError::FromTheFuture)
    );
    let elsewhere = DeleteRecord::dht_key(&empty_map(), &PeerId::random());
    assert_eq!(
        DeleteRecord::from_dht(&elsewhere, &bytes, DELETED_AT + day),
        Err(RecordError::OtherRoot)
    );
    // Any changed bit is refused: every byte is signed or is the signature.
    for at in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[at] ^= 0x01;
        assert!(DeleteRecord::decode(&bad).is_err(), "byte {at} changed, still accepted");
    }
}

#[test]
fn a_malformed_request_reads_as_the_spec_answer() {
    // The GetBlock example with multihash code 0x13: the responder reads it
    // as malformed, and its answer is the spec's BadRequest example.
    let mut bytes = hex(GET_BLOCK);
    bytes[8] = 0x13;
    let frame =
        block_on(FileCodec::default().read_request(&STREAM_PROTOCOL, &mut Cursor::new(bytes)));
    let RequestFrame::Malformed(reason) = frame.unwrap() else { panic!("read as valid") };
    let answer = Response::error(ErrorCode::BadRequest, reason);
    assert_eq!(write_response(answer).unwrap(), hex(BAD_REQUEST));
}

#[test]
fn example_cids_are_the_ones_the_spec_names() {
    let named = [
        ("bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq", hello()),
        ("bafkreicin2sgejgrxnh3nahtj56jvwlkr4sozcf6opvi4wtmmuta5hfyu4", world()),
        ("bafyreigbtj4x7ip5legnfznufuopl4sg4knzc2cof6duas4b3q2fy6swua", empty_map()),
    ];
    for (text, cid) in named {
        assert_eq!(Cid::try_from(text).unwrap(), cid);
        assert_eq!(cid.to_string(), text);
        assert!(is_supported_cid(&cid));
    }
}

#[test]
fn golden_requests() {
    let cases = [
        (GET_BLOCK, Request::GetBlock { cid: hello() }),
        (HAVE_REQUEST, Request::Have { cids: vec![hello(), world()] }),
        (
            REPLICATE,
            Request::Replicate {
                root: empty_map(),
                blocks: 3,
                bytes: 1_049_600,
                lease: example_lease().encode(),
            },
        ),
        (DELETE, Request::Delete { root: empty_map() }),
        (HOLDS, Request::Holds { root: empty_map() }),
        (PROVE, Request::Prove { root: empty_map(), nonce: NONCE, cids: vec![hello()] }),
    ];
    for (dump, request) in cases {
        let bytes = hex(dump);
        assert_eq!(decode_request(&bytes).unwrap(), request);
        assert_eq!(encode_request(&request), bytes, "{request:?}");
        assert_invalid_data(decode_response(&bytes), "request decoded as response");
    }
}

#[test]
fn prove_is_a_request_of_version_4_only() {
    let bytes = hex(PROVE);
    let read = |protocol: &libp2p::StreamProtocol| {
        block_on(FileCodec::default().read_request(protocol, &mut Cursor::new(bytes.clone())))
    };
    assert!(matches!(
        read(&STREAM_PROTOCOL_4).unwrap(),
        RequestFrame::Valid(Request::Prove { .. })
    ));
    match read(&STREAM_PROTOCOL).unwrap() {
        RequestFrame::Malformed(reason) => assert!(reason.contains("0x08"), "{reason}"),
        other => panic!("a Prove under 3.0.0 was read as {other:?}"),
    }
    let request = RequestFrame::Valid(decode_request(&bytes).unwrap());
    let mut out = Vec::new();
    let written = block_on(FileCodec::default().write_request(&STREAM_PROTOCOL, &mut out, request));
    assert!(written.is_err() && out.is_empty(), "a Prove is never sent under 3.0.0");
}

#[test]
fn golden_responses() {
    let cases = [
        (BLOCK, Response::Block { data: b"hello".to_vec().into() }),
        (NOT_FOUND, Response::NotFound),
        (HAVE_RESPONSE, Response::Have { present: vec![true, false] }),
        (REPLICATED, Response::Replicated { blocks: 3 }),
        (DELETED, Response::Deleted),
        (HOLDING, Response::Holding { pinned: true, replicas: 3, repaired: 1_767_312_000 }),
        (
            PROOF,
            Response::Proof {
                digests: vec![dfs_p2p::net::replicas::proof_digest(&NONCE, b"hello")],
            },
        ),
        (ERROR, Response::Error { code: ErrorCode::Refused, message: "not the owner".to_owned() }),
    ];
    for (dump, response) in cases {
        let bytes = hex(dump);
        assert_eq!(decode_response(&bytes).unwrap(), response);
        assert_eq!(encode_response(&response), bytes, "{response:?}");
        assert_invalid_data(decode_request(&bytes), "response decoded as request");
    }
}

#[test]
fn example_block_matches_the_example_cid() {
    let Request::GetBlock { cid } = decode_request(&hex(GET_BLOCK)).unwrap() else {
        panic!("not a GetBlock");
    };
    let Response::Block { data } = decode_response(&hex(BLOCK)).unwrap() else {
        panic!("not a Block");
    };
    assert_eq!(cid.hash().digest(), Sha256::digest(&data).as_slice());
}

#[test]
fn format_constants() {
    assert_eq!(PROTOCOL, "/dfs-p2p/file/3.0.0");
    assert_eq!(STREAM_PROTOCOL.as_ref(), PROTOCOL);
    assert_eq!(PROTOCOL_4, "/dfs-p2p/file/4.0.0");
    assert_eq!(STREAM_PROTOCOL_4.as_ref(), PROTOCOL_4);
    assert_eq!(MAX_PROVE_CIDS, 16);
    assert_eq!(FRAME_HEADER_LEN, 5);
    assert_eq!(MAX_BLOCK_SIZE, 2_097_152);
    assert_eq!(MAX_REQUEST_SIZE, 65_536);
    assert_eq!(MAX_RESPONSE_SIZE, 2_097_157);
    assert_eq!(MAX_HAVE_CIDS, 1024);
    assert_eq!(MAX_ERROR_MESSAGE_LEN, 1024);
    let codes = [
        (ErrorCode::NotFound, 1),
        (ErrorCode::Refused, 2),
        (ErrorCode::NotPinned, 3),
        (ErrorCode::Busy, 4),
        (ErrorCode::Internal, 5),
        (ErrorCode::BadRequest, 6),
        (ErrorCode::Unsupported, 7),
    ];
    for (code, number) in codes {
        assert_eq!(code.to_u16(), number);
        assert_eq!(ErrorCode::from_u16(number), code);
    }
    assert_eq!(ErrorCode::from_u16(0), ErrorCode::Unknown(0));
    assert_eq!(ErrorCode::from_u16(8), ErrorCode::Unknown(8));
    assert_eq!(ErrorCode::from_u16(0xFFFF), ErrorCode::Unknown(0xFFFF));
}

#[test]
fn unknown_error_code_is_kept() {
    let bytes = frame(0x86, &[0x12, 0x34, b'x']);
    let response = decode_response(&bytes).unwrap();
    assert_eq!(
        response,
        Response::Error { code: ErrorCode::Unknown(0x1234), message: "x".to_owned() }
    );
    assert_eq!(encode_response(&response), bytes);
}

// ---- Limits ----

#[test]
fn largest_legal_messages_fit_and_one_more_does_not() {
    let full = Request::Have { cids: vec![hello(); MAX_HAVE_CIDS] };
    let bytes = encode_request(&full);
    assert!(bytes.len() <= MAX_REQUEST_SIZE);
    assert_eq!(decode_request(&bytes).unwrap(), full);

    let over = Request::Have { cids: vec![hello(); MAX_HAVE_CIDS + 1] };
    assert_invalid_data(decode_request(&encode_request(&over)), "1025 CIDs");
    assert_eq!(over.validate().unwrap_err().kind(), io::ErrorKind::InvalidInput);

    let block = Response::Block { data: vec![7; MAX_BLOCK_SIZE].into() };
    let bytes = encode_response(&block);
    assert_eq!(bytes.len(), MAX_RESPONSE_SIZE);
    assert_eq!(decode_response(&bytes).unwrap(), block);

    let over = Response::Block { data: vec![7; MAX_BLOCK_SIZE + 1].into() };
    assert_invalid_data(decode_response(&encode_response(&over)), "block + 1");
    assert_eq!(over.validate().unwrap_err().kind(), io::ErrorKind::InvalidInput);

    let have = Response::Have { present: vec![true; MAX_HAVE_CIDS] };
    assert_eq!(decode_response(&encode_response(&have)).unwrap(), have);
    let over = Response::Have { present: vec![true; MAX_HAVE_CIDS + 1] };
    assert_invalid_data(decode_response(&encode_response(&over)), "1025 answers");

    let message = "a".repeat(MAX_ERROR_MESSAGE_LEN);
    let error = Response::error(ErrorCode::Busy, message.clone());
    assert_eq!(decode_response(&encode_response(&error)).unwrap(), error);
    let over = Response::Error { code: ErrorCode::Busy, message: message + "a" };
    assert_invalid_data(decode_response(&encode_response(&over)), "long message");
}

#[test]
fn error_constructor_cuts_long_messages_at_a_char_boundary() {
    // 'é' is 2 bytes; 'x' shifts it so that byte 1024 falls inside one.
    let long = format!("x{}", "é".repeat(1000));
    let Response::Error { message, .. } = Response::error(ErrorCode::Internal, long) else {
        panic!("not an error");
    };
    assert_eq!(message.len(), MAX_ERROR_MESSAGE_LEN - 1);
    assert!(message.starts_with("xé"));
}

#[test]
fn unsupported_cids_are_refused_on_both_sides() {
    let digest = Sha256::digest(b"hello");
    let v0 = Cid::new_v0(Multihash::wrap(0x12, &digest).unwrap()).unwrap();
    let dag_pb = Cid::new_v1(0x70, Multihash::wrap(0x12, &digest).unwrap());
    let blake3 = Cid::new_v1(0x55, Multihash::wrap(0x1e, &digest).unwrap());
    let short = Cid::new_v1(0x55, Multihash::wrap(0x12, &digest[..20]).unwrap());
    for cid in [v0, dag_pb, blake3, short] {
        assert!(!is_supported_cid(&cid), "{cid}");
        for request in [
            Request::GetBlock { cid },
            Request::Have { cids: vec![hello(), cid] },
            Request::Replicate { root: cid, blocks: 1, bytes: 1, lease: example_lease().encode() },
            Request::Delete { root: cid },
            Request::Holds { root: cid },
        ] {
            assert_eq!(request.validate().unwrap_err().kind(), io::ErrorKind::InvalidInput);
            assert_invalid_data(decode_request(&encode_request(&request)), "bad CID");
        }
    }
}

// ---- Malformed frames ----

#[test]
fn truncated_frames_are_rejected() {
    for dump in VECTORS {
        let bytes = hex(dump);
        for len in 0..bytes.len() {
            assert_invalid_data(decode_request(&bytes[..len]), "truncated");
            assert_invalid_data(decode_response(&bytes[..len]), "truncated");
        }
    }
}

#[test]
fn trailing_bytes_are_rejected() {
    for dump in VECTORS {
        let mut bytes = hex(dump);
        bytes.push(0);
        assert_invalid_data(decode_request(&bytes), "trailing byte");
        assert_invalid_data(decode_response(&bytes), "trailing byte");
    }
    // Inside the body, too: the length covers a byte no field uses.
    let mut body = cid_field(&hello().to_bytes());
    body.push(0);
    assert_invalid_data(decode_request(&frame(0x01, &body)), "extra body byte");
    assert_invalid_data(decode_response(&frame(0x83, &[0; 9])), "9-byte count");
    assert_invalid_data(decode_response(&frame(0x84, &[0])), "Deleted with body");
    let mut have = vec![0, 1];
    have.extend(cid_field(&hello().to_bytes()));
    have.extend(cid_field(&world().to_bytes()));
    assert_invalid_data(decode_request(&frame(0x02, &have)), "count 1, 2 CIDs");
    assert_invalid_data(decode_response(&frame(0x82, &[0, 1, 0x80, 0])), "long bitmap");
}

#[test]
fn unknown_types_are_rejected() {
    let requests = [0x01, 0x02, 0x03, 0x04];
    let responses = [0x81, 0x82, 0x83, 0x84, 0x85, 0x86];
    for message_type in 0..=u8::MAX {
        let bytes = frame(message_type, &[]);
        if !requests.contains(&message_type) {
            assert_invalid_data(decode_request(&bytes), "unknown request type");
        }
        if !responses.contains(&message_type) {
            assert_invalid_data(decode_response(&bytes), "unknown response type");
        }
    }
}

#[test]
fn oversized_length_prefixes_are_rejected() {
    for message_type in 0..=u8::MAX {
        for len in [u32::MAX, 0x8000_0000, 2_097_153, 65_536] {
            let mut bytes = vec![message_type];
            bytes.extend_from_slice(&len.to_be_bytes());
            assert_invalid_data(decode_request(&bytes), "huge request length");
            assert_invalid_data(decode_response(&bytes), "huge response length");
        }
    }
    // Per-type limits are tighter than the frame limits.
    assert_invalid_data(decode_request(&frame(0x01, &[0; 38])), "38-byte GetBlock");
    assert_invalid_data(decode_response(&frame(0x85, &[0])), "NotFound with body");
    assert!(LARGEST_ALLOCATION.load(Ordering::Relaxed) < ABSURD_ALLOCATION);
}

#[test]
fn malformed_fields_are_rejected() {
    let good = hello().to_bytes();
    let mut bad_cids = Vec::new();
    for (index, value) in [(0, 0x00), (0, 0x02), (1, 0x70), (1, 0x56), (2, 0x1e), (3, 0x1f)] {
        let mut cid = good.clone();
        cid[index] = value;
        bad_cids.push(cid_field(&cid));
    }
    // Right bytes, wrong length prefix.
    let mut short = cid_field(&good);
    short[0] = 35;
    bad_cids.push(short);
    let mut long = cid_field(&good);
    long[0] = 37;
    bad_cids.push(long);
    // CIDv0: a bare 34-byte multihash.
    bad_cids.push(cid_field(&good[2..]));
    for field in &bad_cids {
        for message_type in [0x01, 0x03, 0x04] {
            assert_invalid_data(decode_request(&frame(message_type, field)), "bad CID");
        }
        let mut have = vec![0, 1];
        have.extend_from_slice(field);
        assert_invalid_data(decode_request(&frame(0x02, &have)), "bad CID in Have");
    }

    // Have: count over the limit, count past the CIDs given, empty body.
    assert_invalid_data(decode_request(&frame(0x02, &[0x04, 0x01])), "1025 CIDs");
    assert_invalid_data(decode_request(&frame(0x02, &[0, 1])), "missing CID");
    assert_invalid_data(decode_request(&frame(0x02, &[])), "no count");

    // Have response: padding bits set, bitmap too short, count over limit.
    assert_invalid_data(decode_response(&frame(0x82, &[0, 2, 0x81])), "padding");
    assert_invalid_data(decode_response(&frame(0x82, &[0, 9, 0xff])), "short bitmap");
    let mut over = vec![0x04, 0x01];
    over.extend_from_slice(&[0; 129]);
    assert_invalid_data(decode_response(&frame(0x82, &over)), "1025 answers");

    // Error: not UTF-8, no code.
    assert_invalid_data(decode_response(&frame(0x86, &[0, 2, 0xff])), "bad UTF-8");
    assert_invalid_data(decode_response(&frame(0x86, &[0])), "half a code");
    // Replicated: short count.
    assert_invalid_data(decode_response(&frame(0x83, &[0; 7])), "7-byte count");
}

// ---- The async codec ----

/// Serves `bytes`, then fails every read with `ErrorKind::Other`: a codec
/// that reads past them is caught.
struct ThenFail {
    bytes: Cursor<Vec<u8>>,
    read_past_end: bool,
}

impl AsyncRead for ThenFail {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.bytes).poll_read(cx, buf) {
            Poll::Ready(Ok(0)) if !buf.is_empty() => {
                this.read_past_end = true;
                Poll::Ready(Err(io::Error::other("read past the header")))
            }
            other => other,
        }
    }
}

/// Hands out one byte per read, to exercise partial reads.
struct Trickle(Cursor<Vec<u8>>);

impl AsyncRead for Trickle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let len = buf.len().min(1);
        Pin::new(&mut self.0).poll_read(cx, &mut buf[..len])
    }
}

fn write_request(request: Request) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    block_on(FileCodec::default().write_request(
        &STREAM_PROTOCOL_4,
        &mut out,
        RequestFrame::Valid(request),
    ))?;
    Ok(out)
}

fn write_response(response: Response) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    block_on(FileCodec::default().write_response(&STREAM_PROTOCOL, &mut out, response))?;
    Ok(out)
}

/// Reads a request as a responder does; a malformed one (which the node
/// answers `Error BadRequest`) as an `InvalidData` error with its reason.
fn read_request(bytes: Vec<u8>) -> io::Result<Request> {
    read_request_from(&mut Cursor::new(bytes))
}

fn read_request_from(io: &mut (impl AsyncRead + Unpin + Send)) -> io::Result<Request> {
    match block_on(FileCodec::default().read_request(&STREAM_PROTOCOL_4, io))? {
        RequestFrame::Valid(request) => Ok(request),
        RequestFrame::Malformed(reason) => Err(io::Error::new(io::ErrorKind::InvalidData, reason)),
        RequestFrame::Busy => Err(io::Error::other("a fresh codec's budget refused the body")),
    }
}

fn read_response(bytes: Vec<u8>) -> io::Result<Response> {
    block_on(FileCodec::default().read_response(&STREAM_PROTOCOL, &mut Cursor::new(bytes)))
}

#[test]
fn async_codec_exchange() {
    // Requester writes, responder reads and answers, requester reads.
    let request = Request::GetBlock { cid: hello() };
    let on_wire = write_request(request.clone()).unwrap();
    assert_eq!(on_wire, hex(GET_BLOCK));
    assert_eq!(read_request(on_wire).unwrap(), request);

    let response = Response::Block { data: b"hello".to_vec().into() };
    let on_wire = write_response(response.clone()).unwrap();
    assert_eq!(on_wire, hex(BLOCK));
    assert_eq!(read_response(on_wire).unwrap(), response);

    for dump in [HAVE_REQUEST, REPLICATE, DELETE] {
        let request = read_request(hex(dump)).unwrap();
        assert_eq!(write_request(request).unwrap(), hex(dump));
    }
    for dump in [NOT_FOUND, HAVE_RESPONSE, REPLICATED, DELETED, ERROR] {
        let response = read_response(hex(dump)).unwrap();
        assert_eq!(write_response(response).unwrap(), hex(dump));
    }
}

#[test]
fn async_codec_reads_a_full_block_in_small_pieces() {
    let data: Vec<u8> = (0..=250u8).cycle().take(MAX_BLOCK_SIZE).collect();
    let on_wire = write_response(Response::Block { data: data.clone().into() }).unwrap();
    assert_eq!(on_wire.len(), MAX_RESPONSE_SIZE);
    let mut io = Trickle(Cursor::new(on_wire));
    let response = block_on(FileCodec::default().read_response(&STREAM_PROTOCOL, &mut io)).unwrap();
    assert_eq!(response, Response::Block { data: data.into() });

    let mut io = Trickle(Cursor::new(hex(HAVE_REQUEST)));
    let request = read_request_from(&mut io).unwrap();
    assert_eq!(request, decode_request(&hex(HAVE_REQUEST)).unwrap());
}

#[test]
fn async_codec_rejects_malformed_streams() {
    for dump in VECTORS {
        let bytes = hex(dump);
        for len in 0..bytes.len() {
            assert_invalid_data(read_request(bytes[..len].to_vec()), "truncated");
            assert_invalid_data(read_response(bytes[..len].to_vec()), "truncated");
        }
        // One frame per stream: anything after it is an error.
        let mut two = bytes.clone();
        two.extend_from_slice(&bytes);
        assert_invalid_data(read_request(two.clone()), "two frames");
        assert_invalid_data(read_response(two), "two frames");
    }
    assert_invalid_data(read_request(frame(0x7f, &[])), "unknown type");
    assert_invalid_data(read_response(frame(0x01, &[])), "request as response");
}

#[test]
fn async_codec_rejects_a_huge_length_before_allocating_or_reading() {
    let cases: [(u8, u32, bool); 5] = [
        (0x81, u32::MAX, false),
        (0x81, 0xFFFF_FFF0, false),
        (0x81, u32::try_from(MAX_BLOCK_SIZE + 1).unwrap(), false),
        (0x02, u32::MAX, true),
        (0x02, u32::try_from(MAX_REQUEST_SIZE).unwrap(), true),
    ];
    for (message_type, len, is_request) in cases {
        let mut header = vec![message_type];
        header.extend_from_slice(&len.to_be_bytes());
        let mut io = ThenFail { bytes: Cursor::new(header), read_past_end: false };
        if is_request {
            assert_invalid_data(read_request_from(&mut io), "huge request length");
        } else {
            let result = block_on(FileCodec::default().read_response(&STREAM_PROTOCOL, &mut io));
            assert_invalid_data(result, "huge response length");
        }
        assert!(!io.read_past_end, "read the body of a frame it must reject");
    }
    assert!(LARGEST_ALLOCATION.load(Ordering::Relaxed) < ABSURD_ALLOCATION);
}

#[test]
fn async_codec_refuses_to_send_what_the_peer_would_reject() {
    let too_many = Request::Have { cids: vec![hello(); MAX_HAVE_CIDS + 1] };
    let too_big = Response::Block { data: vec![0; MAX_BLOCK_SIZE + 1].into() };
    let too_long = Response::Error {
        code: ErrorCode::Internal,
        message: "a".repeat(MAX_ERROR_MESSAGE_LEN + 1),
    };
    assert_eq!(write_request(too_many).unwrap_err().kind(), io::ErrorKind::InvalidInput);
    assert_eq!(write_response(too_big).unwrap_err().kind(), io::ErrorKind::InvalidInput);
    assert_eq!(write_response(too_long).unwrap_err().kind(), io::ErrorKind::InvalidInput);
}

// ---- Property tests ----

fn arb_cid() -> impl Strategy<Value = Cid> {
    (prop_oneof![Just(0x55u64), Just(0x71u64)], any::<[u8; 32]>())
        .prop_map(|(codec, digest)| Cid::new_v1(codec, Multihash::wrap(0x12, &digest).unwrap()))
}

fn arb_request() -> impl Strategy<Value = Request> {
    prop_oneof![
        arb_cid().prop_map(|cid| Request::GetBlock { cid }),
        vec(arb_cid(), 0..=MAX_HAVE_CIDS).prop_map(|cids| Request::Have { cids }),
        (arb_cid(), any::<u64>(), any::<u64>(), vec(any::<u8>(), LEASE_LEN)).prop_map(
            |(root, blocks, bytes, lease)| Request::Replicate { root, blocks, bytes, lease }
        ),
        arb_cid().prop_map(|root| Request::Delete { root }),
        arb_cid().prop_map(|root| Request::Holds { root }),
        (arb_cid(), any::<[u8; 32]>(), vec(arb_cid(), 0..=MAX_PROVE_CIDS))
            .prop_map(|(root, nonce, cids)| Request::Prove { root, nonce, cids }),
    ]
}

fn arb_error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        Just(ErrorCode::NotFound),
        Just(ErrorCode::Refused),
        Just(ErrorCode::NotPinned),
        Just(ErrorCode::Busy),
        Just(ErrorCode::Internal),
        Just(ErrorCode::BadRequest),
        Just(ErrorCode::Unsupported),
        Just(ErrorCode::Unknown(0)),
        (8u16..).prop_map(ErrorCode::Unknown),
    ]
}

fn arb_response() -> impl Strategy<Value = Response> {
    prop_oneof![
        vec(any::<u8>(), 0..4096).prop_map(|data| Response::Block { data: data.into() }),
        Just(Response::NotFound),
        vec(any::<bool>(), 0..=MAX_HAVE_CIDS).prop_map(|present| Response::Have { present }),
        any::<u64>().prop_map(|blocks| Response::Replicated { blocks }),
        Just(Response::Deleted),
        (any::<bool>(), any::<u8>(), any::<u64>()).prop_map(|(pinned, replicas, repaired)| {
            Response::Holding { pinned, replicas, repaired }
        }),
        vec(any::<[u8; 32]>(), 0..=MAX_PROVE_CIDS).prop_map(|digests| Response::Proof { digests }),
        // At most 256 chars of at most 4 bytes: within the 1024-byte limit.
        (arb_error_code(), "\\PC{0,256}")
            .prop_map(|(code, message)| Response::Error { code, message }),
    ]
}

/// A decoder either rejects bytes as `InvalidData` or accepts them, and then
/// they are the one encoding of what it decoded.
fn check_request_bytes(bytes: &[u8]) -> Result<(), TestCaseError> {
    match decode_request(bytes) {
        Ok(request) => prop_assert_eq!(encode_request(&request), bytes),
        Err(e) => prop_assert_eq!(e.kind(), io::ErrorKind::InvalidData),
    }
    Ok(())
}

fn check_response_bytes(bytes: &[u8]) -> Result<(), TestCaseError> {
    match decode_response(bytes) {
        Ok(response) => prop_assert_eq!(encode_response(&response), bytes),
        Err(e) => prop_assert_eq!(e.kind(), io::ErrorKind::InvalidData),
    }
    Ok(())
}

proptest! {
    #[test]
    fn requests_round_trip(request in arb_request()) {
        prop_assert!(request.validate().is_ok());
        let bytes = encode_request(&request);
        prop_assert!(bytes.len() <= MAX_REQUEST_SIZE);
        prop_assert_eq!(decode_request(&bytes).unwrap(), request.clone());
        prop_assert_eq!(read_request(bytes.clone()).unwrap(), request.clone());
        prop_assert_eq!(write_request(request).unwrap(), bytes);
    }

    #[test]
    fn responses_round_trip(response in arb_response()) {
        prop_assert!(response.validate().is_ok());
        let bytes = encode_response(&response);
        prop_assert!(bytes.len() <= MAX_RESPONSE_SIZE);
        prop_assert_eq!(decode_response(&bytes).unwrap(), response.clone());
        prop_assert_eq!(read_response(bytes.clone()).unwrap(), response.clone());
        prop_assert_eq!(write_response(response).unwrap(), bytes);
    }

    #[test]
    fn garbage_is_rejected_or_canonical(bytes in vec(any::<u8>(), 0..128)) {
        check_request_bytes(&bytes)?;
        check_response_bytes(&bytes)?;
    }

    #[test]
    fn mutated_requests_are_rejected_or_canonical(
        request in arb_request(),
        index in any::<prop::sample::Index>(),
        value in any::<u8>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = encode_request(&request);
        let at = index.index(bytes.len());
        bytes[at] = value;
        check_request_bytes(&bytes)?;
        bytes.truncate(cut.index(bytes.len()));
        check_request_bytes(&bytes)?;
    }

    #[test]
    fn mutated_responses_are_rejected_or_canonical(
        response in arb_response(),
        index in any::<prop::sample::Index>(),
        value in any::<u8>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = encode_response(&response);
        let at = index.index(bytes.len());
        bytes[at] = value;
        check_response_bytes(&bytes)?;
        bytes.truncate(cut.index(bytes.len()));
        check_response_bytes(&bytes)?;
    }
}
