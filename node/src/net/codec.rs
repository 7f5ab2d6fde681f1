//! A request-response codec for postcard messages with a hard size limit.
//!
//! request-response opens one stream per request and closes the writing side after
//! the message, so a message is simply the stream's bytes. The reader takes at most
//! `limit + 1` bytes: anything longer is refused before it is decoded, and anything
//! that does not decode is refused too.
//!
//! A bad *request* is delivered as `Err(Offence)` (request-response would otherwise
//! swallow the read error without saying which peer sent it), so the event loop can
//! count it against the peer and close the stream unanswered. A bad *response* comes
//! back as an `io::ErrorKind::InvalidData` error with the [`Offence`] inside; an empty
//! one (the stream closed unanswered: the peer was busy or the request over one of
//! its bounds) as `UnexpectedEof`, no offence.
//!
//! With [`PostcardCodec::with_metrics`], every message read or written is counted
//! (messages and bytes, by protocol and direction) in the node's [`NetMetrics`].
//!
//! With [`PostcardCodec::with_budget`], the buffer of every request being read is a
//! share of the node's inbound byte [`Budget`] (see [`held`](super::held)): when the
//! budget is spent, the request is refused as the node being busy (no offence), so
//! many slow streams cannot hold more than the budget between them.

use std::io;
use std::marker::PhantomData;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use libp2p::request_response;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::held::Budget;
use super::metrics::{Direction, NetMetrics};

/// What a peer did wrong on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Offence {
    /// A message longer than the protocol allows.
    #[error("message over the {limit}-byte limit of {protocol}")]
    Oversized {
        /// The protocol.
        protocol: String,
        /// Its limit.
        limit: usize,
    },
    /// Bytes that do not decode as the protocol's message.
    #[error("undecodable {protocol} message: {reason}")]
    Garbled {
        /// The protocol.
        protocol: String,
        /// What the decoder said.
        reason: String,
    },
}

impl Offence {
    /// Finds an offence inside an I/O error produced by this codec.
    pub fn from_io(error: &io::Error) -> Option<&Offence> {
        if error.kind() != io::ErrorKind::InvalidData {
            return None;
        }
        error.get_ref()?.downcast_ref::<Offence>()
    }
}

/// An inbound request: the message, or what was wrong with it.
pub type Inbound<T> = Result<T, Offence>;

/// Postcard over request-response, `Req` out and `Resp` back, each with a size limit.
pub struct PostcardCodec<Req, Resp> {
    max_request: usize,
    max_response: usize,
    metrics: Option<NetMetrics>,
    budget: Option<Budget>,
    _types: PhantomData<fn() -> (Req, Resp)>,
}

impl<Req, Resp> std::fmt::Debug for PostcardCodec<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostcardCodec")
            .field("max_request", &self.max_request)
            .field("max_response", &self.max_response)
            .finish()
    }
}

impl<Req, Resp> Clone for PostcardCodec<Req, Resp> {
    fn clone(&self) -> Self {
        Self {
            metrics: self.metrics.clone(),
            budget: self.budget.clone(),
            ..Self::new(self.max_request, self.max_response)
        }
    }
}

impl<Req, Resp> PostcardCodec<Req, Resp> {
    /// A codec with these limits, in bytes.
    pub fn new(max_request: usize, max_response: usize) -> Self {
        Self {
            max_request,
            max_response,
            metrics: None,
            budget: None,
            _types: PhantomData,
        }
    }

    /// Counts every message read and written in `metrics`.
    pub fn with_metrics(mut self, metrics: NetMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Reads requests into shares of `budget`.
    pub(crate) fn with_budget(mut self, budget: Budget) -> Self {
        self.budget = Some(budget);
        self
    }

    async fn receive<T, R>(
        &self,
        io: &mut R,
        limit: usize,
        protocol: &str,
        budget: Option<&Budget>,
    ) -> io::Result<T>
    where
        T: DeserializeOwned,
        R: AsyncRead + Unpin + Send,
    {
        let buf = read_bytes(io, limit, protocol, budget).await?;
        // A stream closed with nothing on it is a peer that gave up, not a garbled
        // message: no message of ours encodes to zero bytes. A requester whose
        // request timed out after the stream opened (a loaded machine), or a responder
        // that dropped the request (busy, or over a bound), closes it so. No offence:
        // counting one made honest peers on a loaded machine ban each other.
        if buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the peer closed the {protocol} stream without a message (it gave up, or was busy)"
                ),
            ));
        }
        if let Some(metrics) = &self.metrics {
            metrics.message(protocol, Direction::In, buf.len());
        }
        decode(&buf, protocol)
    }

    async fn send<T, W>(&self, io: &mut W, value: T, limit: usize, protocol: &str) -> io::Result<()>
    where
        T: Serialize,
        W: AsyncWrite + Unpin + Send,
    {
        let bytes = encode(&value, limit)?;
        io.write_all(&bytes).await?;
        io.close().await?;
        if let Some(metrics) = &self.metrics {
            metrics.message(protocol, Direction::Out, bytes.len());
        }
        Ok(())
    }
}

