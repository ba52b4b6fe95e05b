//! Byte streams to clients and servers: plain TCP, Unix sockets, or TLS over TCP.
//!
//! Plain streams split into owned halves (no lock between reader and writer); TLS
//! streams split through tokio's `split`, whose lock per I/O call is small next to
//! the encryption itself.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{tcp, unix, TcpListener, TcpStream, UnixListener, UnixStream};

/// Where a client connected from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Tcp(SocketAddr),
    /// Through the Unix socket of the listener on `port` (the `.s.PGSQL.<port>` file).
    Unix {
        port: u16,
    },
}

impl Peer {
    /// The client's IP address; `None` over a Unix socket.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Peer::Tcp(a) => Some(a.ip()),
            Peer::Unix { .. } => None,
        }
    }

    /// `SHOW CLIENTS`' `addr` and `port`: PgBouncer shows "unix" and the listen port.
    pub fn addr_and_port(&self) -> (String, u16) {
        match self {
            Peer::Tcp(a) => (a.ip().to_string(), a.port()),
            Peer::Unix { port } => ("unix".to_string(), *port),
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Tcp(a) => a.fmt(f),
            Peer::Unix { port } => write!(f, "unix:{port}"),
        }
    }
}

/// The socket file PostgreSQL clients look for in a socket directory.
pub fn unix_socket_path(dir: &Path, port: u16) -> PathBuf {
    dir.join(format!(".s.PGSQL.{port}"))
}

/// A bound listener: TCP, or a Unix socket (whose file is removed when dropped).
pub enum Listener {
    Tcp(TcpListener),
    Unix {
        listener: UnixListener,
        path: PathBuf,
        port: u16,
    },
}

