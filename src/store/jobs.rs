//! The submitter's side: submit, read, watch, cancel, count.

use std::collections::BTreeMap;

use bytes::Bytes;
use fred::{
    interfaces::{HashesInterface, SetsInterface, SortedSetsInterface},
    types::{Value, sorted_sets::ZSort},
};

use super::{
    JobStore, Result, StoreError,
    batch::Pending,
    codec::{EventStart, Fields, JOB_FIELDS, Spec, decode_event, event_field, event_head, number},
    handoff::SubmitReply,
    job_size, millis, state_in, status,
};
use crate::domain::{
    Idempotency, Job, JobEvent, JobId, JobState, NewJob, QueueName, Refusal, Start, UnixMillis,
};
use crate::sync::lock;

/// Events read per round trip when replaying a log; most jobs have fewer in all.
const EVENT_PAGE: u64 = 16;

/// A submission's outcome.
#[derive(Debug)]
pub enum Submitted {
    /// The job was created, as given.
    Created(Box<Job>),
    /// An earlier submission with the same idempotency key made this job; nothing was created.
    Existing(JobId),
}

/// A page of a job's event log.
#[derive(Debug)]
pub struct EventPage {
    pub events: Vec<JobEvent>,
    /// Whether the job had reached a terminal state when the page was read.
    pub finished: bool,
}

/// A queue's jobs by state; finished ones only while retained.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct QueueStats {
    pub queued: u64,
    pub scheduled: u64,
    pub running: u64,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
}

impl JobStore {
    /// Creates a job, QUEUED or SCHEDULED, and wakes a worker waiting on its queue. With an
    /// idempotency key that names a live job, creates nothing and returns that job's id.
    pub async fn submit(&self, new: NewJob) -> Result<Submitted> {
        let id = self.new_job_id(&new.queue);
        match new.idempotency.clone() {
            Some(idempotency) => self.submit_idempotent(id, new, idempotency).await,
            // Submissions to one queue that arrive together share a script call.
            None => {
                let store = self.clone();
                let queue = new.queue.clone();
                self.submissions
                    .run(&queue.clone(), (id, new), move |batch| {
                        let (store, queue) = (store.clone(), queue.clone());
                        async move { store.submit_batch(&queue, batch).await }
                    })
                    .await
            }
        }
    }

    /// A new job id in `queue`, for `submit_many`: a caller that knows the ids before the jobs
    /// are written can watch them from their first event.
    pub fn new_job_id(&self, queue: &QueueName) -> JobId {
        self.ids.generate(queue)
    }

    /// Writes a batch of submissions to `queue` with one script call, and answers each.
    async fn submit_batch(
        &self,
        queue: &QueueName,
        batch: Vec<Pending<(JobId, NewJob), Submitted>>,
    ) {
        let mut jobs = Vec::with_capacity(batch.len());
        let mut answers = Vec::with_capacity(batch.len());
        for Pending { op, reply } in batch {
            jobs.push(op);
            answers.push(reply);
        }
        match self.write_jobs(queue, jobs).await {
            Ok(created) => {
                for (reply, job) in answers.into_iter().zip(created) {
                    reply.answer(Ok(Submitted::Created(Box::new(job))));
                }
            }
            Err(error) => {
                for reply in answers {
                    reply.answer(Err(error.clone()));
                }
            }
        }
    }

    async fn submit_idempotent(
        &self,
        id: JobId,
        new: NewJob,
        idempotency: Idempotency,
    ) -> Result<Submitted> {
        self.register(&new.queue).await?;
        let queue = new.queue.clone();
        let keys = vec![
            self.keys.job(&id),
            self.keys.ready(&queue),
            self.keys.scheduled(&queue),
            self.keys.idempotency(&queue, &idempotency.key),
            self.keys.running(&queue),
        ];
        let mut args: Vec<Value> = vec![
            self.keys.queue_channel().into(),
            queue.as_str().into(),
            millis(idempotency.ttl).into(),
        ];
        let size = push_job_args(&mut args, &id, &new)?;
        args.push(self.keys.job_channel().into());
        args.push(Bytes::from(event_head(EventStart::Queued)).into());
        let jobs = vec![(id, new)];
        let handing = self.hand_off(&queue, &jobs, &[size], &mut args);
        let (reply, mut created) = self
            .submit_call(
                |scripts| &scripts.submit,
                keys,
                args,
                handing,
                jobs,
                // {"created" or "again", state, 1 if handed off, created}, or {"exists", id}.
                SubmitReply {
                    handed: |reply| reply.get(2).and_then(Value::as_u64) == Some(1),
                    created: |reply| reply.get(3).and_then(Value::as_u64).map(UnixMillis),
                },
            )
            .await?;
        match status(&reply)?.as_str() {
            // "again": an earlier try of this very call was written; same id, same job.
            "created" | "again" if !created.is_empty() => {
                Ok(Submitted::Created(Box::new(created.remove(0))))
            }
            "exists" => {
                let existing = reply.get(1).and_then(Value::as_string).unwrap_or_default();
                let id = JobId::parse("id", &existing)
                    .map_err(|_| StoreError::corrupt("idempotency key names no job id"))?;
                Ok(Submitted::Existing(id))
            }
            other => Err(StoreError::corrupt(format!("submit replied {other:?}"))),
        }
    }

