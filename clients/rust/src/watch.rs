//! Following jobs: `watch`, a stream of a job's events that resumes by itself after the last
//! sequence it delivered, and `submit_and_wait`, on SubmitAndWatchJobs.

use std::time::Instant;

use bytes::Bytes;
use futures::Stream;
use tonic::{Request, Status, Streaming};

use crate::{
    Client, Error, EventType, JobEvent, JobSpec, JobState, Result,
    proto::{self, submit_and_watch_jobs_response::Message},
    trace,
};

impl JobEvent {
    /// Whether this is its job's last event: COMPLETED, FAILED or CANCELLED.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self.r#type(),
            EventType::Completed | EventType::Failed | EventType::Cancelled
        )
    }
}

/// Whether a job's state is final: COMPLETED, FAILED or CANCELLED.
fn is_finished(state: JobState) -> bool {
    matches!(
        state,
        JobState::Completed | JobState::Failed | JobState::Cancelled
    )
}

impl Client {
    /// The job's events after `after_sequence` (0: from the first), then live ones, ending
    /// after the terminal event, or with no event when the job had finished by
    /// `after_sequence` (its terminal event is then the caller's already). A broken stream
    /// (UNAVAILABLE, a jobd shutting down or restarting, a proxy's cut) is resumed with
    /// `after_sequence` = the last sequence delivered, with the resume policy's backoff: no
    /// event is missed or repeated. Ends with an error when jobd refuses the watch
    /// (`JOB_NOT_FOUND`, `PAST_LAST_EVENT`) or the resumes run out: the last attempt's error
    /// once failures in a row have lasted [`ClientBuilder::watch_resume`] (60 s) or longer,
    /// where an event, or the break of a stream that had stayed open for the resume policy's
    /// longest delay, starts afresh (a stream that jobd ended with OK does not).
    ///
    /// [`ClientBuilder::watch_resume`]: crate::ClientBuilder::watch_resume
    pub fn watch(
        &self,
        job_id: impl Into<String>,
        after_sequence: u64,
    ) -> impl Stream<Item = Result<JobEvent>> + Send + 'static {
        let follower = Follower {
            client: self.clone(),
            job_id: job_id.into(),
            last: after_sequence,
            failures: 0,
            broken_since: None,
            stream: None,
            opened: Instant::now(),
            done: false,
        };
        futures::stream::unfold(follower, |mut follower| async move {
            if follower.done {
                return None;
            }
            let item = follower.next_event().await?;
            follower.done = item.as_ref().map_or(true, JobEvent::is_terminal);
            Some((item, follower))
        })
    }

    /// Submits a job and waits for its outcome: its result, or [`Error::JobFailed`] /
    /// [`Error::JobCancelled`]. A stream that breaks after the submission is followed on with
    /// `watch`; one that breaks before is retried when the submission has an idempotency key
    /// (generated unless `retry_submissions(false)`). Bound the wait with
    /// `tokio::time::timeout`.
    pub async fn submit_and_wait(&self, spec: JobSpec) -> Result<Bytes> {
        let span = trace::SubmitSpan::start("jobd.SubmitAndWatchJobs", spec.queue());
        let request = spec.into_request(self.retries_submissions());
        let outcome = self.submit_and_follow(request, span.headers()).await;
        span.end(outcome.as_ref().err().filter(|e| e.rejection().is_some()));
        outcome
    }

    async fn submit_and_follow(
        &self,
        request: proto::SubmitJobRequest,
        headers: Vec<(&'static str, String)>,
    ) -> Result<Bytes> {
        let retry = !request.idempotency_key.is_empty();
        let policy = self.resume_policy();
        let mut failures = 0;
        loop {
            let mut call = Request::new(proto::SubmitJobsRequest {
                jobs: vec![request.clone()],
            });
            for (key, value) in &headers {
                if let Ok(value) = value.parse() {
                    call.metadata_mut().insert(*key, value);
                }
            }
            let mut progress = Progress::default();
            let error = match self.jobs().submit_and_watch_jobs(call).await {
                Ok(stream) => match progress.follow(stream.into_inner()).await {
                    Ok(outcome) => return outcome,
                    Err(error) => error,
                },
                Err(status) => Error::from(status),
            };
            if let Some(job_id) = progress.job_id {
                tracing::info!(%job_id, after = progress.last, %error, "following with WatchJob");
                return self.outcome_of(&job_id, progress.last).await;
            }
            failures += 1;
            if !(retry && error.is_resumable()) || failures >= policy.max_attempts {
                return Err(error);
            }
            tokio::time::sleep(policy.delay(failures - 1)).await;
        }
    }

    /// The outcome of a submitted job, from its events after `after`.
    async fn outcome_of(&self, job_id: &str, after: u64) -> Result<Bytes> {
        use futures::StreamExt;
        let events = self.watch(job_id, after);
        futures::pin_mut!(events);
        while let Some(event) = events.next().await {
            let event = event?;
            if event.is_terminal() {
                return outcome(event);
            }
        }
        Err(Status::internal(format!(
            "the watch of job {job_id} ended without its outcome"
        ))
        .into())
    }
}

