//! The worker's side: claim, heartbeat, complete, fail.

use std::{collections::HashMap, time::Duration};

use bytes::Bytes;
use fred::{clients::Client, interfaces::SortedSetsInterface, types::Value};

use super::{
    JobStore, Result, StoreError,
    batch::Pending,
    codec::{Fields, JOB_FIELDS, event_head},
    millis,
    release::ClaimedJobs,
    state_in, status,
};
use crate::domain::{
    AttemptEnd, Claimed, FailOutcome, HeartbeatOutcome, Job, JobId, JobKind, JobState, LeaseToken,
    Progress, QueueName, UnixMillis, WorkerId,
};

/// How many ready jobs beyond those wanted a claim looks at in one round, so that a few
/// concurrent claimers racing for the head of a queue each still find one.
const CLAIM_CANDIDATES: usize = 4;

/// How many times a claim retries after losing all its candidates to other workers.
const CLAIM_ROUNDS: usize = 8;

/// Most candidates a claim call looks at beyond `CLAIM_CANDIDATES`, whatever its claims want.
const MAX_CANDIDATES: usize = 256;

impl JobStore {
    /// Claims up to `want` jobs from the head of `queue`, in claim order. Losing a race for a
    /// candidate to another worker moves on to the next ones; empty means nothing was ready.
    /// Claims of one queue that arrive while one is being made share the next script call.
    pub async fn claim(
        &self,
        queue: &QueueName,
        worker: &WorkerId,
        lease: Option<Duration>,
        want: usize,
        now: UnixMillis,
    ) -> Result<ClaimedJobs> {
        let claim = Claim {
            worker: worker.clone(),
            lease,
            want: want.max(1),
            now,
        };
        let store = self.clone();
        let queue = queue.clone();
        self.claims
            .run(&queue.clone(), claim, move |mut batch| {
                let (store, queue) = (store.clone(), queue.clone());
                // A claim whose worker went away would lease jobs that nobody works on.
                batch.retain(|pending| !pending.abandoned());
                async move {
                    if batch.is_empty() {
                        return;
                    }
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
        let now = batch
            .iter()
            .map(|pending| pending.op.now)
            .max()
            .unwrap_or_else(UnixMillis::now);
        // What each claim of the batch still takes.
        let mut wants: Vec<usize> = batch.iter().map(|pending| pending.op.want).collect();
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
                now.0.to_string().into(),
                self.keys.job_channel().into(),
                millis(self.settings.default_lease).into(),
                batch.len().to_string().into(),
            ];
            for (Pending { op, .. }, want) in batch.iter().zip(&wants) {
                args.push(op.worker.as_str().into());
                args.push(op.lease.map(millis).unwrap_or_default().into());
                args.push(want.to_string().into());
                args.push(Bytes::from(event_head("started", now, Some(op.worker.as_str()))).into());
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
                    let until = now.saturating_add(self.settings.max_lease);
                    self.release_after_failed_call(&error, client, leases, until);
                    return Err(error);
                }
            };
            if round.is_empty() {
                // Every candidate was taken by another jobd between the read and the script:
                // look again.
                lost_rounds += 1;
                continue;
            }
            for (claimer, claimed_job) in round {
                wants[claimer] = wants[claimer].saturating_sub(1);
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
    /// the batch. On an error the call may have claimed jobs all the same; the caller puts
    /// them back.
    async fn claim_round(
        &self,
        client: &Client,
        keys: Vec<String>,
        args: Vec<Value>,
        wanted: usize,
        claimers: usize,
    ) -> Result<Vec<(usize, Claimed)>> {
        // The claimed jobs are read right after the script, in the same round trip: the first
        // candidates, as many as wanted, which are the ones claimed unless another jobd took
        // some of them (those are read after).
        let reads = keys[2..].iter().take(wanted).cloned().collect::<Vec<_>>();
        let (entries, jobs) = self
            .timed(
                self.scripts.claim.name(),
                self.scripts
                    .claim
                    .call_then_read(client, keys, args, &reads, &JOB_FIELDS),
            )
            .await?;
        let entries: Vec<Value> = entries
            .convert()
            .map_err(|_| StoreError::corrupt("claim reply shape"))?;
        let mut jobs: HashMap<String, Value> = reads.into_iter().zip(jobs).collect();
        let mut round = Vec::with_capacity(entries.len());
        for entry in entries {
            let (claimer, id, fields, token, expires) =
                decode_claimed(entry, claimers, &mut jobs, self)?;
            let job = self.read_claimed(&id, fields).await?;
            let claimed = Claimed {
                job,
                token,
                lease_expires_at: expires,
            };
            round.push((claimer, claimed));
        }
        Ok(round)
    }

    /// A job just claimed: from the fields read with the claim, or read now when another jobd
    /// had taken it among the candidates read.
    async fn read_claimed(&self, id: &JobId, fields: Option<Fields>) -> Result<Job> {
        let fields = match fields {
            Some(fields) => self.with_legacy(id, fields).await?,
            None => self.read_fields(id, "read_claimed").await?,
        };
        fields
            .into_job(id)?
            .ok_or_else(|| StoreError::corrupt(format!("claimed job {id} is gone")))
    }

    pub async fn heartbeat(
        &self,
        id: &JobId,
        token: &LeaseToken,
        lease: Option<Duration>,
        progress: Option<Progress>,
        now: UnixMillis,
    ) -> Result<HeartbeatOutcome> {
        let (record, value, message) = match progress {
            Some(progress) => (
                "1",
                progress.value.map(|v| v.to_string()).unwrap_or_default(),
                progress.message,
            ),
            None => ("0", String::new(), String::new()),
        };
        let reply: Vec<Value> = self
            .call(
                &self.scripts.heartbeat,
                vec![self.keys.job(id), self.keys.running(id.queue())],
                vec![
                    id.to_string().into(),
                    token.as_str().into(),
                    now.0.to_string().into(),
                    lease.map(millis).unwrap_or_default().into(),
                    record.into(),
                    value.into(),
                    message.into(),
                    self.keys.job_channel().into(),
                ],
            )
            .await?;
        match status(&reply)?.as_str() {
            "ok" => {
                let expires = reply
                    .get(1)
                    .and_then(Value::as_u64)
                    .ok_or_else(|| StoreError::corrupt("heartbeat reply without a lease expiry"))?;
                Ok(HeartbeatOutcome::Extended(UnixMillis(expires)))
            }
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
        now: UnixMillis,
    ) -> Result<Completed> {
        let completion = Completion {
            id: id.clone(),
            token: token.clone(),
            result,
            now,
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
        let now = batch
            .iter()
            .map(|pending| pending.op.now)
            .max()
            .unwrap_or_else(UnixMillis::now);
        let mut keys = vec![
            self.keys.running(queue),
            self.keys.retained(queue, JobState::Completed),
            self.keys.ready(queue),
        ];
        let mut args: Vec<Value> = vec![
            now.0.to_string().into(),
            self.keys.job_channel().into(),
            Bytes::from(event_head("completed", now, None)).into(),
        ];
        for Pending { op, .. } in &batch {
            keys.push(self.keys.job(&op.id));
            args.push(op.id.to_string().into());
            args.push(op.token.as_str().into());
            args.push(op.result.clone().into());
        }
        let replies: Result<Vec<Value>> = self.call(&self.scripts.complete, keys, args).await;
        // One reply per completion, then whether the queue has ready jobs.
        let (replies, queue_has_ready) = match replies {
            Ok(mut replies) if replies.len() == batch.len() + 1 => {
                let ready = replies.pop().and_then(|ready| ready.as_u64()) != Some(0);
                (replies, ready)
            }
            Ok(_) => {
                let error =
                    StoreError::corrupt("completion reply of another length than the batch");
                batch
                    .into_iter()
                    .for_each(|pending| pending.answer(Err(error.clone())));
                return;
            }
            Err(error) => {
                batch
                    .into_iter()
                    .for_each(|pending| pending.answer(Err(error.clone())));
                return;
            }
        };
        for (pending, reply) in batch.into_iter().zip(replies) {
            pending.answer(completion_outcome(reply).map(|ended| Completed {
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
        now: UnixMillis,
    ) -> Result<(FailOutcome, Option<AttemptEnd>)> {
        self.end_attempt(id, token.as_str(), error, retryable, now)
            .await
    }

    /// Fails the current attempt: with `token` as the worker's report, or with an empty token
    /// as a lease expiry, which happens only if the lease has indeed run out.
    pub(super) async fn end_attempt(
        &self,
        id: &JobId,
        token: &str,
        error: &str,
        retryable: bool,
        now: UnixMillis,
    ) -> Result<(FailOutcome, Option<AttemptEnd>)> {
        let queue = id.queue();
        let reply: Vec<Value> = self
            .call(
                &self.scripts.fail,
                vec![
                    self.keys.job(id),
                    self.keys.running(queue),
                    self.keys.scheduled(queue),
                    self.keys.retained(queue, JobState::Failed),
                ],
                vec![
                    id.to_string().into(),
                    token.into(),
                    now.0.to_string().into(),
                    error.into(),
                    if retryable { "1" } else { "0" }.into(),
                    rand::random::<f64>().to_string().into(),
                    self.keys.job_channel().into(),
                ],
            )
            .await?;
        let retry_at = |value: Option<&Value>| {
            value
                .and_then(Value::as_u64)
                .map(|at| FailOutcome::RetryAt(UnixMillis(at)))
                .ok_or_else(|| StoreError::corrupt("fail reply without a retry time"))
        };
        let ended = || attempt_end(reply.get(1), reply.get(2)).map(Some);
        match status(&reply)?.as_str() {
            "failed" => Ok((FailOutcome::Failed, ended()?)),
            "scheduled" => Ok((retry_at(reply.get(3))?, ended()?)),
            "again_failed" => Ok((FailOutcome::Failed, None)),
            "again_scheduled" => Ok((retry_at(reply.get(1))?, None)),
            "alive" => Err(StoreError::Conflict("the lease has not expired".into())),
            other => Err(lease_refusal(other, &reply)),
        }
    }
}

/// A worker's claim, waiting for its script call.
pub(super) struct Claim {
    worker: WorkerId,
    lease: Option<Duration>,
    want: usize,
    now: UnixMillis,
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
    now: UnixMillis,
}

/// What the completion script answered for one completion.
fn completion_outcome(reply: Value) -> Result<Option<AttemptEnd>> {
    let reply: Vec<Value> = reply
        .convert()
        .map_err(|_| StoreError::corrupt("completion reply shape"))?;
    match status(&reply)?.as_str() {
        "ok" => attempt_end(reply.get(1), reply.get(2)).map(Some),
        "again" => Ok(None),
        other => Err(lease_refusal(other, &reply)),
    }
}

/// The kind and start time a script reported for the attempt it ended.
fn attempt_end(kind: Option<&Value>, started: Option<&Value>) -> Result<AttemptEnd> {
    let kind = kind
        .and_then(Value::as_string)
        .and_then(|kind| JobKind::parse("kind", &kind).ok())
        .ok_or_else(|| StoreError::corrupt("reply without the job's kind"))?;
    let started_at = started
        .and_then(Value::as_string)
        .and_then(|ms| ms.parse().ok())
        .map(UnixMillis);
    Ok(AttemptEnd { kind, started_at })
}

/// Turns a script's refusal of a lease token into the error the worker sees.
fn lease_refusal(status: &str, reply: &[Value]) -> StoreError {
    match status {
        "not_found" => StoreError::NotFound,
        "stale" => {
            let why = match state_in(reply) {
                Some(JobState::Cancelled) => "the job was cancelled".to_owned(),
                Some(JobState::Running) => "the job was claimed again by another worker".to_owned(),
                Some(JobState::Queued | JobState::Scheduled) => {
                    "the attempt ended (lease expired or failure reported) and the job awaits its next attempt"
                        .to_owned()
                }
                Some(state) => format!("the job is already {}", state.as_str()),
                None => "the job changed".to_owned(),
            };
            StoreError::Conflict(format!(
                "the lease token is not the job's current one: {why}"
            ))
        }
        other => StoreError::corrupt(format!("unexpected script status {other:?}")),
    }
}

/// An entry of the claim script's reply: which of the batch's `claimers` it is for, the job as
/// read right after the script (when it was among those read), its token and lease expiry.
fn decode_claimed(
    entry: Value,
    claimers: usize,
    jobs: &mut HashMap<String, Value>,
    store: &JobStore,
) -> Result<(usize, JobId, Option<Fields>, LeaseToken, UnixMillis)> {
    let Value::Array(parts) = entry else {
        return Err(shape());
    };
    let [claimer, id, token, expires]: [Value; 4] = parts.try_into().map_err(|_| shape())?;
    let claimer = claimer
        .as_u64()
        .and_then(|c| usize::try_from(c).ok())
        .and_then(|c| c.checked_sub(1))
        .filter(|&c| c < claimers)
        .ok_or_else(shape)?;
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
    let token =
        LeaseToken::parse("token", &token).map_err(|_| StoreError::corrupt("lease token"))?;
    let expires = UnixMillis(expires.as_u64().ok_or_else(shape)?);
    Ok((claimer, id, fields, token, expires))
}

fn shape() -> StoreError {
    StoreError::corrupt("claim reply shape")
}
