//! Claiming: jobs from the head of a queue's ready set, for one or more claimants sharing a
//! call (claim.lua), each job read in the same round trip as the script that claims it.

use std::{collections::HashMap, time::Duration};

use bytes::Bytes;
use fred::{interfaces::SortedSetsInterface, types::Value};

use super::{
    Connection, DueMark, JobStore, Result, StoreError,
    layout::{Fields, JOB_FIELDS},
    millis,
};
use crate::domain::{Claimed, Job, JobId, LeaseToken, QueueName, WorkerId};

mod reply;
use reply::{ClaimedEntry, shape, split_reply};

/// How many ready jobs beyond those wanted a claim looks at in one round, so that a few
/// concurrent claimers racing for the head of a queue each still find one.
const CLAIM_CANDIDATES: usize = 4;

/// How many times a claim retries after losing all its candidates to other workers.
const CLAIM_ROUNDS: usize = 8;

/// Most candidates a claim call looks at beyond `CLAIM_CANDIDATES`, whatever its claims want.
const MAX_CANDIDATES: usize = 256;

/// The most bytes of jobs (their `job_size`) one claim's reply carries beyond its first job,
/// which may be larger alone (see `Claimant::alone`): every stock gRPC client refuses a reply
/// over 4 MiB, and a job leased in a reply that cannot be delivered would wait out its
/// acknowledgement deadline. 64 KiB are left for the rest of the reply.
pub const CLAIM_REPLY_BUDGET: usize = 4 * 1024 * 1024 - 64 * 1024;

/// What a job weighs in a reply beyond its payload and spec (labels, trace context): its ids,
/// names, times and last error (at most `MAX_STORED_ERROR`), with room to spare.
const JOB_OVERHEAD: usize = 8 * 1024;

/// The bytes a job takes in a claim's reply, at most: stored with the job as `size`.
pub fn job_size(payload: usize, spec: usize) -> usize {
    payload + spec + JOB_OVERHEAD
}

/// One claim of a call that claims for several.
#[derive(Debug, Clone)]
pub struct Claimant {
    pub worker: WorkerId,
    /// The lease asked for; `None`: the job's own, else the server's default.
    pub lease: Option<Duration>,
    /// How many jobs it takes at most.
    pub want: usize,
    pub ack_timeout: Duration,
    /// The most bytes of jobs (their `job_size`) it takes: a job that does not fit is left
    /// ready, untouched, and its reply is full.
    pub room: usize,
    /// Whether its first job is taken whatever its size, alone.
    pub alone: bool,
}

/// What a claim call got: for each claimant, in the claimants' order, its share; and
/// whether its last read found the queue's ready set empty (`drained`), so that every job
/// made ready later was made ready after that read.
#[derive(Debug, Default)]
pub struct ClaimOutcome {
    pub shares: Vec<Share>,
    pub drained: bool,
}

/// One claimant's share of a claim call: what it took.
#[derive(Debug, Default)]
pub struct Share {
    pub jobs: Vec<Claimed>,
    /// Its room left: `Claimant::room` less its jobs' sizes.
    pub room: usize,
    /// Whether a job was left because it did not fit in its room.
    pub full: bool,
    /// The size of its largest job.
    pub largest: usize,
}

/// A claim call that failed part way. The jobs of its earlier rounds are claimed; its last
/// round may have claimed all the same (Redis ran it and the reply was lost, or runs it
/// late), under the `uncertain` tokens: whoever holds this puts them all back, on the same
/// connection.
#[derive(Debug)]
pub struct ClaimFailure {
    pub error: StoreError,
    pub claimed: Vec<Claimed>,
    pub uncertain: Vec<(JobId, LeaseToken)>,
}

