//! Writing new jobs: submit_many.lua for jobs without an idempotency key, submit_keyed.lua for
//! jobs with one, each alone or in batches of one queue; either may hand jobs to claims waiting
//! on the calling jobd, which the caller chooses.

use std::time::Duration;

use bytes::Bytes;
use fred::types::Value;

use super::{
    Connection, DueMark, JobStore, Result, StoreError, claim::job_size, layout::Spec, millis,
    scripts::LuaScript, status,
};
use crate::domain::{JobId, LeaseToken, NewJob, QueueName, Start, UnixMillis, WorkerId};

/// Jobs of one queue encoded for a submission script, and what each weighs in a claim's reply
/// (see `job_size`), which a hand-off must know before the call.
pub struct PreparedJobs {
    queue: QueueName,
    ids: Vec<JobId>,
    /// The jobs' idempotency keys, for submit_keyed.lua; none for submit_many.lua.
    idempotency: Vec<String>,
    /// The jobs' script arguments: 9 per job for submit_many.lua, 12 for submit_keyed.lua.
    args: Vec<Value>,
    sizes: Vec<usize>,
}

impl PreparedJobs {
    fn new(queue: &QueueName, jobs: usize, args_per_job: usize) -> Self {
        Self {
            queue: queue.clone(),
            ids: Vec::with_capacity(jobs),
            idempotency: Vec::new(),
            args: Vec::with_capacity(jobs * args_per_job),
            sizes: Vec::with_capacity(jobs),
        }
    }

    /// Adds a job's 9 arguments (see `push_job_args`).
    fn push(&mut self, id: &JobId, job: &NewJob) -> Result<()> {
        self.ids.push(id.clone());
        let size = push_job_args(&mut self.args, id, job)?;
        self.sizes.push(size);
        Ok(())
    }

    pub fn sizes(&self) -> &[usize] {
        &self.sizes
    }
}

/// A job of a submission handed to a claim waiting on this process: the script claims it for
/// that claim's worker at once, provided the queue has no ready job it would pass over.
#[derive(Debug, Clone)]
pub struct HandOff {
    /// The job's place among the submission's jobs.
    pub job: usize,
    pub worker: WorkerId,
    pub token: LeaseToken,
    pub lease: Duration,
    pub ack_timeout: Duration,
}

/// What a submission script wrote.
#[derive(Debug, Clone, Copy)]
pub struct SubmittedBatch {
    /// When Redis created the jobs, by its clock (the first run's, for a call run twice).
    pub created: UnixMillis,
    /// Whether the script made the hand-offs it was given.
    pub handed: bool,
}

/// What a submission script did with a job that carries an idempotency key.
#[derive(Debug, Clone)]
pub enum KeyedSubmission {
    /// Written by this call, or by its first run for a call run twice.
    Created(SubmittedBatch),
    /// A live key named this earlier job, made by the same request: nothing was written.
    Existing(JobId),
    /// A live key named a job that another request made: nothing was written.
    Conflict,
    /// Not written: an earlier job of the same request met a conflict.
    Skipped,
}

impl JobStore {
    /// Encodes jobs of `queue` without idempotency keys for `submit_many`.
    pub fn prepare(&self, queue: &QueueName, jobs: &[(JobId, NewJob)]) -> Result<PreparedJobs> {
        let mut prepared = PreparedJobs::new(queue, jobs.len(), 9);
        for (id, job) in jobs {
            prepared.push(id, job)?;
        }
        Ok(prepared)
    }

    /// Encodes jobs of `queue` with idempotency keys for `submit_keyed`. `groups` names each
    /// job's request: a conflict leaves the later jobs of its request unwritten.
    pub fn prepare_keyed(
        &self,
        queue: &QueueName,
        jobs: &[(JobId, NewJob)],
        groups: &[usize],
    ) -> Result<PreparedJobs> {
        let mut prepared = PreparedJobs::new(queue, jobs.len(), 12);
        for ((id, job), group) in jobs.iter().zip(groups) {
            let idempotency = job
                .idempotency
                .as_ref()
                .ok_or_else(|| StoreError::corrupt("a keyed submission of a job without a key"))?;
            prepared.push(id, job)?;
            prepared.idempotency.push(idempotency.key.clone());
            prepared.args.extend([
                millis(idempotency.ttl).into(),
                job.fingerprint().into(),
                group.to_string().into(),
            ]);
        }
        Ok(prepared)
    }

    /// Writes jobs without an idempotency key, all of one queue, with one script call on
    /// `connection`, atomically, making `hand_offs` if the queue has no ready job.
    pub async fn submit_many(
        &self,
        connection: &Connection,
        jobs: PreparedJobs,
        hand_offs: &[HandOff],
    ) -> Result<SubmittedBatch> {
        let queue = &jobs.queue;
        let keys = self.keys();
        let mut script_keys = vec![
            keys.ready(queue),
            keys.scheduled(queue),
            keys.running(queue),
        ];
        script_keys.extend(jobs.ids.iter().map(|id| keys.job(id)));
        script_keys.push(keys.promise(queue));
        let script = &self.scripts().submit_many;
        let reply = self
            .call_submit(connection, script, script_keys, jobs, hand_offs)
            .await?;
        // {jobs made ready, 1 if the hand-offs were made, created}.
        submitted(reply.get(2), reply.get(1))
    }

