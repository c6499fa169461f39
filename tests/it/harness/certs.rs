//! Certificates for TLS tests, made with the openssl command in a directory of the test's own:
//! certificate authorities, and certificates they sign with the subject alternative names a
//! test asks for (`IP:127.0.0.1,DNS:localhost`, `URI:spiffe://…`); and library connections
//! that trust them.

use std::{path::Path, process::Command};

use jobd_client::ClientBuilder;

use super::clients::client_builder;

use super::os::TempDir;

/// A directory of CAs and certificates, each file named `<name>.crt` and `<name>.key`.
pub struct Pki {
    dir: TempDir,
}

/// P-256 keys: small and quick to make.
const EC_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

impl Pki {
    pub fn new() -> Self {
        Self {
            dir: TempDir::new("jobd-pki"),
        }
    }

    pub fn path(&self, file: &str) -> String {
        self.dir.path().join(file).display().to_string()
    }

    /// A self-signed certificate authority: `<name>.crt`, `<name>.key`.
    pub fn authority(&self, name: &str) {
        let (crt, key) = (format!("{name}.crt"), format!("{name}.key"));
        let subject = format!("/CN=jobd test CA {name}");
        let args = [
            &["req", "-x509"][..],
            &EC_KEY,
            &[
                "-keyout", &key, "-out", &crt, "-days", "1", "-subj", &subject,
            ],
        ]
        .concat();
        openssl(self.dir.path(), &args);
    }

    /// A certificate for `sans`, signed by the authority `ca`, good for servers and clients:
    /// `<name>.crt`, `<name>.key`.
    pub fn issue(&self, ca: &str, name: &str, sans: &str) {
        let dir = self.dir.path();
        let ext = format!("{name}.ext");
        std::fs::write(
            dir.join(&ext),
            format!("subjectAltName={sans}\nextendedKeyUsage=serverAuth,clientAuth\n"),
        )
        .unwrap();
        let (csr, key, crt) = (
            format!("{name}.csr"),
            format!("{name}.key"),
            format!("{name}.crt"),
        );
        let subject = format!("/CN={name}");
        let request = [
            &["req"][..],
            &EC_KEY,
            &["-keyout", &key, "-out", &csr, "-subj", &subject],
        ]
        .concat();
        openssl(dir, &request);
        let (ca_crt, ca_key) = (format!("{ca}.crt"), format!("{ca}.key"));
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_crt,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "1",
                "-extfile",
                &ext,
            ],
        );
    }

    /// A library connection to jobd at `address` (host:port) to make over TLS: it trusts the
    /// authority `ca`, checks jobd's certificate for "localhost", and presents `client`'s
    /// certificate (`<client>.crt`, `<client>.key`) if any.
    pub fn client(&self, address: &str, ca: &str, client: Option<&str>) -> ClientBuilder {
        let builder = client_builder(&format!("https://{address}"))
            .ca_file(self.path(&format!("{ca}.crt")))
            .domain_name("localhost");
        match client {
            Some(name) => builder.client_certificate(
                self.path(&format!("{name}.crt")),
                self.path(&format!("{name}.key")),
            ),
            None => builder,
        }
    }

    /// The PEM text of `<file>`.
    pub fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(file)).unwrap()
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("the openssl command runs");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
