//! The worker's side: claim, heartbeat, complete, fail, release.

use std::{collections::HashMap, time::Duration};

use bytes::Bytes;
use fred::{clients::Client, interfaces::SortedSetsInterface, types::Value};

use super::{
    JobStore, Result, StoreError,
    batch::Pending,
    codec::{EventStart, Fields, JOB_FIELDS, event_head},
    millis,
    release::ClaimedJobs,
    state_in, status, time_in,
};
use crate::domain::{
    AttemptEnd, ClaimDeadline, Claimed, FailOutcome, HeartbeatOutcome, Job, JobId, JobKind,
    LeaseToken, Progress, QueueName, Refusal, UnixMillis, WorkerId,
};

/// How many ready jobs beyond those wanted a claim looks at in one round, so that a few
/// concurrent claimers racing for the head of a queue each still find one.
const CLAIM_CANDIDATES: usize = 4;

/// How many times a claim retries after losing all its candidates to other workers.
const CLAIM_ROUNDS: usize = 8;

/// Most candidates a claim call looks at beyond `CLAIM_CANDIDATES`, whatever its claims want.
const MAX_CANDIDATES: usize = 256;

/// The most bytes of jobs (their `job_size`) one claim's reply carries beyond its first job,
/// which it carries whatever its size: every stock gRPC client refuses a reply over 4 MiB, and
/// a job leased in a reply that cannot be delivered would wait out its acknowledgement
/// deadline. 64 KiB are left for the rest of the reply.
pub const CLAIM_REPLY_BUDGET: usize = 4 * 1024 * 1024 - 64 * 1024;

/// What a job weighs in a reply beyond its payload and spec (labels, trace context): its ids,
/// names, times and last error (at most `MAX_STORED_ERROR`), with room to spare.
const JOB_OVERHEAD: usize = 8 * 1024;

/// The bytes a job takes in a claim's reply, at most: stored with the job as `size`.
pub fn job_size(payload: usize, spec: usize) -> usize {
    payload + spec + JOB_OVERHEAD
}

impl JobStore {
    /// Claims up to `want` jobs from the head of `queue`, in claim order, each to be
    /// acknowledged by its worker within `ack_timeout`, and no more than fit in one reply
    /// (`CLAIM_REPLY_BUDGET`). Losing a race for a candidate to another worker moves on to the
    /// next ones; empty means nothing was ready. Claims of one queue that arrive while one is
    /// being made share the next script call.
    pub async fn claim(
        &self,
        queue: &QueueName,
        worker: &WorkerId,
        lease: Option<Duration>,
        want: usize,
        ack_timeout: Duration,
    ) -> Result<ClaimedJobs> {
        let claim = Claim {
            worker: worker.clone(),
            lease,
            want: want.max(1),
            ack_timeout,
        };
        let store = self.clone();
        let queue = queue.clone();
        self.claims
            .run(&queue.clone(), claim, move |batch| {
                let (store, queue) = (store.clone(), queue.clone());
                async move {
                    match store.claim_batch(&queue, &batch).await {
                        Ok(mut claimed) => {
                            for (pending, jobs) in batch.into_iter().zip(claimed.drain(..)) {
                                pending.answer(Ok(jobs));
                            }
                        }
                        Err(error) => batch
                            .into_iter()
                            .for_each(|pending| pending.answer(Err(error.clone()))),
                    }
                }
            })
            .await
    }

