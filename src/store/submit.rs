//! Writing new jobs: submit_many.lua for jobs without an idempotency key (alone or in
//! batches), submit.lua for one with a key; either may hand jobs to claims waiting on the
//! calling jobd, which the caller chooses.

use std::time::Duration;

use bytes::Bytes;
use fred::types::Value;

use super::{
    Connection, DueMark, JobStore, Result, StoreError, claim::job_size, layout::Spec, millis,
    status,
};
use crate::domain::{
    Idempotency, JobId, LeaseToken, NewJob, QueueName, Start, UnixMillis, WorkerId,
};

/// Jobs of one queue encoded for a submission script, and what each weighs in a claim's reply
/// (see `job_size`), which a hand-off must know before the call.
pub struct PreparedJobs {
    queue: QueueName,
    ids: Vec<JobId>,
    /// 9 script arguments per job, as submit.lua and submit_many.lua read them.
    args: Vec<Value>,
    sizes: Vec<usize>,
}

impl PreparedJobs {
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

/// What a submission with an idempotency key did.
#[derive(Debug, Clone)]
pub enum KeyedSubmission {
    Created(SubmittedBatch),
    /// A live key named this earlier job: nothing was written.
    Existing(JobId),
}

impl JobStore {
    /// Encodes jobs of `queue` for a submission script.
    pub fn prepare(&self, queue: &QueueName, jobs: &[(JobId, NewJob)]) -> Result<PreparedJobs> {
        let mut prepared = PreparedJobs {
            queue: queue.clone(),
            ids: Vec::with_capacity(jobs.len()),
            args: Vec::with_capacity(jobs.len() * 9),
            sizes: Vec::with_capacity(jobs.len()),
        };
        for (id, job) in jobs {
            prepared.ids.push(id.clone());
            let size = push_job_args(&mut prepared.args, id, job)?;
            prepared.sizes.push(size);
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
        let mut args: Vec<Value> = vec![
            keys.queue_channel().into(),
            queue.as_str().into(),
            keys.job_channel().into(),
        ];
        args.extend(jobs.args);
        push_hand_offs(&mut args, hand_offs);
        let mut reply: Vec<Value> = self
            .call_on(
                &connection.0,
                &self.scripts().submit_many,
                script_keys,
                args,
            )
            .await?;
        // A queue created, or a job delayed, is in the due index before the call answers.
        self.publish_due(queue, DueMark::take(&mut reply)).await?;
        // {jobs made ready, 1 if the hand-offs were made, created}.
        submitted(reply.get(2), reply.get(1))
    }

    /// Writes one job with an idempotency key on `connection`, unless a live key names another
    /// job, making `hand_off` if the queue has no ready job. The key keeps the request's
    /// `fingerprint`: a key used again by a request with another one is refused
    /// (`IdempotencyConflict`).
    pub async fn submit_keyed(
        &self,
        connection: &Connection,
        job: PreparedJobs,
        (idempotency, fingerprint): (&Idempotency, String),
        hand_off: Option<&HandOff>,
    ) -> Result<KeyedSubmission> {
        let queue = &job.queue;
        let keys = self.keys();
        let id = job
            .ids
            .first()
            .ok_or_else(|| StoreError::corrupt("a keyed submission without its job"))?;
        let script_keys = vec![
            keys.job(id),
            keys.ready(queue),
            keys.scheduled(queue),
            keys.idempotency(queue, &idempotency.key),
            keys.running(queue),
            keys.promise(queue),
        ];
        let mut args: Vec<Value> = vec![
            keys.queue_channel().into(),
            queue.as_str().into(),
            millis(idempotency.ttl).into(),
            fingerprint.into(),
        ];
        args.extend(job.args);
        args.push(keys.job_channel().into());
        push_hand_offs(&mut args, hand_off);
        let mut reply: Vec<Value> = self
            .call_on(&connection.0, &self.scripts().submit, script_keys, args)
            .await?;
        // As for submit_many; "again" repeats the first run's mark, in case its caller never
        // wrote it.
        self.publish_due(queue, DueMark::take(&mut reply)).await?;
        match status(&reply)?.as_str() {
            // "again": an earlier try of this very call was written; same id, same job.
            // {"created" or "again", state, 1 if handed off, created}
            "created" | "again" => Ok(KeyedSubmission::Created(submitted(
                reply.get(3),
                reply.get(2),
            )?)),
            "exists" => {
                let existing = reply.get(1).and_then(Value::as_string).unwrap_or_default();
                let id = JobId::parse("id", &existing)
                    .map_err(|_| StoreError::corrupt("idempotency key names no job id"))?;
                Ok(KeyedSubmission::Existing(id))
            }
            "conflict" => Err(StoreError::IdempotencyConflict {
                key: idempotency.key.clone(),
            }),
            other => Err(StoreError::corrupt(format!("submit replied {other:?}"))),
        }
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

/// The 9 script arguments that describe a new job, in the order submit.lua and
/// submit_many.lua read them; returns the job's size (see `job_size`), the last of them.
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
