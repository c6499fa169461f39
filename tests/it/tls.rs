//! TLS to Redis: a rediss:// URL and the CA file that signed Redis's certificate run jobs end
//! to end over TLS, on one server or on every primary of a cluster (rediss-cluster://); a
//! certificate jobd does not trust gets no connection, and calls fail with UNAVAILABLE.

use std::time::Duration;

use jobd::{App, Config};

use crate::harness::*;

/// A CA and a certificate it signed for 127.0.0.1, good for clients too, as cluster nodes
/// present theirs to each other over their TLS bus.
struct Certificates(Pki);

impl Certificates {
    fn make() -> Self {
        let pki = Pki::new();
        pki.authority("ca");
        pki.issue("ca", "redis", "IP:127.0.0.1,DNS:localhost");
        Self(pki)
    }

    fn path(&self, name: &str) -> String {
        self.0.path(name)
    }

    /// A redis-server with its usual plain port (for the test's own redis-cli) and a TLS port.
    async fn redis(&self) -> (RedisServer, u16) {
        let tls_port = free_port();
        let args = self.tls_args(tls_port);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        (RedisServer::start_with(&args).await, tls_port)
    }

    /// redis-server arguments for a TLS port with this certificate; clients need none.
    fn tls_args(&self, tls_port: u16) -> Vec<String> {
        let mut args = vec!["--tls-port".to_owned(), tls_port.to_string()];
        for (setting, file) in [
            ("--tls-cert-file", "redis.crt"),
            ("--tls-key-file", "redis.key"),
            ("--tls-ca-cert-file", "ca.crt"),
        ] {
            args.extend([setting.to_owned(), self.path(file)]);
        }
        args.extend(["--tls-auth-clients".to_owned(), "no".to_owned()]);
        args
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rediss_url_and_its_ca_file_run_jobs_over_tls() {
    let certificates = Certificates::make();
    let (redis, tls_port) = certificates.redis().await;
    let settings = Settings {
        extra: vec![format!(
            "--redis-tls-ca-file={}",
            certificates.path("ca.crt")
        )],
        ..Settings::default()
    };
    let server = TestServer::start_with(&format!("rediss://127.0.0.1:{tls_port}"), settings).await;
    let (mut jobs, mut workers) = server.clients().await;

    let job = submit(&mut jobs, "tls", b"over tls").await;
    let claimed = claim(&mut workers, "tls").await;
    assert_eq!(&claimed.job.as_ref().unwrap().payload[..], b"over tls");
    complete(&mut workers, &claimed, b"done").await.unwrap();
    let (events, end) = watch_to_end(&mut jobs, &job.id, 0).await;
    end.unwrap();
    assert_eq!(events.len(), 3);

    // Every connection of jobd's, pool and subscriber, is on the TLS port.
    let ours = redis.clients_named(&server.client_name_prefix());
    assert_eq!(ours.len(), 2 + 1, "{ours:#?}");
    let laddr = format!("laddr=127.0.0.1:{tls_port} ");
    assert!(ours.iter().all(|line| line.contains(&laddr)), "{ours:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rediss_cluster_url_runs_jobs_over_tls_on_every_primary() {
    let certificates = Certificates::make();
    // The cluster's own bus is over TLS too, so it gives TLS clients its nodes' TLS ports.
    let cluster = RedisCluster::start_with(3, 0, "1000", || {
        let mut args = certificates.tls_args(free_port());
        args.extend(["--tls-cluster".to_owned(), "yes".to_owned()]);
        args
    })
    .await;
    let tls_ports: Vec<String> = cluster
        .nodes
        .iter()
        .map(|node| {
            node.cli(&["CONFIG", "GET", "tls-port"])
                .lines()
                .last()
                .unwrap()
                .to_owned()
        })
        .collect();
    let url = format!(
        "rediss-cluster://127.0.0.1:{}?node=127.0.0.1:{}",
        tls_ports[0], tls_ports[1]
    );
    let settings = Settings {
        extra: vec![format!(
            "--redis-tls-ca-file={}",
            certificates.path("ca.crt")
        )],
        ..Settings::default()
    };
    let server = TestServer::start_with(&url, settings).await;
    let (mut jobs, mut workers) = server.clients().await;

    // Queues whose keys hash to all three primaries (see cluster.rs).
    for queue in (0..6).map(|i| format!("cluster-{i}")) {
        let job = submit(&mut jobs, &queue, b"over tls").await;
        let claimed = claim(&mut workers, &queue).await;
        assert_eq!(claimed.job.as_ref().unwrap().id, job.id);
        complete(&mut workers, &claimed, b"done").await.unwrap();
        let (events, end) = watch_to_end(&mut jobs, &job.id, 0).await;
        end.unwrap();
        assert_eq!(events.len(), 3);
    }

    // On every node, each of jobd's connections is on its TLS port.
    for (node, tls_port) in cluster.nodes.iter().zip(&tls_ports) {
        let ours = node.clients_named(&server.client_name_prefix());
        assert_eq!(ours.len(), 2 + 1, "{ours:#?}");
        let laddr = format!("laddr=127.0.0.1:{tls_port} ");
        assert!(ours.iter().all(|line| line.contains(&laddr)), "{ours:#?}");
        let keys: u64 = node.cli(&["DBSIZE"]).parse().unwrap();
        assert!(keys > 0, "node {} holds jobs", node.port());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_certificate_jobd_does_not_trust_gets_no_connection() {
    let certificates = Certificates::make();
    let (redis, tls_port) = certificates.redis().await;
    // The system's roots do not hold the test CA.
    let server = TestServer::start_with(
        &format!("rediss://127.0.0.1:{tls_port}"),
        Settings::default(),
    )
    .await;
    let mut jobs = server.jobs().await;
    let refused = tokio::time::timeout(
        Duration::from_secs(5),
        jobs.submit_job(submit_request("tls")),
    )
    .await
    .expect("answered within the command timeout")
    .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(redis.clients_named(&server.client_name_prefix()).is_empty());
}

#[tokio::test]
async fn a_ca_file_that_holds_no_certificate_stops_jobd_at_start() {
    let certificates = Certificates::make();
    let empty = std::path::PathBuf::from(certificates.path("empty.pem"));
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let config = |url: &str| {
        <Config as clap::Parser>::try_parse_from([
            "jobd".to_owned(),
            "--listen=127.0.0.1:0".to_owned(),
            format!("--redis-url={url}"),
            format!("--redis-tls-ca-file={}", empty.display()),
        ])
        .unwrap()
    };
    let error = App::build(config("rediss://127.0.0.1:1"))
        .await
        .err()
        .expect("jobd refuses to start");
    let message = format!("{error:#}");
    assert!(
        message.contains("empty.pem") && message.contains("no certificate"),
        "{message}"
    );
    // A CA file for a plain redis:// URL is a mistake too.
    let mistake = config("redis://127.0.0.1:1").validate().unwrap_err();
    assert!(mistake.contains("JOBD_REDIS_TLS_CA_FILE"), "{mistake}");
}
