//! Job ids: opaque to clients, but they carry the queue, so a job's Redis keys follow from
//! its id without any global lookup.

use std::{fmt, sync::Mutex};

use ulid::{Generator, Ulid};

use super::{QueueName, RequestError, names::is_name_char};

/// A job id, written `<queue>.<ULID>`.
///
/// Clients treat it as opaque. The ULID makes ids unique and roughly time-ordered; the queue
/// lets the store find the job's keys, which all live under the queue's hash tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JobId {
    queue: QueueName,
    ulid: Ulid,
}

const ULID_LEN: usize = 26;

impl JobId {
    pub fn parse(field: &str, value: &str) -> Result<Self, RequestError> {
        let malformed = || {
            RequestError::invalid(
                field,
                "is not a job id; use the id returned by SubmitJob as it is",
            )
        };
        if value.is_empty() {
            return Err(RequestError::invalid(field, "must not be empty"));
        }
        let split = value
            .len()
            .checked_sub(ULID_LEN + 1)
            .ok_or_else(malformed)?;
        let (queue, rest) = value.split_at_checked(split).ok_or_else(malformed)?;
        let ulid = rest.strip_prefix('.').ok_or_else(malformed)?;
        if queue.is_empty() || !queue.chars().all(is_name_char) {
            return Err(malformed());
        }
        let queue = QueueName::parse(field, queue).map_err(|_| malformed())?;
        // Only the canonical spelling, as issued: no lower case, no overflowing values.
        let ulid = Ulid::from_string(ulid)
            .ok()
            .filter(|parsed| parsed.to_string() == ulid)
            .ok_or_else(malformed)?;
        Ok(Self { queue, ulid })
    }

    pub fn queue(&self) -> &QueueName {
        &self.queue
    }

    /// The queue part of a job id as jobd writes it, without checking the rest: for messages
    /// jobd itself published, read far more often than a full parse would be worth.
    pub fn queue_part(id: &str) -> Option<&str> {
        let split = id.len().checked_sub(ULID_LEN + 1)?;
        id.get(..split).filter(|queue| !queue.is_empty())
    }

    /// The unique part of the id, used in the job's key names.
    pub fn ulid(&self) -> Ulid {
        self.ulid
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.queue, self.ulid)
    }
}

/// Makes job ids that are unique and increase within a process, even within one millisecond,
/// so that jobs submitted in the same millisecond keep their FIFO order.
#[derive(Default)]
pub struct JobIdGenerator(Mutex<Generator>);

impl JobIdGenerator {
    pub fn generate(&self, queue: &QueueName) -> JobId {
        let mut generator = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // `generate` fails only when 2^80 ids were made in one millisecond; a fresh random
        // ULID is then still unique, just not ordered.
        let ulid = generator.generate().unwrap_or_else(|_| Ulid::new());
        JobId {
            queue: queue.clone(),
            ulid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_order() {
        let ids = JobIdGenerator::default();
        let queue = QueueName::parse("queue", "mail.out").unwrap();
        let a = ids.generate(&queue);
        let b = ids.generate(&queue);
        assert!(a.to_string() < b.to_string());
        let parsed = JobId::parse("job_id", &a.to_string()).unwrap();
        assert_eq!(parsed, a);
        assert_eq!(parsed.queue().as_str(), "mail.out");
        assert_eq!(JobId::queue_part(&a.to_string()), Some("mail.out"));
        assert_eq!(JobId::queue_part(&a.to_string()[9..]), None, "a bare ULID");
    }

    #[test]
    fn malformed_ids_are_refused_with_the_field_name() {
        let valid = JobIdGenerator::default()
            .generate(&QueueName::parse("q", "q").unwrap())
            .to_string();
        let cases = [
            String::new(),
            "nope".to_owned(),
            valid.replace('.', "-"),
            format!(".{}", &valid[2..]),
            format!("bad queue{}", &valid[1..]),
            valid[..valid.len() - 1].to_owned(),
            format!("{valid}x"),
            "q.ZZZZZZZZZZZZZZZZZZZZZZZZZZ".to_owned(),
        ];
        for case in cases {
            let err = JobId::parse("job_id", &case).unwrap_err();
            assert!(
                matches!(&err, RequestError::Invalid { field, .. } if field == "job_id"),
                "{case:?} gave {err:?}"
            );
        }
    }
}
