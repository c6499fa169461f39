//! Every RPC and state transition of the happy paths.

use std::time::{Duration, Instant};

use jobd_client::proto::{self, EventType, JobState};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_then_get_returns_what_was_submitted() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let mut jobs = server.jobs().await;

    let submitted = jobs
        .submit_job(proto::SubmitJobRequest {
            queue: "emails".into(),
            kind: "welcome".into(),
            payload: b"\x00\x01binary".to_vec().into(),
            labels: [("tenant".to_owned(), "acme".to_owned())].into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(submitted.state(), JobState::Queued);
    assert!(!submitted.id.is_empty());

    let job = get(&mut jobs, &submitted.id).await;
    assert_eq!(job.id, submitted.id);
    assert_eq!(job.queue, "emails");
    assert_eq!(job.kind, "welcome");
    assert_eq!(job.state(), JobState::Queued);
    assert_eq!(job.attempt, 0);
    assert_eq!(&job.payload[..], b"\x00\x01binary");
    assert_eq!(job.labels.get("tenant").map(String::as_str), Some("acme"));
    assert!(job.created_at.is_some());
    assert!(job.started_at.is_none() && job.finished_at.is_none());
    assert_eq!(job.last_sequence, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_heartbeat_complete() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;
    let job = submit(&mut jobs, "q", b"in").await;

    let claimed = claim(&mut workers, "q").await;
    let running = claimed.job.clone().unwrap();
    assert_eq!(running.id, job.id);
    assert_eq!(running.state(), JobState::Running);
    assert_eq!(running.attempt, 1);
    assert_eq!(&running.payload[..], b"in");
    assert_eq!(claimed.lease_token.len(), 32);
    let first_expiry = claimed.lease_expires_at.unwrap();

    let stored = get(&mut jobs, &job.id).await;
    assert_eq!(stored.state(), JobState::Running);
    assert!(stored.started_at.is_some());

    let beat = workers
        .heartbeat(proto::HeartbeatRequest {
            job_id: job.id.clone(),
            lease_token: claimed.lease_token.clone(),
            lease: Some(prost_types::Duration {
                seconds: 60,
                nanos: 0,
            }),
            progress: Some(proto::Progress {
                value: Some(42.5),
                message: "halfway".into(),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!beat.cancelled);
    let extended = beat.lease_expires_at.unwrap();
    assert!(
        extended.seconds > first_expiry.seconds + 20,
        "lease extended to 60 s"
    );

    complete(&mut workers, &claimed, b"out").await.unwrap();
    let done = get(&mut jobs, &job.id).await;
    assert_eq!(done.state(), JobState::Completed);
    assert_eq!(&done.result[..], b"out");
    assert!(done.finished_at.is_some());

    let (events, end) = watch_to_end(&mut jobs, &job.id, 0).await;
    end.unwrap();
    assert_eq!(
        types(&events),
        [
            EventType::Queued,
            EventType::Started,
            EventType::Progress,
            EventType::Completed
        ]
    );
    assert_eq!(sequences(&events), [1, 2, 3, 4]);
    assert_eq!(events[1].worker_id, "test-worker");
    assert_eq!(events[1].attempt, 1);
    let progress = events[2].progress.clone().unwrap();
    assert_eq!(progress.value, Some(42.5));
    assert_eq!(progress.message, "halfway");
    assert_eq!(&events[3].result[..], b"out");
    assert!(
        events
            .iter()
            .all(|e| e.job_id == job.id && e.time.is_some())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_makes_the_job_failed() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;
    let job = submit(&mut jobs, "q", b"").await;
    let claimed = claim(&mut workers, "q").await;

    let failed = workers
        .fail_job(proto::FailJobRequest {
            job_id: job.id.clone(),
            lease_token: claimed.lease_token.clone(),
            error: "disk full".into(),
            retryable: Some(false),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(failed.state(), JobState::Failed);

    let stored = get(&mut jobs, &job.id).await;
    assert_eq!(stored.state(), JobState::Failed);
    assert_eq!(stored.error, "disk full");
    let (events, end) = watch_to_end(&mut jobs, &job.id, 0).await;
    end.unwrap();
    assert_eq!(types(&events).last(), Some(&EventType::Failed));
    assert_eq!(events.last().unwrap().error, "disk full");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_are_fifo_and_each_job_goes_to_one_worker() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let mut jobs = server.jobs().await;
    let mut ids = Vec::new();
    for i in 0..20u8 {
        ids.push(submit(&mut jobs, "fifo", &[i]).await.id);
    }
    // Ten concurrent claimers race for twenty jobs: every job is claimed exactly once.
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let mut workers = server.workers().await;
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..2 {
                got.push(claim(&mut workers, "fifo").await.job.unwrap().id);
            }
            got
        }));
    }
    let mut claimed = Vec::new();
    for task in tasks {
        claimed.extend(task.await.unwrap());
    }
    claimed.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(claimed, expected);

    // One worker alone sees submission order.
    let mut ordered = Vec::new();
    for i in 0..5u8 {
        ordered.push(submit(&mut jobs, "order", &[i]).await.id);
    }
    let mut workers = server.workers().await;
    for id in ordered {
        assert_eq!(claim(&mut workers, "order").await.job.unwrap().id, id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_without_a_job_returns_nothing_after_the_wait() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let mut workers = server.workers().await;

    let started = Instant::now();
    let none = workers
        .claim_job(claim_request("empty", Duration::ZERO))
        .await
        .unwrap()
        .into_inner();
    assert!(none.job.is_none() && none.lease_token.is_empty());

    let started_wait = Instant::now();
    let none = workers
        .claim_job(claim_request("empty", Duration::from_millis(300)))
        .await
        .unwrap()
        .into_inner();
    assert!(none.job.is_none());
    assert!(started_wait.elapsed() >= Duration::from_millis(300));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_claim_is_woken_by_a_submit_through_another_jobd() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    // Submitted through the claim's own jobd, the job would be handed to it (see handoff.rs);
    // through another, the claim is woken by the queue's wake-up message.
    let other = TestServer::start(&redis).await;
    let mut workers = server.workers().await;
    let claiming = async move {
        let started = Instant::now();
        let response = workers
            .claim_job(claim_request("later", Duration::from_secs(20)))
            .await
            .unwrap()
            .into_inner();
        (response, started.elapsed())
    };
    let waiting = spawn_parked(&server, claiming).await;
    let mut jobs = other.jobs().await;
    let job = submit(&mut jobs, "later", b"x").await;
    let (response, waited) = waiting.await.unwrap();
    assert_eq!(response.job.unwrap().id, job.id);
    assert!(
        waited < Duration::from_secs(10),
        "woken long before the wait ran out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_takes_from_its_queues_in_order_of_preference() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;
    let low = submit(&mut jobs, "low", b"").await;
    let high = submit(&mut jobs, "high", b"").await;
    let mut request = claim_request("high", Duration::ZERO);
    request.queues = vec!["high".into(), "low".into()];
    let first = workers
        .claim_job(request.clone())
        .await
        .unwrap()
        .into_inner();
    let second = workers.claim_job(request).await.unwrap().into_inner();
    assert_eq!(first.job.unwrap().id, high.id);
    assert_eq!(second.job.unwrap().id, low.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completing_twice_with_the_same_token_is_idempotent() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;
    let job = submit(&mut jobs, "q", b"").await;
    let claimed = claim(&mut workers, "q").await;
    complete(&mut workers, &claimed, b"r").await.unwrap();
    // A retry of the same call (say, after a timeout) succeeds and records nothing new.
    complete(&mut workers, &claimed, b"r").await.unwrap();
    assert_eq!(get(&mut jobs, &job.id).await.last_sequence, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_are_reloaded_after_redis_forgets_them() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;
    submit(&mut jobs, "q", b"").await;
    assert_eq!(redis.cli(&["SCRIPT", "FLUSH"]), "OK");
    let job = submit(&mut jobs, "q", b"").await;
    let claimed = claim(&mut workers, "q").await;
    assert_ne!(
        claimed.job.as_ref().unwrap().id,
        job.id,
        "FIFO: the first job first"
    );
    complete(&mut workers, &claimed, b"").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_entry_in_a_queue_does_not_block_it() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;
    for junk in [
        "junk-1",
        "junk-2",
        "junk-3",
        "junk-4",
        "other.01ARZ3NDEKTSV4RRFFQ69G5FAV",
    ] {
        redis.cli(&["ZADD", "jobd:{q}:ready", "0", junk]);
    }
    let job = submit(&mut jobs, "q", b"").await;
    assert_eq!(claim(&mut workers, "q").await.job.unwrap().id, job.id);
    assert_eq!(redis.cli(&["ZCARD", "jobd:{q}:ready"]), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_several_and_claim_the_next_with_a_completion() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;
    let mut ids = Vec::new();
    for i in 0..7u8 {
        ids.push(submit(&mut jobs, "batch", &[i]).await.id);
    }
    let claim = claim_request("batch", Duration::from_secs(1));
    let claimed = claim_jobs(&mut workers, claim.clone(), 3).await;
    let claimed_ids: Vec<String> = claimed
        .iter()
        .map(|c| c.job.as_ref().unwrap().id.clone())
        .collect();
    assert_eq!(claimed_ids, ids[..3], "three, in FIFO order");
    let tokens: std::collections::HashSet<&String> =
        claimed.iter().map(|c| &c.lease_token).collect();
    assert_eq!(tokens.len(), 3, "each job has its own lease");

    // Completing the last of them claims the next four in the same call.
    for (i, held) in claimed.iter().enumerate() {
        let next = (i == 2).then(|| proto::ClaimJobsRequest {
            claim: Some(claim.clone()),
            max_jobs: 10,
        });
        let response = workers
            .complete_job(proto::CompleteJobRequest {
                job_id: held.job.as_ref().unwrap().id.clone(),
                lease_token: held.lease_token.clone(),
                result: Default::default(),
                next,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.next.len(), if i == 2 { 4 } else { 0 });
        if i == 2 {
            let next_ids: Vec<String> = response
                .next
                .iter()
                .map(|c| c.job.as_ref().unwrap().id.clone())
                .collect();
            assert_eq!(next_ids, ids[3..]);
            assert!(
                response
                    .next
                    .iter()
                    .all(|c| c.job.as_ref().unwrap().state() == JobState::Running)
            );
        }
    }
    assert_eq!(get(&mut jobs, &ids[2]).await.state(), JobState::Completed);
    assert_eq!(get(&mut jobs, &ids[6]).await.state(), JobState::Running);

    let bad = workers
        .claim_jobs(proto::ClaimJobsRequest {
            claim: Some(claim),
            max_jobs: 101,
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("max_jobs"));
    let missing = workers
        .claim_jobs(proto::ClaimJobsRequest {
            claim: None,
            max_jobs: 1,
        })
        .await
        .unwrap_err();
    assert!(missing.message().contains("claim"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_jobs_creates_a_batch_in_order_and_wakes_a_claimer_per_job() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let mut jobs = server.jobs().await;

    // Three claimers wait on the queue before the batch arrives: each must be woken.
    let mut waiting = Vec::new();
    for _ in 0..3 {
        let request = claim_request("bulk", Duration::from_secs(20));
        waiting.push(waiting_claim(&server, request).await);
    }

    let mut batch: Vec<proto::SubmitJobRequest> = (0..5u8)
        .map(|i| proto::SubmitJobRequest {
            payload: vec![i].into(),
            ..submit_request("bulk")
        })
        .collect();
    batch.push(submit_request("other"));
    batch.push(proto::SubmitJobRequest {
        idempotency_key: "once".into(),
        ..submit_request("bulk")
    });
    batch.push(proto::SubmitJobRequest {
        start: Some(proto::submit_job_request::Start::Delay(pb_duration(
            Duration::from_secs(3600),
        ))),
        ..submit_request("bulk")
    });
    let started = Instant::now();
    let results = jobs
        .submit_jobs(proto::SubmitJobsRequest {
            jobs: batch.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), 8);
    assert!(results.iter().all(|r| r.created));
    let ids: Vec<String> = results
        .iter()
        .map(|r| r.job.as_ref().unwrap().id.clone())
        .collect();
    assert!(ids[5].starts_with("other."));
    assert_eq!(
        results[7].job.as_ref().unwrap().state(),
        JobState::Scheduled
    );
    for (i, id) in ids.iter().enumerate().take(5) {
        assert_eq!(
            &get(&mut jobs, id).await.payload[..],
            &[i as u8],
            "in the request's order"
        );
    }

    for claim in waiting {
        let claimed = claim.await.unwrap().unwrap().into_inner();
        assert!(claimed.job.is_some(), "every waiting claimer was woken");
    }
    assert!(started.elapsed() < Duration::from_secs(10));

    // The idempotency key still holds within and across batches.
    let again = jobs
        .submit_jobs(proto::SubmitJobsRequest {
            jobs: vec![batch[6].clone()],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert!(!again[0].created);
    assert_eq!(again[0].job.as_ref().unwrap().id, ids[6]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_jobs_refuses_a_batch_with_an_invalid_job_and_writes_nothing() {
    let redis = RedisServer::start().await;
    let server = TestServer::start_with(
        &redis.url(),
        Settings {
            max_payload: Some(8),
            ..Settings::default()
        },
    )
    .await;
    let mut jobs = server.jobs().await;
    let mut batch = vec![
        submit_request("q"),
        submit_request("q"),
        submit_request("bad queue"),
    ];
    let status = jobs
        .submit_jobs(proto::SubmitJobsRequest {
            jobs: batch.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().starts_with("jobs[2].queue"),
        "{}",
        status.message()
    );
    batch[2] = proto::SubmitJobRequest {
        payload: vec![0; 9].into(),
        ..submit_request("q")
    };
    let status = jobs
        .submit_jobs(proto::SubmitJobsRequest { jobs: batch })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(
        status.message().starts_with("jobs[2].payload"),
        "{}",
        status.message()
    );
    let empty = jobs
        .submit_jobs(proto::SubmitJobsRequest { jobs: vec![] })
        .await
        .unwrap_err();
    assert_eq!(empty.code(), tonic::Code::InvalidArgument);
    assert!(redis.keys(JOB_KEYS).is_empty(), "nothing written");
}

/// Completions of one queue that arrive together share a script call; each still gets its own
/// answer, and one refused completion does not disturb the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_completions_each_get_their_own_answer() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let mut jobs = server.jobs().await;
    let workers = server.workers().await;
    const JOBS: usize = 40;
    let mut ids = Vec::new();
    for i in 0..JOBS {
        ids.push(submit(&mut jobs, "together", &[i as u8]).await.id);
    }
    let mut watches = Vec::new();
    for id in &ids {
        watches.push(watch_in_background(&server, id).await);
    }
    let claimed = claim_jobs(
        &mut workers.clone(),
        claim_request("together", Duration::from_secs(1)),
        JOBS as u32,
    )
    .await;
    assert_eq!(claimed.len(), JOBS);

    let complete_in_background = |id: &str, token: &str, result: Vec<u8>| {
        let mut workers = workers.clone();
        let request = proto::CompleteJobRequest {
            job_id: id.to_owned(),
            lease_token: token.to_owned(),
            result: result.into(),
            next: None,
        };
        tokio::spawn(async move { workers.complete_job(request).await.map(|_| ()) })
    };
    let mut good = Vec::new();
    let mut stale = Vec::new();
    for (i, held) in claimed.iter().enumerate() {
        let id = &held.job.as_ref().unwrap().id;
        good.push(complete_in_background(
            id,
            &held.lease_token,
            format!("r{i}").into_bytes(),
        ));
        // Another job's token, and the same completion sent twice (a client's retry).
        let other = &claimed[(i + 1) % JOBS].lease_token;
        stale.push(complete_in_background(id, other, b"wrong".to_vec()));
        good.push(complete_in_background(
            id,
            &held.lease_token,
            format!("r{i}").into_bytes(),
        ));
    }
    let unknown_id = format!("together.{}", ulid_like());
    let unknown = complete_in_background(&unknown_id, &claimed[0].lease_token, Vec::new());

    for answer in good {
        answer
            .await
            .unwrap()
            .expect("each completion with its token succeeds");
    }
    for answer in stale {
        let status = answer.await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    }
    assert_eq!(
        unknown.await.unwrap().unwrap_err().code(),
        tonic::Code::NotFound
    );
    for (i, held) in claimed.iter().enumerate() {
        let job = get(&mut jobs, &held.job.as_ref().unwrap().id).await;
        assert_eq!(job.state(), JobState::Completed);
        assert_eq!(job.result, format!("r{i}").into_bytes());
        assert_eq!(
            job.last_sequence, 3,
            "one COMPLETED event, however many tries"
        );
    }
    for (i, watch) in watches.into_iter().enumerate() {
        let (events, end) = watch.await.unwrap();
        end.expect("the stream ends with OK");
        let last = events.last().unwrap();
        assert_eq!(last.r#type(), EventType::Completed);
        assert_eq!(last.result, format!("r{i}").into_bytes(), "its own result");
    }
    assert_eq!(stats(&mut jobs, "together").await.running, 0);
}

/// A well-formed job id suffix that names no job.
fn ulid_like() -> String {
    "01ARZ3NDEKTSV4RRFFQ69G5FAV".to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_jobs_answers_each_completion_and_claims_the_next() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;
    let mut ids = Vec::new();
    for i in 0..5u8 {
        ids.push(submit(&mut jobs, "many", &[i]).await.id);
    }
    let claim = claim_request("many", Duration::from_secs(1));
    let claimed = claim_jobs(&mut workers, claim.clone(), 3).await;
    let mut completions: Vec<proto::Completion> = claimed
        .iter()
        .map(|held| completion(held, &held.lease_token))
        .collect();
    // Job 1 with job 0's token, and a job that does not exist.
    completions[1].lease_token = claimed[0].lease_token.clone();
    completions.push(proto::Completion {
        job_id: format!("many.{}", ulid_like()),
        ..completion(&claimed[0], &claimed[0].lease_token)
    });
    let response = workers
        .complete_jobs(proto::CompleteJobsRequest {
            completions: completions.clone(),
            next: Some(proto::ClaimJobsRequest {
                claim: Some(claim.clone()),
                max_jobs: 10,
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let codes: Vec<i32> = response.results.iter().map(|r| r.code).collect();
    assert_eq!(
        codes,
        [
            tonic::Code::Ok,
            tonic::Code::FailedPrecondition,
            tonic::Code::Ok,
            tonic::Code::NotFound
        ]
        .map(|code| code as i32)
    );
    assert!(response.results[1].message.contains("lease token"));
    assert!(response.results[0].message.is_empty());
    let reasons: Vec<&str> = response.results.iter().map(|r| r.reason.as_str()).collect();
    assert_eq!(reasons, ["", "LEASE_STALE", "", "JOB_NOT_FOUND"]);
    for (i, expected) in [
        (0, JobState::Completed),
        (1, JobState::Running),
        (2, JobState::Completed),
    ] {
        let job = get(&mut jobs, &ids[i]).await;
        assert_eq!(job.state(), expected, "job {i}");
        if expected == JobState::Completed {
            assert_eq!(job.result, vec![i as u8], "job {i} has its own result");
        }
    }
    let next: Vec<String> = response
        .next
        .iter()
        .map(|c| c.job.as_ref().unwrap().id.clone())
        .collect();
    assert_eq!(
        next,
        ids[3..],
        "the rest of the queue, claimed with the completions"
    );

    // Repeating the call is safe: the completed jobs answer OK again, nothing changes.
    let again = workers
        .complete_jobs(proto::CompleteJobsRequest {
            completions: completions[..1].to_vec(),
            next: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.results[0].code, tonic::Code::Ok as i32);
    assert_eq!(get(&mut jobs, &ids[0]).await.last_sequence, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_completion_refuses_the_whole_call_and_records_nothing() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;
    let job = submit(&mut jobs, "many", b"").await;
    let claimed = claim_jobs(&mut workers, claim_request("many", Duration::ZERO), 1).await;
    let held = completion(&claimed[0], &claimed[0].lease_token);

    // One malformed completion among good ones: the call is refused, naming it.
    let bad = vec![
        held.clone(),
        proto::Completion {
            job_id: "no-dot".to_owned(),
            ..held.clone()
        },
    ];
    let refused = workers
        .complete_jobs(proto::CompleteJobsRequest {
            completions: bad,
            next: None,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("completions[1].job_id"),
        "{refused:?}"
    );
    assert_eq!(get(&mut jobs, &job.id).await.state(), JobState::Running);
    for count in [0, 101] {
        let refused = workers
            .complete_jobs(proto::CompleteJobsRequest {
                completions: vec![held.clone(); count],
                next: None,
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(refused.message().contains("completions"));
    }
}

/// A completion of the claimed job `held` with `token`, its payload as its result.
fn completion(held: &proto::ClaimedJob, token: &str) -> proto::Completion {
    proto::Completion {
        job_id: held.job.as_ref().unwrap().id.clone(),
        lease_token: token.to_owned(),
        result: held.job.as_ref().unwrap().payload.clone(),
    }
}

/// SubmitJob calls to one queue that arrive together share a script call; each still creates
/// its own job, as given, and a delayed one among them is scheduled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submissions_each_create_their_own_job() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let jobs = server.jobs().await;
    let submissions = (0..50u8).map(|i| {
        let mut jobs = jobs.clone();
        let mut request = submit_request("crowd");
        request.payload = vec![i].into();
        if i == 7 {
            request.start = Some(proto::submit_job_request::Start::Delay(pb_duration(
                Duration::from_secs(60),
            )));
        }
        tokio::spawn(async move { jobs.submit_job(request).await })
    });
    let mut ids = std::collections::HashSet::new();
    let mut jobs = jobs.clone();
    for (i, submission) in submissions.collect::<Vec<_>>().into_iter().enumerate() {
        let job = submission.await.unwrap().unwrap().into_inner().job.unwrap();
        let stored = get(&mut jobs, &job.id).await;
        assert_eq!(stored.payload, vec![i as u8]);
        let expected = if i == 7 {
            JobState::Scheduled
        } else {
            JobState::Queued
        };
        assert_eq!(stored.state(), expected);
        assert_eq!(job.state(), expected, "the answer says what was stored");
        ids.insert(job.id);
    }
    assert_eq!(ids.len(), 50);
    let counts = stats(&mut jobs, "crowd").await;
    assert_eq!((counts.queued, counts.scheduled), (49, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_each_get_their_own_jobs_worker_and_lease() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let mut jobs = server.jobs().await;
    const JOBS: usize = 30;
    for i in 0..JOBS {
        submit(&mut jobs, "shared", &[i as u8]).await;
    }
    // Twelve claims of up to three jobs at once, on one connection, so that they reach jobd
    // together and share script calls; each names its own worker and lease.
    let workers = server.workers().await;
    let claims = (0..12u32).map(|i| {
        let mut workers = workers.clone();
        async move {
            let mut claim = claim_request("shared", Duration::from_secs(1));
            claim.worker_id = format!("worker-{i}");
            claim.lease = Some(pb_duration(Duration::from_secs(60 + u64::from(i))));
            let claimed = claim_jobs(&mut workers, claim, 3).await;
            (i, claimed)
        }
    });
    let mut seen = std::collections::HashSet::new();
    for (i, claimed) in futures::future::join_all(claims).await {
        assert!(claimed.len() <= 3, "claim {i} got {}", claimed.len());
        for claimed in claimed {
            let job = claimed.job.unwrap();
            assert!(seen.insert(job.id.clone()), "{} claimed twice", job.id);
            let stored = get(&mut jobs, &job.id).await;
            assert_eq!(stored.worker_id, format!("worker-{i}"));
            assert_eq!(job.worker_id, stored.worker_id);
            let lease = millis_of(&stored.lease_expires_at) - millis_of(&stored.started_at);
            assert_eq!(lease, 1000 * (60 + i64::from(i)), "job {}'s lease", job.id);
            assert_eq!(claimed.lease_token.len(), 32, "its own token");
        }
    }
    assert_eq!(seen.len(), JOBS, "every job claimed once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_entry_whose_job_is_gone_is_dropped_and_the_next_job_claimed_whole() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;
    // Ahead of everything in the queue: an id of the queue whose job hash does not exist.
    redis.cli(&[
        "ZADD",
        "jobd:{q}:ready",
        "0",
        "q.01ARZ3NDEKTSV4RRFFQ69G5FAV",
    ]);
    let job = submit(&mut jobs, "q", b"the payload").await;
    // The claim reads the jobs it expects to claim with its script; the one it claims instead
    // is read after, and comes back whole.
    let claimed = claim(&mut workers, "q").await.job.unwrap();
    assert_eq!(claimed.id, job.id);
    assert_eq!(&claimed.payload[..], b"the payload");
    assert_eq!(claimed.kind, job.kind);
    assert_eq!(claimed.state(), JobState::Running);
    assert_eq!(redis.cli(&["ZCARD", "jobd:{q}:ready"]), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_that_want_more_than_one_read_of_the_queue_each_get_all_they_ask_for() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let mut jobs = server.jobs().await;
    const JOBS: usize = 600;
    for _ in 0..2 {
        jobs.submit_jobs(proto::SubmitJobsRequest {
            jobs: vec![submit_request("many"); JOBS / 2],
        })
        .await
        .unwrap();
    }
    // Four claims of 100 at once, with more jobs ready than that: sharing calls, they want more
    // than one read of the queue gives (256 + 4 candidates), and each still gets 100.
    let workers = server.workers().await;
    let claims = (0..4).map(|_| {
        let mut workers = workers.clone();
        async move {
            claim_jobs(
                &mut workers,
                claim_request("many", Duration::from_secs(1)),
                100,
            )
            .await
        }
    });
    let mut seen = std::collections::HashSet::new();
    for claimed in futures::future::join_all(claims).await {
        assert_eq!(claimed.len(), 100);
        for claimed in claimed {
            assert!(seen.insert(claimed.job.unwrap().id), "claimed twice");
        }
    }
    assert_eq!(stats(&mut jobs, "many").await.running, 400);
    assert_eq!(stats(&mut jobs, "many").await.queued, 200);
}
