//! The HTTP gateway (`--http ADDR`): files by ticket for browsers, curl and
//! video players, with byte ranges that fetch only the blocks they cover.
//!
//! - `GET`/`HEAD /dfs/<ticket>` and `/dfs/<ticket>/<any-name>`: the file,
//!   with `Content-Type` from its stored name, `ETag` (the quoted root CID),
//!   `Cache-Control: public, max-age=31536000, immutable`, `Accept-Ranges`,
//!   `Content-Disposition: inline`. One range → `206`; an unsatisfiable
//!   one (or several, none satisfiable) → `416`; several → the whole file
//!   with `200` (multipart answers are not made); `If-None-Match` with the
//!   ETag → `304`; a malformed ticket → `400`; content no reachable node
//!   holds → `404`; other methods → `405`.
//! - `POST /dfs` (optional `?name=`) and `PUT /dfs/<name>`: stores the body
//!   as a file and replicates it like `put`; `201` with the ticket and a
//!   `Location`. Only when uploads are on: by default on a loopback address,
//!   elsewhere with `--http-upload`.
//!
//! A body is streamed from the export through a small channel: memory per
//! reader is about [`READ_AHEAD`] + 6 chunks (14 MiB at the default chunk
//! size), and a client that goes away stops its fetches (the body's end
//! sets the read's cancel flag). A ticket in a URL is a read capability:
//! whoever sees the URL can read the file.
//!
//! What one client can hold. A client is its IP address (an IPv6 client
//! its /64 network, which one host commonly has whole); loopback addresses
//! are clients like any other, each on its own. Past a share the request is
//! answered `503` (a connection is closed at once):
//!
//! - connections: [`CONNECTIONS_PER_CLIENT`], [`MAX_CONNECTIONS`] in all; a
//!   request head is at most [`MAX_HEAD`] bytes (`431` past it) and must
//!   arrive within [`HEADER_TIMEOUT`], which also closes a connection idle
//!   between requests;
//! - root lookups (is the file here or with a provider, and what is it):
//!   [`LOOKUPS_PER_CLIENT`], [`MAX_LOOKUPS`] in all, each at most
//!   [`LOOKUP_TIMEOUT`] (`504` then). A lookup comes first and takes no read
//!   slot, so tickets of content that is nowhere hold none;
//! - reads (a body being sent): [`READERS_PER_CLIENT`], [`MAX_READERS`] in
//!   all. A body whose client takes nothing for [`IDLE_TIMEOUT`] is dropped
//!   with its connection, and its slot freed;
//! - uploads: [`UPLOADS_PER_CLIENT`], [`MAX_UPLOADS`] in all; one whose
//!   client sends nothing for [`IDLE_TIMEOUT`] fails;
//! - a `Range` header longer than [`MAX_RANGE_HEADER`] bytes or with more
//!   than [`MAX_RANGES`] ranges is ignored (the whole file, `200`); within
//!   those it is read in one pass.

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{ConnectInfo, Path, Query, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use futures::StreamExt;
use headers::{ETag, HeaderMapExt, IfNoneMatch};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::{mpsc, watch},
    task::JoinSet,
};
use tower::ServiceExt;

use crate::{
    Ticket,
    export::{ByteRange, ChannelWriter, Output},
    node::{GetOptions, Node, NodeError, PutOptions},
};

