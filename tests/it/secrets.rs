//! Secure by default, and secrets kept: the binary refuses a network address without
//! authentication and serves one with --insecure, warning; `jobd token` makes working tokens;
//! and a whole run with a Redis password, tokens and a TLS key leaves none of them (nor a
//! token's hash) in its output, its spans or its metrics, nor in `--help`.

use std::{process::Command, time::Duration};

use jobd_client::{Client, proto};

use crate::harness::*;

#[test]
fn a_network_address_without_authentication_is_refused_at_start() {
    let output = Command::new(JOBD)
        .args(["--listen", "0.0.0.0:0"])
        .env("REDIS_URL", "redis://127.0.0.1:1")
        .output()
        .expect("jobd runs");
    assert_eq!(output.status.code(), Some(64), "{output:?}");
    let error = String::from_utf8_lossy(&output.stderr);
    assert_eq!(error.lines().count(), 1, "one line: {error}");
    for named in [
        "0.0.0.0:0",
        "JOBD_AUTH_FILE",
        "JOBD_TLS_CLIENT_CA_FILE",
        "JOBD_INSECURE",
    ] {
        assert!(error.contains(named), "{error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_serves_a_network_address_with_a_warning() {
    let redis = RedisServer::start().await;
    let jobd = Running::start(&redis.url(), &["--listen", "0.0.0.0:0", "--insecure"]).await;
    let mut jobs = jobd.jobs().await;
    submit(&mut jobs, "q", b"").await;
    let log = jobd.log();
    let warning = log
        .lines()
        .find(|line| line.contains("serving without authentication"))
        .unwrap_or_else(|| panic!("a warning at start:\n{log}"));
    assert!(warning.contains("WARN"), "{warning}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_made_by_jobd_token_new_works_and_is_shown_once() {
    let made = Command::new(JOBD)
        .args([
            "token",
            "new",
            "--name",
            "billing-api",
            "--role",
            "submitter",
        ])
        .args(["--role", "operator", "--queue", "billing.*"])
        .output()
        .expect("jobd runs");
    assert!(made.status.success(), "{made:?}");
    let printed = String::from_utf8(made.stdout).unwrap();
    let token = printed.lines().next().unwrap().to_owned();
    assert!(token.starts_with("jobd_") && token.len() == 69, "{printed}");
    assert_eq!(printed.matches(&token).count(), 1, "shown once: {printed}");
    let entry = &printed[printed.find("[[principal]]").expect("an entry")..];

    // `jobd token hash` agrees with the entry's hash.
    let mut hash = Command::new(JOBD)
        .args(["token", "hash"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    hash.stdin
        .take()
        .unwrap()
        .write_all(token.as_bytes())
        .unwrap();
    let hashed = String::from_utf8(hash.wait_with_output().unwrap().stdout).unwrap();
    assert!(entry.contains(hashed.trim()), "{hashed} in {entry}");

    // The entry, as printed, is an auth file that recognises the token.
    let redis = RedisServer::start().await;
    let auth = AuthFile::new();
    auth.write(entry);
    let settings = Settings {
        extra: vec![auth.flag()],
        ..Settings::default()
    };
    let server = TestServer::start_with(&redis.url(), settings).await;
    let client = client_builder(&server.url()).token(&token).connect();
    let mut jobs = client.await.expect("a connection").jobs();
    let allowed = jobs.submit_job(submit_request("billing.eu")).await;
    assert!(allowed.is_ok(), "{allowed:?}");
    let elsewhere = jobs.submit_job(submit_request("emails")).await;
    assert_status(elsewhere, tonic::Code::PermissionDenied, "billing-api");

    let bad = Command::new(JOBD)
        .args([
            "token", "new", "--name", "x", "--role", "admin", "--queue", "*",
        ])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(64), "{bad:?}");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown role \"admin\""));
}

/// Everything secret in a run: the Redis password, the tokens (a good one, a removed one, a
/// wrong one a client tried), their hashes, and the TLS private key.
struct Secrets {
    password: String,
    tokens: Vec<String>,
    key_pem: String,
}

impl Secrets {
    fn all(&self) -> Vec<String> {
        let mut all = vec![self.password.clone()];
        for token in &self.tokens {
            all.push(token.clone());
            all.push(jobd::auth::TokenHash::of(token.as_bytes()).to_string());
        }
        // Each line of the key's base64 body.
        all.extend(
            self.key_pem
                .lines()
                .filter(|line| !line.starts_with("-----") && line.len() > 8)
                .map(str::to_owned),
        );
        all
    }

    fn assert_absent(&self, what: &str, text: &str) {
        for secret in self.all() {
            assert!(!text.contains(&secret), "{what} holds a secret: {secret}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_run_leaves_no_secret_in_logs_spans_metrics_or_help() {
    let password = format!("pw-{:08x}{:08x}", rand_u32(), rand_u32());
    let redis = RedisServer::start_with(&["--requirepass", &password]).await;
    let url = format!("redis://:{password}@127.0.0.1:{}", redis.port());
    let pki = Pki::new();
    pki.authority("ca");
    pki.issue("ca", "server", "IP:127.0.0.1,DNS:localhost");
    let mut auth = AuthFile::new();
    let token = auth.add("app", &["submitter", "worker"], &["*"]);
    let removed = auth.add_token("app");
    let secrets = Secrets {
        password: password.clone(),
        tokens: vec![
            token.clone(),
            removed.clone(),
            "jobd_wrong_token_tried".into(),
        ],
        key_pem: pki.read("server.key"),
    };
    let receiver = OtlpReceiver::start().await;
    let url_file = TempDir::new("jobd-url");
    std::fs::write(url_file.path().join("url"), &url).unwrap();
    let url_flag = format!("--redis-url-file={}", url_file.path().join("url").display());
    let args = [
        url_flag,
        auth.flag(),
        format!("--tls-cert-file={}", pki.path("server.crt")),
        format!("--tls-key-file={}", pki.path("server.key")),
        "--health-listen=127.0.0.1:0".into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut env = receiver.exporter_env("200");
    env.push(("OTEL_TRACES_SAMPLER", "always_on"));
    // REDIS_URL, too, holds the password: the file takes its place.
    let jobd = Running::start_with_env(&url, &args, &env).await;

    let address = jobd.address();
    let app = pki.client(address, "ca", None).token(&token).connect();
    run_one_job(&app.await.expect("a TLS connection")).await;
    auth.remove_token("app", &removed);
    for wrong in [&removed, &secrets.tokens[2]] {
        let client = pki.client(address, "ca", None).token(wrong).connect();
        let jobs = client.await.expect("a TLS connection").jobs();
        eventually(Duration::from_secs(5), "a refusal", || {
            let mut jobs = jobs.clone();
            async move { jobs.submit_job(submit_request("q")).await.err() }
        })
        .await;
    }
    // A version that does not parse, its error about a value that is a token's hash.
    let hash = jobd::auth::TokenHash::of(token.as_bytes());
    auth.write(&format!(
        "[[principal]]\nname = \"app\"\nroles = [\"worker\"]\nqueues = [\"*\"]\n\
         token_sha256 = \"{hash}\"\n"
    ));
    jobd.until_logged("cannot be used").await;
    until(Duration::from_secs(10), "spans and metrics", || {
        !receiver.spans().is_empty() && receiver.value("jobd.auth.denials", &[]).is_some()
    })
    .await;

    let (_, log) = jobd.terminate();
    assert!(
        log.contains("jobd started") && log.contains("call denied"),
        "{log}"
    );
    secrets.assert_absent("jobd's output", &log);
    secrets.assert_absent("the metrics and spans", &receiver.dump());
    let help = Command::new(JOBD)
        .arg("--help")
        .env("REDIS_URL", &url)
        .env("JOBD_AUTH_FILE", auth.path())
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--redis-url"), "{help}");
    secrets.assert_absent("--help", &help);
    assert!(
        !help.contains(&auth.path()),
        "--help shows no environment value"
    );
}

/// Submits, claims and completes a job through `client`, with its token.
async fn run_one_job(client: &Client) {
    let request = submit_request("secrets");
    client.jobs().submit_job(request).await.expect("submitted");
    let claim = claim_request("secrets", Duration::from_secs(5));
    let mut workers = client.workers();
    let claimed = workers
        .claim_job(claim)
        .await
        .expect("claimed")
        .into_inner();
    let complete = proto::CompleteJobRequest {
        job_id: claimed.job.expect("a job").id,
        lease_token: claimed.lease_token,
        ..Default::default()
    };
    workers.complete_job(complete).await.expect("completed");
}