impl Listener {
    /// Wait for the next client; also its address (TCP) and the local address.
    pub async fn accept(&self) -> io::Result<(Stream, Peer, Option<SocketAddr>)> {
        match self {
            Listener::Tcp(l) => {
                let (stream, peer) = l.accept().await?;
                // Small protocol messages: never wait for Nagle.
                let _ = stream.set_nodelay(true);
                let local = stream.local_addr().ok();
                Ok((Stream::Tcp(stream), Peer::Tcp(peer), local))
            }
            Listener::Unix { listener, port, .. } => {
                let (stream, _) = listener.accept().await?;
                Ok((Stream::Unix(stream), Peer::Unix { port: *port }, None))
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix { path, .. } = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A connected stream, before it is split into a reader and a writer.
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    /// A client that negotiated TLS with us.
    TlsFromClient(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// A server we negotiated TLS with.
    TlsToServer(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// The reading half of a [`Stream`].
pub enum ReadHalf {
    Tcp(tcp::OwnedReadHalf),
    Unix(unix::OwnedReadHalf),
    Tls(tokio::io::ReadHalf<Stream>),
}

impl ReadHalf {
    /// A plain TCP or Unix socket (not TLS).
    pub fn is_plain(&self) -> bool {
        !matches!(self, ReadHalf::Tls(_))
    }
}

/// The writing half of a [`Stream`].
pub enum WriteHalf {
    Tcp(tcp::OwnedWriteHalf),
    Unix(unix::OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<Stream>),
}

/// A plain client socket taken out of Tokio's reactor while its client is parked (the
/// parker's epoll set watches it instead); TLS streams are never parked.
#[derive(Debug)]
pub enum ParkedSocket {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl ParkedSocket {
    /// Put the two halves of a plain stream back together and take the socket out of
    /// Tokio's reactor. `Err` gives the halves back unchanged (TLS, or not one pair);
    /// `Ok(Err(_))`: the reactor refused to let go, and the socket is closed.
    #[allow(clippy::type_complexity)]
    pub fn from_halves(
        read: ReadHalf,
        write: WriteHalf,
    ) -> Result<io::Result<Self>, (ReadHalf, WriteHalf)> {
        match (read, write) {
            (ReadHalf::Tcp(r), WriteHalf::Tcp(w)) => match r.reunite(w) {
                Ok(s) => Ok(s.into_std().map(ParkedSocket::Tcp)),
                Err(e) => Err((ReadHalf::Tcp(e.0), WriteHalf::Tcp(e.1))),
            },
            (ReadHalf::Unix(r), WriteHalf::Unix(w)) => match r.reunite(w) {
                Ok(s) => Ok(s.into_std().map(ParkedSocket::Unix)),
                Err(e) => Err((ReadHalf::Unix(e.0), WriteHalf::Unix(e.1))),
            },
            (r, w) => Err((r, w)),
        }
    }

    /// Back into Tokio's reactor (the socket stayed non-blocking).
    pub fn into_stream(self) -> io::Result<Stream> {
        Ok(match self {
            ParkedSocket::Tcp(s) => Stream::Tcp(TcpStream::from_std(s)?),
            ParkedSocket::Unix(s) => Stream::Unix(UnixStream::from_std(s)?),
        })
    }
}

impl std::os::fd::AsFd for ParkedSocket {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            ParkedSocket::Tcp(s) => s.as_fd(),
            ParkedSocket::Unix(s) => s.as_fd(),
        }
    }
}

/// Connect to a server: over TCP (TCP_NODELAY) to a host name or IP address, or to
/// the socket file in directory `host` when it starts with '/' (as libpq does).
pub async fn connect(host: &str, port: u16) -> io::Result<Stream> {
    if host.starts_with('/') {
        let path = unix_socket_path(Path::new(host), port);
        return Ok(Stream::Unix(UnixStream::connect(path).await?));
    }
    let tcp = TcpStream::connect((host, port)).await?;
    tcp.set_nodelay(true)?;
    Ok(Stream::Tcp(tcp))
}

impl Stream {
    pub fn is_tcp(&self) -> bool {
        matches!(self, Stream::Tcp(_))
    }

    pub fn split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Tcp(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
            }
            Stream::Unix(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Unix(r), WriteHalf::Unix(w))
            }
            tls => {
                let (r, w) = tokio::io::split(tls);
                (ReadHalf::Tls(r), WriteHalf::Tls(w))
            }
        }
    }

    /// The TLS protocol and cipher suite in PgBouncer's `SHOW CLIENTS`/`SHOW SERVERS`
    /// form (`TLSv1.3/TLS_AES_256_GCM_SHA384`); empty when not encrypted.
    pub fn tls_description(&self) -> String {
        let (version, suite) = match self {
            Stream::TlsFromClient(s) => {
                let c = s.get_ref().1;
                (c.protocol_version(), c.negotiated_cipher_suite())
            }
            Stream::TlsToServer(s) => {
                let c = s.get_ref().1;
                (c.protocol_version(), c.negotiated_cipher_suite())
            }
            _ => return String::new(),
        };
        let version = match version {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
            Some(v) => format!("{v:?}"),
            None => "TLS".to_string(),
        };
        match suite.and_then(|s| s.suite().as_str()) {
            Some(name) => format!("{version}/{name}"),
            None => version,
        }
    }
}

/// Forward a poll to whichever variant is inside.
macro_rules! delegate {
    ($self:ident, $s:ident => $call:expr, $($variant:ident),+) => {
        match $self.get_mut() {
            $(Self::$variant($s) => $call,)+
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf), Tcp, Unix, TlsFromClient, TlsToServer)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write(cx, buf), Tcp, Unix, TlsFromClient, TlsToServer)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write_vectored(cx, bufs), Tcp, Unix, TlsFromClient, TlsToServer)
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Unix(s) => s.is_write_vectored(),
            Stream::TlsFromClient(s) => s.is_write_vectored(),
            Stream::TlsToServer(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_flush(cx), Tcp, Unix, TlsFromClient, TlsToServer)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_shutdown(cx), Tcp, Unix, TlsFromClient, TlsToServer)
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf), Tcp, Unix, Tls)
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write(cx, buf), Tcp, Unix, Tls)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write_vectored(cx, bufs), Tcp, Unix, Tls)
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            WriteHalf::Tcp(s) => s.is_write_vectored(),
            WriteHalf::Unix(s) => s.is_write_vectored(),
            WriteHalf::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_flush(cx), Tcp, Unix, Tls)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_shutdown(cx), Tcp, Unix, Tls)
    }
}