    /// Writes jobs of one queue with idempotency keys (see `prepare_keyed`) with one script
    /// call on `connection`, each unless a live key names another job, making the hand-offs
    /// of the jobs written if the queue has no ready job. A key keeps its request's
    /// fingerprint: a key used again by a request with another one is a `Conflict`.
    /// Answers each job, in order.
    pub async fn submit_keyed(
        &self,
        connection: &Connection,
        jobs: PreparedJobs,
        hand_offs: &[HandOff],
    ) -> Result<Vec<KeyedSubmission>> {
        let queue = &jobs.queue;
        let keys = self.keys();
        let count = jobs.ids.len();
        let mut script_keys = Vec::with_capacity(4 + 2 * count);
        script_keys.extend([
            keys.ready(queue),
            keys.scheduled(queue),
            keys.running(queue),
            keys.promise(queue),
        ]);
        for (id, key) in jobs.ids.iter().zip(&jobs.idempotency) {
            script_keys.extend([keys.job(id), keys.idempotency(queue, key)]);
        }
        // A run that found an earlier run's jobs repeats that run's due mark, in case its
        // caller never wrote it.
        let script = &self.scripts().submit_keyed;
        let reply = self
            .call_submit(connection, script, script_keys, jobs, hand_offs)
            .await?;
        if reply.len() != 3 * count {
            return Err(StoreError::corrupt("submit_keyed reply shape"));
        }
        reply.chunks(3).map(keyed_submission).collect()
    }

    /// Calls a submission script for `jobs` of one queue: `script_keys`, then the queue's
    /// channels and name, the jobs' arguments and the hand-offs. A queue created, or a job delayed, is in
    /// the due index before this answers; the rest of the reply is the script's.
    async fn call_submit(
        &self,
        connection: &Connection,
        script: &LuaScript,
        script_keys: Vec<String>,
        jobs: PreparedJobs,
        hand_offs: &[HandOff],
    ) -> Result<Vec<Value>> {
        let (keys, queue) = (self.keys(), &jobs.queue);
        let mut args: Vec<Value> = vec![
            keys.queue_channel().into(),
            queue.as_str().into(),
            keys.job_channel().into(),
        ];
        args.extend(jobs.args);
        push_hand_offs(&mut args, hand_offs);
        let mut reply: Vec<Value> = self
            .call_on(&connection.0, script, script_keys, args)
            .await?;
        self.publish_due(queue, DueMark::take(&mut reply)).await?;
        Ok(reply)
    }
}

/// One job's 3 values in submit_keyed.lua's reply.
fn keyed_submission(reply: &[Value]) -> Result<KeyedSubmission> {
    match status(reply)?.as_str() {
        // "again": an earlier run of this very call wrote it; same id, same job.
        "created" | "again" => Ok(KeyedSubmission::Created(submitted(
            reply.get(2),
            reply.get(1),
        )?)),
        "exists" => {
            let existing = reply.get(1).and_then(Value::as_string).unwrap_or_default();
            let id = JobId::parse("id", &existing)
                .map_err(|_| StoreError::corrupt("idempotency key names no job id"))?;
            Ok(KeyedSubmission::Existing(id))
        }
        "conflict" => Ok(KeyedSubmission::Conflict),
        "skipped" => Ok(KeyedSubmission::Skipped),
        other => Err(StoreError::corrupt(format!(
            "submit_keyed replied {other:?}"
        ))),
    }
}

fn submitted(created: Option<&Value>, handed: Option<&Value>) -> Result<SubmittedBatch> {
    let created = created
        .and_then(Value::as_u64)
        .map(UnixMillis)
        .ok_or_else(|| StoreError::corrupt("submission reply without a creation time"))?;
    Ok(SubmittedBatch {
        created,
        handed: handed.and_then(Value::as_u64) == Some(1),
    })
}

/// The 5 script arguments of each hand-off, as the submission scripts read them.
fn push_hand_offs<'a>(args: &mut Vec<Value>, hand_offs: impl IntoIterator<Item = &'a HandOff>) {
    for hand_off in hand_offs {
        args.extend([
            Value::from((hand_off.job + 1).to_string()),
            hand_off.worker.as_str().into(),
            hand_off.token.as_str().into(),
            millis(hand_off.lease).into(),
            millis(hand_off.ack_timeout).into(),
        ]);
    }
}

/// The 9 script arguments that describe a new job, in the order the submission scripts read
/// them (`write_new_job` in lua/lib.lua); returns the job's size (see `job_size`), the last.
fn push_job_args(args: &mut Vec<Value>, id: &JobId, job: &NewJob) -> Result<usize> {
    let backoff = job.backoff;
    let spec = Spec {
        kind: job.kind.as_str().to_owned(),
        labels: job.labels.clone(),
        priority: job.priority,
        max_attempts: job.max_attempts,
        backoff_initial: backoff.initial.as_millis() as u64,
        backoff_multiplier: backoff.multiplier,
        backoff_max: backoff.max.as_millis() as u64,
        backoff_jitter: backoff.jitter,
        trace: job.trace_context.clone(),
    }
    .encode()?;
    let size = job_size(job.payload.len(), spec.len());
    // "" for at once, "+<ms>" for a delay from Redis's now, "<ms>" for a time (start_time).
    let start = match job.start {
        None => String::new(),
        Some(Start::After(delay)) => format!("+{}", delay.as_millis()),
        Some(Start::At(at)) => at.0.to_string(),
    };
    args.extend([
        Value::from(id.to_string()),
        job.payload.clone().into(),
        Bytes::from(spec).into(),
        job.kind.as_str().into(),
        millis(job.retention).into(),
        job.lease.map(millis).unwrap_or_default().into(),
        start.into(),
        job.priority.to_string().into(),
        size.to_string().into(),
    ]);
    Ok(size)
}
