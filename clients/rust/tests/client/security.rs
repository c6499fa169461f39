//! The perimeter (docs/security.md): bearer tokens from an auth file, TLS, client
//! certificates.

use std::{path::Path, process::Command};

use jobd_client::{Client, ErrorReason, JobSpec, RetryPolicy};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

use crate::harness::{Stack, TempDir, jobd_binary, queue};

/// `jobd token new`: the token, and the principal's auth-file entry.
fn new_token(name: &str, role: &str, queues: &str) -> (String, String) {
    let out = Command::new(jobd_binary())
        .args([
            "token", "new", "--name", name, "--role", role, "--queue", queues,
        ])
        .output()
        .expect("jobd token new runs");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let (token, entry) = text.split_once('\n').expect("a token, then the entry");
    (token.trim().to_owned(), entry.to_owned())
}

/// A CA (ca.crt), a server certificate for 127.0.0.1 (server.crt/.key), and a client
/// certificate with a URI SAN (client.crt/.key).
fn certificates(dir: &Path) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(DnType::CommonName, "jobd-client test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();

    let mut server =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
    client.subject_alt_names = vec![SanType::URI("spiffe://test/client".try_into().unwrap())];
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    for (name, params) in [("server", server), ("client", client)] {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        std::fs::write(dir.join(format!("{name}.crt")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_over_tls_is_accepted_and_its_queues_enforced() {
    let dir = TempDir::new("jobd-rs-pki");
    certificates(&dir.0);
    let (token, entry) = new_token("app", "submitter", "sec.*");
    std::fs::write(dir.0.join("auth.toml"), entry).unwrap();
    let path = |name: &str| dir.0.join(name).display().to_string();
    let stack = Stack::start_with(&[
        &format!("--tls-cert-file={}", path("server.crt")),
        &format!("--tls-key-file={}", path("server.key")),
        &format!("--auth-file={}", path("auth.toml")),
    ])
    .await;
    let endpoint = stack.jobd.endpoint();
    let client = Client::builder(&endpoint)
        .token(&token)
        .ca_file(path("ca.crt"))
        .connect()
        .await
        .expect("connects over TLS");
    let job = client
        .submit(JobSpec::new("sec.a", "k").payload("p"))
        .await
        .expect("allowed");
    assert_eq!(
        &client.get(&job.id).await.expect("readable").payload[..],
        b"p"
    );
    let denied = client
        .submit(JobSpec::new("other", "k"))
        .await
        .expect_err("refused");
    assert_eq!(denied.reason(), Some(ErrorReason::PermissionDenied));
    assert_eq!(denied.metadata("queue"), Some("other"));
    assert_eq!(
        denied.metadata("method"),
        Some("jobd.v1.JobService/SubmitJob")
    );

    let anonymous = Client::builder(&endpoint)
        .ca_file(path("ca.crt"))
        .connect()
        .await
        .unwrap();
    let refused = anonymous
        .submit(JobSpec::new("sec.a", "k"))
        .await
        .expect_err("refused");
    assert_eq!(refused.reason(), Some(ErrorReason::Unauthenticated));
    let stranger = Client::builder(&endpoint)
        .token(format!("jobd_{}", "0".repeat(64)))
        .ca_file(path("ca.crt"))
        .connect()
        .await
        .unwrap();
    let refused = stranger.get(&job.id).await.expect_err("refused");
    assert_eq!(refused.reason(), Some(ErrorReason::Unauthenticated));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_is_an_identity() {
    let dir = TempDir::new("jobd-rs-pki");
    certificates(&dir.0);
    let path = |name: &str| dir.0.join(name).display().to_string();
    let stack = Stack::start_with(&[
        &format!("--tls-cert-file={}", path("server.crt")),
        &format!("--tls-key-file={}", path("server.key")),
        &format!("--tls-client-ca-file={}", path("ca.crt")),
    ])
    .await;
    let endpoint = stack.jobd.endpoint();
    let client = Client::builder(&endpoint)
        .ca_file(path("ca.crt"))
        .client_certificate(path("client.crt"), path("client.key"))
        .connect()
        .await
        .expect("connects with its certificate");
    let job = client
        .submit(JobSpec::new(queue("m"), "k").payload("mtls"))
        .await
        .unwrap();
    assert_eq!(&client.get(&job.id).await.unwrap().payload[..], b"mtls");
    // Without a certificate jobd ends the connection: a transport failure (no jobd reason),
    // UNAVAILABLE at connect, or CANCELLED or UNKNOWN ("transport error", tonic's code for a
    // connection that broke under the call) at the first call, as the TLS 1.3 handshake goes.
    let refused = match Client::builder(&endpoint)
        .ca_file(path("ca.crt"))
        .retry(RetryPolicy::NONE)
        .connect()
        .await
    {
        Err(error) => error,
        Ok(client) => client
            .get(&job.id)
            .await
            .expect_err("no certificate, no call"),
    };
    assert_eq!(refused.reason(), None, "{refused:?}");
    let code = refused.code().expect("a status");
    assert!(
        matches!(
            code,
            tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown
        ),
        "{refused:?}"
    );
}