    /// Makes the claims of a batch with one script call per round: the jobs claimed for each
    /// claim, in the batch's order.
    async fn claim_batch(
        &self,
        queue: &QueueName,
        batch: &[Pending<Claim, ClaimedJobs>],
    ) -> Result<Vec<ClaimedJobs>> {
        // Dropped on an error, what was claimed so far goes back to the queue.
        let mut claimed: Vec<ClaimedJobs> = batch.iter().map(|_| ClaimedJobs::new(self)).collect();
        // What each claim of the batch still takes, and the bytes of jobs it took.
        let mut wants: Vec<usize> = batch.iter().map(|pending| pending.op.want).collect();
        let mut bytes: Vec<usize> = vec![0; batch.len()];
        let ready = self.keys.ready(queue);
        // Rounds that claimed nothing because other jobds took every candidate first.
        let mut lost_rounds = 0;
        loop {
            let wanted: usize = wants.iter().sum();
            if wanted == 0 || lost_rounds == CLAIM_ROUNDS {
                break;
            }
            // A few more candidates than wanted, so that racing claimers each still find some.
            let page = wanted.min(MAX_CANDIDATES) + CLAIM_CANDIDATES;
            let candidates: Vec<String> = self
                .timed(
                    "read_queue",
                    self.pool
                        .next()
                        .zrange(&ready, 0, page as i64 - 1, None, false, None, false),
                )
                .await?;
            if candidates.is_empty() {
                break;
            }
            // A short page: the queue holds nothing beyond it.
            let drained = candidates.len() < page;
            let mut keys = vec![ready.clone(), self.keys.running(queue)];
            let mut args: Vec<Value> = vec![
                self.keys.job_channel().into(),
                millis(self.settings.default_lease).into(),
                CLAIM_REPLY_BUDGET.to_string().into(),
                batch.len().to_string().into(),
            ];
            for ((Pending { op, .. }, want), taken) in batch.iter().zip(&wants).zip(&bytes) {
                let started = EventStart::Started {
                    worker: op.worker.as_str(),
                };
                args.extend([
                    op.worker.as_str().into(),
                    op.lease.map(millis).unwrap_or_default().into(),
                    want.to_string().into(),
                    Bytes::from(event_head(started)).into(),
                    millis(op.ack_timeout).into(),
                    taken.to_string().into(),
                ]);
            }
            // The lease token each candidate gets should the script claim it.
            let mut leases = Vec::with_capacity(candidates.len());
            let mut foreign = Vec::new();
            for candidate in candidates {
                match JobId::parse("candidate", &candidate) {
                    Ok(id) if id.queue() == queue => {
                        let token = LeaseToken::generate();
                        keys.push(self.keys.job(&id));
                        args.push(candidate.into());
                        args.push(token.as_str().into());
                        leases.push((id, token));
                    }
                    _ => foreign.push(candidate),
                }
            }
            if !foreign.is_empty() {
                // jobd never writes such entries; left in place they would block the queue.
                tracing::warn!(queue = %queue, entries = ?foreign, "removing foreign ready-set entries");
                let _: i64 = self
                    .timed("clean_queue", self.pool.next().zrem(&ready, foreign))
                    .await?;
            }
            let client = self.pool.next();
            let round = match self
                .claim_round(client, keys, args, wanted, batch.len())
                .await
            {
                Ok(round) => round,
                Err(error) => {
                    self.release_after_failed_call(&error, client, leases);
                    return Err(error);
                }
            };
            // A claim whose reply is full takes no more, whatever it wanted.
            for &claimer in &round.full {
                wants[claimer] = 0;
            }
            if round.claimed.is_empty() {
                if !round.full.is_empty() {
                    continue;
                }
                // Every candidate was taken by another jobd between the read and the script:
                // look again.
                lost_rounds += 1;
                continue;
            }
            for (claimer, claimed_job, size) in round.claimed {
                wants[claimer] = wants[claimer].saturating_sub(1);
                bytes[claimer] += size;
                claimed[claimer].push(claimed_job);
            }
            if drained {
                break;
            }
            // Claims that still want jobs, from a queue that may hold more: another round.
        }
        // Nothing (more) ready, or lost every round: a waiting claim that got nothing waits.
        Ok(claimed)
    }

