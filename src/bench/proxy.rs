//! A network link for `bench net`: a TCP proxy on loopback that delays and
//! paces what it forwards, so that a transfer between two processes on this
//! machine sees the round trip and the rate of a path between two machines
//! (without traffic shaping from the kernel, which is not always there).
//!
//! [`LinkProxy::start`] listens on `127.0.0.1:0` and forwards every
//! connection it accepts to one target. Each direction of a connection has
//! a reader task and a writer task. The reader reads what arrives (up to
//! [`CHUNK`] at a time), gives it the time it is due at the other end and
//! queues it; the writer sends each chunk when it is due. A chunk is due
//! once the link has sent what was queued before it, plus its own bytes at
//! the link's rate, plus the one-way delay. The rate is one virtual clock
//! per direction shared by every connection through the proxy (a token
//! bucket without burst): one proxy is one link, whatever crosses it.
//!
//! The queue of each direction of a connection holds at most
//! [`Link::queue_bytes`]: what the link carries in one one-way delay at its
//! rate, plus a router queue of [`ROUTER_QUEUE`] ([`UNPACED_QUEUE`] for a
//! link without a rate). When it is full the reader stops reading, the
//! sender's TCP window closes, and the sender waits: nothing is buffered
//! without bound. An end of stream one way (after what was queued before
//! it) shuts down the writing side of the other socket; an error on either
//! socket closes both.
//!
//! What this does not model: TCP ends at the proxy on both sides, each
//! over loopback, so TCP's own ramp-up over a long round trip (slow start,
//! the congestion window) is not reproduced. Every message still waits the
//! round trip, and every flow control above TCP (Yamux's windows, requests
//! in flight) sees it, as does the rate.

use std::{
    fmt, io,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::{Semaphore, mpsc},
    task::{JoinHandle, JoinSet},
    time::Instant,
};

/// Bytes a reader takes from its socket at once, at most.
pub const CHUNK: usize = 64 * 1024;
/// The router queue in front of a link with a rate: what may wait to be
/// sent beside what is on its way.
pub const ROUTER_QUEUE: u64 = 1024 * 1024;
/// The queue of a link without a rate.
pub const UNPACED_QUEUE: u64 = 64 * 1024 * 1024;
/// No queue is longer than this, whatever the rate and the delay.
pub const MAX_QUEUE: u64 = 1024 * 1024 * 1024;

/// What a link does to the bytes that cross it, each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Link {
    /// How long each byte takes from one end to the other, beyond the time
    /// the rate takes to send it (half the round trip).
    pub one_way_delay: Duration,
    /// Bits per second each way; `None`: no limit.
    pub rate: Option<u64>,
}

impl Link {
    /// A link with a round trip of `rtt_ms` milliseconds (half of it each
    /// way) and a rate of `mbit` Mbit/s (`None`: no limit).
    pub fn from_rtt_and_rate(rtt_ms: f64, mbit: Option<f64>) -> Link {
        Link {
            one_way_delay: Duration::from_secs_f64(rtt_ms.max(0.0) / 2000.0),
            rate: mbit.map(|m| ((m * 1e6).round() as u64).max(1)),
        }
    }

    /// The round trip the link adds (twice the one-way delay).
    pub fn rtt(&self) -> Duration {
        self.one_way_delay * 2
    }

    /// The rate in bytes per second, if the link has one.
    pub fn bytes_per_sec(&self) -> Option<f64> {
        self.rate.map(|bits| bits as f64 / 8.0)
    }

    /// The most bytes queued in one direction of one connection: those on
    /// their way (the rate times the one-way delay) plus [`ROUTER_QUEUE`];
    /// [`UNPACED_QUEUE`] without a rate; [`MAX_QUEUE`] at most.
    pub fn queue_bytes(&self) -> u64 {
        match self.rate {
            Some(bits) => {
                let in_flight = u128::from(bits) * self.one_way_delay.as_nanos() / 8_000_000_000;
                (in_flight.min(u128::from(MAX_QUEUE)) as u64 + ROUTER_QUEUE).min(MAX_QUEUE)
            }
            None => UNPACED_QUEUE,
        }
    }