/// Reads served at once, from all clients; more are answered `503`. With
/// the memory of each (see the module docs), what readers can hold in all.
pub const MAX_READERS: usize = 64;
/// Reads one client may have at once (a browser opens up to six
/// connections to a host; a player one or two); more are answered `503`.
pub const READERS_PER_CLIENT: usize = 8;
/// Root lookups at once, from all clients; more are answered `503`.
pub const MAX_LOOKUPS: usize = 128;
/// Root lookups one client may have at once; more are answered `503`. As
/// many as its reads: a player's first requests for a file all look it up.
pub const LOOKUPS_PER_CLIENT: usize = READERS_PER_CLIENT;
/// The longest a root lookup may take: longer than a `get` takes to find
/// content that is somewhere (a DHT lookup is at most 20 s), then `504`.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections open at once, from all clients; more are closed at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// Connections one client may have open; more are closed at once.
pub const CONNECTIONS_PER_CLIENT: usize = 32;
/// The longest a request head (the request line and the headers) may take
/// to arrive, counted from the end of the previous answer: a connection
/// that sends none in this time, or only part of one, is closed.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a client may take nothing of a body being sent to it (or
/// send nothing of an upload's body) before the connection is dropped.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(20);
/// The largest request head, in bytes; larger ones are answered `431`.
/// Browsers send well under 8 KiB, cookies included.
pub const MAX_HEAD: usize = 32 * 1024;
/// The longest `Range` header read, in bytes; a longer one is ignored.
/// Browsers and players send one range of a few dozen bytes.
pub const MAX_RANGE_HEADER: usize = 1024;
/// The most ranges a `Range` header may list; with more it is ignored.
pub const MAX_RANGES: usize = 16;
/// Uploads at once, from all clients; more are answered `503`.
pub const MAX_UPLOADS: usize = 4;
/// Uploads one client may have at once; more are answered `503`.
pub const UPLOADS_PER_CLIENT: usize = 2;
/// How long the gateway waits for its connections to end when the node
/// stops (answers under way finish; idle connections close at once).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Pieces (each at most a chunk) waiting between a read and its client.
const BODY_QUEUE: usize = 4;
/// Leaves a read fetches ahead of its client: with the queue and the
/// export's own two (`export::stream`), about 14 chunks (14 MiB at the
/// default chunk size) in memory per client, and enough ahead that playback
/// does not wait on the network.
pub const READ_AHEAD: usize = 8;
/// The longest stored name an upload may give.
const MAX_NAME: usize = 255;

/// The gateway's shared state; cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    node: Node,
    upload: bool,
    lookups: Arc<Shares>,
    readers: Arc<Shares>,
    uploads: Arc<Shares>,
}

/// Whether `addr` is a loopback address, where uploads are on by default.
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// The client an address counts as: an IPv4 address itself, an IPv6
/// address its /64 network (one host commonly holds a whole /64, so a
/// share per address would be no share at all).
pub fn client_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
        v4 => v4,
    }
}

/// Binds the gateway's address, with a one-line reason when it cannot.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| match e.kind() {
        io::ErrorKind::AddrInUse => {
            format!("cannot listen for HTTP on {addr}: the port is in use by another process")
        }
        _ => format!("cannot listen for HTTP on {addr}: {e}"),
    })
}

/// Serves the gateway on `listener` until the node stops: one task per
/// connection, each within its client's share of connections, with
/// hyper's HTTP/1 server bounding the request head in size and time and
/// [`Stalls`] bounding how long a client may leave a body untaken.
pub async fn serve(node: Node, listener: tokio::net::TcpListener, upload: bool) {
    let gateway = Gateway {
        node: node.clone(),
        upload,
        lookups: Shares::new(LOOKUPS_PER_CLIENT, MAX_LOOKUPS),
        readers: Shares::new(READERS_PER_CLIENT, MAX_READERS),
        uploads: Shares::new(UPLOADS_PER_CLIENT, MAX_UPLOADS),
    };
    let app = router(gateway);
    let connections = Shares::new(CONNECTIONS_PER_CLIENT, MAX_CONNECTIONS);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT).max_header_size(MAX_HEAD);
    let stopped = {
        let net = node.net().clone();
        async move { net.stopped().await }
    };
    tokio::pin!(stopped);
    let (stop, stopping) = watch::channel(false);
    let mut running = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut stopped => break,
            Some(_) = running.join_next(), if !running.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
        };
        let Ok(share) = connections.take(client_of(peer.ip())) else {
            tracing::debug!("HTTP connection from {peer} refused: too many open");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request| {
            request.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(request.map(Body::new))
        });
        let connection = http.serve_connection(TokioIo::new(Stalls::new(stream)), service);
        let mut stopping = stopping.clone();
        running.spawn(async move {
            let _share = share;
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => return ended(peer, result),
                _ = stopping.wait_for(|stop| *stop) => connection.as_mut().graceful_shutdown(),
            }
            ended(peer, connection.await);
        });
    }
    drop(listener);
    let _ = stop.send(true);
    let drained = async { while running.join_next().await.is_some() {} };
    // What is still running after the grace is aborted with the set.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, drained).await;
}