    /// Creates several jobs with the ids given (see `new_job_id`), answering in their order.
    /// The jobs of one queue without an idempotency key are written by one script call,
    /// atomically; jobs with a key go one by one, as `submit` does. Jobs of different queues
    /// live in different slots, so a failure (Redis unavailable) can leave some queues' jobs
    /// written and others not: callers retry with idempotency keys where that matters.
    pub async fn submit_many(&self, jobs: Vec<(JobId, NewJob)>) -> Result<Vec<Submitted>> {
        let mut results: Vec<Option<Submitted>> = (0..jobs.len()).map(|_| None).collect();
        // Per queue: each job with its place in the answer.
        let mut by_queue: BTreeMap<QueueName, Vec<(usize, JobId, NewJob)>> = BTreeMap::new();
        for (index, (id, job)) in jobs.into_iter().enumerate() {
            match job.idempotency.clone() {
                Some(idempotency) => {
                    results[index] = Some(self.submit_idempotent(id, job, idempotency).await?);
                }
                None => by_queue
                    .entry(job.queue.clone())
                    .or_default()
                    .push((index, id, job)),
            }
        }
        for (queue, group) in by_queue {
            let (indexes, jobs): (Vec<usize>, Vec<(JobId, NewJob)>) = group
                .into_iter()
                .map(|(index, id, job)| (index, (id, job)))
                .unzip();
            let created = self.write_jobs(&queue, jobs).await?;
            for (index, job) in indexes.into_iter().zip(created) {
                results[index] = Some(Submitted::Created(Box::new(job)));
            }
        }
        Ok(results.into_iter().flatten().collect())
    }

    /// Creates jobs of one queue, none with an idempotency key, with one script call. Jobs
    /// ready now go straight to claims parked on this process if the queue has no ready job
    /// (see `store::handoff`); every parked claim taken is answered, whatever happens.
    async fn write_jobs(&self, queue: &QueueName, jobs: Vec<(JobId, NewJob)>) -> Result<Vec<Job>> {
        self.register(queue).await?;
        let mut keys = vec![
            self.keys.ready(queue),
            self.keys.scheduled(queue),
            self.keys.running(queue),
        ];
        let mut args: Vec<Value> = vec![
            self.keys.queue_channel().into(),
            queue.as_str().into(),
            Bytes::from(event_head(EventStart::Queued)).into(),
            self.keys.job_channel().into(),
        ];
        let mut sizes = Vec::with_capacity(jobs.len());
        for (id, job) in &jobs {
            keys.push(self.keys.job(id));
            sizes.push(push_job_args(&mut args, id, job)?);
        }
        let handing = self.hand_off(queue, &jobs, &sizes, &mut args);
        let count = jobs.len();
        let (_, created) = self
            .submit_call(
                |scripts| &scripts.submit_many,
                keys,
                args,
                handing,
                jobs,
                // {jobs made ready, 1 if the hand-offs were made, created}.
                SubmitReply {
                    handed: |reply| reply.get(1).and_then(Value::as_u64) == Some(1),
                    created: |reply| reply.get(2).and_then(Value::as_u64).map(UnixMillis),
                },
            )
            .await?;
        if created.len() != count {
            return Err(StoreError::corrupt(
                "submit_many reply without a creation time",
            ));
        }
        Ok(created)
    }