impl JobStore {
    /// Claims jobs of `queue` for `claimants` on `connection`, in claim order, each claimant up
    /// to what it wants and to its room: each one's share, in `claimants`' order. Losing a race
    /// for a candidate to another worker moves on to the next ones; none means nothing was
    /// ready.
    pub async fn claim(
        &self,
        connection: &Connection,
        queue: &QueueName,
        claimants: &[Claimant],
    ) -> std::result::Result<ClaimOutcome, ClaimFailure> {
        let mut progress = Progress::new(claimants);
        let mut drained = false;
        // Rounds that claimed nothing because other jobds took every candidate first.
        let mut lost_rounds = 0;
        while progress.wanted() > 0 && lost_rounds < CLAIM_ROUNDS {
            // A few more candidates than wanted, so that racing claimers each still find some.
            let page = progress.wanted().min(MAX_CANDIDATES) + CLAIM_CANDIDATES;
            let (candidates, read) = match self.candidates(connection, queue, page).await {
                Ok((_, 0)) => {
                    drained = true;
                    break;
                }
                Ok(candidates) => candidates,
                Err(error) => return Err(progress.failed(error, Vec::new())),
            };
            if candidates.is_empty() {
                // Only foreign entries, now removed: look again.
                lost_rounds += 1;
                continue;
            }
            let leases: Vec<(JobId, LeaseToken)> = candidates
                .into_iter()
                .map(|id| (id, LeaseToken::generate()))
                .collect();
            let round = Round::new(claimants, &progress);
            match self.claim_round(connection, queue, round, &leases).await {
                // Every candidate was taken by another jobd between the read and the
                // script: look again.
                Ok(outcome) if outcome.claimed.is_empty() && outcome.full.is_empty() => {
                    lost_rounds += 1;
                    continue;
                }
                Ok(outcome) => progress.record(outcome),
                Err(error) => return Err(progress.failed(error, leases)),
            }
            // A short page: the queue holds nothing beyond it.
            if read < page {
                break;
            }
        }
        Ok(ClaimOutcome {
            shares: progress.shares,
            drained,
        })
    }

    /// The job ids among the first `page` entries of the queue's ready set, and how many
    /// entries were read. Entries that are not jobd's job ids of this queue (jobd never writes
    /// them; left in place they would block the queue) are removed.
    async fn candidates(
        &self,
        connection: &Connection,
        queue: &QueueName,
        page: usize,
    ) -> Result<(Vec<JobId>, usize)> {
        let ready = self.keys().ready(queue);
        let entries: Vec<String> = self
            .timed(
                "read_queue",
                connection
                    .0
                    .zrange(&ready, 0, page as i64 - 1, None, false, None, false),
            )
            .await?;
        let read = entries.len();
        let mut candidates = Vec::with_capacity(read);
        let mut foreign = Vec::new();
        for entry in entries {
            match JobId::parse("candidate", &entry) {
                Ok(id) if id.queue() == queue => candidates.push(id),
                _ => foreign.push(entry),
            }
        }
        if !foreign.is_empty() {
            tracing::warn!(queue = %queue, entries = ?foreign, "removing foreign ready-set entries");
            let _: i64 = self
                .timed("clean_queue", connection.0.zrem(&ready, foreign))
                .await?;
        }
        Ok((candidates, read))
    }

    /// One call of claim.lua over `leases` (the candidates with the tokens they get should
    /// they be claimed), read in the same round trip.
    async fn claim_round(
        &self,
        connection: &Connection,
        queue: &QueueName,
        round: Round<'_>,
        leases: &[(JobId, LeaseToken)],
    ) -> Result<RoundOutcome> {
        let keys = self.keys();
        let mut script_keys = vec![keys.ready(queue), keys.running(queue)];
        let mut args = round.args(self);
        for (id, token) in leases {
            script_keys.push(keys.job(id));
            args.push(id.to_string().into());
            args.push(token.as_str().into());
        }
        // The claimed jobs are read right after the script, in the same round trip: the first
        // candidates, as many as wanted, which are the ones claimed unless another jobd took
        // some of them (those are read after).
        let reads: Vec<String> = script_keys[2..]
            .iter()
            .take(round.wanted())
            .cloned()
            .collect();
        script_keys.push(keys.promise(queue));
        let (reply, jobs) = self
            .timed(
                self.scripts().claim.name(),
                self.scripts().claim.call_then_read(
                    &connection.0,
                    script_keys,
                    args,
                    &reads,
                    &JOB_FIELDS,
                ),
            )
            .await?;
        let mut jobs: HashMap<String, Value> = reads.into_iter().zip(jobs).collect();
        let (full, entries, due) = split_reply(reply, round.claimants.len())?;
        self.publish_or_warn(queue, due).await;
        let mut claimed = Vec::with_capacity(entries.len());
        for entry in entries {
            let entry = ClaimedEntry::decode(entry, round.claimants.len())?;
            let fields = jobs.remove(&keys.job(&entry.id));
            let job = self.read_claimed(&entry.id, fields).await?;
            let claimant = entry.claimant;
            let size = entry.size;
            claimed.push((claimant, entry.into_claimed(job), size));
        }
        Ok(RoundOutcome { full, claimed })
    }

