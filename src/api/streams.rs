//! The two streams of job events, WatchJob and SubmitAndWatchJobs, over one `Follower`: each
//! maps the follower's domain events to proto messages, and says how to resume when it ends
//! early. Polled by tonic itself: no task and no channel per stream, and a client that goes
//! away drops its stream (and its registrations) at once.

use futures::StreamExt;
use tonic::{Code, Status};

use super::{
    proto::{self, submit_and_watch_jobs_response::Message},
    reason::{Reason, reworded, status},
};
use crate::{
    events::{Follower, Interrupted},
    telemetry::Gauged,
};

pub type EventStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<proto::JobEvent, Status>> + Send>>;

pub type FollowStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<proto::SubmitAndWatchJobsResponse, Status>> + Send>,
>;

/// A stream's follower while it has messages to send, and the open-stream gauge it holds.
struct Open {
    follower: Follower,
    _gauge: Gauged,
}

/// A WatchJob stream: the follower's events, each after `after`; ended early, a status naming
/// the last sequence delivered, to resume after with `after_sequence`.
pub fn watch(follower: Follower, after: u64, gauge: Gauged) -> EventStream {
    let open = Open {
        follower,
        _gauge: gauge,
    };
    Box::pin(futures::stream::unfold(
        (Some(open), after),
        |(open, delivered)| async move {
            let mut open = open?;
            match open.follower.next().await? {
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
pub fn follow(follower: Follower, first: proto::SubmitJobsResponse, gauge: Gauged) -> FollowStream {
    let first = proto::SubmitAndWatchJobsResponse {
        message: Some(Message::Submitted(first)),
    };
    let open = Open {
        follower,
        _gauge: gauge,
    };
    let events = futures::stream::unfold(Some(open), |open| async move {
        let mut open = open?;
        match open.follower.next().await? {
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