    pub async fn get(&self, id: &JobId) -> Result<crate::domain::Job> {
        self.read_fields(id, "get_job")
            .await?
            .into_job(id)?
            .ok_or(StoreError::NotFound)
    }

    /// A job's `JOB_FIELDS`, read as `operation`.
    pub(super) async fn read_fields(&self, id: &JobId, operation: &'static str) -> Result<Fields> {
        let values: Vec<Option<Bytes>> = self
            .timed(
                operation,
                self.pool
                    .next()
                    .hmget(self.keys.job(id), JOB_FIELDS.to_vec()),
            )
            .await?;
        Ok(Fields::from_values(&JOB_FIELDS, values))
    }

    /// Reads the events after `after`, oldest first: all of them, in as many round trips as
    /// it takes. `NotFound` when the job does not exist (or its retention passed);
    /// `PastLastEvent` when `after` is past the job's last sequence, since nothing after it
    /// will ever be recorded and a caller waiting for it would wait forever.
    pub async fn events_after(&self, id: &JobId, after: u64) -> Result<EventPage> {
        let key = self.keys.job(id);
        // Sequences are ranges from `after` with `after` itself skipped, and the page's end
        // saturates: `after` comes from the caller and may be any u64, up to u64::MAX.
        let page_end = after.saturating_add(EVENT_PAGE);
        let mut fields = vec!["state".to_owned(), "seq".to_owned(), "result".to_owned()];
        fields.extend((after..=page_end).skip(1).map(event_field));
        let mut values: Vec<Option<Bytes>> = self
            .timed("read_events", self.pool.next().hmget(&key, fields))
            .await?;
        let mut head = values.drain(..3);
        let (state, seq, result) = (
            head.next().flatten(),
            head.next().flatten(),
            head.next().flatten(),
        );
        drop(head);
        let Some(last_sequence) = number::<u64>(seq.as_deref())? else {
            return Err(StoreError::NotFound);
        };
        if after > last_sequence {
            return Err(StoreError::PastLastEvent {
                after,
                last: last_sequence,
            });
        }
        let finished = state
            .as_deref()
            .and_then(|state| std::str::from_utf8(state).ok())
            .and_then(JobState::from_name)
            .is_some_and(JobState::is_terminal);
        if last_sequence > page_end {
            let rest: Vec<Option<Bytes>> = self
                .timed(
                    "read_events",
                    self.pool.next().hmget(
                        &key,
                        (page_end..=last_sequence)
                            .skip(1)
                            .map(event_field)
                            .collect::<Vec<_>>(),
                    ),
                )
                .await?;
            values.extend(rest);
        }
        let mut events = Vec::new();
        for (sequence, raw) in (after..=last_sequence).skip(1).zip(values) {
            let raw = raw.ok_or_else(|| {
                StoreError::corrupt(format!("event {sequence} of {id} is missing"))
            })?;
            events.push(decode_event(id, sequence, &raw, &result)?);
        }
        Ok(EventPage { events, finished })
    }

    /// Cancels a queued, scheduled or running job and returns it, with whether this call
    /// cancelled it. A cancelled job is returned unchanged.
    pub async fn cancel(&self, id: &JobId, reason: &str) -> Result<(Job, bool)> {
        let queue = id.queue();
        let reply: Vec<Value> = self
            .call(
                &self.scripts.cancel,
                vec![
                    self.keys.job(id),
                    self.keys.ready(queue),
                    self.keys.running(queue),
                    self.keys.scheduled(queue),
                    self.keys.retained(queue, JobState::Cancelled),
                ],
                vec![
                    id.to_string().into(),
                    reason.into(),
                    self.keys.job_channel().into(),
                ],
            )
            .await?;
        match status(&reply)?.as_str() {
            outcome @ ("ok" | "unchanged") => Ok((self.get(id).await?, outcome == "ok")),
            "not_found" => Err(StoreError::NotFound),
            "finished" => Err(StoreError::Refused(Refusal::Finished(state_in(&reply)?))),
            other => Err(StoreError::corrupt(format!("cancel replied {other:?}"))),
        }
    }