/// How far a SubmitAndWatchJobs stream got: the job's id once submitted, its last sequence.
#[derive(Default)]
struct Progress {
    job_id: Option<String>,
    last: u64,
}

impl Progress {
    /// Reads the stream to the job's outcome (`Ok`), or to its break (`Err`).
    async fn follow(
        &mut self,
        mut stream: Streaming<proto::SubmitAndWatchJobsResponse>,
    ) -> std::result::Result<Result<Bytes>, Error> {
        loop {
            let message = match stream.message().await {
                Ok(Some(message)) => message.message,
                Ok(None) => return Err(ended_early()),
                Err(status) => return Err(status.into()),
            };
            match message {
                Some(Message::Submitted(submitted)) => {
                    let first = submitted.results.into_iter().next();
                    self.job_id = first.and_then(|r| r.job).map(|j| j.id);
                }
                Some(Message::Event(event)) if event.sequence > self.last => {
                    self.last = event.sequence;
                    if event.is_terminal() {
                        return Ok(outcome(event));
                    }
                }
                _ => {}
            }
        }
    }
}

/// A terminal event as the caller's outcome.
fn outcome(event: JobEvent) -> Result<Bytes> {
    match event.r#type() {
        EventType::Completed => Ok(event.result),
        EventType::Failed => Err(Error::JobFailed {
            job_id: event.job_id,
            error: event.error,
            attempt: event.attempt,
        }),
        _ => Err(Error::JobCancelled {
            job_id: event.job_id,
            reason: event.reason,
        }),
    }
}

/// A stream that ended with OK before its job's terminal event: the replica stopped following
/// it; resumable.
fn ended_early() -> Error {
    Status::unavailable("the stream ended before the job's terminal event").into()
}

/// One `watch`: where it is in the job's log, and its current stream.
struct Follower {
    client: Client,
    job_id: String,
    last: u64,
    /// Failed attempts in a row, and since when: the backoff's step and the budget's start.
    failures: u32,
    broken_since: Option<Instant>,
    stream: Option<Streaming<JobEvent>>,
    /// When the current stream was opened (its response headers came).
    opened: Instant,
    done: bool,
}

impl Follower {
    /// The next new event, resuming the stream while the budget allows; `None` when the job
    /// has no event after `last` and never will.
    async fn next_event(&mut self) -> Option<Result<JobEvent>> {
        loop {
            let error = match self.stream.as_mut() {
                None => match self.open().await {
                    Ok(stream) => {
                        self.stream = Some(stream);
                        self.opened = Instant::now();
                        continue;
                    }
                    Err(error) => error,
                },
                Some(stream) => match stream.message().await {
                    Ok(Some(event)) if event.sequence <= self.last => continue,
                    Ok(Some(event)) => {
                        self.last = event.sequence;
                        self.restart_budget();
                        return Some(Ok(event));
                    }
                    // jobd ends a watch with OK when nothing can follow `last`: the job had
                    // finished by then. Otherwise the replica stopped following the job, and
                    // the watch resumes.
                    Ok(None) => match self.client.get(&self.job_id).await {
                        Ok(job) if is_finished(job.state()) && job.last_sequence <= self.last => {
                            return None;
                        }
                        _ => ended_early(),
                    },
                    // A stream that stayed open for the policy's longest delay was healthy:
                    // its break starts afresh, so that a quiet watch survives any number of
                    // cuts over its life (a proxy's idle timeout, jobd's max connection age),
                    // while a jobd that breaks every stream at once, or ends it with OK,
                    // spends the budget.
                    Err(status) => {
                        if self.opened.elapsed() >= self.client.resume_policy().max {
                            self.restart_budget();
                        }
                        status.into()
                    }
                },
            };
            self.stream = None;
            if let Err(error) = self.back_off(error).await {
                return Some(Err(error));
            }
        }
    }

    /// After a failed attempt: `Err` when it is final (not resumable, or the failures in a
    /// row have lasted the budget or longer), else the backoff's delay.
    async fn back_off(&mut self, error: Error) -> Result<()> {
        let since = *self.broken_since.get_or_insert_with(Instant::now);
        if !error.is_resumable() || since.elapsed() >= self.client.watch_resume_budget() {
            return Err(error);
        }
        tracing::info!(job_id = %self.job_id, after = self.last, %error, "resuming the watch");
        tokio::time::sleep(self.client.resume_policy().delay(self.failures)).await;
        self.failures += 1;
        Ok(())
    }

    fn restart_budget(&mut self) {
        self.failures = 0;
        self.broken_since = None;
    }

    async fn open(&self) -> Result<Streaming<JobEvent>> {
        let request = proto::WatchJobRequest {
            job_id: self.job_id.clone(),
            after_sequence: self.last,
        };
        let response = self.client.jobs().watch_job(request).await?;
        Ok(response.into_inner())
    }
}
