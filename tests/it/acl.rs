//! jobd under least privilege: the Redis ACL that docs/security.md documents is the one tested
//! here, grants what the scripts run and nothing of `@admin` or `@dangerous`, confines scripts
//! to jobd's keys, and carries a whole lifecycle with no refusal but the two the document
//! expects.

use std::{path::Path, time::Duration};

use jobd_client::proto::{self, EventType, JobState, submit_and_watch_jobs_response::Message};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::harness::*;

/// jobd's password in these tests.
const PASSWORD: &str = "acl-test-password-3f9a";

/// The commands Redis refuses jobd's user, both expected (docs/security.md): fred's INFO when
/// it connects, and readiness's CONFIG GET.
const EXPECTED_REFUSALS: [&str; 2] = ["info", "config|get"];

/// What readiness logs, once, when CONFIG GET is refused.
const CONFIG_WARNING: &str = "cannot check Redis's eviction policy";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_acl_grants_what_the_scripts_run_and_nothing_dangerous() {
    let acl = DocumentedAcl::read();
    let granted = acl.granted();

    // Every command a script runs: Redis checks each against the caller's ACL.
    for command in script_commands() {
        assert!(
            granted.contains(&command),
            "the scripts run {command}, which the documented ACL does not grant"
        );
    }

    // Nothing Redis itself counts as admin or dangerous, asked of the Redis the tests run.
    let redis = RedisServer::start().await;
    for category in ["admin", "dangerous"] {
        let listed = redis.cli(&["ACL", "CAT", category]);
        let members: Vec<&str> = listed.lines().map(str::trim).collect();
        for command in &granted {
            assert!(
                !members.contains(&command.as_str()),
                "the documented ACL grants {command}, of @{category}"
            );
        }
    }

    // The ACL SETUSER form as written is accepted, and the user it makes is confined to the
    // prefix: outside it no key, inside or outside a script, and no channel.
    let mut setuser = vec!["ACL", "SETUSER", "jobd"];
    let rules = acl.rules_with_password(&format!(">{PASSWORD}"));
    setuser.extend(rules.iter().map(String::as_str));
    assert_eq!(redis.cli(&setuser), "OK");
    let as_jobd = |args: &[&str]| {
        let login = ["--user", "jobd", "--pass", PASSWORD, "--no-auth-warning"];
        redis_cli(redis.port(), &[&login[..], args].concat())
    };
    let get_declared = as_jobd(&["SCRIPT", "LOAD", "return redis.call('GET', KEYS[1])"]);
    let get_other = as_jobd(&[
        "SCRIPT",
        "LOAD",
        "return redis.call('GET', 'other:key') or 'none'",
    ]);
    let publish_other = as_jobd(&[
        "SCRIPT",
        "LOAD",
        "return redis.call('PUBLISH', 'other:wake', 'x')",
    ]);
    assert_eq!(as_jobd(&["EVALSHA", &get_declared, "1", "jobd:x"]), "");
    for (sha, key) in [
        (&get_declared, "other:key"),
        (&get_other, "jobd:x"),
        (&publish_other, "jobd:x"),
    ] {
        let refused = as_jobd(&["EVALSHA", sha, "1", key]);
        assert!(is_refusal(&refused), "{sha} on {key}: {refused:?}");
    }
    for command in [
        &["CONFIG", "GET", "maxmemory"][..],
        &["KEYS", "*"],
        &["SUBSCRIBE", "other:wake"],
    ] {
        let refused = as_jobd(command);
        assert!(is_refusal(&refused), "{command:?}: {refused:?}");
    }
}