    /// Counts a queue's jobs by state, in one round trip; finished ones while their retention
    /// lasts by Redis's clock.
    pub async fn stats(&self, queue: &QueueName) -> Result<QueueStats> {
        let [completed, failed, cancelled] = self.retained_keys(queue);
        let keys = vec![
            self.keys.ready(queue),
            self.keys.scheduled(queue),
            self.keys.running(queue),
            completed,
            failed,
            cancelled,
        ];
        let counts: Vec<u64> = self.call(&self.scripts.stats, keys, Vec::new()).await?;
        let [queued, scheduled, running, completed, failed, cancelled]: [u64; 6] = counts
            .try_into()
            .map_err(|_| StoreError::corrupt("stats reply shape"))?;
        Ok(QueueStats {
            queued,
            scheduled,
            running,
            completed,
            failed,
            cancelled,
        })
    }

    /// Adds a queue to the registry the sweepers read, once per process and queue.
    async fn register(&self, queue: &QueueName) -> Result<()> {
        if lock(&self.registered).contains(queue) {
            return Ok(());
        }
        let _: i64 = self
            .timed(
                "register_queue",
                self.pool.next().sadd(self.keys.queues(), queue.as_str()),
            )
            .await?;
        lock(&self.registered).insert(queue.clone());
        Ok(())
    }

    /// The queues this process has submitted to: known without asking Redis.
    pub fn local_queues(&self) -> Vec<QueueName> {
        lock(&self.registered).iter().cloned().collect()
    }

    /// Every queue known to the registry or to this process.
    pub async fn queues(&self) -> Result<Vec<QueueName>> {
        let names: Vec<String> = self
            .timed("read_queues", self.pool.next().smembers(self.keys.queues()))
            .await?;
        let mut queues: Vec<QueueName> = names
            .iter()
            .filter_map(|name| QueueName::parse("queue", name).ok())
            .collect();
        let local = lock(&self.registered).clone();
        let missing: Vec<&QueueName> = local.iter().filter(|q| !queues.contains(q)).collect();
        if !missing.is_empty() {
            // The registry lost them (a flushed or replaced Redis): put them back.
            let names: Vec<&str> = missing.iter().map(|q| q.as_str()).collect();
            let _: i64 = self
                .timed(
                    "register_queue",
                    self.pool.next().sadd(self.keys.queues(), names),
                )
                .await?;
            queues.extend(missing.into_iter().cloned());
        }
        Ok(queues)
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

/// The order ListJobs walks a queue's indexes in.
const LIST_ORDER: [JobState; 6] = [
    JobState::Queued,
    JobState::Scheduled,
    JobState::Running,
    JobState::Completed,
    JobState::Failed,
    JobState::Cancelled,
];

/// Where a listing continues: an index (by `LIST_ORDER` position) and, in it, the last entry
/// listed (its score and job id), after which the next page starts. Pages follow each index's
/// order from where the last one ended, so a job that stays in its state is listed once however
/// the index changes between pages (an offset would skip a job for every one that left the
/// index before it, and repeat one for every one that joined).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ListCursor {
    pub index: usize,
    pub after: Option<(f64, String)>,
}

impl ListCursor {
    /// Cursors travel as opaque page tokens: `<index>` or `<index>.<score>.<job id>`.
    pub fn encode(self) -> String {
        match self.after {
            None => self.index.to_string(),
            Some((score, id)) => format!("{}.{score}.{id}", self.index),
        }
    }

