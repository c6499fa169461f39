//! The two streams of job events, WatchJob and SubmitAndWatchJobs, over one `Follower`: each
//! maps the follower's domain events to proto messages, and says how to resume when it ends
//! early. Polled by tonic itself: no task and no channel per stream, and a client that goes
//! away drops its stream (and its registrations, and its budget's permit) at once.
//!
//! A result on its way out waits for room in the stream-result budget, then is counted in it
//! from when the stream yields it until h2 has written it to the connection (`replies::Held`),
//! for at most the send timeout per 64 KiB (`unsent`): 1,000 watchers of a job completing with
//! 1 MiB hold the budget's worth of copies at a time, not 1 GiB, and take nothing from the
//! payload bytes that calls are refused without.

use futures::StreamExt;
use tonic::{Code, Status};

use super::{
    proto::{self, submit_and_watch_jobs_response::Message},
    reason::{Reason, reworded, status},
    replies::Held,
};
use crate::{
    budgets::{Budget, Permit},
    domain::{EventKind, JobEvent},
    events::{Follower, Interrupted},
    telemetry::Gauged,
};

pub type EventStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<proto::JobEvent, Status>> + Send>>;

pub type FollowStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<proto::SubmitAndWatchJobsResponse, Status>> + Send>,
>;

/// What an open stream holds: the open-stream gauge, its permit of the watch-stream budget,
/// and the permits of the results it has yielded and h2 has not sent yet.
pub struct Holding {
    _gauge: Gauged,
    _stream: Permit,
    /// The stream-result budget, which results on their way out wait for.
    results: Budget,
    /// Where a result's permit goes, for the data frame that carries it to hold.
    sending: Held,
}

impl Holding {
    /// `sending` must be attached to the stream's response (`Held::attach`).
    pub fn new(gauge: Gauged, stream: Permit, results: Budget, sending: Held) -> Self {
        Self {
            _gauge: gauge,
            _stream: stream,
            results,
            sending,
        }
    }
}

/// A stream's follower while it has messages to send, and what it holds.
struct Open {
    follower: Follower,
    holding: Holding,
}

impl Open {
    fn new(follower: Follower, holding: Holding) -> Self {
        Self { follower, holding }
    }

    /// The next event, with a result counted in the stream-result budget until it is sent.
    async fn next(&mut self) -> Option<Result<JobEvent, Interrupted>> {
        let next = self.follower.next().await;
        if let Some(Ok(JobEvent {
            kind: EventKind::Completed { result },
            ..
        })) = &next
            && !result.is_empty()
        {
            let permit = self.holding.results.wait(result.len() as u64).await;
            self.holding.sending.put(permit);
        }
        next
    }
}

/// A WatchJob stream: the follower's events, each after `after`; ended early, a status naming
/// the last sequence delivered, to resume after with `after_sequence`.
pub fn watch(follower: Follower, after: u64, holding: Holding) -> EventStream {
    let open = Open::new(follower, holding);
    Box::pin(futures::stream::unfold(
        (Some(open), after),
        |(open, delivered)| async move {
            let mut open = open?;
            match open.next().await? {
                Ok(event) => {
                    let sequence = event.sequence;
                    Some((Ok(event.into()), (Some(open), sequence)))
                }
                Err(interrupted) => {
                    let how = format!(
                        "last sequence delivered: {delivered}; resume with after_sequence={delivered}"
                    );
                    Some((Err(ended_early(interrupted, &how)), (None, delivered)))
                }
            }
        },
    ))
}

/// A SubmitAndWatchJobs stream: `first` (the submission results), then the follower's events;
/// ended early, a status saying to resume each unfinished job with WatchJob.
pub fn follow(
    follower: Follower,
    first: proto::SubmitJobsResponse,
    holding: Holding,
) -> FollowStream {
    let first = proto::SubmitAndWatchJobsResponse {
        message: Some(Message::Submitted(first)),
    };
    let open = Open::new(follower, holding);
    let events = futures::stream::unfold(Some(open), |open| async move {
        let mut open = open?;
        match open.next().await? {
            Ok(event) => {
                let message = proto::SubmitAndWatchJobsResponse {
                    message: Some(Message::Event(event.into())),
                };
                Some((Ok(message), Some(open)))
            }
            Err(interrupted) => {
                let how = "resume each unfinished job with WatchJob after the last sequence \
                           received for it";
                Some((Err(ended_early(interrupted, how)), None))
            }
        }
    });
    Box::pin(futures::stream::once(async { Ok(first) }).chain(events))
}

/// The status that ends a stream early: what happened, and `how` to go on.
fn ended_early(interrupted: Interrupted, how: &str) -> Status {
    match interrupted {
        Interrupted::ShuttingDown => status(
            Code::Unavailable,
            Reason::ShuttingDown,
            format!("jobd is shutting down; {how}"),
            &[],
        ),
        Interrupted::Failed(error) => {
            let failed = Status::from(error);
            reworded(&failed, format!("{}; {how}", failed.message()))
        }
    }
}