#[test]
fn the_trial_redis_creates_the_documented_user() {
    let acl = DocumentedAcl::read();
    let generator = read("deploy/overlays/trial-redis/generate-secrets");
    let line = format!(
        "user jobd {}",
        acl.rules_with_password("#${jobd_hash}").join(" ")
    );
    assert!(
        generator.contains(&line),
        "deploy/overlays/trial-redis/generate-secrets must write\n{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_lifecycle_runs_under_the_documented_acl_with_only_the_expected_refusals() {
    // The aclfile form, with the password's SHA-256. `default` is off; `inspector` may read
    // the ACL log and nothing else (no key, no channel, no other command), so jobd's user is
    // the only one with any access to data, and the log can be read once jobd is done.
    let dir = TempDir::new("jobd-acl");
    let aclfile = dir.path().join("users.acl");
    let acl = DocumentedAcl::read();
    let jobd_user = format!(
        "user jobd {}",
        acl.rules_with_password(&format!("#{}", sha256_hex(PASSWORD)))
            .join(" ")
    );
    std::fs::write(
        &aclfile,
        format!(
            "user default off\nuser inspector on >inspector-password resetchannels -@all \
             +acl|log\n{jobd_user}\n"
        ),
    )
    .expect("the aclfile is written");
    let redis = RedisServer::start_with(&["--aclfile", aclfile.to_str().unwrap()]).await;
    let url = format!("redis://jobd:{PASSWORD}@127.0.0.1:{}", redis.port());
    let server = Running::start(&url, &["--redis-pool-size", "2"]).await;
    readiness_becomes(&server, ServingStatus::Serving, Duration::from_secs(10)).await;

    run_every_call(&server).await;

    // Readiness kept checking all along; it warned once that it cannot read the policy.
    let log = server.log();
    assert_eq!(log.matches(CONFIG_WARNING).count(), 1, "{log}");
    assert!(!log.contains("not ready until"), "{log}");
    for line in log.lines().filter(|line| line.contains("NOPERM")) {
        assert!(
            EXPECTED_REFUSALS
                .iter()
                .any(|command| line.contains(&format!("'{command}'"))),
            "an unexpected refusal: {line}"
        );
    }
    // Shutdown QUITs every connection, under the same ACL.
    let (code, log) = server.terminate();
    assert_eq!(code, Some(0), "{log}");

    let refusals = acl_log(&redis);
    assert!(
        refusals
            .iter()
            .any(|refusal| refusal.object == "config|get"),
        "readiness asked for the eviction policy: {refusals:?}"
    );
    for refusal in &refusals {
        assert_eq!(refusal.username, "jobd", "{refusal:?}");
        assert!(
            refusal.reason == "command" && EXPECTED_REFUSALS.contains(&refusal.object.as_str()),
            "Redis refused jobd something it needs: {refusal:?}"
        );
    }
}

/// Every call of both services, the sweeper's promotions and expiries, and pub/sub wake-ups.
async fn run_every_call(server: &Running) {
    let (mut jobs, mut workers) = server.clients().await;

    // Submit, watch to the end, claim (acknowledged), heartbeat with progress, complete.
    let plain = submit(&mut jobs, "acl", b"plain").await;
    let watcher = watch_in_background(server, &plain.id).await;
    let claimed = claim(&mut workers, "acl").await;
    report_progress(&mut workers, &claimed, 0.5, "half way").await;
    complete(&mut workers, &claimed, b"done").await.unwrap();
    let (events, end) = tokio::time::timeout(Duration::from_secs(10), watcher)
        .await
        .expect("the watch ends")
        .unwrap();
    end.expect("the stream ends with OK");
    use EventType::*;
    assert_eq!(types(&events), [Queued, Started, Progress, Completed]);

    // An idempotency key: the second submission finds the first's job.
    let keyed = || proto::SubmitJobRequest {
        idempotency_key: "order-1".into(),
        ..submit_request("acl-keyed")
    };
    let first = submit_with(&mut jobs, keyed()).await;
    let again = submit_with(&mut jobs, keyed()).await;
    assert!(first.created && !again.created);
    assert_eq!(first.job.unwrap().id, again.job.unwrap().id);

    // A batch, claimed as a batch; one is cancelled, one released, one completed.
    let batch = submit_jobs(&mut jobs, vec![submit_request("acl-batch"); 3]).await;
    let held = claim_jobs(&mut workers, claim_request("acl-batch", Duration::ZERO), 2).await;
    assert_eq!(held.len(), 2);
    cancel(&mut jobs, &batch[2].id, "not needed").await;
    workers
        .release_job(proto::ReleaseJobRequest {
            job_id: held[0].job.as_ref().unwrap().id.clone(),
            lease_token: held[0].lease_token.clone(),
            reason: "shutting down".into(),
        })
        .await
        .expect("the release succeeds");
    let finished = proto::ClaimJobResponse {
        job: held[1].job.clone(),
        lease_token: held[1].lease_token.clone(),
        ..Default::default()
    };
    complete(&mut workers, &finished, b"batch").await.unwrap();

    // A failure retried after its backoff: the sweeper promotes the retry, whose wake-up
    // reaches the waiting claim.
    let retried = submit_with(
        &mut jobs,
        proto::SubmitJobRequest {
            max_attempts: 3,
            backoff: Some(proto::BackoffPolicy {
                initial: Some(pb_duration(Duration::from_millis(200))),
                multiplier: Some(1.0),
                max: None,
                jitter: Some(0.0),
            }),
            ..submit_request("acl-retry")
        },
    )
    .await
    .job
    .unwrap();
    let attempt = claim(&mut workers, "acl-retry").await;
    let failed = fail(&mut workers, &attempt, "flaky", true).await;
    assert_eq!(failed.state(), JobState::Scheduled);
    let attempt = claim(&mut workers, "acl-retry").await;
    assert_eq!(attempt.job.as_ref().unwrap().id, retried.id);
    complete(&mut workers, &attempt, b"second time")
        .await
        .unwrap();

    // A lease that runs out, and a claim never acknowledged: the sweeper ends both.
    let expiring = submit_with(
        &mut jobs,
        proto::SubmitJobRequest {
            max_attempts: 2,
            ..submit_request("acl-expiry")
        },
    )
    .await
    .job
    .unwrap();
    let short = proto::ClaimJobRequest {
        lease: Some(pb_duration(Duration::from_secs(1))),
        ..claim_request("acl-expiry", Duration::ZERO)
    };
    let leased = workers.claim_job(short).await.unwrap().into_inner();
    acknowledge(&mut workers, &expiring.id, &leased.lease_token).await;
    job_becomes(
        &jobs,
        &expiring.id,
        Duration::from_secs(10),
        "the expired lease to end the attempt",
        |job| job.state() == JobState::Queued && job.attempt == 1,
    )
    .await;
    let unacknowledged = proto::ClaimJobRequest {
        ack_timeout: Some(pb_duration(Duration::from_secs(1))),
        ..claim_request("acl-expiry", Duration::ZERO)
    };
    let silent = workers
        .claim_job(unacknowledged)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(silent.job.unwrap().id, expiring.id);
    back_in_queue(&jobs, &expiring.id, 6).await;

    // SubmitAndWatchJobs, to the job's end.
    let mut stream = jobs
        .submit_and_watch_jobs(proto::SubmitJobsRequest {
            jobs: vec![submit_request("acl-stream")],
        })
        .await
        .expect("the call is accepted")
        .into_inner();
    let first = stream.message().await.unwrap().expect("a first message");
    assert!(matches!(first.message, Some(Message::Submitted(_))));
    let streamed = claim(&mut workers, "acl-stream").await;
    complete(&mut workers, &streamed, b"streamed")
        .await
        .unwrap();
    let mut streamed_events = Vec::new();
    while let Some(message) = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the stream moves on")
        .expect("a healthy stream")
    {
        if let Some(Message::Event(event)) = message.message {
            streamed_events.push(event);
        }
    }
    assert_eq!(types(&streamed_events), [Queued, Started, Completed]);

    // The operator's reads.
    let listed = jobs
        .list_jobs(proto::ListJobsRequest {
            queue: "acl-batch".into(),
            ..Default::default()
        })
        .await
        .expect("ListJobs succeeds")
        .into_inner();
    assert_eq!(listed.jobs.len(), 3);
    let counts = stats(&mut jobs, "acl-batch").await;
    assert_eq!(
        (counts.queued, counts.completed, counts.cancelled),
        (1, 1, 1)
    );
    assert_eq!(get(&mut jobs, &plain.id).await.state(), JobState::Completed);
}

/// The ACL docs/security.md documents for jobd's user, in its two forms.
struct DocumentedAcl {
    /// The rules of `ACL SETUSER jobd …`, the password as `>PASSWORD`.
    setuser: Vec<String>,
    /// The rules of the aclfile line `user jobd …`, the password as `#PASSWORD-SHA256`.
    aclfile: Vec<String>,
}

impl DocumentedAcl {
    /// Reads both forms from the section "Redis with least privilege", and checks that they
    /// grant the same.
    fn read() -> Self {
        let doc = read("docs/security.md");
        let section = doc
            .split("\n## Redis with least privilege\n")
            .nth(1)
            .expect("docs/security.md has the section Redis with least privilege");
        let section = section.split("\n## ").next().unwrap_or(section);
        let rules = |prefix: &str| -> Vec<String> {
            let line = section
                .lines()
                .find(|line| line.starts_with(prefix))
                .unwrap_or_else(|| panic!("the section has a line `{prefix}…`"));
            line[prefix.len()..]
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        };
        let acl = Self {
            setuser: rules("ACL SETUSER jobd "),
            aclfile: rules("user jobd "),
        };
        assert_eq!(
            acl.rules_with_password("P"),
            acl.aclfile_with_password("P"),
            "the two forms of the ACL in docs/security.md differ"
        );
        assert!(acl.setuser.contains(&">PASSWORD".to_owned()));
        assert!(acl.aclfile.contains(&"#PASSWORD-SHA256".to_owned()));
        acl
    }

    /// The rules, with `password` (`>…` or `#…`) in place of the documented placeholder.
    fn rules_with_password(&self, password: &str) -> Vec<String> {
        replace(&self.setuser, ">PASSWORD", password)
    }

    fn aclfile_with_password(&self, password: &str) -> Vec<String> {
        replace(&self.aclfile, "#PASSWORD-SHA256", password)
    }

    /// The commands granted (`+command`, `+command|subcommand`), in lower case.
    fn granted(&self) -> Vec<String> {
        self.setuser
            .iter()
            .filter_map(|rule| rule.strip_prefix('+'))
            .map(str::to_lowercase)
            .collect()
    }
}

fn replace(rules: &[String], placeholder: &str, password: &str) -> Vec<String> {
    rules
        .iter()
        .map(|rule| {
            if rule == placeholder {
                password.to_owned()
            } else {
                rule.clone()
            }
        })
        .collect()
}

/// The commands `redis.call` runs in jobd's scripts, in lower case.
fn script_commands() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store/lua");
    let mut commands = Vec::new();
    for entry in std::fs::read_dir(dir).expect("src/store/lua is readable") {
        let source = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for call in source.split("redis.call(").skip(1) {
            let name = call.trim_start().trim_start_matches(['\'', '"']);
            let name: String = name.chars().take_while(char::is_ascii_alphabetic).collect();
            assert!(
                !name.is_empty(),
                "a redis.call whose command is not a literal"
            );
            commands.push(name.to_lowercase());
        }
    }
    commands.sort();
    commands.dedup();
    assert!(
        commands.len() > 10,
        "found the scripts' commands: {commands:?}"
    );
    commands
}

