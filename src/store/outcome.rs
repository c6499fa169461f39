//! What becomes of a job: what its worker reports (heartbeats, completions, failures, jobs
//! given back; release.lua also puts back jobs that never reached their worker), and its
//! cancellation. Every worker's call checks the lease token, and the claim's deadline by
//! Redis's clock.

use bytes::Bytes;
use fred::types::Value;

use super::{Connection, DueMark, JobStore, Result, StoreError, millis, state_in, status, time_in};
use crate::domain::{
    AttemptEnd, ClaimDeadline, FailOutcome, HeartbeatOutcome, Job, JobId, JobKind, JobState,
    LeaseToken, Progress, QueueName, Refusal, UnixMillis,
};

/// Completions of one queue for one script call: job, lease token, result.
pub type Completions<'a> = &'a [(JobId, LeaseToken, Bytes)];

/// How one completion of a call went.
#[derive(Debug, Clone)]
pub enum CompletionOutcome {
    /// Recorded now, ending this attempt.
    Recorded(AttemptEnd),
    /// Recorded by an earlier run of the same completion.
    Again,
    /// The job refused it (not found, or the token is not its current one).
    Refused(StoreError),
}

/// Who gives claimed jobs back (release.lua's two callers).
#[derive(Debug, Clone, Copy)]
pub enum Holder {
    /// The jobs' worker (ReleaseJob): refused once a claim's deadline passed.
    Worker,
    /// jobd, for jobs that never reached a worker.
    Undelivered,
}

/// How one job of a release went.
#[derive(Debug, Clone)]
pub enum Released {
    /// Back in its queue now.
    Now,
    /// Put back by an earlier run (or call) with the same token.
    Again,
    Refused(StoreError),
}

impl JobStore {
    /// Extends the lease of a running job (never shortening it) and acknowledges the job;
    /// records `progress` if given, in the job's capped log (progress.lua). A full Redis
    /// refuses progress, which takes memory, but not a renewal: the lease is then renewed
    /// without the progress (heartbeat.lua).
    pub async fn heartbeat(
        &self,
        id: &JobId,
        token: &LeaseToken,
        lease: Option<std::time::Duration>,
        progress: Option<Progress>,
    ) -> Result<HeartbeatOutcome> {
        let keys = self.keys();
        let script_keys = vec![keys.job(id), keys.running(id.queue())];
        let renewal: Vec<Value> = vec![
            id.to_string().into(),
            token.as_str().into(),
            lease.map(millis).unwrap_or_default().into(),
        ];
        let reply: Vec<Value> = match progress {
            Some(progress) => {
                let mut args = renewal.clone();
                args.push(keys.job_channel().into());
                args.push(self.event_cap());
                args.push(progress.message.into());
                let value = progress.value.map(|v| v.to_string()).unwrap_or_default();
                args.push(value.into());
                match self
                    .call(&self.scripts().progress, script_keys.clone(), args)
                    .await
                {
                    Err(StoreError::OutOfMemory(_)) => {
                        tracing::debug!(job = %id, "Redis is full: lease renewed, progress not recorded");
                        self.call(&self.scripts().heartbeat, script_keys, renewal)
                            .await?
                    }
                    reply => reply?,
                }
            }
            None => {
                self.call(&self.scripts().heartbeat, script_keys, renewal)
                    .await?
            }
        };
        match status(&reply)?.as_str() {
            "ok" => Ok(HeartbeatOutcome::Extended(time_in(&reply, 1)?)),
            "cancelled" => Ok(HeartbeatOutcome::Cancelled),
            other => Err(lease_refusal(other, &reply)),
        }
    }

    /// Records completions of jobs of `queue` with one script call: the outcome of each, in
    /// order, and whether the queue had ready jobs right after.
    pub async fn complete(
        &self,
        queue: &QueueName,
        completions: Completions<'_>,
    ) -> Result<(Vec<CompletionOutcome>, bool)> {
        let keys = self.keys();
        let mut script_keys = vec![
            keys.running(queue),
            keys.retained(queue, JobState::Completed),
            keys.ready(queue),
        ];
        let mut args: Vec<Value> = vec![keys.job_channel().into()];
        for (id, token, result) in completions {
            script_keys.push(keys.job(id));
            args.push(id.to_string().into());
            args.push(token.as_str().into());
            args.push(result.clone().into());
        }
        script_keys.push(keys.promise(queue));
        let mut replies: Vec<Value> = self
            .call(&self.scripts().complete, script_keys, args)
            .await?;
        self.publish_or_warn(queue, DueMark::take(&mut replies))
            .await;
        // One reply per completion, then whether the queue has ready jobs, then the time.
        if replies.len() != completions.len() + 2 {
            return Err(StoreError::corrupt(
                "completion reply of another length than the batch",
            ));
        }
        let now = time_in(&replies, completions.len() + 1)?;
        replies.truncate(completions.len() + 1);
        let ready = replies.pop().and_then(|ready| ready.as_u64()) != Some(0);
        let outcomes = replies
            .into_iter()
            .map(|reply| completion_outcome(reply, now))
            .collect::<Result<_>>()?;
        Ok((outcomes, ready))
    }