/// Reads a whole message of at most `limit` bytes and decodes it.
pub async fn read_message<T, R>(io: &mut R, limit: usize, protocol: &str) -> io::Result<T>
where
    T: DeserializeOwned,
    R: AsyncRead + Unpin + Send,
{
    let buf = read_bytes(io, limit, protocol, None).await?;
    decode(&buf, protocol)
}

/// Reads a whole message of at most `limit` bytes, undecoded, into a buffer that
/// doubles as it fills (at most twice the limit); with a `budget`, its capacity is a
/// share of it, and a read that cannot grow its share fails as busy (no offence).
async fn read_bytes<R>(
    io: &mut R,
    limit: usize,
    protocol: &str,
    budget: Option<&Budget>,
) -> io::Result<Vec<u8>>
where
    R: AsyncRead + Unpin + Send,
{
    let mut held = budget.and_then(|b| b.take(0));
    let mut buf: Vec<u8> = Vec::new();
    let mut io = io.take(limit as u64 + 1);
    loop {
        if buf.len() == buf.capacity() {
            let want = (buf.capacity() * 2).clamp(256, limit.saturating_add(1).max(256));
            if let Some(share) = &mut held
                && !share.resize(want)
            {
                // Busy: let go of the buffer and its share, but read on (into a
                // small scratch buffer) to the end, so a message over the limit is
                // still found out.
                let read = buf.len() as u64;
                drop((buf, held));
                let rest = drain(&mut io).await?;
                if read + rest > limit as u64 {
                    return Err(oversized(protocol, limit));
                }
                return Err(io::Error::other(format!(
                    "busy: inbound requests hold the node's {}-byte budget",
                    super::held::MAX_HELD_BYTES
                )));
            }
            buf.reserve_exact(want - buf.len());
        }
        let len = buf.len();
        buf.resize(buf.capacity(), 0);
        let n = io.read(&mut buf[len..]).await;
        buf.truncate(len + n.as_ref().map_or(0, |n| *n));
        match n? {
            0 => break,
            _ if buf.len() > limit => break,
            _ => {}
        }
    }
    if buf.len() > limit {
        return Err(oversized(protocol, limit));
    }
    Ok(buf)
}

/// Reads `io` to its end (it is already bounded by the caller), keeping nothing;
/// returns how many bytes it read.
async fn drain<R: AsyncRead + Unpin>(io: &mut R) -> io::Result<u64> {
    let mut scratch = [0u8; 1024];
    let mut total = 0;
    loop {
        match io.read(&mut scratch).await? {
            0 => return Ok(total),
            n => total += n as u64,
        }
    }
}

fn oversized(protocol: &str, limit: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        Offence::Oversized {
            protocol: protocol.to_string(),
            limit,
        },
    )
}

/// Decodes a message, turning failure into a [`Offence::Garbled`] I/O error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], protocol: &str) -> io::Result<T> {
    postcard::from_bytes(bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            Offence::Garbled {
                protocol: protocol.to_string(),
                reason: e.to_string(),
            },
        )
    })
}

/// Encodes a message, refusing to send one over `limit` (our own bug, not the peer's).
pub fn encode<T: Serialize>(value: &T, limit: usize) -> io::Result<Vec<u8>> {
    let bytes = postcard::to_allocvec(value).map_err(io::Error::other)?;
    if bytes.len() > limit {
        return Err(io::Error::other(format!(
            "refusing to send a {}-byte message over the {limit}-byte limit",
            bytes.len()
        )));
    }
    Ok(bytes)
}

