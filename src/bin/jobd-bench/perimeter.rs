//! The perimeter a benchmark crosses: for the jobd it starts, an auth file with one token of
//! every role and a CA-signed certificate for 127.0.0.1, written to a directory of its own;
//! for its clients, TLS that trusts that CA (or a given one) and a bearer token on every call.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
    task::{Context as TaskContext, Poll},
};

use anyhow::{Context, bail};
use http::{HeaderValue, header::AUTHORIZATION};
use jobd::auth::{NewToken, QueuePattern, Roles};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

use crate::Target;

/// What stands between the benchmark's clients and the jobd it starts.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Perimeter {
    /// No auth file, plaintext gRPC (jobd's own default on loopback).
    #[default]
    Plain,
    /// An auth file; every call carries `authorization: Bearer <token>`.
    Auth,
    /// gRPC over TLS, no auth file.
    Tls,
    /// Both.
    AuthTls,
}

impl Perimeter {
    pub fn auth(self) -> bool {
        matches!(self, Self::Auth | Self::AuthTls)
    }

    pub fn tls(self) -> bool {
        matches!(self, Self::Tls | Self::AuthTls)
    }

    /// How reports name it; plain runs are not labelled, so their output is as it always was.
    pub fn label(self) -> Option<&'static str> {
        match self {
            Self::Plain => None,
            Self::Auth => Some("auth"),
            Self::Tls => Some("tls"),
            Self::AuthTls => Some("auth-tls"),
        }
    }
}

/// How every client connection of the benchmark reaches jobd: through `Bearer`, which adds the
/// token to each call when there is one, over a channel that is TLS for an https:// URL.
pub type Transport = Bearer<Channel>;

/// How to connect to jobd: its URL, the TLS to use, and the token to send.
#[derive(Clone)]
pub struct ClientSide {
    pub url: String,
    tls: Option<ClientTlsConfig>,
    authorization: Option<HeaderValue>,
}

impl ClientSide {
    /// The client side for a running jobd (`--jobd`), from the token and CA given.
    pub fn for_running(target: &Target, url: &str) -> anyhow::Result<Self> {
        let token = match (&target.token, &target.token_file) {
            (Some(token), _) => Some(token.trim().to_owned()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("--token-file {}", path.display()))?
                    .trim()
                    .to_owned(),
            ),
            (None, None) => None,
        };
        let tls = match &target.tls_ca_file {
            Some(path) => {
                let pem = std::fs::read(path)
                    .with_context(|| format!("--tls-ca-file {}", path.display()))?;
                Some(tls_config(&pem, target.tls_domain.as_deref()))
            }
            None if url.starts_with("https:") => bail!("an https:// --jobd needs --tls-ca-file"),
            None => None,
        };
        if tls.is_some() && !url.starts_with("https:") {
            bail!("--tls-ca-file needs an https:// --jobd");
        }
        Self::new(url, tls, token)
    }

    fn new(url: &str, tls: Option<ClientTlsConfig>, token: Option<String>) -> anyhow::Result<Self> {
        let authorization = match token {
            Some(token) => {
                let mut value = HeaderValue::try_from(format!("Bearer {token}"))
                    .context("the token is not a valid header value")?;
                // Out of any debug output. On the wire it changes nothing: h2, as nghttp2,
                // never puts an authorization value in the HPACK table, so the token travels
                // whole (Huffman-coded) on every call either way.
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        Ok(Self {
            url: url.to_owned(),
            tls,
            authorization,
        })
    }

    /// A new connection to jobd.
    pub async fn connect(&self) -> anyhow::Result<Transport> {
        let mut endpoint = Channel::from_shared(self.url.clone())?.tcp_nodelay(true);
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone())?;
        }
        Ok(Bearer {
            inner: endpoint.connect().await?,
            authorization: self.authorization.clone(),
        })
    }
}

fn tls_config(ca_pem: &[u8], domain: Option<&str>) -> ClientTlsConfig {
    let config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    match domain {
        Some(domain) => config.domain_name(domain),
        // The URL's host, 127.0.0.1 for the jobd the benchmark starts.
        None => config,
    }
}

