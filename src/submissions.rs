//! Submissions: new jobs written to Redis, one script call per queue for the jobs of one
//! call, submissions of one queue that arrive together sharing a call (group commit; those
//! with idempotency keys apart from those without), and jobs ready at once handed straight to
//! claims waiting on this process (`claims::Handing`).

use std::{
    collections::{BTreeMap, HashMap, hash_map::Entry},
    sync::Arc,
    time::Duration,
};

use futures::{StreamExt, stream};
use tokio_util::task::TaskTracker;

use crate::{
    claims::{Claims, Handing},
    domain::{Job, JobId, JobIdGenerator, NewJob, QueueName},
    group_commit::{Batcher, Pending},
    store::{Connection, JobStore, KeyedSubmission, StoreError},
};

/// How many queues' writes of one SubmitJobs are in flight at once.
const QUEUES_AT_ONCE: usize = 16;

/// A new job with its id.
type NewJobWithId = (JobId, NewJob);

/// A batch's jobs per queue, each with its place in the batch.
type ByQueue = BTreeMap<QueueName, Vec<(usize, NewJobWithId)>>;

/// Each job's answer, in the order of the jobs of a script call.
type Answered = Vec<Result<Submitted, StoreError>>;

/// Jobs' answers, each with its place in the batch.
type Answers = Vec<(usize, Result<Submitted, StoreError>)>;

/// A submission's outcome.
#[derive(Debug)]
pub enum Submitted {
    /// The job was created, as given.
    Created(Box<Job>),
    /// An earlier submission with the same idempotency key made this job; nothing was created.
    Existing(JobId),
}

impl Submitted {
    /// The id of the job submitted, or of the one its key named.
    pub fn id(&self) -> JobId {
        match self {
            Self::Created(job) => job.id.clone(),
            Self::Existing(id) => id.clone(),
        }
    }
}

/// The submissions of this process. Cheap to clone.
#[derive(Clone)]
pub struct Submissions(Arc<Inner>);

struct Inner {
    store: JobStore,
    claims: Claims,
    ids: JobIdGenerator,
    /// Submissions without an idempotency key waiting to share a script call, per queue.
    batcher: Batcher<NewJobWithId, Submitted>,
    /// Submissions with an idempotency key waiting to share a script call, per queue.
    keyed: Batcher<NewJobWithId, Submitted>,
    /// Where a submission that hands jobs off makes its call, so that its caller going away
    /// cannot leave the claims unanswered.
    tasks: TaskTracker,
}

impl Submissions {
    pub fn new(
        store: JobStore,
        claims: Claims,
        tasks: TaskTracker,
        command_timeout: Duration,
    ) -> Self {
        Self(Arc::new(Inner {
            store,
            claims,
            ids: JobIdGenerator::default(),
            batcher: Batcher::new(tasks.clone(), command_timeout),
            keyed: Batcher::new(tasks.clone(), command_timeout),
            tasks,
        }))
    }

    /// A new job id in `queue`: a caller that knows the ids before the jobs are written can
    /// watch them from their first event.
    pub fn new_job_id(&self, queue: &QueueName) -> JobId {
        self.0.ids.generate(queue)
    }

    /// Creates a job, QUEUED or SCHEDULED. With an idempotency key that names a live job,
    /// creates nothing and returns that job's id.
    pub async fn submit(&self, new: NewJob) -> Result<Submitted, StoreError> {
        let id = self.new_job_id(&new.queue);
        // Submissions to one queue that arrive together share a script call.
        let keyed = new.idempotency.is_some();
        let batcher = if keyed {
            &self.0.keyed
        } else {
            &self.0.batcher
        };
        let submissions = self.clone();
        let queue = new.queue.clone();
        batcher
            .run(&queue.clone(), (id, new), move |batch| {
                let (submissions, queue) = (submissions.clone(), queue.clone());
                async move { submissions.submit_batch(&queue, batch, keyed).await }
            })
            .await
    }