fn ended(peer: SocketAddr, result: Result<(), hyper::Error>) {
    if let Err(e) = result {
        tracing::debug!("HTTP connection from {peer} ended: {e}");
    }
}

/// An accept that failed: a connection reset before it was taken is
/// nothing; anything else (out of file descriptors) pauses the loop a
/// moment, so that it does not spin while connections end.
async fn accept_failed(e: io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(e.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset) {
        return;
    }
    tracing::warn!("the HTTP gateway cannot accept a connection: {e}");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Holdings of one kind (connections, lookups, reads, uploads), counted per
/// client and in all, each under its cap. The map has an entry only for a
/// client that holds something, so it is never larger than the cap in all.
struct Shares {
    per_client: usize,
    total: usize,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    total: usize,
    by_client: HashMap<IpAddr, usize>,
}

/// Why a share was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Full {
    /// The client holds its share.
    Client,
    /// All clients together hold the cap.
    All,
}

/// One holding; given back when dropped.
struct Share {
    shares: Arc<Shares>,
    client: IpAddr,
}

impl Shares {
    fn new(per_client: usize, total: usize) -> Arc<Shares> {
        Arc::new(Shares { per_client, total, held: Mutex::default() })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        // The counts stay right through a panic elsewhere: each change is
        // one statement.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One more holding for `client`, if its share and the cap allow.
    fn take(self: &Arc<Self>, client: IpAddr) -> Result<Share, Full> {
        let mut held = self.lock();
        if held.by_client.get(&client).is_some_and(|&n| n >= self.per_client) {
            return Err(Full::Client);
        }
        if held.total >= self.total {
            return Err(Full::All);
        }
        held.total += 1;
        *held.by_client.entry(client).or_default() += 1;
        Ok(Share { shares: self.clone(), client })
    }

    #[cfg(test)]
    fn held(&self) -> (usize, usize) {
        let held = self.lock();
        (held.total, held.by_client.len())
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut held = self.shares.lock();
        held.total -= 1;
        if let Some(n) = held.by_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                held.by_client.remove(&self.client);
            }
        }
    }
}

/// `503` for a share refused, naming which.
fn busy(full: Full, what: &str) -> Response {
    let message = match full {
        Full::Client => format!("too many {what} from your address at once: try again"),
        Full::All => format!("too many {what} at once: try again"),
    };
    let mut response = text(StatusCode::SERVICE_UNAVAILABLE, &message);
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// A connection's socket whose writes fail once the client has taken
/// nothing for [`IDLE_TIMEOUT`]: hyper then drops the connection (reset,
/// so the bytes the kernel still held for the client go too), and with
/// it the answer's body and its read slot. hyper only writes while it has
/// something to send, so waiting for the node (a block on its way) never
/// counts.
struct Stalls {
    stream: TcpStream,
    /// When the stalled write fails; set when a write first waits.
    deadline: Pin<Box<tokio::time::Sleep>>,
    stalled: bool,
}

impl Stalls {
    fn new(stream: TcpStream) -> Self {
        Stalls { stream, deadline: Box::pin(tokio::time::sleep(IDLE_TIMEOUT)), stalled: false }
    }

    /// `write`'s result, or a timeout once it has waited [`IDLE_TIMEOUT`].
    fn guard<T>(
        &mut self,
        cx: &mut Context<'_>,
        write: impl FnOnce(Pin<&mut TcpStream>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if let Poll::Ready(result) = write(Pin::new(&mut self.stream), cx) {
            self.stalled = false;
            return Poll::Ready(result);
        }
        if !self.stalled {
            self.stalled = true;
            self.deadline.as_mut().reset(tokio::time::Instant::now() + IDLE_TIMEOUT);
        }
        ready!(self.deadline.as_mut().poll(cx));
        // Dropped, not finished: what the kernel still holds for the
        // client is discarded (a reset), not sent once it reads again.
        let _ = self.stream.set_zero_linger();
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the client took nothing for {} s", IDLE_TIMEOUT.as_secs()),
        )))
    }
}