/// The files of the jobd the benchmark starts (auth file, certificate and key, and the CA
/// that signed it), in a directory removed on drop; and the client side that goes with them.
pub struct ServerFiles {
    dir: PathBuf,
    perimeter: Perimeter,
    token: Option<String>,
}

impl ServerFiles {
    /// Makes what `perimeter` needs (see `write`) in a directory of its own. Plain needs no
    /// files.
    pub fn make(perimeter: Perimeter) -> anyhow::Result<Option<Self>> {
        if perimeter == Perimeter::Plain {
            return Ok(None);
        }
        static MADE: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "jobd-bench-{}-{}",
            std::process::id(),
            MADE.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(name);
        let token = Self::write(perimeter, &dir)?;
        Ok(Some(Self {
            dir,
            perimeter,
            token,
        }))
    }

    /// Writes into `dir` (made if missing, for this user's eyes only) what `perimeter` needs:
    /// an auth file (auth.toml) and its token (token; every role, every queue), and a CA
    /// (ca.crt) and a certificate it signed for 127.0.0.1 (jobd.crt, jobd.key). Returns the
    /// token.
    pub fn write(perimeter: Perimeter, dir: &Path) -> anyhow::Result<Option<String>> {
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(dir)
            .with_context(|| format!("cannot make {}", dir.display()))?;
        let mut token = None;
        if perimeter.auth() {
            let new = NewToken::generate("bench".into(), Roles::ALL, vec![QueuePattern::Any]);
            std::fs::write(dir.join("auth.toml"), new.entry())?;
            std::fs::write(dir.join("token"), &new.token)?;
            token = Some(new.token);
        }
        if perimeter.tls() {
            make_certificates(dir)?;
        }
        Ok(token)
    }

    /// `jobd-bench serve`'s flags for these files.
    pub fn serve_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if self.perimeter.auth() {
            args.push(format!("--auth-file={}", self.path("auth.toml").display()));
        }
        if self.perimeter.tls() {
            args.push(format!(
                "--tls-cert-file={}",
                self.path("jobd.crt").display()
            ));
            args.push(format!(
                "--tls-key-file={}",
                self.path("jobd.key").display()
            ));
        }
        args
    }

    /// How clients reach the jobd serving with these files (or none) on `port`.
    pub fn client_side(files: Option<&Self>, port: u16) -> anyhow::Result<ClientSide> {
        let Some(files) = files else {
            return ClientSide::new(&format!("http://127.0.0.1:{port}"), None, None);
        };
        let (scheme, tls) = if files.perimeter.tls() {
            let pem = std::fs::read(files.path("ca.crt"))?;
            ("https", Some(tls_config(&pem, None)))
        } else {
            ("http", None)
        };
        ClientSide::new(
            &format!("{scheme}://127.0.0.1:{port}"),
            tls,
            files.token.clone(),
        )
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for ServerFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A CA (ca.crt) and a certificate it signed for 127.0.0.1 and localhost (jobd.crt, jobd.key),
/// ECDSA P-256 as tests/it/tls.rs makes them with openssl, made here so that no openssl is
/// needed. The CA's key is never written.
fn make_certificates(dir: &Path) -> anyhow::Result<()> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "jobd-bench CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;

    let mut jobd = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
    jobd.distinguished_name
        .push(DnType::CommonName, "localhost");
    jobd.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate()?;
    let certificate = jobd.signed_by(&key, &ca)?;

    std::fs::write(dir.join("ca.crt"), ca.pem())?;
    std::fs::write(dir.join("jobd.crt"), certificate.pem())?;
    std::fs::write(dir.join("jobd.key"), key.serialize_pem())?;
    Ok(())
}

/// Sends `authorization` (when there is one) on every call of the service it wraps.
#[derive(Clone)]
pub struct Bearer<S> {
    inner: S,
    authorization: Option<HeaderValue>,
}

impl<S, B> tower::Service<http::Request<B>> for Bearer<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> S::Future {
        if let Some(value) = &self.authorization {
            request.headers_mut().insert(AUTHORIZATION, value.clone());
        }
        self.inner.call(request)
    }
}