impl<Req, Resp> request_response::Codec for PostcardCodec<Req, Resp>
where
    Req: Serialize + DeserializeOwned + Send + 'static,
    Resp: Serialize + DeserializeOwned + Send + 'static,
{
    type Protocol = StreamProtocol;
    type Request = Inbound<Req>;
    type Response = Resp;

    async fn read_request<T>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Inbound<Req>>
    where
        T: AsyncRead + Unpin + Send,
    {
        let budget = self.budget.clone();
        match self
            .receive(io, self.max_request, protocol.as_ref(), budget.as_ref())
            .await
        {
            Ok(request) => Ok(Ok(request)),
            Err(e) => match Offence::from_io(&e) {
                Some(offence) => Ok(Err(offence.clone())),
                None => Err(e),
            },
        }
    }

    async fn read_response<T>(&mut self, protocol: &StreamProtocol, io: &mut T) -> io::Result<Resp>
    where
        T: AsyncRead + Unpin + Send,
    {
        self.receive(io, self.max_response, protocol.as_ref(), None)
            .await
    }

    async fn write_request<T>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
        req: Inbound<Req>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        match req {
            Ok(req) => {
                self.send(io, req, self.max_request, protocol.as_ref())
                    .await
            }
            Err(offence) => Err(io::Error::other(format!(
                "not sending an invalid request: {offence}"
            ))),
        }
    }

    async fn write_response<T>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
        res: Resp,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        self.send(io, res, self.max_response, protocol.as_ref())
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::protocol::{BlobRequest, TaskRequest};

    fn read<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> io::Result<T> {
        futures::executor::block_on(read_message(&mut &bytes[..], limit, "/t/1"))
    }

    #[test]
    fn oversized_and_garbled_messages_are_offences() {
        let err = read::<BlobRequest>(&[0u8; 100], 10).unwrap_err();
        assert!(matches!(
            Offence::from_io(&err),
            Some(Offence::Oversized { .. })
        ));
        let err = read::<BlobRequest>(&[0xff; 5], 10).unwrap_err();
        assert!(matches!(
            Offence::from_io(&err),
            Some(Offence::Garbled { .. })
        ));
        let err = read::<TaskRequest>(&[], 10).unwrap_err();
        assert!(matches!(
            Offence::from_io(&err),
            Some(Offence::Garbled { .. })
        ));
    }

    /// While the byte budget is spent, a request is refused as busy (no offence),
    /// but one over the limit is still read to the end and found out, holding
    /// nothing of the budget meanwhile.
    #[test]
    fn an_oversized_request_is_an_offence_even_while_the_node_is_busy() {
        let budget = Budget::new(1 << 20);
        let spent = budget.take(1 << 20).expect("the whole budget");
        let read = |bytes: &[u8]| {
            futures::executor::block_on(read_bytes(&mut &bytes[..], 100_000, "/t/1", Some(&budget)))
                .unwrap_err()
        };
        let busy = read(&[0u8; 100_000]);
        assert!(Offence::from_io(&busy).is_none(), "{busy}");
        assert!(busy.to_string().contains("busy"));
        let over = read(&vec![0u8; 100_001]);
        assert!(matches!(
            Offence::from_io(&over),
            Some(Offence::Oversized { .. })
        ));
        assert_eq!(
            budget.used(),
            1 << 20,
            "nothing held beyond the spent budget"
        );
        drop(spent);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_huge_declared_length_does_not_allocate_it() {
        // An Offer claiming 2^60 assignments in a few bytes: decoding fails fast.
        let mut bytes = vec![0u8]; // variant Offer
        bytes.extend_from_slice(&[0u8; 16]); // job id
        bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f]);
        let err = read::<TaskRequest>(&bytes, 1 << 20).unwrap_err();
        assert!(Offence::from_io(&err).is_some());
    }

    #[test]
    fn an_empty_response_is_a_refusal_not_an_offence() {
        let mut codec = PostcardCodec::<BlobRequest, TaskRequest>::new(100, 100);
        let protocol = StreamProtocol::new("/t/1");
        let err = futures::executor::block_on(request_response::Codec::read_response(
            &mut codec,
            &protocol,
            &mut &[][..],
        ))
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(Offence::from_io(&err).is_none());
    }

    /// A requester whose request timed out after its stream opened closes the stream
    /// empty: that is not a garbled request (honest peers on a loaded machine were
    /// banning each other for it). Half a message still is one.
    #[test]
    fn an_empty_request_is_a_peer_giving_up_not_an_offence() {
        let mut codec = PostcardCodec::<BlobRequest, TaskRequest>::new(100, 100)
            .with_budget(Budget::new(1 << 20));
        let protocol = StreamProtocol::new("/t/1");
        let mut read = |bytes: &[u8]| {
            futures::executor::block_on(request_response::Codec::read_request(
                &mut codec,
                &protocol,
                &mut &bytes[..],
            ))
        };
        let err = read(&[]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(Offence::from_io(&err).is_none());
        let whole = encode(
            &BlobRequest {
                hash: crate::net::protocol::BlobHash::of(b"x"),
                offset: 5,
                len: 7,
            },
            100,
        )
        .expect("encodes");
        let half = read(&whole[..whole.len() / 2]).expect("read to the end");
        assert!(
            matches!(half, Err(Offence::Garbled { .. })),
            "a truncated request is an offence: {half:?}"
        );
        assert!(matches!(read(&whole), Ok(Ok(_))));
    }

    #[test]
    fn messages_round_trip() {
        let req = BlobRequest {
            hash: crate::net::protocol::BlobHash::of(b"x"),
            offset: 5,
            len: 7,
        };
        let bytes = encode(&req, 1000).expect("encodes");
        assert_eq!(read::<BlobRequest>(&bytes, 1000).expect("decodes"), req);
        assert!(encode(&req, 3).is_err());
    }
}