    /// Records the worker's failure: retried while the job has attempts left and the error
    /// is retryable, FAILED otherwise. The attempt's end is `None` when an earlier try
    /// recorded it.
    pub async fn fail(
        &self,
        id: &JobId,
        token: &LeaseToken,
        error: &str,
        retryable: bool,
    ) -> Result<(FailOutcome, Option<AttemptEnd>)> {
        let queue = id.queue();
        let keys = self.keys();
        let script_keys = vec![
            keys.job(id),
            keys.running(queue),
            keys.scheduled(queue),
            keys.retained(queue, JobState::Failed),
            keys.promise(queue),
        ];
        let args: Vec<Value> = vec![
            id.to_string().into(),
            token.as_str().into(),
            error.into(),
            if retryable { "retryable" } else { "final" }.into(),
            rand::random::<f64>().to_string().into(),
            keys.job_channel().into(),
            self.event_cap(),
        ];
        let mut reply: Vec<Value> = self.call(&self.scripts().fail, script_keys, args).await?;
        self.publish_or_warn(queue, DueMark::take(&mut reply)).await;
        match status(&reply)?.as_str() {
            "again_failed" => Ok((FailOutcome::Failed, None)),
            "again_scheduled" => Ok((FailOutcome::RetryAt(time_in(&reply, 1)?), None)),
            "failed" | "scheduled" => {
                attempt_ended(&reply).map(|(outcome, ended)| (outcome, Some(ended)))
            }
            other => Err(lease_refusal(other, &reply)),
        }
    }

    /// Cancels a queued, scheduled or running job and returns it, with whether this call
    /// cancelled it. A cancelled job is returned unchanged.
    pub async fn cancel(&self, id: &JobId, reason: &str) -> Result<(Job, bool)> {
        let queue = id.queue();
        let mut reply: Vec<Value> = self
            .call(
                &self.scripts().cancel,
                vec![
                    self.keys().job(id),
                    self.keys().ready(queue),
                    self.keys().running(queue),
                    self.keys().scheduled(queue),
                    self.keys().retained(queue, JobState::Cancelled),
                    self.keys().promise(queue),
                ],
                vec![
                    id.to_string().into(),
                    reason.into(),
                    self.keys().job_channel().into(),
                ],
            )
            .await?;
        self.publish_or_warn(queue, DueMark::take(&mut reply)).await;
        match status(&reply)?.as_str() {
            outcome @ ("ok" | "unchanged") => Ok((self.get(id).await?, outcome == "ok")),
            "not_found" => Err(StoreError::NotFound),
            "finished" => Err(StoreError::Refused(Refusal::Finished(state_in(&reply)?))),
            other => Err(StoreError::corrupt(format!("cancel replied {other:?}"))),
        }
    }

    /// A worker gives a job it holds back to its queue, at no cost (ReleaseJob): QUEUED again,
    /// the claim not counted as an attempt. Whether it was put back now; repeating it
    /// succeeds again, until the job is claimed anew.
    pub async fn release_held(&self, id: &JobId, token: &LeaseToken, reason: &str) -> Result<bool> {
        let leases = [(id.clone(), token.clone())];
        let released = self
            .release(&self.connection(), &leases, reason, Holder::Worker)
            .await?;
        match released.into_iter().next() {
            Some(Released::Now) => Ok(true),
            Some(Released::Again) => Ok(false),
            Some(Released::Refused(error)) => Err(error),
            None => Err(StoreError::corrupt("release reply shape")),
        }
    }

    /// Puts back in their queues the jobs still running under these tokens, for `holder`, on
    /// `connection`: QUEUED again, their claim not counted as an attempt, with `reason` in
    /// their RELEASED events. How it went for each job, in order.
    pub async fn release(
        &self,
        connection: &Connection,
        leases: &[(JobId, LeaseToken)],
        reason: &str,
        holder: Holder,
    ) -> Result<Vec<Released>> {
        let mut by_queue: std::collections::BTreeMap<&QueueName, Vec<usize>> = Default::default();
        for (index, (id, _)) in leases.iter().enumerate() {
            by_queue.entry(id.queue()).or_default().push(index);
        }
        let mut released = vec![Released::Again; leases.len()];
        for (queue, indexes) in by_queue {
            let queue_leases: Vec<_> = indexes.iter().map(|&index| &leases[index]).collect();
            let replies = self
                .release_queue(connection, queue, &queue_leases, reason, holder)
                .await?;
            for (index, outcome) in indexes.into_iter().zip(replies) {
                released[index] = outcome;
            }
        }
        Ok(released)
    }

