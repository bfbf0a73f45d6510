//! The HTTP gateway (`--http ADDR`): files by ticket for browsers, curl and
//! video players, with byte ranges that fetch only the blocks they cover.
//!
//! - `GET`/`HEAD /dfs/<ticket>` and `/dfs/<ticket>/<any-name>`: the file,
//!   with `Content-Type` from its stored name, `ETag` (the quoted root CID),
//!   `Cache-Control: public, max-age=31536000, immutable`, `Accept-Ranges`,
//!   `Content-Disposition: inline`. One range → `206`; an unsatisfiable
//!   one → `416`; several → the whole file with `200` (multipart answers are
//!   not made); `If-None-Match` with the ETag → `304`; a malformed ticket →
//!   `400`; content no reachable node holds → `404`; other methods → `405`.
//! - `POST /dfs` (optional `?name=`) and `PUT /dfs/<name>`: stores the body
//!   as a file and replicates it like `put`; `201` with the ticket and a
//!   `Location`. Only when uploads are on: by default on a loopback address,
//!   elsewhere with `--http-upload`.
//!
//! A body is streamed from the export through a small channel: memory per
//! client is a few chunks, and a client that goes away stops its fetches
//! (the body's end sets the read's cancel flag). A ticket in a URL is a read
//! capability: whoever sees the URL can read the file.

use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use futures::StreamExt;
use headers::{ETag, HeaderMapExt, IfNoneMatch};
use tokio::sync::{Semaphore, mpsc};

use crate::{
    Ticket,
    export::{ByteRange, ChannelWriter, Output},
    node::{GetOptions, Node, NodeError, PutOptions},
};

/// Reads served at once; more are answered `503`.
pub const MAX_READERS: usize = 64;
/// Uploads at once; more are answered `503`.
pub const MAX_UPLOADS: usize = 4;
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
    readers: Arc<Semaphore>,
    uploads: Arc<Semaphore>,
}

/// Whether `addr` is a loopback address, where uploads are on by default.
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
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

/// Serves the gateway on `listener` until the node stops.
pub async fn serve(node: Node, listener: tokio::net::TcpListener, upload: bool) {
    let gateway = Gateway {
        node: node.clone(),
        upload,
        readers: Arc::new(Semaphore::new(MAX_READERS)),
        uploads: Arc::new(Semaphore::new(MAX_UPLOADS)),
    };
    let app = router(gateway);
    let stopped = {
        let net = node.net().clone();
        async move { net.stopped().await }
    };
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stopped).await {
        tracing::warn!("the HTTP gateway stopped: {e}");
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
    Path(key): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    serve_file(g, &key, None, method, headers).await
}

async fn read_named(
    State(g): State<Gateway>,
    Path((key, name)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    serve_file(g, &key, Some(name), method, headers).await
}

async fn serve_file(
    g: Gateway,
    key: &str,
    url_name: Option<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let ticket: Ticket = match key.parse() {
        Ok(t) => t,
        Err(e) => return text(StatusCode::BAD_REQUEST, &format!("{e}")),
    };
    let Ok(permit) = g.readers.clone().try_acquire_owned() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "too many reads at once: try again");
    };
    let meta = match g.node.file_meta(&ticket).await {
        Ok(meta) => meta,
        Err(e @ NodeError::NotFound { .. }) => return text(StatusCode::NOT_FOUND, &e.to_string()),
        Err(e) => return text(StatusCode::BAD_GATEWAY, &e.to_string()),
    };
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
    // One range → 206; several → the whole file; unsatisfiable → 416; a
    // Range header that does not parse is ignored (RFC 9110, 14.2).
    let mut status = StatusCode::OK;
    let mut range = None;
    if let Some(value) = headers.get(header::RANGE).and_then(|v| v.to_str().ok())
        && let Ok(parsed) = http_range_header::parse_range_header(value)
    {
        match parsed.validate(size) {
            Ok(ranges) if ranges.len() == 1 => {
                let (start, end) = (*ranges[0].start(), *ranges[0].end());
                status = StatusCode::PARTIAL_CONTENT;
                range = Some((start, end));
                let content_range = format!("bytes {start}-{end}/{size}");
                common.insert(header::CONTENT_RANGE, content_range.parse().expect("ascii"));
            }
            Ok(_) => {}
            Err(_) => {
                let content_range = format!("bytes */{size}");
                common.insert(header::CONTENT_RANGE, content_range.parse().expect("ascii"));
                let mut response = text(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable");
                response.headers_mut().extend(common);
                return response;
            }
        }
    }
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
    let body = stream_file(g.node, ticket, range.map(|(a, b)| ByteRange::FromTo(a, b)), permit);
    with_headers(status, common, body)
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

/// The file (or `range` of it) as a streamed body: a read on the node
/// writes into a small channel the body drains. When the body goes (the
/// client disconnected, or it is done), the read's cancel flag is set, so
/// its fetches stop.
fn stream_file(
    node: Node,
    ticket: Ticket,
    range: Option<ByteRange>,
    permit: tokio::sync::OwnedSemaphorePermit,
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
        _permit: tokio::sync::OwnedSemaphorePermit,
    }
    impl Drop for Reading {
        fn drop(&mut self) {
            self.cancel.store(true, Ordering::Relaxed);
        }
    }
    let reading = Reading { rx, cancel, _permit: permit };
    let stream = futures::stream::unfold(reading, |mut r| async move {
        let next = r.rx.recv().await?;
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
    Query(query): Query<UploadQuery>,
    body: Body,
) -> Response {
    upload(g, query.name, body).await
}

async fn upload_put(State(g): State<Gateway>, Path(name): Path<String>, body: Body) -> Response {
    upload(g, Some(name), body).await
}

/// Stores the body as a file, in constant memory, and replicates it.
async fn upload(g: Gateway, name: Option<String>, body: Body) -> Response {
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
    let Ok(_permit) = g.uploads.clone().try_acquire_owned() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "too many uploads at once: try again");
    };
    let stream = body.into_data_stream().map(|r| r.map_err(io::Error::other));
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
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
    use super::disposition;

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
}