    /// One script call of a claim batch: the jobs claimed, each with the index of its claim in
    /// the batch and its size. On an error the call may have claimed jobs all the same; the
    /// caller puts them back.
    async fn claim_round(
        &self,
        client: &Client,
        keys: Vec<String>,
        args: Vec<Value>,
        wanted: usize,
        claimers: usize,
    ) -> Result<Round> {
        // The claimed jobs are read right after the script, in the same round trip: the first
        // candidates, as many as wanted, which are the ones claimed unless another jobd took
        // some of them (those are read after).
        let reads = keys[2..].iter().take(wanted).cloned().collect::<Vec<_>>();
        let (reply, jobs) = self
            .timed(
                self.scripts.claim.name(),
                self.scripts
                    .claim
                    .call_then_read(client, keys, args, &reads, &JOB_FIELDS),
            )
            .await?;
        let mut reply: Vec<Value> = reply
            .convert()
            .map_err(|_| StoreError::corrupt("claim reply shape"))?;
        if reply.len() < 2 {
            return Err(shape());
        }
        let entries = reply.split_off(2);
        let full: Vec<i64> = reply
            .pop()
            .ok_or_else(shape)?
            .convert()
            .map_err(|_| shape())?;
        let full = full
            .into_iter()
            .map(|claimer| claimer_index(claimer, claimers))
            .collect::<Result<_>>()?;
        let mut jobs: HashMap<String, Value> = reads.into_iter().zip(jobs).collect();
        let mut claimed = Vec::with_capacity(entries.len());
        for entry in entries {
            let entry = decode_claimed(entry, claimers, &mut jobs, self)?;
            let job = self.read_claimed(&entry.id, entry.fields).await?;
            let job_claimed = Claimed {
                job,
                token: entry.token,
                lease_expires_at: entry.lease_expires_at,
                ack_deadline: entry.ack_deadline,
            };
            claimed.push((entry.claimer, job_claimed, entry.size));
        }
        Ok(Round { full, claimed })
    }

    /// A job just claimed: from the fields read with the claim, or read now when another jobd
    /// had taken it among the candidates read.
    async fn read_claimed(&self, id: &JobId, fields: Option<Fields>) -> Result<Job> {
        let fields = match fields {
            Some(fields) => fields,
            None => self.read_fields(id, "read_claimed").await?,
        };
        fields
            .into_job(id)?
            .ok_or_else(|| StoreError::corrupt(format!("claimed job {id} is gone")))
    }

    /// Extends the lease of a running job (never shortening it) and acknowledges the job;
    /// records `progress` if given.
    pub async fn heartbeat(
        &self,
        id: &JobId,
        token: &LeaseToken,
        lease: Option<Duration>,
        progress: Option<Progress>,
    ) -> Result<HeartbeatOutcome> {
        let mut args: Vec<Value> = vec![
            id.to_string().into(),
            token.as_str().into(),
            lease.map(millis).unwrap_or_default().into(),
            self.keys.job_channel().into(),
        ];
        if let Some(progress) = &progress {
            args.push(Bytes::from(event_head(EventStart::Progress(progress))).into());
        }
        let reply: Vec<Value> = self
            .call(
                &self.scripts.heartbeat,
                vec![self.keys.job(id), self.keys.running(id.queue())],
                args,
            )
            .await?;
        match status(&reply)?.as_str() {
            "ok" => Ok(HeartbeatOutcome::Extended(time_in(&reply, 1)?)),
            "cancelled" => Ok(HeartbeatOutcome::Cancelled),
            other => Err(lease_refusal(other, &reply)),
        }
    }

    /// Records the worker's success: the job becomes COMPLETED with `result`. Completions of
    /// one queue that arrive while one is being written share the next script call.
    pub async fn complete(
        &self,
        id: &JobId,
        token: &LeaseToken,
        result: Bytes,
    ) -> Result<Completed> {
        let completion = Completion {
            id: id.clone(),
            token: token.clone(),
            result,
        };
        let store = self.clone();
        let queue = id.queue().clone();
        self.completions
            .run(id.queue(), completion, move |batch| {
                let (store, queue) = (store.clone(), queue.clone());
                async move { store.complete_batch(&queue, batch).await }
            })
            .await
    }

