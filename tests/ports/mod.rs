//! Ports for tests, shared by `net_support` and `cli_support`.

/// A loopback TCP port that nobody listens on, and that nobody else is
/// given while this lives: a socket bound to it, with `SO_REUSEADDR`, that
/// never listens. The kernel gives no socket that asks for any port (a bind
/// to port 0, a connection's own end) a port another socket is bound to, so
/// no other test can take this one between the moment it is chosen and the
/// moment it is used. A listener that asks for it by number and sets
/// `SO_REUSEADDR` too (libp2p's TCP transport does) still binds it: a socket
/// that does not listen does not stand in its way. Until one does,
/// connections to the port are refused.
pub struct ReservedPort {
    _socket: tokio::net::TcpSocket,
    pub port: u16,
}

impl ReservedPort {
    pub fn new() -> ReservedPort {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket.bind(([127, 0, 0, 1], 0).into()).expect("bind a loopback port");
        let port = socket.local_addr().expect("the bound address").port();
        ReservedPort { _socket: socket, port }
    }

    /// `/ip4/127.0.0.1/tcp/PORT`.
    pub fn multiaddr(&self) -> String {
        format!("/ip4/127.0.0.1/tcp/{}", self.port)
    }
}
