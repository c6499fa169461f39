//! gRPC over TLS: the real grpcurl and tonic clients trusting jobd's CA are served, plaintext
//! clients are not; with client CAs (mTLS) a client without a certificate from them is refused
//! at the handshake, and a certificate's identity is a principal of the auth file; a renewed
//! certificate is served to new connections without a restart; health alone stays plaintext
//! beside TLS, for kubelet probes.

use std::time::Duration;

use jobd_client::{Client, proto::job_service_client::JobServiceClient};
use tonic::{Code, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::harness::*;

/// Certificates for 127.0.0.1, signed by the CA `ca`; a second CA `other` signs a stranger.
fn pki() -> Pki {
    let pki = Pki::new();
    for ca in ["ca", "other"] {
        pki.authority(ca);
    }
    pki.issue("ca", "server", "IP:127.0.0.1,DNS:localhost");
    pki.issue(
        "ca",
        "worker",
        "URI:spiffe://example.org/ns/billing/sa/worker",
    );
    pki.issue(
        "ca",
        "unmapped",
        "URI:spiffe://example.org/ns/other/sa/x,DNS:x.example",
    );
    pki.issue(
        "other",
        "stranger",
        "URI:spiffe://example.org/ns/billing/sa/worker",
    );
    pki
}

fn tls_flags(pki: &Pki) -> Vec<String> {
    vec![
        format!("--tls-cert-file={}", pki.path("server.crt")),
        format!("--tls-key-file={}", pki.path("server.key")),
    ]
}

/// A TLS connection to `server` trusting the CA `ca`, presenting `client`'s certificate if any.
async fn connect_tls(
    server: &TestServer,
    pki: &Pki,
    ca: &str,
    client: Option<&str>,
) -> jobd_client::Result<Client> {
    let address = server.addr.to_string();
    pki.client(&address, ca, client).connect().await
}

async fn grpcurl(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new("grpcurl")
        .args(args)
        .output()
        .await
        .expect("grpcurl runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_clients_that_trust_its_ca_and_no_plaintext() {
    let pki = pki();
    let redis = RedisServer::start().await;
    let mut extra = tls_flags(&pki);
    extra.push("--health-listen=127.0.0.1:0".into());
    let settings = Settings {
        extra,
        ..Settings::default()
    };
    let server = TestServer::start_with(&redis.url(), settings).await;
    let address = server.addr.to_string();

    let ca = pki.path("ca.crt");
    let listed = grpcurl(&["-cacert", &ca, &address, "list"]).await;
    assert!(listed.status.success(), "{listed:?}");
    assert!(String::from_utf8_lossy(&listed.stdout).contains("jobd.v1.JobService"));
    let submit = r#"{"queue":"emails","kind":"welcome"}"#;
    let method = "jobd.v1.JobService/SubmitJob";
    let submitted = grpcurl(&["-cacert", &ca, "-d", submit, &address, method]).await;
    assert!(submitted.status.success(), "{submitted:?}");

    let client = connect_tls(&server, &pki, "ca", None).await.expect("TLS");
    let mut jobs = client.jobs();
    assert!(jobs.submit_job(submit_request("emails")).await.is_ok());

    // No plaintext, and no TLS to a client that does not trust the CA.
    let plaintext = grpcurl(&["-plaintext", &address, "list"]).await;
    assert!(!plaintext.status.success(), "{plaintext:?}");
    let distrust = connect_tls(&server, &pki, "other", None).await;
    assert!(
        distrust.is_err(),
        "a client trusting another CA gets no connection"
    );
    // A bare channel that connects at its first call, which is what the test watches fail.
    let mut plain = JobServiceClient::new(
        Channel::from_shared(format!("http://{address}"))
            .unwrap()
            .connect_lazy(),
    );
    // The connection closes in the handshake; tonic reports that with one code or another.
    let refused = plain.submit_job(submit_request("emails")).await;
    assert!(refused.is_err(), "a plaintext client is not served");

    // Health alone, in plaintext, at --health-listen: what kubelet's gRPC probes reach.
    let health_addr = server.health_addr().expect("a health address");
    let health_url = format!("http://{health_addr}");
    let mut health = HealthClient::new(channel(&health_url).await);
    health
        .check(HealthCheckRequest::default())
        .await
        .expect("health is served");
    let other = connect(&health_url)
        .await
        .jobs()
        .submit_job(submit_request("emails"))
        .await;
    let other = assert_reason(other, Code::Unimplemented, "UNIMPLEMENTED");
    assert!(
        other.is_empty(),
        "nothing else is served, and the code is all there is to say"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_admits_certificates_of_its_cas_and_maps_their_identities() {
    let pki = pki();
    let redis = RedisServer::start().await;
    let mut auth = AuthFile::new();
    let identity = "spiffe://example.org/ns/billing/sa/worker";
    auth.add_identity("billing-workers", &["worker"], &["billing.*"], identity);
    let mut extra = tls_flags(&pki);
    extra.push(format!("--tls-client-ca-file={}", pki.path("ca.crt")));
    extra.push(auth.flag());
    let settings = Settings {
        extra,
        ..Settings::default()
    };
    let server = TestServer::start_with(&redis.url(), settings).await;
    let (address, ca) = (server.addr.to_string(), pki.path("ca.crt"));

    // No client certificate, or one from another CA: the handshake fails.
    let bare = grpcurl(&["-cacert", &ca, &address, "list"]).await;
    assert!(!bare.status.success(), "{bare:?}");
    let (crt, key) = (pki.path("stranger.crt"), pki.path("stranger.key"));
    let stranger = grpcurl(&[
        "-cacert", &ca, "-cert", &crt, "-key", &key, &address, "list",
    ])
    .await;
    assert!(!stranger.status.success(), "{stranger:?}");
    let stranger = connect_tls(&server, &pki, "ca", Some("stranger")).await;
    if let Ok(client) = stranger {
        // rustls clients may report the refusal on the first call rather than at connect.
        let mut workers = client.workers();
        let call = workers.claim_job(claim_request("billing.eu", Duration::ZERO));
        assert!(call.await.is_err(), "a stranger's certificate is refused");
    }

    // A mapped identity is its principal: a worker on billing.*, nothing else.
    let (crt, key) = (pki.path("worker.crt"), pki.path("worker.key"));
    let listed = grpcurl(&[
        "-cacert", &ca, "-cert", &crt, "-key", &key, &address, "list",
    ])
    .await;
    assert!(listed.status.success(), "{listed:?}");
    let client = connect_tls(&server, &pki, "ca", Some("worker"))
        .await
        .expect("mTLS");
    let mut workers = client.workers();
    let claimed = workers
        .claim_job(claim_request("billing.eu", Duration::ZERO))
        .await;
    assert!(claimed.expect("a worker claims").into_inner().job.is_none());
    let elsewhere = workers
        .claim_job(claim_request("emails", Duration::ZERO))
        .await;
    assert_status(elsewhere, Code::PermissionDenied, "billing-workers");
    let submit = client.jobs().submit_job(submit_request("billing.eu")).await;
    assert_status(submit, Code::PermissionDenied, "SubmitJob");

    // A certificate of the CA whose identities the file does not name is no one.
    let client = connect_tls(&server, &pki, "ca", Some("unmapped"))
        .await
        .expect("mTLS");
    let unknown = client
        .workers()
        .claim_job(claim_request("billing.eu", Duration::ZERO))
        .await;
    assert_status(
        unknown,
        Code::Unauthenticated,
        "spiffe://example.org/ns/other/sa/x",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_to_new_connections_without_restart() {
    let pki = pki();
    pki.issue("other", "renewed", "IP:127.0.0.1,DNS:localhost");
    let redis = RedisServer::start().await;
    // The files jobd reads, replaced the way a Secret update replaces them.
    let dir = TempDir::new("jobd-served-cert");
    let (crt, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let install = |name: &str, key_of: &str| {
        for (from, to) in [
            (format!("{name}.crt"), &crt),
            (format!("{key_of}.key"), &key),
        ] {
            let staged = to.with_extension("new");
            std::fs::write(&staged, pki.read(&from)).unwrap();
            std::fs::rename(&staged, to).unwrap();
        }
    };
    install("server", "server");
    let extra = vec![
        format!("--tls-cert-file={}", crt.display()),
        format!("--tls-key-file={}", key.display()),
    ];
    let settings = Settings {
        extra,
        ..Settings::default()
    };
    let server = TestServer::start_with(&redis.url(), settings).await;
    let before = connect_tls(&server, &pki, "ca", None).await.expect("TLS");
    let mut open = before.jobs();
    open.submit_job(submit_request("q")).await.expect("served");

    install("renewed", "renewed");
    eventually(
        Duration::from_secs(5),
        "the renewed certificate",
        || async { connect_tls(&server, &pki, "other", None).await.ok() },
    )
    .await;
    assert!(
        connect_tls(&server, &pki, "ca", None).await.is_err(),
        "the old one is gone"
    );
    open.submit_job(submit_request("q"))
        .await
        .expect("an open connection keeps going");

    // A key that does not match its certificate is not put in force: wait out two reads
    // (nothing to observe but that nothing changes), then new connections still get the
    // renewed certificate.
    install("server", "renewed");
    tokio::time::sleep(2 * jobd::reload::RELOAD_INTERVAL + Duration::from_millis(500)).await;
    let client = connect_tls(&server, &pki, "other", None).await;
    let mut jobs = client.expect("the renewed certificate stays").jobs();
    jobs.submit_job(submit_request("q")).await.expect("served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_secure_commands_work_as_written() {
    let commands = readme_commands(1);
    assert_eq!(commands.len(), 3, "{commands:?}");
    let made = tokio::process::Command::new("bash")
        .args(["-c", &commands[0].replacen("jobd ", &format!("{JOBD} "), 1)])
        .output()
        .await
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let printed = String::from_utf8(made.stdout).unwrap();
    let token = printed.lines().next().unwrap().to_owned();
    let auth = AuthFile::new();
    auth.write(&printed[printed.find("[[principal]]").unwrap()..]);

    let pki = pki();
    let redis = RedisServer::start().await;
    let mut extra = tls_flags(&pki);
    extra.push(auth.flag());
    let settings = Settings {
        extra,
        ..Settings::default()
    };
    let server = TestServer::start_with(&redis.url(), settings).await;
    let address = format!("localhost:{}", server.addr.port());
    let mut outputs = Vec::new();
    for command in &commands[1..] {
        let command = command
            .replace("ca.pem", &pki.path("ca.crt"))
            .replace("jobd.example.com:50051", &address);
        let output = tokio::process::Command::new("bash")
            .args(["-c", &command])
            .env("JOBD_TOKEN", &token)
            .output()
            .await
            .unwrap();
        assert!(output.status.success(), "{command}: {output:?}");
        outputs.push(String::from_utf8(output.stdout).unwrap());
    }
    assert!(outputs[0].contains("jobd.v1.JobService"), "{}", outputs[0]);
    assert!(
        outputs[1].contains("\"queue\": \"emails\""),
        "{}",
        outputs[1]
    );
}