    /// Writes a batch of completions of `queue` with one script call, and answers each.
    async fn complete_batch(&self, queue: &QueueName, batch: Vec<Pending<Completion, Completed>>) {
        let mut keys = vec![
            self.keys.running(queue),
            self.keys
                .retained(queue, crate::domain::JobState::Completed),
            self.keys.ready(queue),
        ];
        let mut args: Vec<Value> = vec![
            self.keys.job_channel().into(),
            Bytes::from(event_head(EventStart::Completed)).into(),
        ];
        for Pending { op, .. } in &batch {
            keys.push(self.keys.job(&op.id));
            args.push(op.id.to_string().into());
            args.push(op.token.as_str().into());
            args.push(op.result.clone().into());
        }
        let replies: Result<Vec<Value>> = self.call(&self.scripts.complete, keys, args).await;
        // One reply per completion, then whether the queue has ready jobs, then the time.
        let (replies, queue_has_ready, now) = match replies {
            Ok(mut replies) if replies.len() == batch.len() + 2 => {
                let now = time_in(&replies, batch.len() + 1);
                replies.truncate(batch.len() + 1);
                let ready = replies.pop().and_then(|ready| ready.as_u64()) != Some(0);
                match now {
                    Ok(now) => (replies, ready, now),
                    Err(error) => return answer_all(batch, error),
                }
            }
            Ok(_) => {
                let error =
                    StoreError::corrupt("completion reply of another length than the batch");
                return answer_all(batch, error);
            }
            Err(error) => return answer_all(batch, error),
        };
        for (pending, reply) in batch.into_iter().zip(replies) {
            pending.answer(completion_outcome(reply, now).map(|ended| Completed {
                ended,
                queue_has_ready,
            }));
        }
    }

    /// Records the worker's failure: retried while the job has attempts left and the error
    /// is retryable, FAILED otherwise.
    pub async fn fail(
        &self,
        id: &JobId,
        token: &LeaseToken,
        error: &str,
        retryable: bool,
    ) -> Result<(FailOutcome, Option<AttemptEnd>)> {
        let queue = id.queue();
        let reply: Vec<Value> = self
            .call(
                &self.scripts.fail,
                vec![
                    self.keys.job(id),
                    self.keys.running(queue),
                    self.keys.scheduled(queue),
                    self.keys.retained(queue, crate::domain::JobState::Failed),
                ],
                vec![
                    id.to_string().into(),
                    token.as_str().into(),
                    error.into(),
                    if retryable { "retryable" } else { "final" }.into(),
                    rand::random::<f64>().to_string().into(),
                    self.keys.job_channel().into(),
                ],
            )
            .await?;
        match status(&reply)?.as_str() {
            "again_failed" => Ok((FailOutcome::Failed, None)),
            "again_scheduled" => Ok((FailOutcome::RetryAt(time_in(&reply, 1)?), None)),
            "failed" | "scheduled" => {
                attempt_ended(&reply).map(|(outcome, ended)| (outcome, Some(ended)))
            }
            other => Err(lease_refusal(other, &reply)),
        }
    }

    /// A worker gives a job it holds back to its queue, at no cost (ReleaseJob): QUEUED again,
    /// the claim not counted as an attempt. Repeating it succeeds again, until the job is
    /// claimed anew.
    pub async fn release_held(&self, id: &JobId, token: &LeaseToken, reason: &str) -> Result<()> {
        let reply = self
            .release(
                self.pool.next(),
                &[(id.clone(), token.clone())],
                reason,
                super::release::Holder::Worker,
            )
            .await?;
        let reply: Vec<Value> = reply
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::corrupt("release reply shape"))?
            .convert()
            .map_err(|_| StoreError::corrupt("release reply shape"))?;
        match status(&reply)?.as_str() {
            "ok" | "again" => Ok(()),
            other => Err(lease_refusal(other, &reply)),
        }
    }
}

/// A worker's claim, waiting for its script call.
pub(super) struct Claim {
    worker: WorkerId,
    lease: Option<Duration>,
    want: usize,
    ack_timeout: Duration,
}