/// One entry of `ACL LOG`.
#[derive(Debug, Default)]
struct Refusal {
    reason: String,
    object: String,
    username: String,
}

/// Every entry of the server's ACL LOG, read by the inspector.
fn acl_log(redis: &RedisServer) -> Vec<Refusal> {
    let login = [
        "--user",
        "inspector",
        "--pass",
        "inspector-password",
        "--no-auth-warning",
    ];
    let log = redis_cli(redis.port(), &[&login[..], &["ACL", "LOG"]].concat());
    // Each entry is field / value lines, starting with `count`.
    let mut refusals: Vec<Refusal> = Vec::new();
    let mut lines = log.lines().map(str::trim);
    while let Some(field) = lines.next() {
        let value = lines.next().unwrap_or_default().to_owned();
        match field {
            "count" => refusals.push(Refusal::default()),
            "reason" => refusals.last_mut().expect("an entry").reason = value,
            "object" => refusals.last_mut().expect("an entry").object = value,
            "username" => refusals.last_mut().expect("an entry").username = value,
            _ => {}
        }
    }
    refusals
}

/// Whether a reply is an ACL refusal: NOPERM, or inside a script Redis's "The user executing
/// the script can't access" a key, or "can't publish" to a channel.
fn is_refusal(reply: &str) -> bool {
    reply.starts_with("NOPERM") || reply.contains("The user executing the script can't")
}

fn sha256_hex(text: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, text.as_bytes())
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// A file of the repository, by its path from the root.
fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|error| panic!("{}: {error}", full.display()))
}
