//! The hostile peer's TCP transport: libp2p-tcp's, except that every dial leaves
//! from one chosen loopback address. libp2p-tcp dials from 0.0.0.0 (or from its
//! listen port on 0.0.0.0), so on loopback the kernel gives every connection the
//! source 127.0.0.1, the address every local node shares; bound here, the attacker
//! is seen at an address of its own, as a stranger on the internet is.
//!
//! Used by `peer.rs` to build the hostile swarm; listening is libp2p-tcp's own.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::FutureExt;
use futures::future::BoxFuture;
use libp2p::Multiaddr;
use libp2p::core::transport::{DialOpts, ListenerId, Transport, TransportError, TransportEvent};
use libp2p::multiaddr::Protocol;
use libp2p::tcp::tokio::TcpStream;

/// libp2p-tcp with its dials bound to `ip`.
pub(super) struct BoundTcp {
    inner: libp2p::tcp::tokio::Transport,
    ip: Ipv4Addr,
}

impl BoundTcp {
    pub(super) fn new(ip: Ipv4Addr) -> Self {
        Self {
            inner: libp2p::tcp::tokio::Transport::new(libp2p::tcp::Config::default().nodelay(true)),
            ip,
        }
    }
}

/// The TCP address in `/ip4/…/tcp/…` (a trailing `/p2p/…` is allowed).
fn tcp_addr(addr: &Multiaddr) -> Option<SocketAddr> {
    let mut iter = addr.iter();
    let ip = match iter.next()? {
        Protocol::Ip4(ip) => ip,
        _ => return None,
    };
    let port = match iter.next()? {
        Protocol::Tcp(port) => port,
        _ => return None,
    };
    match iter.next() {
        None | Some(Protocol::P2p(_)) => Some(SocketAddr::new(ip.into(), port)),
        Some(_) => None,
    }
}

impl Transport for BoundTcp {
    type Output = TcpStream;
    type Error = io::Error;
    type ListenerUpgrade = <libp2p::tcp::tokio::Transport as Transport>::ListenerUpgrade;
    type Dial = BoxFuture<'static, io::Result<TcpStream>>;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<Self::Error>> {
        self.inner.listen_on(id, addr)
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        self.inner.remove_listener(id)
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        _opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<Self::Error>> {
        let Some(remote) = tcp_addr(&addr) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        let ip = self.ip;
        Ok(async move {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(ip.into(), 0))?;
            socket.set_nodelay(true)?;
            Ok(TcpStream(socket.connect(remote).await?))
        }
        .boxed())
    }

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        Pin::new(&mut self.get_mut().inner).poll(cx)
    }
}
