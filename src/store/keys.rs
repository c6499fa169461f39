//! Every Redis key and channel name jobd uses, built here and nowhere else.
//!
//! All keys of a queue, and of the jobs in it, share the hash tag `{<queue>}`, so every script
//! touches a single slot and the same scripts run on Redis Cluster. Queue names cannot contain
//! braces (see `QueueName`), so the tag is always exactly the queue name.

use crate::domain::{JobId, JobState, QueueName};

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// Hash holding a job's fields and its event log (`e:<sequence>` fields).
    pub fn job(&self, id: &JobId) -> String {
        format!("{}:{{{}}}:job:{}", self.prefix, id.queue(), id.ulid())
    }

    /// Sorted set of the queue's claimable job ids.
    pub fn ready(&self, queue: &QueueName) -> String {
        format!("{}:{{{queue}}}:ready", self.prefix)
    }

    /// Sorted set of the queue's running job ids, scored by lease expiry.
    pub fn running(&self, queue: &QueueName) -> String {
        format!("{}:{{{queue}}}:running", self.prefix)
    }

    /// Sorted set of the queue's scheduled job ids, scored by when they become claimable.
    pub fn scheduled(&self, queue: &QueueName) -> String {
        format!("{}:{{{queue}}}:scheduled", self.prefix)
    }

    /// Sorted set of the queue's finished jobs with one outcome, scored by when their
    /// retention ends: what GetQueueStats counts.
    pub fn retained(&self, queue: &QueueName, outcome: JobState) -> String {
        format!("{}:{{{queue}}}:done:{}", self.prefix, outcome.as_str())
    }

    /// String naming the job an idempotency key made.
    pub fn idempotency(&self, queue: &QueueName, key: &str) -> String {
        format!("{}:{{{queue}}}:idem:{key}", self.prefix)
    }

    /// The due index: a sorted set of every queue that has jobs, scored by when a sweeper must
    /// next visit it (Redis ms; `+inf` for a queue whose jobs are all ready). The sweepers
    /// read only the entries that are due. Its hash tag `{:queues}` cannot be a queue's
    /// (queue names hold no `:`), and it shares its slot with the principals' queue sets
    /// only. Written after each queue script, in a step of its own (see `promise`).
    pub fn due_index(&self) -> String {
        format!("{}:{{:queues}}:due", self.prefix)
    }

    /// The queue's promise: a string, the score the queue was last given in the due index
    /// (`inf`, or Redis ms), written by the same script that writes what falls due, so that a
    /// script knows whether the index must be told of an earlier time. Absent once the queue
    /// is forgotten.
    pub fn promise(&self, queue: &QueueName) -> String {
        format!("{}:{{{queue}}}:due", self.prefix)
    }

    /// Set of the queues a principal has submitted to (`--max-queues-per-principal`), in the
    /// due index's slot so that one script counts those still alive.
    pub fn principal_queues(&self, principal: &str) -> String {
        format!("{}:{{:queues}}:of:{principal}", self.prefix)
    }

    /// The registry of jobd versions before the due index: a set of every queue name, read
    /// once by the sweeper to move its queues into the due index, then deleted.
    pub fn legacy_queues(&self) -> String {
        format!("{}:queues", self.prefix)
    }

    /// Channel announcing new events of jobs, one per line: `<sequence> <job id> <n> <event>
    /// <m> <result>`, the event's n bytes as stored and, for COMPLETED when it is small, the
    /// result's m bytes; otherwise `<sequence> <job id> <n> <event> -`. A script that writes
    /// events of several jobs announces them all in one message.
    pub fn job_channel(&self) -> String {
        format!("{}:wake:jobs", self.prefix)
    }

    /// Channel announcing that a queue may have claimable jobs: message `<queue>`, or
    /// `<queue> <n>` for n jobs at once.
    pub fn queue_channel(&self) -> String {
        format!("{}:wake:queues", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::JobIdGenerator;

    /// The part of a key Redis Cluster hashes: the text between the first `{` and the next `}`.
    fn hash_tag(key: &str) -> &str {
        let open = key.find('{').expect("key has a hash tag");
        let close = key[open..].find('}').expect("hash tag is closed") + open;
        &key[open + 1..close]
    }

    #[test]
    fn a_job_and_its_queue_share_one_hash_tag() {
        let keys = Keys::new("jobd");
        let queue = QueueName::parse("queue", "mail.out").unwrap();
        let id = JobIdGenerator::default().generate(&queue);
        for key in [
            keys.job(&id),
            keys.ready(&queue),
            keys.running(&queue),
            keys.scheduled(&queue),
            keys.retained(&queue, JobState::Failed),
            keys.idempotency(&queue, "a}{b"),
            keys.promise(&queue),
        ] {
            assert_eq!(hash_tag(&key), "mail.out", "{key}");
            assert!(key.starts_with("jobd:"), "{key}");
        }
    }

    #[test]
    fn the_due_index_and_the_principals_sets_share_a_tag_no_queue_has() {
        let keys = Keys::new("jobd");
        assert_eq!(hash_tag(&keys.due_index()), ":queues");
        assert_eq!(hash_tag(&keys.principal_queues("team/a")), ":queues");
        assert!(QueueName::parse("queue", ":queues").is_err());
    }
}
