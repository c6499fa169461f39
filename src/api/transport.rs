//! The HTTP/2 and TCP settings of every connection jobd serves (gRPC, over TLS or not, and
//! health alone): concurrent streams, keepalive, h2's local error reset limit, and the
//! connection's age, with the grace after which a connection past its age is closed; how
//! many gRPC connections are served at once; and the send timeout, past which a connection
//! whose client leaves a reply's bytes unwritten is closed (`unsent`).

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpListener,
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Sleep,
};
use tonic::transport::{
    Server,
    server::{Connected, TcpConnectInfo, TcpIncoming},
};

use super::{tls::Peer, unsent::Unsent};

/// How jobd treats each connection; see `TransportConfig` for each setting's reason.
#[derive(Debug, Clone)]
pub struct Transport {
    pub max_concurrent_streams: u32,
    pub max_connections: usize,
    pub http2_keepalive_interval: Duration,
    pub http2_keepalive_timeout: Duration,
    pub tcp_keepalive: Duration,
    pub tcp_keepalive_interval: Duration,
    pub tcp_keepalive_retries: u32,
    pub max_connection_age: Duration,
    pub max_connection_age_grace: Duration,
    pub max_local_error_resets: usize,
    pub send_timeout: Duration,
}

impl Transport {
    /// A server builder with these HTTP/2 settings.
    ///
    /// tonic's own `max_connection_age_grace` is not used: with it set, tonic 0.14 sends no
    /// GOAWAY at the connection's age, and closes the connection at age + grace instead (its
    /// `connection_timeout_future`). So tonic sends the GOAWAY at the age, and `Aged` closes
    /// the connection at the end of the grace.
    pub(super) fn server(&self) -> Server {
        Server::builder()
            .max_concurrent_streams(self.max_concurrent_streams)
            .http2_keepalive_interval(Some(self.http2_keepalive_interval))
            .http2_keepalive_timeout(Some(self.http2_keepalive_timeout))
            .http2_max_local_error_reset_streams(Some(self.max_local_error_resets))
            .max_connection_age(self.max_connection_age)
    }

    /// The connections of `listener`, with TCP keepalive, and without Nagle's algorithm: small
    /// gRPC frames must not wait for it (and the peer's delayed ACK).
    pub(super) fn incoming(&self, listener: TcpListener) -> TcpIncoming {
        TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(self.tcp_keepalive))
            .with_keepalive_interval(Some(self.tcp_keepalive_interval))
            .with_keepalive_retries(Some(self.tcp_keepalive_retries))
    }

    /// `io`, served from now on, closed at the end of its age's grace.
    pub(super) fn aged<IO>(&self, io: IO) -> Aged<IO> {
        let lifetime = self.max_connection_age + self.max_connection_age_grace;
        Aged {
            io,
            end: Some(Box::pin(tokio::time::sleep(lifetime))),
            unsent: Unsent::default(),
            overdue: None,
            _slot: None,
        }
    }

    /// The limit of gRPC connections served at once, shared by the connections of one server.
    pub(super) fn connection_slots(&self) -> ConnectionSlots {
        ConnectionSlots(Arc::new(Semaphore::new(self.max_connections)))
    }
}

/// The gRPC connections served at once (`--max-connections`). Cheap to clone.
#[derive(Clone)]
pub(super) struct ConnectionSlots(Arc<Semaphore>);

impl ConnectionSlots {
    /// `io`, aged as `Transport::aged` does, holding a slot until it is closed; past the limit,
    /// with no lifetime at all: its first read and write fail, and hyper closes it before
    /// anything is served on it.
    pub(super) fn admit<IO>(&self, transport: &Transport, io: IO) -> Aged<IO> {
        match self.0.clone().try_acquire_owned() {
            Ok(slot) => Aged {
                _slot: Some(slot),
                ..transport.aged(io)
            },
            Err(_) => {
                // Not a warning per connection: a client in a loop would flood the log.
                tracing::debug!("connection closed: max-connections are served");
                Aged {
                    io,
                    end: None,
                    unsent: Unsent::default(),
                    overdue: None,
                    _slot: None,
                }
            }
        }
    }
}

/// A connection that fails every read and write once its lifetime is over, which makes hyper
/// close it, calls under way and all: the grace after GOAWAY is spent, or a reply's bytes
/// waited past the send timeout in hyper for the client's flow-control window.
pub struct Aged<IO> {
    io: IO,
    /// The end of its lifetime; none for a connection past `--max-connections`, over at once
    /// (a timer of zero would let the first reads through until the timer driver's next tick).
    end: Option<Pin<Box<Sleep>>>,
    /// Its replies' chunks that hyper holds, and the timer of the earliest one's deadline.
    unsent: Unsent,
    overdue: Option<Pin<Box<Sleep>>>,
    /// Its place among the connections served, given back when it is closed (none for the
    /// health port's).
    _slot: Option<OwnedSemaphorePermit>,
}

impl<IO> Aged<IO> {
    /// Ready, with the error that ends the connection, once its lifetime is over. Polled on
    /// every read, so the connection's task wakes when it is.
    fn poll_over(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let Some(end) = self.end.as_mut() else {
            return Poll::Ready(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "max-connections are served",
            ));
        };
        if end.as_mut().poll(cx).is_ready() {
            return Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                "the connection outlived its max age and grace",
            ));
        }
        self.unsent.poll_overdue(cx, &mut self.overdue).map(|()| {
            tracing::debug!("connection closed: a reply was not written within send-timeout");
            io::Error::new(
                io::ErrorKind::TimedOut,
                "a reply was not written within send-timeout",
            )
        })
    }
}

/// What a request knows of its connection: what its `IO` tells (`Peer` over TLS,
/// `TcpConnectInfo` without), and the connection's unsent replies.
#[derive(Clone)]
pub struct Linked<I> {
    pub info: I,
    unsent: Unsent,
}

/// The unsent replies of the connection a request came on.
pub fn unsent(extensions: &http::Extensions) -> Option<&Unsent> {
    match extensions.get::<Linked<Peer>>() {
        Some(linked) => Some(&linked.unsent),
        None => extensions
            .get::<Linked<TcpConnectInfo>>()
            .map(|linked| &linked.unsent),
    }
}

impl<IO: Connected> Connected for Aged<IO> {
    type ConnectInfo = Linked<IO::ConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        Linked {
            info: self.io.connect_info(),
            unsent: self.unsent.clone(),
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Aged<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Poll::Ready(error) = self.poll_over(cx) {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Aged<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Poll::Ready(error) = self.poll_over(cx) {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Poll::Ready(error) = self.poll_over(cx) {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
