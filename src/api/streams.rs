//! The two streams of job events, WatchJob and SubmitAndWatchJobs, over one `Follower`: each
//! maps the follower's domain events to proto messages, and says how to resume when it ends
//! early. Polled by tonic itself: no task and no channel per stream, and a client that goes
//! away drops its stream (and its registrations, and its budget's permit) at once.
//!
//! A large result on its way out is counted in the payload-bytes budget from when the stream
//! yields it to when tonic asks for the next message, which it does once the connection has
//! room again: 1,000 watchers of a job completing with 1 MiB hold the budget's worth of
//! copies at a time, not 1 GiB.

use futures::StreamExt;
use tonic::{Code, Status};

use super::{
    proto::{self, submit_and_watch_jobs_response::Message},
    reason::{Reason, reworded, status},
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
/// and the payload bytes of the message it yielded last.
pub struct Holding {
    _gauge: Gauged,
    _stream: Permit,
    /// The payload-bytes budget, which large results on their way out wait for.
    payload: Budget,
}

impl Holding {
    pub fn new(gauge: Gauged, stream: Permit, payload: Budget) -> Self {
        Self {
            _gauge: gauge,
            _stream: stream,
            payload,
        }
    }
}

/// A stream's follower while it has messages to send, and what it holds.
struct Open {
    follower: Follower,
    holding: Holding,
    /// The payload bytes of the message yielded last, given back when the next is asked for.
    sent: Option<Permit>,
}

impl Open {
    fn new(follower: Follower, holding: Holding) -> Self {
        Self {
            follower,
            holding,
            sent: None,
        }
    }

    /// The next event, with a result counted in the payload-bytes budget while it goes out.
    async fn next(&mut self) -> Option<Result<JobEvent, Interrupted>> {
        self.sent = None;
        let next = self.follower.next().await;
        if let Some(Ok(JobEvent {
            kind: EventKind::Completed { result },
            ..
        })) = &next
            && !result.is_empty()
        {
            self.sent = Some(self.holding.payload.wait(result.len() as u64).await);
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