    /// How long the rate takes to send `bytes` (zero without a rate).
    fn send_time(&self, bytes: usize) -> Duration {
        match self.rate {
            Some(bits) => {
                let nanos = (bytes as u128 * 8 * 1_000_000_000).div_ceil(u128::from(bits));
                Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
            }
            None => Duration::ZERO,
        }
    }
}

/// "200 Mbit/s, 80 ms round trip"; "unlimited rate, no delay".
impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.rate {
            Some(bits) => write!(f, "{} Mbit/s", trim_number(bits as f64 / 1e6))?,
            None => write!(f, "unlimited rate")?,
        }
        if self.one_way_delay.is_zero() {
            write!(f, ", no delay")
        } else {
            write!(f, ", {} ms round trip", trim_number(self.rtt().as_secs_f64() * 1000.0))
        }
    }
}

/// A number with at most two decimals, without trailing zeros.
fn trim_number(value: f64) -> String {
    let s = format!("{value:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// What a proxy forwarded so far.
#[derive(Default)]
struct Counters {
    /// Bytes written to the target, and to the connecting side.
    to_target: AtomicU64,
    from_target: AtomicU64,
    /// Connections accepted.
    connections: AtomicU64,
}

impl Counters {
    fn bytes_to_target(&self) -> &AtomicU64 {
        &self.to_target
    }

    fn bytes_from_target(&self) -> &AtomicU64 {
        &self.from_target
    }
}

/// Which count of [`Counters`] a direction adds to.
type Counter = fn(&Counters) -> &AtomicU64;

/// A running link in front of one target; its tasks stop when it is
/// dropped, and every connection through it closes.
pub struct LinkProxy {
    addr: SocketAddr,
    link: Link,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl LinkProxy {
    /// Listens on `127.0.0.1:0` and forwards each connection to `target`
    /// through `link`. Call it within a Tokio runtime.
    pub async fn start(target: SocketAddr, link: Link) -> io::Result<LinkProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(accept(listener, target, link, counters.clone()));
        Ok(LinkProxy { addr, link, counters, task })
    }

    /// Where the link takes connections.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn link(&self) -> Link {
        self.link
    }

    /// Bytes forwarded to the target so far.
    pub fn to_target(&self) -> u64 {
        self.counters.to_target.load(Ordering::Relaxed)
    }

    /// Bytes forwarded from the target to the connecting side so far.
    pub fn from_target(&self) -> u64 {
        self.counters.from_target.load(Ordering::Relaxed)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.counters.connections.load(Ordering::Relaxed)
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        // The accept task owns the connections' tasks: they go with it.
        self.task.abort();
    }
}

/// The pacing of one direction of a link: when the link is next free to
/// send.
struct Pacer {
    link: Link,
    free_at: Mutex<Option<Instant>>,
}

impl Pacer {
    fn new(link: Link) -> Arc<Pacer> {
        Arc::new(Pacer { link, free_at: Mutex::new(None) })
    }

    /// When `bytes` that entered the link's queue at `arrived` reach the
    /// other end: once the link has sent what was queued before them and
    /// then them, plus the one-way delay.
    fn due(&self, arrived: Instant, bytes: usize) -> Instant {
        if self.link.rate.is_none() {
            return arrived + self.link.one_way_delay;
        }
        let mut free_at = self.free_at.lock().expect("pacer lock");
        let start = free_at.map_or(arrived, |free| free.max(arrived));
        let sent = start + self.link.send_time(bytes);
        *free_at = Some(sent);
        sent + self.link.one_way_delay
    }
}

/// Accepts connections until the proxy is dropped (which drops this task
/// and with it every connection's).
async fn accept(listener: TcpListener, target: SocketAddr, link: Link, counters: Arc<Counters>) {
    let pacers = Directions { to_target: Pacer::new(link), from_target: Pacer::new(link) };
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    counters.connections.fetch_add(1, Ordering::Relaxed);
                    let pacers = Directions {
                        to_target: pacers.to_target.clone(),
                        from_target: pacers.from_target.clone(),
                    };
                    connections.spawn(forward(client, target, link, pacers, counters.clone()));
                }
                Err(e) => {
                    // Out of file descriptors, or a connection reset while
                    // queued: wait a little rather than spin.
                    tracing::debug!("link proxy cannot accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

struct Directions {
    to_target: Arc<Pacer>,
    from_target: Arc<Pacer>,
}

/// One connection through the link: connects to the target, then carries
/// both directions until both have ended, or until either fails (then both
/// sockets close).
async fn forward(
    client: TcpStream,
    target: SocketAddr,
    link: Link,
    pacers: Directions,
    counters: Arc<Counters>,
) {
    let server = match TcpStream::connect(target).await {
        Ok(server) => server,
        Err(e) => return tracing::debug!("link proxy cannot reach {target}: {e}"),
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let mut tasks = JoinSet::new();
    let (up, down) = (Counters::bytes_to_target as Counter, Counters::bytes_from_target as Counter);
    direction(&mut tasks, client_read, server_write, link, pacers.to_target, &counters, up);
    direction(&mut tasks, server_read, client_write, link, pacers.from_target, &counters, down);
    while let Some(done) = tasks.join_next().await {
        if !matches!(done, Ok(Ok(()))) {
            // Dropping the other tasks drops both sockets.
            return;
        }
    }
}

/// What a reader queues for its writer.
enum Item {
    Bytes { bytes: Vec<u8>, due: Instant },
    End { due: Instant },
}

/// Starts the reader and the writer of one direction.
fn direction(
    tasks: &mut JoinSet<io::Result<()>>,
    from: OwnedReadHalf,
    to: OwnedWriteHalf,
    link: Link,
    pacer: Arc<Pacer>,
    counters: &Arc<Counters>,
    counter: Counter,
) {
    let queue_bytes = usize::try_from(link.queue_bytes()).unwrap_or(usize::MAX);
    let room = Arc::new(Semaphore::new(queue_bytes.min(Semaphore::MAX_PERMITS)));
    let (queue, items) = mpsc::unbounded_channel();
    tasks.spawn(read_side(from, queue, room.clone(), pacer));
    let counters = counters.clone();
    tasks.spawn(write_side(to, items, room, move |n| {
        counter(&counters).fetch_add(n as u64, Ordering::Relaxed);
    }));
}

/// Reads what arrives, waits for room in the queue (reading no more
/// meanwhile), and queues it with the time it is due.
async fn read_side(
    mut from: OwnedReadHalf,
    queue: mpsc::UnboundedSender<Item>,
    room: Arc<Semaphore>,
    pacer: Arc<Pacer>,
) -> io::Result<()> {
    let gone = || io::Error::new(io::ErrorKind::BrokenPipe, "the link's other side stopped");
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            let due = pacer.due(Instant::now(), 0);
            return queue.send(Item::End { due }).map_err(|_| gone());
        }
        // n <= CHUNK, far below any queue's size and u32::MAX.
        room.acquire_many(n as u32).await.map_err(|_| gone())?.forget();
        let due = pacer.due(Instant::now(), n);
        queue.send(Item::Bytes { bytes: buf[..n].to_vec(), due }).map_err(|_| gone())?;
    }
}

/// Sends each queued chunk when it is due, and the end of the stream (a
/// shutdown of the writing side) after the last.
async fn write_side(
    mut to: OwnedWriteHalf,
    mut items: mpsc::UnboundedReceiver<Item>,
    room: Arc<Semaphore>,
    forwarded: impl Fn(usize),
) -> io::Result<()> {
    while let Some(item) = items.recv().await {
        let due = match &item {
            Item::Bytes { due, .. } | Item::End { due } => *due,
        };
        if due > Instant::now() {
            tokio::time::sleep_until(due).await;
        }
        match item {
            Item::Bytes { bytes, .. } => {
                to.write_all(&bytes).await?;
                forwarded(bytes.len());
                room.add_permits(bytes.len());
            }
            Item::End { .. } => return to.shutdown().await,
        }
    }
    // The reader failed; it reports why.
    Ok(())
}

/// Runs links for another process (`dfs-p2p bench link-proxy`, started by
/// `bench net` so that the links' work is not counted as a node's), driven
/// by lines on stdin and answering each on stdout:
///
/// - `open <target address> <one-way delay in µs> <rate in bit/s, or ->`
///   starts a link in front of the target and answers its port;
/// - `count` answers, for each link in the order they were opened, its
///   bytes forwarded to the target, bytes forwarded from the target and
///   connections accepted: three numbers per link on one line;
/// - anything else answers `error: ...`.
///
/// The end of stdin stops every link.
pub async fn serve_links() -> io::Result<()> {
    use std::io::{BufRead, Write};
    let (lines, mut commands) = mpsc::unbounded_channel::<String>();
    // Reading stdin blocks: a thread of its own, which ends with the input.
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut links: Vec<LinkProxy> = Vec::new();
    let mut stdout = std::io::stdout();
    while let Some(line) = commands.recv().await {
        let answer = match line.split_whitespace().collect::<Vec<_>>()[..] {
            ["open", target, delay, rate] => match open_command(target, delay, rate) {
                Ok((target, link)) => match LinkProxy::start(target, link).await {
                    Ok(proxy) => {
                        let port = proxy.local_addr().port();
                        links.push(proxy);
                        port.to_string()
                    }
                    Err(e) => format!("error: cannot listen: {e}"),
                },
                Err(e) => format!("error: {e}"),
            },
            ["count"] => links
                .iter()
                .map(|l| format!("{} {} {}", l.to_target(), l.from_target(), l.connections()))
                .collect::<Vec<_>>()
                .join(" "),
            _ => format!("error: unknown command {line:?}"),
        };
        writeln!(stdout, "{answer}")?;
        stdout.flush()?;
    }
    Ok(())
}

/// The target and the link of an `open` line.
fn open_command(target: &str, delay: &str, rate: &str) -> Result<(SocketAddr, Link), String> {
    let target = target.parse().map_err(|e| format!("bad address {target:?}: {e}"))?;
    let delay: u64 = delay.parse().map_err(|e| format!("bad delay {delay:?}: {e}"))?;
    let rate = match rate {
        "-" => None,
        bits => Some(bits.parse().map_err(|e| format!("bad rate {bits:?}: {e}"))?),
    };
    Ok((target, Link { one_way_delay: Duration::from_micros(delay), rate }))
}

/// The `open` line of [`serve_links`] for `target` behind `link`.
pub fn open_line(target: SocketAddr, link: Link) -> String {
    let rate = link.rate.map_or("-".to_string(), |bits| bits.to_string());
    format!("open {target} {} {rate}", link.one_way_delay.as_micros())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Generous bound on every wait in these tests.
    const LIMIT: Duration = Duration::from_secs(30);

    /// An echo server on loopback: sends back what it reads, and shuts
    /// down its writing side at the end of its input.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (socket, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let (mut read, mut write) = socket.into_split();
                    tokio::io::copy(&mut read, &mut write).await.unwrap();
                    write.shutdown().await.unwrap();
                });
            }
        });
        addr
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i as u64).wrapping_mul(2_654_435_761).to_le_bytes()[3]).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_round_trip_takes_twice_the_delay() {
        let link = Link { one_way_delay: Duration::from_millis(20), rate: None };
        let proxy = LinkProxy::start(echo_server().await, link).await.unwrap();
        let mut socket = TcpStream::connect(proxy.local_addr()).await.unwrap();
        socket.set_nodelay(true).unwrap();
        for _ in 0..3 {
            let started = Instant::now();
            socket.write_all(b"ping").await.unwrap();
            let mut answer = [0u8; 4];
            tokio::time::timeout(LIMIT, socket.read_exact(&mut answer)).await.unwrap().unwrap();
            assert_eq!(&answer, b"ping");
            let took = started.elapsed();
            assert!(took >= Duration::from_millis(40), "a round trip took {took:?}");
        }
        assert_eq!(proxy.connections(), 1);
    }

    /// Several MiB each way, intact and in order; the end of the stream
    /// crosses both ways (the echo server ends only after ours ended).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bytes_arrive_intact_and_in_order() {
        let link = Link { one_way_delay: Duration::from_millis(2), rate: Some(2_000_000_000) };
        let proxy = LinkProxy::start(echo_server().await, link).await.unwrap();
        let sent = pattern(6 * 1024 * 1024 + 12_345);
        let socket = TcpStream::connect(proxy.local_addr()).await.unwrap();
        let (mut read, mut write) = socket.into_split();
        let data = sent.clone();
        let writer = tokio::spawn(async move {
            // Uneven writes, so chunk limits fall anywhere.
            for piece in data.chunks(100_003) {
                write.write_all(piece).await.unwrap();
            }
            write.shutdown().await.unwrap();
        });
        let mut received = Vec::new();
        tokio::time::timeout(LIMIT, read.read_to_end(&mut received)).await.unwrap().unwrap();
        writer.await.unwrap();
        assert!(
            received == sent,
            "{} bytes back of {}, or not in order",
            received.len(),
            sent.len()
        );
        assert_eq!(proxy.to_target(), sent.len() as u64);
        assert_eq!(proxy.from_target(), sent.len() as u64);
    }

    /// At 80 Mbit/s, 4 MB take at least 0.4 s (a lower bound only).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_paced_link_is_no_faster_than_its_rate() {
        let size = 4_000_000usize;
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let target = listener.local_addr().unwrap();
        let link = Link { one_way_delay: Duration::ZERO, rate: Some(80_000_000) };
        let proxy = LinkProxy::start(target, link).await.unwrap();
        let addr = proxy.local_addr();
        let started = Instant::now();
        let sender = tokio::spawn(async move {
            let mut socket = TcpStream::connect(addr).await.unwrap();
            socket.write_all(&pattern(size)).await.unwrap();
            socket.shutdown().await.unwrap();
        });
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut received = Vec::new();
        tokio::time::timeout(LIMIT, socket.read_to_end(&mut received)).await.unwrap().unwrap();
        let took = started.elapsed();
        sender.await.unwrap();
        assert_eq!(received.len(), size);
        assert!(took >= Duration::from_millis(400), "4 MB at 80 Mbit/s took {took:?}");
        assert_eq!(proxy.to_target(), size as u64);
    }

    /// Two connections through one link share its rate: together they take
    /// at least what their sum takes at the rate.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_through_one_link_share_its_rate() {
        let size = 1_000_000usize;
        let link = Link { one_way_delay: Duration::ZERO, rate: Some(40_000_000) };
        let proxy = LinkProxy::start(echo_server().await, link).await.unwrap();
        let addr = proxy.local_addr();
        let started = Instant::now();
        let transfers: Vec<_> = (0..2)
            .map(|_| {
                tokio::spawn(async move {
                    let socket = TcpStream::connect(addr).await.unwrap();
                    let (mut read, mut write) = socket.into_split();
                    let writer = tokio::spawn(async move {
                        write.write_all(&pattern(size)).await.unwrap();
                        write.shutdown().await.unwrap();
                    });
                    let mut back = Vec::new();
                    read.read_to_end(&mut back).await.unwrap();
                    writer.await.unwrap();
                    back.len()
                })
            })
            .collect();
        for transfer in transfers {
            let back = tokio::time::timeout(LIMIT, transfer).await.unwrap().unwrap();
            assert_eq!(back, size);
        }
        let took = started.elapsed();
        // 2 MB each way at 40 Mbit/s: 0.4 s.
        assert!(took >= Duration::from_millis(400), "2 MB at 40 Mbit/s took {took:?}");
        assert_eq!(proxy.connections(), 2);
    }

    /// A target that reads nothing stops the sender once the queue and the
    /// sockets' buffers are full: the proxy does not take everything.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_stops_the_sender() {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let link = Link { one_way_delay: Duration::from_millis(1), rate: Some(800_000_000) };
        let proxy = LinkProxy::start(listener.local_addr().unwrap(), link).await.unwrap();
        let mut socket = TcpStream::connect(proxy.local_addr()).await.unwrap();
        let (_target, _) = listener.accept().await.unwrap();
        let block = vec![7u8; 256 * 1024];
        let mut written = 0usize;
        // Write until a write makes no progress for a while (or far more
        // than any bounded path would take).
        while written < 256 * 1024 * 1024 {
            match tokio::time::timeout(Duration::from_millis(500), socket.write(&block)).await {
                Ok(Ok(n)) => written += n,
                Ok(Err(e)) => panic!("write failed: {e}"),
                Err(_) => break,
            }
        }
        // The queue (about 1 MiB here) plus the kernel's socket buffers on
        // both sides of the proxy.
        assert!(written < 48 * 1024 * 1024, "{written} bytes went in before the sender stopped");
        // What the target got is at most what its buffers hold, far less
        // than what a link without a bound would have read.
        assert!(proxy.to_target() < written as u64);
    }

    /// An error on one side (a reset) closes the other side.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reset_closes_the_other_side() {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let link = Link { one_way_delay: Duration::from_millis(5), rate: None };
        let proxy = LinkProxy::start(listener.local_addr().unwrap(), link).await.unwrap();
        let mut socket = TcpStream::connect(proxy.local_addr()).await.unwrap();
        let (target, _) = listener.accept().await.unwrap();
        // SO_LINGER 0: closing sends a reset.
        target.set_zero_linger().unwrap();
        drop(target);
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(LIMIT, socket.read(&mut buf)).await.unwrap();
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }

    /// Dropping the proxy closes the connections through it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_the_proxy_closes_its_connections() {
        let link = Link { one_way_delay: Duration::from_millis(5), rate: None };
        let proxy = LinkProxy::start(echo_server().await, link).await.unwrap();
        let mut socket = TcpStream::connect(proxy.local_addr()).await.unwrap();
        socket.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        tokio::time::timeout(LIMIT, socket.read_exact(&mut one)).await.unwrap().unwrap();
        drop(proxy);
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(LIMIT, socket.read(&mut buf)).await.unwrap();
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }

    #[test]
    fn open_lines_read_back() {
        let link = Link { one_way_delay: Duration::from_micros(40_500), rate: Some(200_000_000) };
        let target: SocketAddr = "127.0.0.1:4001".parse().unwrap();
        let line = open_line(target, link);
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words[0], "open");
        assert_eq!(open_command(words[1], words[2], words[3]), Ok((target, link)));
        let unpaced = Link { rate: None, ..link };
        let line = open_line(target, unpaced);
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(open_command(words[1], words[2], words[3]), Ok((target, unpaced)));
    }

    #[test]
    fn links_say_what_they_are() {
        let link = Link::from_rtt_and_rate(80.0, Some(200.0));
        assert_eq!(link.one_way_delay, Duration::from_millis(40));
        assert_eq!(link.rate, Some(200_000_000));
        assert_eq!(link.to_string(), "200 Mbit/s, 80 ms round trip");
        assert_eq!(Link::default().to_string(), "unlimited rate, no delay");
        assert_eq!(
            Link::from_rtt_and_rate(0.5, Some(2.5)).to_string(),
            "2.5 Mbit/s, 0.5 ms round trip"
        );
        // 200 Mbit/s for 40 ms: 1 MB in flight, plus the router queue.
        assert_eq!(link.queue_bytes(), 1_000_000 + ROUTER_QUEUE);
        assert_eq!(link.send_time(25_000_000), Duration::from_secs(1));
    }
}
