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

    /// Set of every queue name, so that each replica's sweeper finds every queue. A single key
    /// outside any queue's slot, written with plain commands only.
    pub fn queues(&self) -> String {
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
        ] {
            assert_eq!(hash_tag(&key), "mail.out", "{key}");
            assert!(key.starts_with("jobd:"), "{key}");
        }
    }
}