impl AsyncRead for Stalls {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stalls {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.guard(cx, |stream, cx| stream.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.guard(cx, |stream, cx| stream.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.guard(cx, |stream, cx| stream.poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.guard(cx, |stream, cx| stream.poll_shutdown(cx))
    }
}

fn router(gateway: Gateway) -> Router {
    Router::new()
        .route("/dfs", post(upload_post))
        .route("/dfs/{key}", get(read).head(read).put(upload_put))
        .route("/dfs/{key}/{*name}", get(read_named).head(read_named))
        .fallback(|| async {
            text(StatusCode::NOT_FOUND, "no such path: files are at /dfs/<ticket>")
        })
        .with_state(gateway)
}

/// A one-line text answer.
fn text(status: StatusCode, message: &str) -> Response {
    let line: String = message.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let mut response = (status, format!("{line}\n")).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

async fn read(
    State(g): State<Gateway>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(key): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    serve_file(g, peer, &key, None, method, headers).await
}

async fn read_named(
    State(g): State<Gateway>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((key, name)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    serve_file(g, peer, &key, Some(name), method, headers).await
}

/// What a `Range` header asks of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wanted {
    /// The whole file: no `Range` header, one that is ignored (malformed,
    /// another unit, longer than [`MAX_RANGE_HEADER`] or more than
    /// [`MAX_RANGES`] ranges), or several ranges, one at least satisfiable.
    Whole,
    /// One satisfiable range: its first and last byte.
    Part(u64, u64),
    /// No range satisfiable: the ranges all start at or past the end.
    Unsatisfiable,
}

/// What `range` (a `Range` header's value) asks of a file of `size` bytes,
/// read in one pass over at most [`MAX_RANGE_HEADER`] bytes. A header that
/// does not parse is ignored (RFC 9110, 14.2), as is one listing more
/// ranges than a player would (a sign of an attack, says the RFC).
fn wanted(range: Option<&[u8]>, size: u64) -> Wanted {
    let Some(value) = range.filter(|v| v.len() <= MAX_RANGE_HEADER) else { return Wanted::Whole };
    let Ok(value) = std::str::from_utf8(value) else { return Wanted::Whole };
    const UNIT: &str = "bytes=";
    let unit = value.get(..UNIT.len()).filter(|unit| unit.eq_ignore_ascii_case(UNIT));
    let Some(set) = unit.and_then(|_| value.get(UNIT.len()..)) else { return Wanted::Whole };
    let (mut ranges, mut first) = (0, None);
    for spec in set.split(',').map(|s| s.trim_matches([' ', '\t'])).filter(|s| !s.is_empty()) {
        ranges += 1;
        if ranges > MAX_RANGES {
            return Wanted::Whole;
        }
        let Some(range) = range_spec(spec) else { return Wanted::Whole };
        if first.is_none() {
            first = range.resolve(size);
        }
    }
    match (ranges, first) {
        (0, _) => Wanted::Whole,
        (_, None) => Wanted::Unsatisfiable,
        (1, Some((offset, len))) => Wanted::Part(offset, offset + len - 1),
        _ => Wanted::Whole,
    }
}

/// One range of a `Range` header: `a-b`, `a-` or `-n`, digits only.
fn range_spec(spec: &str) -> Option<ByteRange> {
    let number = |t: &str| {
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        t.parse::<u64>().ok()
    };
    let (a, b) = spec.split_once('-')?;
    match (a.is_empty(), b.is_empty()) {
        (false, false) => {
            let (a, b) = (number(a)?, number(b)?);
            (a <= b).then_some(ByteRange::FromTo(a, b))
        }
        (false, true) => Some(ByteRange::From(number(a)?)),
        (true, false) => Some(ByteRange::Last(number(b)?)),
        (true, true) => None,
    }
}

async fn serve_file(
    g: Gateway,
    peer: SocketAddr,
    key: &str,
    url_name: Option<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let ticket: Ticket = match key.parse() {
        Ok(t) => t,
        Err(e) => return text(StatusCode::BAD_REQUEST, &format!("{e}")),
    };
    let client = client_of(peer.ip());
    // The lookup first, under its own share and deadline: a ticket of
    // content that is nowhere holds no read slot while it is looked for.
    let lookup = match g.lookups.take(client) {
        Ok(lookup) => lookup,
        Err(full) => return busy(full, "lookups"),
    };
    let meta = match tokio::time::timeout(LOOKUP_TIMEOUT, g.node.file_meta(&ticket)).await {
        Ok(Ok(meta)) => meta,
        Ok(Err(e @ NodeError::NotFound { .. })) => {
            return text(StatusCode::NOT_FOUND, &e.to_string());
        }
        Ok(Err(e)) => return text(StatusCode::BAD_GATEWAY, &e.to_string()),
        Err(_) => {
            let message = format!(
                "no node gave {} within {} s: try again",
                ticket.root,
                LOOKUP_TIMEOUT.as_secs()
            );
            return text(StatusCode::GATEWAY_TIMEOUT, &message);
        }
    };
    drop(lookup);
    let etag: ETag = format!("\"{}\"", ticket.root).parse().expect("a CID is a valid ETag");
    let mut common = HeaderMap::new();
    common.typed_insert(etag.clone());
    common.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    common.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some(none_match) = headers.typed_get::<IfNoneMatch>()
        && !none_match.precondition_passes(&etag)
    {
        return with_headers(StatusCode::NOT_MODIFIED, common, Body::empty());
    }
    let size = meta.size;
    // One range → 206; several → the whole file; none satisfiable → 416.
    let (status, range) = match wanted(headers.get(header::RANGE).map(|v| v.as_bytes()), size) {
        Wanted::Whole => (StatusCode::OK, None),
        Wanted::Part(start, end) => {
            let content_range = format!("bytes {start}-{end}/{size}");
            common.insert(header::CONTENT_RANGE, content_range.parse().expect("ascii"));
            (StatusCode::PARTIAL_CONTENT, Some((start, end)))
        }
        Wanted::Unsatisfiable => {
            let content_range = format!("bytes */{size}");
            common.insert(header::CONTENT_RANGE, content_range.parse().expect("ascii"));
            let mut response = text(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable");
            response.headers_mut().extend(common);
            return response;
        }
    };
    let name = meta.name.clone().or(url_name);
    let mime = name
        .as_deref()
        .map(|n| mime_guess::from_path(n).first_or_octet_stream())
        .unwrap_or(mime_guess::mime::APPLICATION_OCTET_STREAM);
    if let Ok(value) = HeaderValue::from_str(mime.as_ref()) {
        common.insert(header::CONTENT_TYPE, value);
    }
    if let Ok(value) = HeaderValue::from_str(&disposition(name.as_deref())) {
        common.insert(header::CONTENT_DISPOSITION, value);
    }
    let length = range.map_or(size, |(start, end)| end - start + 1);
    common.insert(header::CONTENT_LENGTH, length.into());
    if method == Method::HEAD || length == 0 {
        return with_headers(status, common, Body::empty());
    }
    // A read slot only for a body to send.
    let slot = match g.readers.take(client) {
        Ok(slot) => slot,
        Err(full) => return busy(full, "reads"),
    };
    let range = range.map(|(a, b)| ByteRange::FromTo(a, b));
    with_headers(status, common, stream_file(g.node, ticket, range, length, slot))
}

fn with_headers(status: StatusCode, headers: HeaderMap, body: Body) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// `inline`, with the name as a quoted ASCII fallback and in RFC 8187 form.
fn disposition(name: Option<&str>) -> String {
    let Some(name) = name.filter(|n| !n.is_empty()) else { return "inline".into() };
    let ascii: String = name
        .chars()
        .map(|c| if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' { c } else { '_' })
        .collect();
    let mut encoded = String::new();
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    format!("inline; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

/// The file (or `range` of it, `length` bytes) as a streamed body: a read
/// on the node writes into a small channel the body drains. The read slot
/// goes back once the last byte is handed to the connection; when the body
/// goes (the client disconnected, or it is done), the read's cancel flag
/// is set, so its fetches stop.
fn stream_file(
    node: Node,
    ticket: Ticket,
    range: Option<ByteRange>,
    length: u64,
    slot: Share,
) -> Body {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(BODY_QUEUE);
    let cancel = Arc::new(AtomicBool::new(false));
    let failed = tx.clone();
    let options = GetOptions {
        cancel: Some(cancel.clone()),
        range,
        read_ahead: Some(READ_AHEAD),
        ..Default::default()
    };
    let root = ticket.root;
    tokio::spawn(async move {
        let out = Output::Async(Box::new(ChannelWriter::new(tx, Ok, usize::MAX)));
        if let Err(e) = node.get_with(ticket, out, options).await {
            tracing::debug!("HTTP read of {root} ended: {e}");
            let _ = failed.send(Err(io::Error::other(e.to_string()))).await;
        }
    });
    struct Reading {
        rx: mpsc::Receiver<io::Result<Bytes>>,
        cancel: Arc<AtomicBool>,
        left: u64,
        slot: Option<Share>,
    }
    impl Drop for Reading {
        fn drop(&mut self) {
            self.cancel.store(true, Ordering::Relaxed);
        }
    }
    let reading = Reading { rx, cancel, left: length, slot: Some(slot) };
    let stream = futures::stream::unfold(reading, |mut r| async move {
        let next = r.rx.recv().await?;
        if let Ok(bytes) = &next {
            r.left = r.left.saturating_sub(bytes.len() as u64);
            if r.left == 0 {
                r.slot = None;
            }
        }
        Some((next, r))
    });
    Body::from_stream(stream)
}

#[derive(serde::Deserialize)]
struct UploadQuery {
    name: Option<String>,
}

async fn upload_post(
    State(g): State<Gateway>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<UploadQuery>,
    body: Body,
) -> Response {
    upload(g, peer, query.name, body).await
}

async fn upload_put(
    State(g): State<Gateway>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    body: Body,
) -> Response {
    upload(g, peer, Some(name), body).await
}

/// Stores the body as a file, in constant memory, and replicates it. A
/// body that stops coming for [`IDLE_TIMEOUT`] fails the upload.
async fn upload(g: Gateway, peer: SocketAddr, name: Option<String>, body: Body) -> Response {
    if !g.upload {
        return text(
            StatusCode::FORBIDDEN,
            "uploads are off on this gateway (it is not on a loopback address; \
             start the node with --http-upload to allow them)",
        );
    }
    if name.as_ref().is_some_and(|n| n.is_empty() || n.len() > MAX_NAME) {
        return text(StatusCode::BAD_REQUEST, &format!("a name is 1 to {MAX_NAME} bytes"));
    }
    let _slot = match g.uploads.take(client_of(peer.ip())) {
        Ok(slot) => slot,
        Err(full) => return busy(full, "uploads"),
    };
    let stream = futures::stream::unfold(body.into_data_stream(), |mut data| async move {
        match tokio::time::timeout(IDLE_TIMEOUT, data.next()).await {
            Ok(next) => Some((next?.map_err(io::Error::other), data)),
            Err(_) => {
                let stalled = format!("the client sent nothing for {} s", IDLE_TIMEOUT.as_secs());
                Some((Err(io::Error::new(io::ErrorKind::TimedOut, stalled)), data))
            }
        }
    });
    let reader =
        tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(Box::pin(stream)));
    let options = PutOptions { name, ..Default::default() };
    match g.node.put_with(Box::new(reader), options).await {
        Ok(report) => {
            let ticket = report.ticket.to_string();
            let mut response = text(StatusCode::CREATED, &ticket);
            if let Ok(location) = HeaderValue::from_str(&format!("/dfs/{ticket}")) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            response
        }
        Err(NodeError::Store(crate::Error::DiskFull { .. } | crate::Error::NoSpace { .. })) => {
            text(StatusCode::INSUFFICIENT_STORAGE, "this node's disk is full")
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::{
        Full, MAX_RANGE_HEADER, MAX_RANGES, Shares, Wanted, client_of, disposition, wanted,
    };

    #[test]
    fn dispositions_carry_any_name_safely() {
        assert_eq!(disposition(None), "inline");
        assert_eq!(
            disposition(Some("a b.mp4")),
            "inline; filename=\"a b.mp4\"; filename*=UTF-8''a%20b.mp4"
        );
        assert_eq!(
            disposition(Some("é\"x")),
            "inline; filename=\"__x\"; filename*=UTF-8''%C3%A9%22x"
        );
    }

    fn range(value: &str, size: u64) -> Wanted {
        wanted(Some(value.as_bytes()), size)
    }

    #[test]
    fn one_range_is_a_part_and_a_suffix_past_the_start_is_the_whole() {
        use Wanted::*;
        assert_eq!(wanted(None, 100), Whole);
        assert_eq!(range("bytes=0-0", 100), Part(0, 0));
        assert_eq!(range("bytes=10-", 100), Part(10, 99));
        assert_eq!(range("bytes=90-500", 100), Part(90, 99));
        assert_eq!(range("bytes=-10", 100), Part(90, 99));
        assert_eq!(range("bytes=-500", 100), Part(0, 99));
        assert_eq!(range("Bytes= 5-6 ", 100), Part(5, 6));
        assert_eq!(range("bytes=5-6,", 100), Part(5, 6));
    }

    #[test]
    fn ranges_past_the_end_are_unsatisfiable_and_several_are_the_whole() {
        use Wanted::*;
        assert_eq!(range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(range("bytes=100-200,300-", 100), Unsatisfiable);
        assert_eq!(range("bytes=0-1,5-9", 100), Whole);
        assert_eq!(range("bytes=0-5,3-9", 100), Whole);
        assert_eq!(range("bytes=200-300,5-9", 100), Whole);
    }

    #[test]
    fn malformed_headers_are_ignored() {
        for value in [
            "bytes=",
            "bytes=,",
            "bytes=-",
            "bytes=5-4",
            "bytes=a-4",
            "bytes=+5-9",
            "bytes=1-2-3",
            "bytes=0-99999999999999999999999",
            "items=0-5",
            "bytes 0-5",
            "0-5",
            "",
        ] {
            assert_eq!(range(value, 100), Wanted::Whole, "{value:?}");
        }
        assert_eq!(wanted(Some(b"bytes=0-5\xff"), 100), Wanted::Whole);
    }

    #[test]
    fn long_headers_and_many_ranges_are_ignored() {
        let ranges = |n: usize| {
            let list: Vec<String> = (1..=n).map(|i| format!("{}-{}", i * 10, i * 10 + 1)).collect();
            format!("bytes={}", list.join(","))
        };
        // At the bounds the header is read: several ranges, the whole file;
        // none satisfiable, 416. One past either, it is ignored.
        assert_eq!(range(&ranges(MAX_RANGES), 10_000), Wanted::Whole);
        assert_eq!(range(&ranges(MAX_RANGES), 5), Wanted::Unsatisfiable);
        assert_eq!(range(&ranges(MAX_RANGES + 1), 5), Wanted::Whole);
        let padded = format!("bytes={}5-", " ".repeat(MAX_RANGE_HEADER - "bytes=5-".len()));
        assert_eq!(padded.len(), MAX_RANGE_HEADER);
        assert_eq!(range(&padded, 100), Wanted::Part(5, 99));
        assert_eq!(range(&format!("{padded} "), 100), Wanted::Whole);
        // A header of the largest head hyper takes is ignored at once.
        let huge = ranges(30_000);
        let started = std::time::Instant::now();
        assert_eq!(range(&huge, 5), Wanted::Whole);
        assert!(started.elapsed() < std::time::Duration::from_millis(5));
    }

    #[test]
    fn ipv6_clients_are_their_64_and_mapped_ipv4_is_ipv4() {
        let v6 = |s: &str| client_of(s.parse::<IpAddr>().unwrap());
        assert_eq!(v6("2001:db8:1:2:aaaa::1"), v6("2001:db8:1:2:bbbb::2"));
        assert_eq!(v6("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        assert_ne!(v6("2001:db8:1:2::1"), v6("2001:db8:1:3::1"));
        assert_eq!(v6("::ffff:127.0.0.2"), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
        assert_eq!(v6("127.0.0.2"), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    }

    #[test]
    fn shares_cap_each_client_and_all_and_come_back_when_dropped() {
        let ip = |n: u8| IpAddr::V4(Ipv4Addr::new(127, 0, 0, n));
        let shares = Shares::new(2, 3);
        let a1 = shares.take(ip(1)).unwrap();
        let a2 = shares.take(ip(1)).unwrap();
        assert_eq!(shares.take(ip(1)).err(), Some(Full::Client));
        let b1 = shares.take(ip(2)).unwrap();
        assert_eq!(shares.take(ip(3)).err(), Some(Full::All));
        assert_eq!(shares.take(ip(1)).err(), Some(Full::Client));
        drop(a1);
        assert_eq!(shares.held(), (2, 2));
        let c1 = shares.take(ip(3)).unwrap();
        drop((a2, b1, c1));
        assert_eq!(shares.held(), (0, 0));
    }
}
