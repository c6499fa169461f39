//! ListJobs: a queue's jobs a page at a time, each page resuming after the last job of the one
//! before.

use bytes::Bytes;
use fred::{interfaces::HashesInterface, types::Value};

use super::{
    JobStore, Result, StoreError,
    layout::{Fields, SUMMARY_FIELDS},
};
use crate::domain::{Job, JobId, JobState, QueueName};

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

/// Index entries a page may read per job it can hold: past that (entries of jobs whose
/// retention passed, not trimmed yet), the page ends short, with a token to go on.
const SCANNED_PER_LISTED: usize = 4;

/// What a page may still read: jobs, the fields of each, and index entries.
struct Page<'a> {
    wanted: usize,
    fields: &'a [&'a str],
    budget: &'a mut usize,
}

impl JobStore {
    /// A page of a queue's jobs, in `state` or in every state, from `cursor`; and where the
    /// next page starts, given only when a job follows the page.
    ///
    /// The page is read one job ahead, through the indexes still to come when no state is
    /// given: a page that happens to end with the queue's last job then says it is the last,
    /// rather than sending the caller for an empty one. The job ahead is read like the others,
    /// so one whose retention passed (an index entry the sweeper has not trimmed yet) does not
    /// count. A page reads at most `SCANNED_PER_LISTED` entries per job it may hold, so that no
    /// cursor makes it cost more: a page cut so ends short, with a token.
    pub async fn list(
        &self,
        queue: &QueueName,
        state: Option<JobState>,
        cursor: ListCursor,
        page_size: usize,
    ) -> Result<(Vec<Job>, Option<ListCursor>)> {
        let fields = SUMMARY_FIELDS;
        let wanted = page_size.saturating_add(1);
        // Each job listed, with the cursor just after it: the last on the page is where the
        // next page starts.
        let mut listed: Vec<(Job, ListCursor)> = Vec::new();
        let mut cursor = cursor;
        let mut budget = wanted.saturating_mul(SCANNED_PER_LISTED);
        let mut cut = false;
        while cursor.index < LIST_ORDER.len() && listed.len() < wanted {
            let index_state = LIST_ORDER[cursor.index];
            if state.is_none_or(|wanted| wanted == index_state) {
                let key = match index_state {
                    JobState::Queued => self.keys().ready(queue),
                    JobState::Scheduled => self.keys().scheduled(queue),
                    JobState::Running => self.keys().running(queue),
                    outcome => self.keys().retained(queue, outcome),
                };
                let page = Page {
                    wanted,
                    fields,
                    budget: &mut budget,
                };
                cut = self
                    .list_index(&key, &mut cursor, page, &mut listed)
                    .await?;
                if cut {
                    break;
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
            cut.then_some(cursor)
        };
        Ok((listed.into_iter().map(|(job, _)| job).collect(), next))
    }

    /// Adds to `listed` the jobs of the index `key` after `cursor`, until it holds
    /// `page.wanted` or the index ends; `cursor` moves past every entry read. Whether the
    /// page's budget of entries ran out first.
    async fn list_index(
        &self,
        key: &str,
        cursor: &mut ListCursor,
        page: Page<'_>,
        listed: &mut Vec<(Job, ListCursor)>,
    ) -> Result<bool> {
        loop {
            let missing = (page.wanted - listed.len()).min(*page.budget);
            if missing == 0 {
                return Ok(true);
            }
            let entries = self
                .entries_after(key, cursor.after.as_ref(), missing)
                .await?;
            *page.budget -= entries.len();
            let exhausted = entries.len() < missing;
            let parsed: Vec<Option<JobId>> = entries
                .iter()
                .map(|(member, _)| JobId::parse("id", member).ok())
                .collect();
            let ids: Vec<JobId> = parsed.iter().flatten().cloned().collect();
            let mut read = self.list_read(&ids, page.fields).await?.into_iter();
            for ((member, score), id) in entries.into_iter().zip(parsed) {
                // The cursor passes every entry, listed or not, so that the next read starts
                // after it.
                cursor.after = Some((score, member));
                if let Some(job) = id.and_then(|_| read.next().flatten()) {
                    listed.push((job, cursor.clone()));
                }
            }
            if exhausted || listed.len() >= page.wanted {
                return Ok(false);
            }
            // Some entries' jobs had expired: more of this index fills the page.
        }
    }

    /// Up to `wanted` entries of the index `key` that come after `after` in its order (by
    /// score, then by member): job ids with their scores. `list_after.lua` finds where to start
    /// at a cost that no cursor, forged or not, makes larger than the page.
    async fn entries_after(
        &self,
        key: &str,
        after: Option<&(f64, String)>,
        wanted: usize,
    ) -> Result<Vec<(String, f64)>> {
        let (score, member) = match after {
            Some((score, member)) => (score.to_string(), member.clone()),
            None => (String::new(), String::new()),
        };
        let args = vec![score.into(), member.into(), (wanted as i64).into()];
        let reply: Vec<Value> = self
            .call(&self.scripts().list_after, vec![key.to_owned()], args)
            .await?;
        let shape = || StoreError::corrupt("list_after reply shape");
        reply
            .chunks(2)
            .map(|pair| match pair {
                [member, score] => {
                    let member = member.as_string().ok_or_else(shape)?;
                    let score = score.as_f64().ok_or_else(shape)?;
                    Ok((member, score))
                }
                _ => Err(shape()),
            })
            .collect()
    }

    /// The listed jobs of `ids`, in their order, without what ListJobs leaves out; `None` for
    /// those that expired before the sweeper trimmed their index entries.
    async fn list_read(&self, ids: &[JobId], fields: &[&str]) -> Result<Vec<Option<Job>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let pipeline = self.client().pipeline();
        for id in ids {
            let _: () = pipeline
                .hmget(self.keys().job(id), fields.to_vec())
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