    /// A job just claimed: from the fields read with the claim, or read now when another jobd
    /// had taken it among the candidates read.
    async fn read_claimed(&self, id: &JobId, fields: Option<Value>) -> Result<Job> {
        let fields = match fields {
            Some(values) => {
                let values: Vec<Option<Bytes>> = values.convert().map_err(|_| shape())?;
                Fields::from_values(&JOB_FIELDS, values)
            }
            None => self.read_fields(id, "read_claimed").await?,
        };
        fields
            .into_job(id)?
            .ok_or_else(|| StoreError::corrupt(format!("claimed job {id} is gone")))
    }
}

/// What a claim call has claimed so far, for each claimant, and what each still takes.
struct Progress {
    shares: Vec<Share>,
    wants: Vec<usize>,
    /// Whether each one's next job is taken whatever its size.
    alone: Vec<bool>,
}

impl Progress {
    fn new(claimants: &[Claimant]) -> Self {
        Self {
            shares: claimants
                .iter()
                .map(|claimant| Share {
                    room: claimant.room,
                    ..Share::default()
                })
                .collect(),
            wants: claimants.iter().map(|claimant| claimant.want).collect(),
            alone: claimants.iter().map(|claimant| claimant.alone).collect(),
        }
    }

    fn wanted(&self) -> usize {
        self.wants.iter().sum()
    }

    fn record(&mut self, outcome: RoundOutcome) {
        // A claim whose reply is full takes no more, whatever it wanted.
        for &claimant in &outcome.full {
            self.wants[claimant] = 0;
            self.shares[claimant].full = true;
        }
        for (claimant, job, size) in outcome.claimed {
            self.wants[claimant] = self.wants[claimant].saturating_sub(1);
            self.alone[claimant] = false;
            let share = &mut self.shares[claimant];
            share.room = share.room.saturating_sub(size);
            share.largest = share.largest.max(size);
            share.jobs.push(job);
        }
    }

    /// The call failed with `error`, after its last round tried `uncertain`.
    fn failed(self, error: StoreError, uncertain: Vec<(JobId, LeaseToken)>) -> ClaimFailure {
        ClaimFailure {
            error,
            claimed: self
                .shares
                .into_iter()
                .flat_map(|share| share.jobs)
                .collect(),
            uncertain,
        }
    }
}

/// What one script call asks for each claimant: how many more jobs, its room, and whether
/// its next job is taken whatever its size.
struct Round<'a> {
    claimants: &'a [Claimant],
    progress: &'a Progress,
}

impl<'a> Round<'a> {
    fn new(claimants: &'a [Claimant], progress: &'a Progress) -> Self {
        Self {
            claimants,
            progress,
        }
    }

    fn wanted(&self) -> usize {
        self.progress.wanted()
    }

    /// claim.lua's arguments before the candidates.
    fn args(&self, store: &JobStore) -> Vec<Value> {
        let mut args: Vec<Value> = vec![
            store.keys().job_channel().into(),
            millis(store.0.settings.default_lease).into(),
            self.claimants.len().to_string().into(),
            store.event_cap(),
        ];
        let progress = self.progress;
        for (c, claimant) in self.claimants.iter().enumerate() {
            let alone = if progress.alone[c] { "1" } else { "0" };
            args.extend([
                claimant.worker.as_str().into(),
                claimant.lease.map(millis).unwrap_or_default().into(),
                progress.wants[c].to_string().into(),
                millis(claimant.ack_timeout).into(),
                progress.shares[c].room.to_string().into(),
                alone.into(),
            ]);
        }
        args
    }
}

/// What one script call of a claim gave.
struct RoundOutcome {
    /// The claimants (by index) whose reply is full.
    full: Vec<usize>,
    /// The jobs claimed, each with its claimant's index and its size.
    claimed: Vec<(usize, Claimed, usize)>,
}