    /// Creates several jobs with the ids given (see `new_job_id`), answering in their order.
    /// The jobs of one queue with idempotency keys are written by one script call, then those
    /// without, by another, atomically. Jobs of different queues live in different slots, so a
    /// failure (Redis unavailable) can leave some queues' jobs written and others not: callers
    /// retry with idempotency keys where that matters. A key that a different request made
    /// refuses the batch (`IdempotencyConflict`, the first such job's): its queue's keyed jobs
    /// before it are written, those after it not, other queues' keyed jobs are, and no job
    /// without a key is. A key named twice in the batch is submitted once, the second job
    /// answered with the first's id; with a different request the second time, the batch is
    /// refused before anything is written.
    pub async fn submit_many(&self, jobs: Vec<NewJobWithId>) -> Result<Vec<Submitted>, StoreError> {
        let repeats = keyed_once(&jobs)?;
        let mut results: Vec<Option<Submitted>> = (0..jobs.len()).map(|_| None).collect();
        // Per queue: each job with its place in the answer, with keys and without.
        let (mut keyed, mut unkeyed) = (ByQueue::new(), ByQueue::new());
        for (index, (id, job)) in jobs.into_iter().enumerate() {
            let by_queue = match (&job.idempotency, repeats.contains_key(&index)) {
                (Some(_), true) => continue,
                (Some(_), false) => &mut keyed,
                (None, _) => &mut unkeyed,
            };
            let queue = job.queue.clone();
            by_queue.entry(queue).or_default().push((index, (id, job)));
        }
        let mut answers = self
            .per_queue(keyed, |queue, jobs| async move {
                let groups = vec![0; jobs.len()];
                self.write_keyed(&queue, jobs, &groups).await
            })
            .await?;
        // The first refusal in the batch's order: a conflict, since its request's later jobs
        // are the only ones skipped.
        answers.sort_unstable_by_key(|(index, _)| *index);
        for (index, answer) in answers {
            results[index] = Some(answer?);
        }
        for (index, first) in repeats {
            let first = results[first].as_ref().map(Submitted::id);
            results[index] = Some(Submitted::Existing(first.ok_or(StoreError::Interrupted)?));
        }
        let created = self
            .per_queue(unkeyed, |queue, jobs| async move {
                self.write(&queue, jobs).await
            })
            .await?;
        for (index, answer) in created {
            results[index] = Some(answer?);
        }
        Ok(results.into_iter().flatten().collect())
    }

    /// Runs `write` for each queue's jobs, a few queues at a time: a batch spread over many
    /// queues costs a round trip per `QUEUES_AT_ONCE` queues rather than one per queue.
    /// Returns each job's answer with its place.
    async fn per_queue<'a, F, Fut>(
        &'a self,
        by_queue: ByQueue,
        write: F,
    ) -> Result<Answers, StoreError>
    where
        F: Fn(QueueName, Vec<NewJobWithId>) -> Fut,
        Fut: Future<Output = Result<Answered, StoreError>> + 'a,
    {
        let writes = by_queue.into_iter().map(|(queue, group)| {
            let (indexes, jobs): (Vec<usize>, Vec<NewJobWithId>) = group.into_iter().unzip();
            let written = write(queue, jobs);
            async move {
                Ok::<_, StoreError>(indexes.into_iter().zip(written.await?).collect::<Answers>())
            }
        });
        let mut writes = stream::iter(writes).buffer_unordered(QUEUES_AT_ONCE);
        let mut answers = Vec::new();
        while let Some(written) = writes.next().await {
            answers.extend(written?);
        }
        Ok(answers)
    }

    /// Writes a batch of submissions to `queue`, with keys or without, with one script call,
    /// and answers each.
    async fn submit_batch(
        &self,
        queue: &QueueName,
        batch: Vec<Pending<NewJobWithId, Submitted>>,
        keyed: bool,
    ) {
        let (jobs, replies): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .map(|pending| (pending.op, pending.reply))
            .unzip();
        let answers = if keyed {
            // Each submission is a request of its own.
            let groups: Vec<usize> = (0..jobs.len()).collect();
            self.write_keyed(queue, jobs, &groups).await
        } else {
            self.write(queue, jobs).await
        };
        match answers {
            Ok(answers) => {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    reply.answer(answer);
                }
            }
            Err(error) => {
                for reply in replies {
                    reply.answer(Err(error.clone()));
                }
            }
        }
    }

    /// Creates jobs of one queue, none with an idempotency key, with one script call; jobs
    /// ready now go to claims parked on this process if the queue has no ready job. Answers
    /// each job.
    async fn write(
        &self,
        queue: &QueueName,
        jobs: Vec<NewJobWithId>,
    ) -> Result<Answered, StoreError> {
        let prepared = self.0.store.prepare(queue, &jobs)?;
        let handing = self.0.claims.hand_off(queue, &jobs, prepared.sizes());
        self.call(handing, move |store, connection, handing| async move {
            let outcome = store
                .submit_many(&connection, prepared, handing.hand_offs())
                .await;
            let created: Vec<Job> = match &outcome {
                Ok(batch) => jobs
                    .into_iter()
                    .map(|(id, job)| job.into_job(id, batch.created))
                    .collect(),
                Err(_) => Vec::new(),
            };
            let handed: Vec<Option<&Job>> = match &outcome {
                Ok(batch) if batch.handed => created.iter().map(Some).collect(),
                _ => Vec::new(),
            };
            handing.settle(outcome.as_ref().map(|_| handed.as_slice()), connection);
            let created = created
                .into_iter()
                .map(|job| Ok(Submitted::Created(Box::new(job))));
            outcome.map(|_| created.collect())
        })
        .await
    }

    /// Creates jobs of one queue with idempotency keys with one script call, each unless its
    /// key names a live job (see `JobStore::submit_keyed`; `groups`: each job's request); jobs
    /// written and ready now go to claims parked on this process if the queue has no ready
    /// job. Answers each job: created, the job its key names, or the key's conflict.
    async fn write_keyed(
        &self,
        queue: &QueueName,
        jobs: Vec<NewJobWithId>,
        groups: &[usize],
    ) -> Result<Answered, StoreError> {
        let prepared = self.0.store.prepare_keyed(queue, &jobs, groups)?;
        let handing = self.0.claims.hand_off(queue, &jobs, prepared.sizes());
        self.call(handing, move |store, connection, handing| async move {
            let outcome = store
                .submit_keyed(&connection, prepared, handing.hand_offs())
                .await;
            let outcomes = match &outcome {
                Ok(outcomes) => outcomes.as_slice(),
                Err(_) => &[],
            };
            let answers: Vec<_> = jobs.into_iter().zip(outcomes).map(keyed_answer).collect();
            let handed: Vec<Option<&Job>> = answers
                .iter()
                .zip(outcomes)
                .map(|(answer, outcome)| match (answer, outcome) {
                    (Ok(Submitted::Created(job)), KeyedSubmission::Created(batch)) => {
                        batch.handed.then_some(&**job)
                    }
                    _ => None,
                })
                .collect();
            handing.settle(outcome.as_ref().map(|_| handed.as_slice()), connection);
            outcome.map(|_| answers)
        })
        .await
    }

    /// Makes a submission's call, `write`, with a connection and the claims `handing` takes:
    /// on a task of its own when it hands jobs off, so that a submitter going away during it
    /// cannot leave the claims it took unanswered.
    async fn call<T, W, F>(&self, handing: Handing, write: W) -> Result<T, StoreError>
    where
        T: Send + 'static,
        W: FnOnce(JobStore, Connection, Handing) -> F,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let detached = !handing.is_empty();
        let connection = self.0.store.connection();
        let call = write(self.0.store.clone(), connection, handing);
        if !detached {
            return call.await;
        }
        self.0
            .tasks
            .spawn(call)
            .await
            .map_err(|_| StoreError::Interrupted)?
    }
}

