//! Submissions: new jobs written to Redis, one script call per queue for the jobs of one
//! call, submissions of one queue that arrive together sharing a call (group commit), and
//! jobs ready at once handed straight to claims waiting on this process (`claims::Handing`).

use std::{
    collections::{BTreeMap, HashMap, hash_map::Entry},
    sync::Arc,
    time::Duration,
};

use futures::{StreamExt, stream};
use tokio_util::task::TaskTracker;

use crate::{
    claims::Claims,
    domain::{Idempotency, Job, JobId, JobIdGenerator, NewJob, QueueName},
    group_commit::{Batcher, Pending},
    store::{JobStore, KeyedSubmission, StoreError},
};

/// How many queues' writes of one SubmitJobs are in flight at once.
const QUEUES_AT_ONCE: usize = 16;

/// A new job with its id.
type NewJobWithId = (JobId, NewJob);

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
    batcher: Batcher<(JobId, NewJob), Submitted>,
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
        if let Some(idempotency) = new.idempotency.clone() {
            return self.submit_keyed(id, new, &idempotency).await;
        }
        // Submissions to one queue that arrive together share a script call.
        let submissions = self.clone();
        let queue = new.queue.clone();
        self.0
            .batcher
            .run(&queue.clone(), (id, new), move |batch| {
                let (submissions, queue) = (submissions.clone(), queue.clone());
                async move { submissions.submit_batch(&queue, batch).await }
            })
            .await
    }

    /// Creates several jobs with the ids given (see `new_job_id`), answering in their order.
    /// The jobs of one queue without an idempotency key are written by one script call,
    /// atomically; jobs with a key go one by one, first. Jobs of different queues live in
    /// different slots, so a failure (Redis unavailable) can leave some queues' jobs written
    /// and others not: callers retry with idempotency keys where that matters. A key named
    /// twice in the batch is submitted once, the second job answered with the first's id; with
    /// a different request the second time, the batch is refused before anything is written.
    pub async fn submit_many(
        &self,
        jobs: Vec<(JobId, NewJob)>,
    ) -> Result<Vec<Submitted>, StoreError> {
        let keyed = keyed_once(&jobs)?;
        let mut results: Vec<Option<Submitted>> = (0..jobs.len()).map(|_| None).collect();
        // Per queue: each job with its place in the answer.
        let mut by_queue: BTreeMap<QueueName, Vec<(usize, NewJobWithId)>> = BTreeMap::new();
        for (index, (id, job)) in jobs.into_iter().enumerate() {
            match (job.idempotency.clone(), keyed.get(&index)) {
                (Some(_), Some(&first)) => {
                    let first = results[first].as_ref().map(Submitted::id);
                    let first = first.ok_or(StoreError::Interrupted)?;
                    results[index] = Some(Submitted::Existing(first));
                }
                (Some(idempotency), None) => {
                    results[index] = Some(self.submit_keyed(id, job, &idempotency).await?);
                }
                (None, _) => by_queue
                    .entry(job.queue.clone())
                    .or_default()
                    .push((index, (id, job))),
            }
        }
        // The queues' calls overlap, a few at a time: a batch spread over many queues costs
        // a round trip per `QUEUES_AT_ONCE` queues rather than one per queue.
        let writes = by_queue.into_iter().map(|(queue, group)| async move {
            let (indexes, jobs): (Vec<usize>, Vec<(JobId, NewJob)>) = group.into_iter().unzip();
            let created = self.write(&queue, jobs).await?;
            Ok::<_, StoreError>(indexes.into_iter().zip(created).collect::<Vec<_>>())
        });
        let mut writes = stream::iter(writes).buffer_unordered(QUEUES_AT_ONCE);
        while let Some(written) = writes.next().await {
            for (index, job) in written? {
                results[index] = Some(Submitted::Created(Box::new(job)));
            }
        }
        Ok(results.into_iter().flatten().collect())
    }

    /// Writes a batch of submissions to `queue` with one script call, and answers each.
    async fn submit_batch(
        &self,
        queue: &QueueName,
        batch: Vec<Pending<(JobId, NewJob), Submitted>>,
    ) {
        let (jobs, replies): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .map(|pending| (pending.op, pending.reply))
            .unzip();
        match self.write(queue, jobs).await {
            Ok(created) => {
                for (reply, job) in replies.into_iter().zip(created) {
                    reply.answer(Ok(Submitted::Created(Box::new(job))));
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
    /// ready now go to claims parked on this process if the queue has no ready job.
    async fn write(
        &self,
        queue: &QueueName,
        jobs: Vec<(JobId, NewJob)>,
    ) -> Result<Vec<Job>, StoreError> {
        let prepared = self.0.store.prepare(queue, &jobs)?;
        let handing = self.0.claims.hand_off(queue, &jobs, prepared.sizes());
        let detached = !handing.is_empty();
        let store = self.0.store.clone();
        let call = async move {
            let connection = store.connection();
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
            let handed = match &outcome {
                Ok(batch) => Ok(batch.handed.then_some(created.as_slice())),
                Err(error) => Err(error),
            };
            handing.settle(handed, connection);
            outcome.map(|_| created)
        };
        self.call(detached, call).await
    }

    /// Creates a job with an idempotency key, unless the key names a live job.
    async fn submit_keyed(
        &self,
        id: JobId,
        new: NewJob,
        idempotency: &Idempotency,
    ) -> Result<Submitted, StoreError> {
        let queue = new.queue.clone();
        let jobs = vec![(id, new)];
        let prepared = self.0.store.prepare(&queue, &jobs)?;
        let handing = self.0.claims.hand_off(&queue, &jobs, prepared.sizes());
        let detached = !handing.is_empty();
        let fingerprint = jobs[0].1.fingerprint();
        let (store, idempotency) = (self.0.store.clone(), idempotency.clone());
        let call = async move {
            let connection = store.connection();
            let outcome = store
                .submit_keyed(
                    &connection,
                    prepared,
                    (&idempotency, fingerprint),
                    handing.hand_offs().first(),
                )
                .await;
            let [(id, new)]: [(JobId, NewJob); 1] = jobs.try_into().expect("one job");
            let (submitted, created) = match &outcome {
                Ok(KeyedSubmission::Created(batch)) => {
                    let job = new.into_job(id, batch.created);
                    (Ok(batch.handed), Some(job))
                }
                Ok(KeyedSubmission::Existing(_)) => (Ok(false), None),
                Err(error) => (Err(error), None),
            };
            let handed = submitted.map(|handed| handed.then_some(created.as_slice()));
            handing.settle(handed, connection);
            match outcome? {
                KeyedSubmission::Created(_) => Ok(Submitted::Created(Box::new(
                    created.ok_or(StoreError::Interrupted)?,
                ))),
                KeyedSubmission::Existing(id) => Ok(Submitted::Existing(id)),
            }
        };
        self.call(detached, call).await
    }

    /// Makes a submission's call: on a task of its own when it hands jobs off (`detached`), so
    /// that a submitter going away during it cannot leave the claims it took unanswered.
    async fn call<T: Send + 'static>(
        &self,
        detached: bool,
        call: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
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

/// The jobs of a batch whose idempotency key an earlier job of the batch names: each with the
/// place of that first job. A key named with two different requests refuses the batch.
fn keyed_once(jobs: &[(JobId, NewJob)]) -> Result<HashMap<usize, usize>, StoreError> {
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
