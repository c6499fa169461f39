//! The README's grpcurl examples, run as written (after filling in ids and tokens from earlier
//! replies) with the real grpcurl binary against a real jobd, so they cannot go stale.

use std::{
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
};

use crate::harness::*;

fn grpcurl_installed() -> bool {
    std::process::Command::new("grpcurl")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn shell(command: &str) -> Command {
    let mut shell = Command::new("bash");
    shell
        .args(["-c", command])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    shell
}

async fn run(command: &str) -> String {
    let output = shell(command).output().await.expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{command}\nfailed: {}{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn field(json: &str, path: &[&str]) -> String {
    let mut value: serde_json::Value = serde_json::from_str(json).expect("grpcurl prints JSON");
    for key in path {
        value = value[*key].take();
    }
    value.as_str().expect("a string field").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_grpcurl_examples_work_as_written() {
    assert!(
        grpcurl_installed(),
        "grpcurl is needed: .ci/install installs it"
    );
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let address = server.addr.to_string();
    let commands = readme_commands(0);
    assert!(commands.len() >= 12, "{commands:#?}");

    let mut session = Session::default();
    for template in &commands {
        assert!(template.starts_with("grpcurl "), "{template}");
        let command = session.command(template, &address);
        let method = template.rsplit(' ').next().unwrap_or_default();
        // Streams that run until terminal events: started here, read after the completions.
        match method {
            "jobd.v1.JobService/WatchJob" => session.watcher = Some(Stream::start(&command).await),
            "jobd.v1.JobService/SubmitAndWatchJobs" => {
                session.follower = Some(Stream::start(&command).await)
            }
            _ => session.check(method, &run(&command).await).await,
        }
    }
    assert!(
        !session.lease_token.is_empty()
            && !session.other_job_id.is_empty()
            && session.reports.len() == 2,
        "every step ran"
    );
}

/// What the README's commands pass on to those after them: ids and tokens from earlier
/// replies, and the streams started in the background.
#[derive(Default)]
struct Session {
    job_id: String,
    lease_token: String,
    other_job_id: String,
    /// The batch's claimed jobs: (id, lease token), in the claim's order.
    reports: Vec<(String, String)>,
    watcher: Option<Stream>,
    follower: Option<Stream>,
}

/// A grpcurl stream running in the background, and what it printed so far.
struct Stream {
    child: tokio::process::Child,
    printed: Arc<Mutex<String>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Session {
    /// The README's command `template`, sent to `address`, with the ids and tokens it names.
    fn command(&self, template: &str, address: &str) -> String {
        let mut command = template
            .replace("localhost:50051", address)
            .replace("OTHER_JOB_ID", &self.other_job_id)
            .replace("JOB_ID", &self.job_id)
            .replace("LEASE_TOKEN", &self.lease_token);
        for (n, (id, token)) in self.reports.iter().enumerate() {
            command = command
                .replace(&format!("REPORT_ID_{}", n + 1), id)
                .replace(&format!("REPORT_TOKEN_{}", n + 1), token);
        }
        command
    }

    /// Checks what the call of `method` printed, and keeps what later commands need of it.
    async fn check(&mut self, method: &str, output: &str) {
        match method {
            "list" => {
                for service in [
                    "jobd.v1.JobService",
                    "jobd.v1.WorkerService",
                    "grpc.health.v1.Health",
                ] {
                    assert!(output.contains(service), "list shows {service}: {output}");
                }
            }
            "jobd.v1.JobService.SubmitJob" => {
                assert!(
                    output.contains("Queues a new job"),
                    "describe shows the docs: {output}"
                );
            }
            "jobd.v1.JobService/SubmitJob" if self.job_id.is_empty() => {
                self.job_id = field(output, &["job", "id"]);
            }
            "jobd.v1.JobService/SubmitJob" => {
                assert_eq!(field(output, &["job", "state"]), "JOB_STATE_SCHEDULED");
                self.other_job_id = field(output, &["job", "id"]);
            }
            "jobd.v1.WorkerService/ClaimJob" => {
                assert_eq!(field(output, &["job", "id"]), self.job_id);
                self.lease_token = field(output, &["leaseToken"]);
            }
            "jobd.v1.WorkerService/Heartbeat" => assert!(output.contains("leaseExpiresAt")),
            "jobd.v1.WorkerService/CompleteJob" => {
                let events = Stream::ended_ok(self.watcher.take(), "the watch").await;
                let order: Vec<usize> = [
                    "EVENT_TYPE_QUEUED",
                    "EVENT_TYPE_STARTED",
                    "EVENT_TYPE_PROGRESS",
                    "EVENT_TYPE_COMPLETED",
                ]
                .iter()
                .map(|event| {
                    events
                        .find(event)
                        .unwrap_or_else(|| panic!("{event} in {events}"))
                })
                .collect();
                assert!(order.is_sorted(), "events in order: {events}");
            }
            "jobd.v1.WorkerService/ClaimJobs" => {
                let claimed: serde_json::Value = serde_json::from_str(output).unwrap();
                let jobs = claimed["jobs"].as_array().expect("jobs claimed");
                let kinds: Vec<&str> = jobs
                    .iter()
                    .map(|job| job["job"]["kind"].as_str().unwrap())
                    .collect();
                assert_eq!(kinds, ["daily", "weekly"], "{output}");
                self.reports = jobs
                    .iter()
                    .map(|job| {
                        let id = job["job"]["id"].as_str().unwrap().to_owned();
                        (id, job["leaseToken"].as_str().unwrap().to_owned())
                    })
                    .collect();
            }
            "jobd.v1.WorkerService/CompleteJobs" => {
                let completed: serde_json::Value = serde_json::from_str(output).unwrap();
                assert_eq!(
                    completed["results"],
                    serde_json::json!([{}, {}]),
                    "both recorded: {output}"
                );
                let messages = Stream::ended_ok(self.follower.take(), "the batch's stream").await;
                assert!(messages.contains("\"submitted\""), "{messages}");
                assert_eq!(
                    messages.matches("EVENT_TYPE_COMPLETED").count(),
                    2,
                    "{messages}"
                );
            }
            "jobd.v1.JobService/CancelJob" => {
                assert_eq!(field(output, &["job", "state"]), "JOB_STATE_CANCELLED");
                assert_eq!(field(output, &["job", "cancelReason"]), "no longer needed");
            }
            "jobd.v1.JobService/GetQueueStats" => {
                let stats: serde_json::Value = serde_json::from_str(output).unwrap();
                assert_eq!(stats["completed"], "1", "{output}");
                assert_eq!(stats["cancelled"], "1", "{output}");
            }
            "jobd.v1.JobService/ListJobs" => assert!(output.contains(&self.job_id), "{output}"),
            "grpc.health.v1.Health/Check" => assert_eq!(field(output, &["status"]), "SERVING"),
            other => panic!("the README runs {other}, which this test does not check"),
        }
    }
}

impl Stream {
    /// Starts the grpcurl `command`, and returns once it has printed its first message
    /// (grpcurl prints each as it arrives): the stream is established, and for
    /// SubmitAndWatchJobs the batch submitted.
    async fn start(command: &str) -> Self {
        let mut child = shell(command).spawn().expect("bash runs");
        let stdout = child.stdout.take().expect("grpcurl's output is piped");
        let printed = Arc::new(Mutex::new(String::new()));
        let reader = tokio::spawn({
            let printed = printed.clone();
            async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let mut printed = printed.lock().unwrap();
                    printed.push_str(&line);
                    printed.push('\n');
                }
            }
        });
        // A message is printed as indented JSON: its closing brace alone on a line ends it.
        until(
            Duration::from_secs(10),
            "the stream's first message",
            || printed.lock().unwrap().lines().any(|line| line == "}"),
        )
        .await;
        Self {
            child,
            printed,
            reader,
        }
    }

    /// What the stream printed, once it ended (within 10 s, after its last terminal event)
    /// with OK.
    async fn ended_ok(stream: Option<Self>, what: &str) -> String {
        let mut stream = stream.unwrap_or_else(|| panic!("{what} started before"));
        let status = tokio::time::timeout(Duration::from_secs(10), stream.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{what} ends after the terminal event"))
            .unwrap();
        assert!(status.success(), "{what} ends with OK");
        stream.reader.await.expect("the output is read to its end");
        stream.printed.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_can_be_turned_off() {
    assert!(
        grpcurl_installed(),
        "grpcurl is needed: .ci/install installs it"
    );
    let redis = RedisServer::start().await;
    let server = TestServer::start_with(
        &redis.url(),
        Settings {
            extra: vec!["--reflection=false".into()],
            ..Settings::default()
        },
    )
    .await;
    let output = shell(&format!("grpcurl -plaintext {} list", server.addr))
        .output()
        .await
        .unwrap();
    assert!(!output.status.success(), "no reflection service to list");
    // The services themselves still answer.
    let mut jobs = server.jobs().await;
    submit(&mut jobs, "q", b"").await;
}
