//! The perimeter a benchmark crosses: for the jobd it starts, an auth file with one token of
//! every role and a CA-signed certificate for 127.0.0.1, written to a directory of its own;
//! for its clients, `jobd_client` connections that trust that CA (or a given one) and send a
//! bearer token on every call.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
};

use crate::Target;
use anyhow::{Context, bail};
use jobd::auth::{NewToken, QueuePattern, Roles};
use jobd_client::Client;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

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

/// How to connect to jobd: its URL, the CA to trust, the token to send, the client
/// certificate to present; every connection a `jobd_client::Client`.
#[derive(Clone)]
pub struct ClientSide {
    pub url: String,
    ca_file: Option<PathBuf>,
    domain: Option<String>,
    identity: Option<(PathBuf, PathBuf)>,
    token: Option<String>,
}

impl ClientSide {
    /// The client side for a running jobd (`--jobd`), from the token, CA and client
    /// certificate given.
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
        let https = url.starts_with("https:");
        match (&target.tls_ca_file, https) {
            (None, true) => bail!("an https:// --jobd needs --tls-ca-file"),
            (Some(_), false) => bail!("--tls-ca-file needs an https:// --jobd"),
            _ => {}
        }
        let identity = target
            .tls_client_cert_file
            .clone()
            .zip(target.tls_client_key_file.clone());
        Ok(Self {
            url: url.to_owned(),
            ca_file: target.tls_ca_file.clone(),
            domain: target.tls_domain.clone(),
            identity,
            token,
        })
    }

    /// A new connection to jobd. Submissions carry no idempotency key and are not retried,
    /// as the jobs a user submits without one: the benchmark measures jobd's plain
    /// submission path, as it always has.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        let mut builder = Client::builder(self.url.clone()).retry_submissions(false);
        if let Some(token) = &self.token {
            builder = builder.token(token.clone());
        }
        if let Some(ca_file) = &self.ca_file {
            builder = builder.ca_file(ca_file.clone());
        }
        if let Some(domain) = &self.domain {
            builder = builder.domain_name(domain.clone());
        }
        if let Some((cert, key)) = &self.identity {
            builder = builder.client_certificate(cert.clone(), key.clone());
        }
        builder
            .connect()
            .await
            .with_context(|| format!("cannot connect to {}", self.url))
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
    pub fn client_side(files: Option<&Self>, port: u16) -> ClientSide {
        let tls = files.is_some_and(|files| files.perimeter.tls());
        ClientSide {
            url: format!("{}://127.0.0.1:{port}", if tls { "https" } else { "http" }),
            // The URL's host, 127.0.0.1, is in the certificate.
            ca_file: tls
                .then(|| files.map(|files| files.path("ca.crt")))
                .flatten(),
            domain: None,
            identity: None,
            token: files.and_then(|files| files.token.clone()),
        }
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
