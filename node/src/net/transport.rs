//! The node's TCP transport: libp2p-tcp's, except that a dial from the listening
//! port that the kernel refuses falls back to a fresh port.
//!
//! libp2p dials from the node's listening port (port reuse: hole punching and
//! AutoNAT need the peer to see that port), binding the dial to `0.0.0.0:PORT`.
//! libp2p-tcp retries with a fresh port only when the connect fails with "address
//! not available" (a TIME_WAIT of the same four-tuple). A node listening on one
//! address (`--listen /ip4/10.0.0.5/tcp/0`, every node of a test grid on its own
//! loopback address) can also find its port number taken on *another* address, by
//! any other program's outgoing connection: the bind fails with "address in use",
//! and without this every dial of that node failed until it restarted.
//!
//! Built by [`start`](super::start) into the swarm (with QUIC, DNS and relays
//! around it); listening is libp2p-tcp's own.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::FutureExt;
use futures::future::BoxFuture;
use libp2p::Multiaddr;
use libp2p::core::transport::{
    DialOpts, ListenerId, PortUse, Transport, TransportError, TransportEvent,
};
use libp2p::tcp::tokio::TcpStream;

/// libp2p-tcp whose port-reusing dials fall back to a fresh port.
pub(super) struct Tcp {
    inner: libp2p::tcp::tokio::Transport,
    config: libp2p::tcp::Config,
}

impl Tcp {
    pub(super) fn new(config: libp2p::tcp::Config) -> Self {
        Self {
            inner: libp2p::tcp::tokio::Transport::new(config.clone()),
            config,
        }
    }
}

/// Whether a dial from the listening port failed because of that port.
fn port_taken(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::AddrInUse | io::ErrorKind::AddrNotAvailable
    )
}

impl Transport for Tcp {
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
        opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<Self::Error>> {
        let first = self.inner.dial(addr.clone(), opts)?;
        if opts.port_use != PortUse::Reuse {
            return Ok(first.boxed());
        }
        let config = self.config.clone();
        Ok(async move {
            match first.await {
                Err(e) if port_taken(&e) => {
                    tracing::debug!(%addr, error = %e, "dialling from the listening port failed; dialling from a fresh one");
                    // A transport with no listener dials from a fresh port.
                    let fresh = libp2p::tcp::tokio::Transport::new(config)
                        .dial(
                            addr,
                            DialOpts {
                                port_use: PortUse::New,
                                ..opts
                            },
                        )
                        .map_err(|e| match e {
                            TransportError::Other(e) => e,
                            TransportError::MultiaddrNotSupported(a) => {
                                io::Error::other(format!("cannot dial {a} over TCP"))
                            }
                        })?;
                    fresh.await
                }
                other => other,
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Listens on `addr` and returns the port it got (once the listener is up, its
    /// port is registered for reuse).
    async fn listen(t: &mut (impl Transport + Unpin), addr: String) -> u16 {
        t.listen_on(ListenerId::next(), addr.parse().unwrap())
            .unwrap_or_else(|_| panic!("listens on {addr}"));
        loop {
            let event = futures::future::poll_fn(|cx| Pin::new(&mut *t).poll(cx)).await;
            if let TransportEvent::NewAddress { listen_addr, .. } = event {
                match listen_addr.iter().nth(1) {
                    Some(libp2p::multiaddr::Protocol::Tcp(port)) => return port,
                    _ => panic!("a TCP address: {listen_addr}"),
                }
            }
        }
    }

    /// A node listening on one loopback address, whose port number another program
    /// holds on 127.0.0.1, still dials out (libp2p-tcp alone cannot).
    #[tokio::test]
    async fn a_dial_from_a_port_taken_on_another_address_uses_a_fresh_port() {
        let own = crate::config::next_loopback_ip();
        let target = std::net::TcpListener::bind("127.0.0.1:0").expect("a target");
        let target: Multiaddr =
            format!("/ip4/127.0.0.1/tcp/{}", target.local_addr().unwrap().port())
                .parse()
                .unwrap();
        let mut tcp = Tcp::new(libp2p::tcp::Config::default());
        let port = listen(&mut tcp, format!("/ip4/{own}/tcp/0")).await;
        // Another program takes the same port number on 127.0.0.1.
        let _squatter =
            std::net::TcpListener::bind(("127.0.0.1", port)).expect("the port is free there");
        let opts = DialOpts {
            role: libp2p::core::Endpoint::Dialer,
            port_use: PortUse::Reuse,
        };
        // libp2p-tcp alone, listening on the same address, cannot dial at all.
        let mut plain = libp2p::tcp::tokio::Transport::new(libp2p::tcp::Config::default());
        listen(&mut plain, format!("/ip4/{own}/tcp/{port}")).await;
        let refused = plain.dial(target.clone(), opts).expect("dials").await;
        assert_eq!(
            refused.err().map(|e| e.kind()),
            Some(io::ErrorKind::AddrInUse),
            "libp2p-tcp dials from 0.0.0.0:{port}"
        );
        let stream = tcp
            .dial(target, opts)
            .expect("dials")
            .await
            .expect("connected from a fresh port");
        assert_ne!(stream.0.local_addr().expect("local address").port(), port);
    }
}