    async fn release_queue(
        &self,
        connection: &Connection,
        queue: &QueueName,
        leases: &[&(JobId, LeaseToken)],
        reason: &str,
        holder: Holder,
    ) -> Result<Vec<Released>> {
        let keys = self.keys();
        let mut script_keys = vec![keys.ready(queue), keys.running(queue)];
        let mut args: Vec<Value> = vec![
            keys.job_channel().into(),
            keys.queue_channel().into(),
            queue.as_str().into(),
            reason.into(),
            match holder {
                Holder::Worker => "worker",
                Holder::Undelivered => "undelivered",
            }
            .into(),
            self.event_cap(),
        ];
        for (id, token) in leases {
            script_keys.push(keys.job(id));
            args.push(id.to_string().into());
            args.push(token.as_str().into());
        }
        let replies: Vec<Value> = self
            .call_on(&connection.0, &self.scripts().release, script_keys, args)
            .await?;
        if replies.len() != leases.len() {
            return Err(StoreError::corrupt("release reply shape"));
        }
        replies
            .into_iter()
            .map(|reply| {
                let reply: Vec<Value> = reply
                    .convert()
                    .map_err(|_| StoreError::corrupt("release reply shape"))?;
                Ok(match status(&reply)?.as_str() {
                    "ok" => Released::Now,
                    "again" => Released::Again,
                    other => Released::Refused(lease_refusal(other, &reply)),
                })
            })
            .collect()
    }
}

/// What the completion script answered for one completion, the script having run at `now`.
fn completion_outcome(reply: Value, now: UnixMillis) -> Result<CompletionOutcome> {
    let reply: Vec<Value> = reply
        .convert()
        .map_err(|_| StoreError::corrupt("completion reply shape"))?;
    Ok(match status(&reply)?.as_str() {
        "ok" => CompletionOutcome::Recorded(attempt_end(reply.get(1), reply.get(2), now)?),
        "again" => CompletionOutcome::Again,
        other => CompletionOutcome::Refused(lease_refusal(other, &reply)),
    })
}

/// An attempt's end as fail.lua and expire.lua reply it: {"failed", kind, started, now} or
/// {"scheduled", kind, started, now, retry at}.
pub(super) fn attempt_ended(reply: &[Value]) -> Result<(FailOutcome, AttemptEnd)> {
    let ended = attempt_end(reply.get(1), reply.get(2), time_in(reply, 3)?)?;
    let outcome = match status(reply)?.as_str() {
        "scheduled" => FailOutcome::RetryAt(time_in(reply, 4)?),
        _ => FailOutcome::Failed,
    };
    Ok((outcome, ended))
}

/// The kind and start time a script reported for the attempt it ended at `ended_at`.
fn attempt_end(
    kind: Option<&Value>,
    started: Option<&Value>,
    ended_at: UnixMillis,
) -> Result<AttemptEnd> {
    let kind = kind
        .and_then(Value::as_string)
        .and_then(|kind| JobKind::parse("kind", &kind).ok())
        .ok_or_else(|| StoreError::corrupt("reply without the job's kind"))?;
    let started_at = started.and_then(Value::as_u64).map(UnixMillis);
    Ok(AttemptEnd {
        kind,
        started_at,
        ended_at,
    })
}

/// Turns a script's refusal of a lease token into the error the worker sees.
fn lease_refusal(status: &str, reply: &[Value]) -> StoreError {
    let refusal = match status {
        "not_found" => return StoreError::NotFound,
        "stale" => match state_in(reply) {
            Ok(state) => Refusal::NotCurrentToken { state },
            Err(error) => return error,
        },
        "expired" => {
            let deadline = match reply.get(1).and_then(Value::as_str).as_deref() {
                Some("ack") => ClaimDeadline::Ack,
                _ => ClaimDeadline::Lease,
            };
            match time_in(reply, 2) {
                Ok(at) => Refusal::DeadlinePassed { deadline, at },
                Err(error) => return error,
            }
        }
        other => return StoreError::corrupt(format!("unexpected script status {other:?}")),
    };
    StoreError::Refused(refusal)
}