    pub fn decode(token: &str) -> Option<Self> {
        let mut parts = token.splitn(3, '.');
        let index = parts.next()?.parse().ok()?;
        let after = match (parts.next(), parts.next()) {
            (None, _) => None,
            (Some(score), Some(id)) if !id.is_empty() => {
                let score: f64 = score.parse().ok()?;
                Some((score.is_finite().then_some(score)?, id.to_owned()))
            }
            _ => return None,
        };
        (index < LIST_ORDER.len()).then_some(Self { index, after })
    }
}

/// What ListJobs leaves out of the jobs it lists.
const NOT_LISTED: [&str; 2] = ["payload", "result"];

impl JobStore {
    /// A page of a queue's jobs, in `state` or in every state, from `cursor`; and where the
    /// next page starts, given only when a job follows the page.
    ///
    /// The page is read one job ahead, through the indexes still to come when no state is
    /// given: a page that happens to end with the queue's last job then says it is the last,
    /// rather than sending the caller for an empty one. The job ahead is read like the others,
    /// so one whose retention passed (an index entry the sweeper has not trimmed yet) does not
    /// count.
    pub async fn list(
        &self,
        queue: &QueueName,
        state: Option<JobState>,
        cursor: ListCursor,
        page_size: usize,
    ) -> Result<(Vec<crate::domain::Job>, Option<ListCursor>)> {
        let fields: Vec<&str> = JOB_FIELDS
            .into_iter()
            .filter(|field| !NOT_LISTED.contains(field))
            .collect();
        let wanted = page_size.saturating_add(1);
        // Each job listed, with the cursor just after it: the last on the page is where the
        // next page starts.
        let mut listed: Vec<(crate::domain::Job, ListCursor)> = Vec::new();
        let mut cursor = cursor;
        while cursor.index < LIST_ORDER.len() && listed.len() < wanted {
            let index_state = LIST_ORDER[cursor.index];
            if state.is_none_or(|wanted| wanted == index_state) {
                let key = match index_state {
                    JobState::Queued => self.keys.ready(queue),
                    JobState::Scheduled => self.keys.scheduled(queue),
                    JobState::Running => self.keys.running(queue),
                    outcome => self.keys.retained(queue, outcome),
                };
                loop {
                    let missing = wanted - listed.len();
                    let entries = self
                        .entries_after(&key, cursor.after.as_ref(), missing)
                        .await?;
                    let exhausted = entries.len() < missing;
                    let parsed: Vec<Option<JobId>> = entries
                        .iter()
                        .map(|(member, _)| JobId::parse("id", member).ok())
                        .collect();
                    let ids: Vec<JobId> = parsed.iter().flatten().cloned().collect();
                    let mut read = self.list_read(&ids, &fields).await?.into_iter();
                    for ((member, score), id) in entries.into_iter().zip(parsed) {
                        // The cursor passes every entry, listed or not, so that the next read
                        // starts after it.
                        cursor.after = Some((score, member));
                        if let Some(job) = id.and_then(|_| read.next().flatten()) {
                            listed.push((job, cursor.clone()));
                        }
                    }
                    if exhausted || listed.len() >= wanted {
                        break;
                    }
                    // Some entries' jobs had expired: more of this index fills the page.
                }
            }
            cursor = ListCursor {
                index: cursor.index + 1,
                after: None,
            };
        }
        let next = if listed.len() > page_size {
            listed.truncate(page_size);
            listed.last().map(|(_, after)| after.clone())
        } else {
            None
        };
        Ok((listed.into_iter().map(|(job, _)| job).collect(), next))
    }

    /// Up to `wanted` entries of the sorted set `key` that come after `after` in its order
    /// (by score, then by member): job ids with their scores.
    async fn entries_after(
        &self,
        key: &str,
        after: Option<&(f64, String)>,
        wanted: usize,
    ) -> Result<Vec<(String, f64)>> {
        let from = after.map_or(f64::NEG_INFINITY, |(score, _)| *score);
        let mut entries = Vec::with_capacity(wanted);
        let mut offset = 0;
        loop {
            let page: Vec<(String, f64)> = self
                .timed(
                    "list_jobs",
                    self.pool.next().zrange(
                        key,
                        from,
                        f64::INFINITY,
                        Some(ZSort::ByScore),
                        false,
                        Some((offset as i64, wanted as i64)),
                        true,
                    ),
                )
                .await?;
            let read = page.len();
            offset += read;
            // Entries of the cursor's own score up to its id were listed already.
            entries.extend(page.into_iter().filter(|(id, score)| {
                after.is_none_or(|(after_score, after_id)| score > after_score || id > after_id)
            }));
            if entries.len() >= wanted || read < wanted {
                entries.truncate(wanted);
                return Ok(entries);
            }
        }
    }

    /// The listed jobs of `ids`, in their order, without what ListJobs leaves out; `None` for
    /// those that expired before the sweeper trimmed their index entries.
    async fn list_read(
        &self,
        ids: &[JobId],
        fields: &[&str],
    ) -> Result<Vec<Option<crate::domain::Job>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let pipeline = self.pool.next().pipeline();
        for id in ids {
            let _: () = pipeline
                .hmget(self.keys.job(id), fields.to_vec())
                .await
                .map_err(StoreError::redis("list_jobs"))?;
        }
        let rows: Vec<Vec<Option<Bytes>>> = self.timed("list_jobs", pipeline.all()).await?;
        let mut jobs = Vec::with_capacity(ids.len());
        for (id, values) in ids.iter().zip(rows) {
            jobs.push(Fields::from_values(fields, values).into_job(id)?);
        }
        Ok(jobs)
    }
}