/// What one script call of a claim batch gave.
struct Round {
    /// The claims (by index in the batch) whose reply is full.
    full: Vec<usize>,
    /// The jobs claimed, each with its claim's index and its size.
    claimed: Vec<(usize, Claimed, usize)>,
}

/// A completion recorded (or found recorded by an earlier try).
#[derive(Debug, Clone)]
pub struct Completed {
    /// The attempt that ended now; `None` when an earlier try recorded it.
    pub ended: Option<AttemptEnd>,
    /// Whether the job's queue had ready jobs right after the completion was written: a
    /// worker waiting on that queue, registered before completing, need not read it if not.
    pub queue_has_ready: bool,
}

/// A worker's report of success, waiting for its script call.
pub(super) struct Completion {
    id: JobId,
    token: LeaseToken,
    result: Bytes,
}

fn answer_all(batch: Vec<Pending<Completion, Completed>>, error: StoreError) {
    batch
        .into_iter()
        .for_each(|pending| pending.answer(Err(error.clone())));
}

/// What the completion script answered for one completion, the script having run at `now`.
fn completion_outcome(reply: Value, now: UnixMillis) -> Result<Option<AttemptEnd>> {
    let reply: Vec<Value> = reply
        .convert()
        .map_err(|_| StoreError::corrupt("completion reply shape"))?;
    match status(&reply)?.as_str() {
        "ok" => attempt_end(reply.get(1), reply.get(2), now).map(Some),
        "again" => Ok(None),
        other => Err(lease_refusal(other, &reply)),
    }
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
pub(super) fn lease_refusal(status: &str, reply: &[Value]) -> StoreError {
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

/// A job the claim script claimed, as its reply and the read after it give it.
struct ClaimedEntry {
    claimer: usize,
    id: JobId,
    /// The job as read right after the script, when it was among those read.
    fields: Option<Fields>,
    token: LeaseToken,
    lease_expires_at: UnixMillis,
    ack_deadline: UnixMillis,
    size: usize,
}

/// An entry of the claim script's reply, for one of the batch's `claimers`.
fn decode_claimed(
    entry: Value,
    claimers: usize,
    jobs: &mut HashMap<String, Value>,
    store: &JobStore,
) -> Result<ClaimedEntry> {
    let Value::Array(parts) = entry else {
        return Err(shape());
    };
    let [claimer, id, token, expires, ack, size]: [Value; 6] =
        parts.try_into().map_err(|_| shape())?;
    let claimer = claimer_index(claimer.as_i64().ok_or_else(shape)?, claimers)?;
    let id = id.as_string().ok_or_else(shape)?;
    let id = JobId::parse("id", &id).map_err(|_| StoreError::corrupt("claimed job id"))?;
    let fields = match jobs.remove(&store.keys.job(&id)) {
        Some(values) => {
            let values: Vec<Option<Bytes>> = values.convert().map_err(|_| shape())?;
            Some(Fields::from_values(&JOB_FIELDS, values))
        }
        None => None,
    };
    let token = token.as_string().ok_or_else(shape)?;
    let token = match LeaseToken::parse("token", &token) {
        Ok(Ok(token)) => token,
        _ => return Err(StoreError::corrupt("lease token")),
    };
    Ok(ClaimedEntry {
        claimer,
        id,
        fields,
        token,
        lease_expires_at: UnixMillis(expires.as_u64().ok_or_else(shape)?),
        ack_deadline: UnixMillis(ack.as_u64().ok_or_else(shape)?),
        size: size
            .as_u64()
            .and_then(|size| usize::try_from(size).ok())
            .ok_or_else(shape)?,
    })
}

/// A claimer's place in its batch from the script's 1-based number.
fn claimer_index(claimer: i64, claimers: usize) -> Result<usize> {
    usize::try_from(claimer)
        .ok()
        .and_then(|c| c.checked_sub(1))
        .filter(|&c| c < claimers)
        .ok_or_else(shape)
}

fn shape() -> StoreError {
    StoreError::corrupt("claim reply shape")
}