/// What a keyed submission's script did with a job, as its caller hears it.
fn keyed_answer(
    ((id, job), outcome): (NewJobWithId, &KeyedSubmission),
) -> Result<Submitted, StoreError> {
    match outcome {
        KeyedSubmission::Created(batch) => Ok(Submitted::Created(Box::new(
            job.into_job(id, batch.created),
        ))),
        KeyedSubmission::Existing(id) => Ok(Submitted::Existing(id.clone())),
        KeyedSubmission::Conflict => Err(StoreError::IdempotencyConflict {
            key: job
                .idempotency
                .map(|idempotency| idempotency.key)
                .unwrap_or_default(),
        }),
        // Only after a conflict of the same request, which its caller hears of instead.
        KeyedSubmission::Skipped => Err(StoreError::Interrupted),
    }
}

/// The jobs of a batch whose idempotency key an earlier job of the batch names: each with the
/// place of that first job. A key named with two different requests refuses the batch.
fn keyed_once(jobs: &[NewJobWithId]) -> Result<HashMap<usize, usize>, StoreError> {
    let mut first: HashMap<(&QueueName, &str), (usize, String)> = HashMap::new();
    let mut repeats = HashMap::new();
    for (index, (_, job)) in jobs.iter().enumerate() {
        let Some(idempotency) = &job.idempotency else {
            continue;
        };
        match first.entry((&job.queue, idempotency.key.as_str())) {
            Entry::Vacant(entry) => {
                entry.insert((index, job.fingerprint()));
            }
            Entry::Occupied(entry) => {
                let (place, fingerprint) = entry.get();
                if *fingerprint != job.fingerprint() {
                    let key = idempotency.key.clone();
                    return Err(StoreError::IdempotencyConflict { key });
                }
                repeats.insert(index, *place);
            }
        }
    }
    Ok(repeats)
}
