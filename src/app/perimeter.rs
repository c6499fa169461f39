//! The perimeter the config asks for: the auth file's principals and the TLS settings, read
//! before anything starts (a bad file stops jobd with exit status 64), then followed while
//! jobd runs.

use std::sync::Arc;

use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    api::TlsSettings,
    auth::{Gate, parse_principals},
    config::{Config, InvalidSetting},
    reload::WatchedFiles,
};

pub struct Perimeter {
    pub gate: Arc<Gate>,
    pub tls: Option<Arc<TlsSettings>>,
    auth_file: Option<WatchedFiles>,
    tls_files: Option<WatchedFiles>,
}

impl Perimeter {
    pub fn load(config: &Config) -> Result<Self, InvalidSetting> {
        let security = &config.security;
        let (gate, auth_file) = match &security.auth_file {
            Some(path) => {
                let (files, contents) = WatchedFiles::read("auth file", vec![path.clone()])
                    .map_err(|error| invalid("JOBD_AUTH_FILE", error))?;
                let principals = principals(&contents[0]).map_err(|error| {
                    invalid("JOBD_AUTH_FILE", format!("{}: {error}", path.display()))
                })?;
                tracing::info!(principals = principals.len(), "auth file read");
                (Gate::with(principals), Some(files))
            }
            None => (Gate::open(), None),
        };
        let (tls, tls_files) = match (&security.tls_cert_file, &security.tls_key_file) {
            (Some(cert), Some(key)) => {
                let mut paths = vec![cert.clone(), key.clone()];
                paths.extend(security.tls_client_ca_file.clone());
                let (files, contents) = WatchedFiles::read("TLS files", paths)
                    .map_err(|error| invalid("JOBD_TLS_CERT_FILE", error))?;
                let settings = TlsSettings::new(
                    &contents[0],
                    &contents[1],
                    contents.get(2).map(Vec::as_slice),
                )
                .map_err(|error| invalid("JOBD_TLS_CERT_FILE", error))?;
                (Some(Arc::new(settings)), Some(files))
            }
            _ => (None, None),
        };
        warn_of_weak_settings(config, tls.is_some());
        Ok(Self {
            gate: Arc::new(gate),
            tls,
            auth_file,
            tls_files,
        })
    }

    /// Follows the files while jobd runs: a changed auth file or certificate is in force
    /// within `reload::RELOAD_INTERVAL` of the change, for calls and connections that come next.
    pub fn follow(&mut self, tracker: &TaskTracker, shutdown: &CancellationToken) {
        if let Some(files) = self.auth_file.take() {
            let gate = self.gate.clone();
            let apply = move |contents: &[Vec<u8>]| {
                let principals = principals(&contents[0])?;
                tracing::info!(principals = principals.len(), "auth file read");
                gate.replace(principals);
                Ok(())
            };
            tracker.spawn(files.follow(apply, shutdown.clone()));
        }
        if let (Some(files), Some(settings)) = (self.tls_files.take(), self.tls.clone()) {
            let apply = move |contents: &[Vec<u8>]| {
                settings.replace(
                    &contents[0],
                    &contents[1],
                    contents.get(2).map(Vec::as_slice),
                )
            };
            tracker.spawn(files.follow(apply, shutdown.clone()));
        }
    }
}

fn principals(contents: &[u8]) -> Result<crate::auth::Principals, String> {
    let text = std::str::from_utf8(contents).map_err(|_| "is not UTF-8 text".to_owned())?;
    parse_principals(text)
}

fn invalid(setting: &str, error: String) -> InvalidSetting {
    InvalidSetting(format!("invalid {setting}: {error}"))
}

/// Warns, at every start, of settings that leave jobd open.
fn warn_of_weak_settings(config: &Config, tls: bool) {
    let listen = config.server.listen;
    if config.is_insecure() {
        tracing::warn!(
            %listen,
            "serving without authentication (JOBD_INSECURE): anyone who reaches this address \
             may do anything to any job"
        );
    } else if config.security.auth_file.is_some() && !tls && !listen.ip().is_loopback() {
        tracing::warn!(
            %listen,
            "bearer tokens travel in clear text: serve TLS (JOBD_TLS_CERT_FILE), or keep jobd \
             behind a proxy or mesh that encrypts"
        );
    }
}
