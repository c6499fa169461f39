//! Validated names: queues, job kinds and worker ids.

use std::fmt;

use super::RequestError;

const NAME_MAX: usize = 64;
const WORKER_ID_MAX: usize = 128;

/// A queue name: 1 to 64 characters of `A-Z a-z 0-9 . _ -`.
///
/// The character set keeps names safe inside Redis keys and hash tags (no `{`, `}` or `:`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueName(String);

/// A job type, chosen by the submitter: same rules as a queue name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JobKind(String);

/// Who claimed a job: 1 to 128 characters of `A-Z a-z 0-9 . _ - : @ /`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WorkerId(String);

/// So that a set of names can be searched with the `&str` of a message, without a copy.
impl std::borrow::Borrow<str> for QueueName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl QueueName {
    pub fn parse(field: &str, value: &str) -> Result<Self, RequestError> {
        check_name(field, value, NAME_MAX, |_| false).map(|()| Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl JobKind {
    pub fn parse(field: &str, value: &str) -> Result<Self, RequestError> {
        check_name(field, value, NAME_MAX, |_| false).map(|()| Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl WorkerId {
    pub fn parse(field: &str, value: &str) -> Result<Self, RequestError> {
        check_name(field, value, WORKER_ID_MAX, |c| {
            matches!(c, ':' | '@' | '/')
        })
        .map(|()| Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether `c` may appear in a queue or kind name.
pub(crate) fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

fn check_name(
    field: &str,
    value: &str,
    max: usize,
    also_allowed: impl Fn(char) -> bool,
) -> Result<(), RequestError> {
    if value.is_empty() {
        return Err(RequestError::invalid(field, "must not be empty"));
    }
    if value.len() > max {
        return Err(RequestError::invalid(
            field,
            format!("must be at most {max} characters, got {}", value.len()),
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|&c| !is_name_char(c) && !also_allowed(c))
    {
        return Err(RequestError::invalid(
            field,
            format!("contains {bad:?}; allowed are A-Z a-z 0-9 . _ -"),
        ));
    }
    Ok(())
}

macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    )*};
}
display_as_str!(QueueName, JobKind, WorkerId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_follow_the_documented_rules() {
        assert!(QueueName::parse("queue", "emails.v2_high-prio").is_ok());
        assert!(QueueName::parse("queue", &"a".repeat(64)).is_ok());
        for bad in ["", "has space", "brace{", "colon:", "ü", &"a".repeat(65)] {
            let err = QueueName::parse("queue", bad).unwrap_err();
            assert!(
                matches!(&err, RequestError::Invalid { field, .. } if field == "queue"),
                "{bad:?} gave {err:?}"
            );
        }
    }

    #[test]
    fn worker_ids_allow_host_style_names() {
        assert!(WorkerId::parse("worker_id", "billing@host-3:4711/a").is_ok());
        assert!(WorkerId::parse("worker_id", "two words").is_err());
    }
}
