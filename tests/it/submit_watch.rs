//! SubmitAndWatchJobs: the jobs of one call followed on one stream, each job's events exactly
//! once and in order, as WatchJob would give them, the stream ending OK after the last
//! terminal event.

use std::{collections::BTreeMap, time::Duration};

use jobd_client::proto::{self, EventType, submit_and_watch_jobs_response::Message};

use crate::harness::*;

/// Opens a SubmitAndWatchJobs stream and reads its first message, the submission results.
async fn submit_and_watch(
    server: &TestServer,
    requests: Vec<proto::SubmitJobRequest>,
) -> (
    Vec<proto::SubmitJobResponse>,
    tonic::Streaming<proto::SubmitAndWatchJobsResponse>,
) {
    let mut stream = server
        .jobs()
        .await
        .submit_and_watch_jobs(proto::SubmitJobsRequest { jobs: requests })
        .await
        .expect("the call is accepted")
        .into_inner();
    let first = stream
        .message()
        .await
        .expect("a healthy stream")
        .expect("a first message");
    let Some(Message::Submitted(submitted)) = first.message else {
        panic!("the first message holds the submission results: {first:?}");
    };
    (submitted.results, stream)
}

/// The rest of the stream, every event in the order received, and how it ended.
async fn events_to_end(
    stream: &mut tonic::Streaming<proto::SubmitAndWatchJobsResponse>,
) -> (Vec<proto::JobEvent>, Result<(), tonic::Status>) {
    let mut events = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the stream moves on")
        {
            Ok(Some(proto::SubmitAndWatchJobsResponse {
                message: Some(Message::Event(event)),
            })) => events.push(event),
            Ok(Some(other)) => panic!("only events follow the first message: {other:?}"),
            Ok(None) => return (events, Ok(())),
            Err(status) => return (events, Err(status)),
        }
    }
}

fn by_job(events: Vec<proto::JobEvent>) -> BTreeMap<String, Vec<proto::JobEvent>> {
    let mut jobs: BTreeMap<String, Vec<proto::JobEvent>> = BTreeMap::new();
    for event in events {
        jobs.entry(event.job_id.clone()).or_default().push(event);
    }
    jobs
}

fn job_id(result: &proto::SubmitJobResponse) -> String {
    result
        .job
        .as_ref()
        .expect("a result holds its job")
        .id
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_is_followed_to_its_terminal_event_then_ok() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;
    let later = proto::SubmitJobRequest {
        start: Some(proto::submit_job_request::Start::Delay(pb_duration(
            Duration::from_secs(3600),
        ))),
        ..submit_request("b")
    };
    let (results, mut stream) = submit_and_watch(
        &server,
        vec![submit_request("a"), submit_request("a"), later],
    )
    .await;
    assert_eq!(results.len(), 3);
    assert!(results.iter().all(|result| result.created));
    let ids: Vec<String> = results.iter().map(job_id).collect();

    // One completes, one fails for good, the scheduled one is cancelled.
    let first = claim(&mut workers, "a").await;
    complete(&mut workers, &first, b"done").await.unwrap();
    let second = claim(&mut workers, "a").await;
    fail(&mut workers, &second, "broken", false).await;
    cancel(&mut jobs, &ids[2], "not needed").await;

    let (events, end) = events_to_end(&mut stream).await;
    end.expect("the stream ends with OK");
    let followed = by_job(events);
    assert_eq!(followed.len(), 3, "every job, and only these: {followed:?}");
    for id in &ids {
        let got = &followed[id];
        // Exactly what WatchJob replays from the log: the first event, which the stream made
        // without reading it, included.
        let (logged, end) = watch_to_end(&mut jobs, id, 0).await;
        end.unwrap();
        assert_eq!(got, &logged, "job {id}");
        assert!(got.last().unwrap().r#type() != EventType::Queued);
    }
    assert_eq!(
        types(&followed[&ids[0]]),
        [EventType::Queued, EventType::Started, EventType::Completed]
    );
    assert_eq!(&followed[&ids[0]][2].result[..], b"done");
    assert_eq!(
        types(&followed[&ids[1]]),
        [EventType::Queued, EventType::Started, EventType::Failed]
    );
    assert_eq!(
        types(&followed[&ids[2]]),
        [EventType::Scheduled, EventType::Cancelled]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_found_by_its_idempotency_key_is_followed_once_from_its_first_event() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;
    let keyed = proto::SubmitJobRequest {
        idempotency_key: "order-7".to_owned(),
        ..submit_request("q")
    };
    let earlier = submit_with(&mut jobs, keyed.clone()).await;
    let earlier_id = earlier.job.unwrap().id;
    let claimed = claim(&mut workers, "q").await;
    complete(&mut workers, &claimed, b"first").await.unwrap();

    // The key twice, and a new job.
    let (results, mut stream) =
        submit_and_watch(&server, vec![keyed.clone(), keyed, submit_request("q")]).await;
    assert_eq!(
        results.iter().map(|r| r.created).collect::<Vec<_>>(),
        [false, false, true]
    );
    assert_eq!(job_id(&results[0]), earlier_id);
    assert_eq!(job_id(&results[1]), earlier_id);
    let claimed = claim(&mut workers, "q").await;
    complete(&mut workers, &claimed, b"second").await.unwrap();

    let (events, end) = events_to_end(&mut stream).await;
    end.expect("the stream ends with OK");
    let followed = by_job(events);
    assert_eq!(followed.len(), 2);
    let (history, _) = watch_to_end(&mut jobs, &earlier_id, 0).await;
    assert_eq!(followed[&earlier_id], history, "the earlier job, once");
    assert_eq!(sequences(&followed[&job_id(&results[2])]), [1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_submissions_are_refused_whole_and_create_nothing() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let mut jobs = server.jobs().await;

    let empty = jobs
        .submit_and_watch_jobs(proto::SubmitJobsRequest { jobs: vec![] })
        .await
        .expect_err("no jobs is refused");
    assert_eq!(empty.code(), tonic::Code::InvalidArgument);
    assert!(empty.message().contains("jobs"), "{}", empty.message());

    let bad = proto::SubmitJobRequest {
        max_attempts: 1000,
        ..submit_request("q")
    };
    let refused = jobs
        .submit_and_watch_jobs(proto::SubmitJobsRequest {
            jobs: vec![submit_request("q"), bad],
        })
        .await
        .expect_err("an invalid job refuses the call");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("jobs[1].max_attempts"),
        "{}",
        refused.message()
    );
    assert_eq!(stats(&mut jobs, "q").await.queued, 0, "nothing was written");
}
