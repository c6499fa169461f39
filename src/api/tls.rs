//! gRPC over TLS: jobd accepts connections and makes the handshakes itself (tonic's own TLS
//! cannot change its certificate while serving), with the certificate in force when each
//! connection arrives, and learns the identities of a client certificate once per connection.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, RwLock},
    task::{Context, Poll},
    time::Duration,
};

use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::{Semaphore, mpsc},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::transport::server::{Connected, TcpIncoming};

/// The longest a client may take over its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes under way at most; further connections wait in the listen backlog.
const MAX_HANDSHAKES: usize = 1024;

/// Identities taken from one client certificate at most.
const MAX_IDENTITIES: usize = 32;

/// The server's TLS settings in force: replaced when the files change, read by each new
/// connection.
pub struct TlsSettings(RwLock<Arc<ServerConfig>>);

impl TlsSettings {
    /// Settings from the PEM contents of the certificate chain, its key, and the client CAs
    /// (mTLS) if any.
    pub fn new(cert: &[u8], key: &[u8], client_ca: Option<&[u8]>) -> Result<Self, String> {
        Ok(Self(RwLock::new(server_config(cert, key, client_ca)?)))
    }

    /// Puts new files in force for the connections that come next.
    pub fn replace(&self, cert: &[u8], key: &[u8], client_ca: Option<&[u8]>) -> Result<(), String> {
        let config = server_config(cert, key, client_ca)?;
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = config;
        Ok(())
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.0.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// What jobd knows of a connection's client, on each of its requests.
#[derive(Debug, Clone)]
pub struct Peer {
    pub remote: SocketAddr,
    /// The URI and DNS names of the client's certificate (a SPIFFE id, say); empty without one.
    pub identities: Arc<[String]>,
}

/// A connection whose handshake is done.
pub struct TlsConnection {
    stream: TlsStream<TcpStream>,
    peer: Peer,
}

/// The connections of `listener` (with its socket options, see `Transport::incoming`), each
/// handshaken with the settings in force when it came, until `stop`. A handshake that fails or
/// takes too long closes its connection, and only it.
pub fn incoming(
    mut listener: TcpIncoming,
    settings: Arc<TlsSettings>,
    tasks: &TaskTracker,
    stop: CancellationToken,
) -> ReceiverStream<io::Result<TlsConnection>> {
    let (sender, receiver) = mpsc::channel(16);
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let spawner = tasks.clone();
    tasks.spawn(async move {
        loop {
            let tcp = tokio::select! {
                () = stop.cancelled() => return,
                () = sender.closed() => return,
                accepted = listener.next() => match accepted {
                    Some(Ok(tcp)) => tcp,
                    Some(Err(error)) => {
                        // Out of file descriptors, say: pause rather than spin.
                        tracing::warn!(%error, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    None => return,
                },
            };
            // Gone already: nothing to serve.
            let Ok(remote) = tcp.peer_addr() else {
                continue;
            };
            let Ok(permit) = handshakes.clone().acquire_owned().await else {
                return;
            };
            let (acceptor, sender, stop) = (settings.acceptor(), sender.clone(), stop.clone());
            spawner.spawn(async move {
                let _permit = permit;
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
                let stream = tokio::select! {
                    () = stop.cancelled() => return,
                    done = handshake => match done {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(error)) => {
                            tracing::debug!(%remote, %error, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%remote, "TLS handshake timed out");
                            return;
                        }
                    },
                };
                let peer = Peer {
                    remote,
                    identities: identities(stream.get_ref().1.peer_certificates()).into(),
                };
                let _ = sender.send(Ok(TlsConnection { stream, peer })).await;
            });
        }
    });
    ReceiverStream::new(receiver)
}

fn server_config(
    cert: &[u8],
    key: &[u8],
    client_ca: Option<&[u8]>,
) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("the TLS certificate file is not PEM: {error}"))?;
    if chain.is_empty() {
        return Err("the TLS certificate file holds no certificate".into());
    }
    // The key's parse error is not shown: it could quote the key.
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|_| "the TLS key file holds no PEM private key".to_owned())?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?;
    let builder = match client_ca {
        Some(pem) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(client_roots(pem)?, provider)
                .build()
                .map_err(|error| format!("the TLS client CA file cannot be used: {error}"))?,
        ),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|error| format!("the TLS certificate and key cannot be used: {error}"))?;
    // gRPC is HTTP/2, and clients (grpc-go's among them) insist that the server says so.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

fn client_roots(pem: &[u8]) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(pem) {
        let certificate =
            certificate.map_err(|error| format!("the TLS client CA file is not PEM: {error}"))?;
        roots
            .add(certificate)
            .map_err(|error| format!("the TLS client CA file: {error}"))?;
    }
    if roots.is_empty() {
        return Err("the TLS client CA file holds no certificate".into());
    }
    Ok(Arc::new(roots))
}

/// The URI names (SPIFFE ids among them), then the DNS names, of a client's certificate.
fn identities(certificates: Option<&[CertificateDer<'_>]>) -> Vec<String> {
    let Some(leaf) = certificates.and_then(<[_]>::first) else {
        return Vec::new();
    };
    let Ok(certificate) = webpki::EndEntityCert::try_from(leaf) else {
        return Vec::new();
    };
    certificate
        .valid_uri_names()
        .chain(certificate.valid_dns_names())
        .take(MAX_IDENTITIES)
        .map(str::to_owned)
        .collect()
}

impl Connected for TlsConnection {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
