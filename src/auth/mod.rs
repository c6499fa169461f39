//! Who may call jobd, and what each may do: principals with their roles and queues, and how a
//! caller is recognised (the SHA-256 of a bearer token, the identity in a client
//! certificate). Knows neither gRPC nor TLS: the API hands it what a call carried and asks.

mod file;
mod gate;
mod token;

use std::{collections::HashMap, fmt, sync::Arc};

pub use file::parse_principals;
pub use gate::Gate;
pub use token::{NewToken, TokenHash};

use crate::domain::QueueName;

/// What a principal may do; each gRPC method names the roles that may call it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles(u8);

impl Roles {
    pub const NONE: Self = Self(0);
    /// Submits jobs and follows them: SubmitJob, SubmitJobs, SubmitAndWatchJobs, GetJob,
    /// WatchJob, CancelJob.
    pub const SUBMITTER: Self = Self(1);
    /// Claims jobs and reports on them: every WorkerService call.
    pub const WORKER: Self = Self(2);
    /// Looks after queues: GetJob, WatchJob, CancelJob, ListJobs, GetQueueStats.
    pub const OPERATOR: Self = Self(4);
    /// Every role, as a caller has when jobd runs without an auth file.
    pub const ALL: Self = Self(7);

    const NAMES: [(&'static str, Self); 3] = [
        ("submitter", Self::SUBMITTER),
        ("worker", Self::WORKER),
        ("operator", Self::OPERATOR),
    ];

    pub const fn or(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    pub fn intersects(self, other: Self) -> bool {
        self.0 & other.0 != 0
    }

    /// The role named `name`, as the auth file spells it.
    pub fn named(name: &str) -> Option<Self> {
        Self::NAMES
            .iter()
            .find(|(known, _)| *known == name)
            .map(|(_, role)| *role)
    }

    /// The names of every role, for messages.
    pub fn known() -> String {
        Self::ALL.to_string()
    }
}

impl fmt::Display for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Self::NAMES
            .iter()
            .filter(|(_, role)| self.intersects(*role))
            .map(|(name, _)| *name)
            .collect();
        if names.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&names.join(", "))
        }
    }
}

/// The queues a principal may use: a name, every name under a prefix (`billing.*`), or all
/// (`*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueuePattern {
    Any,
    Exact(QueueName),
    /// The prefix with its final dot: `billing.*` is `billing.`, and matches `billing.eu`
    /// and `billing.eu.invoices` but not `billing` itself.
    Under(String),
}

impl QueuePattern {
    pub fn parse(pattern: &str) -> Result<Self, String> {
        if pattern == "*" {
            return Ok(Self::Any);
        }
        let (name, under) = match pattern.strip_suffix(".*") {
            Some(prefix) => (prefix, true),
            None => (pattern, false),
        };
        let name = QueueName::parse("queue", name).map_err(|_| {
            format!(
                "queue pattern {pattern:?} is neither a queue name, a name followed by `.*`, \
                 nor `*`"
            )
        })?;
        Ok(if under {
            Self::Under(format!("{name}."))
        } else {
            Self::Exact(name)
        })
    }

    pub fn matches(&self, queue: &QueueName) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(name) => name == queue,
            Self::Under(prefix) => queue.as_str().starts_with(prefix.as_str()),
        }
    }
}

impl fmt::Display for QueuePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Exact(name) => write!(f, "{name}"),
            Self::Under(prefix) => write!(f, "{prefix}*"),
        }
    }
}

/// A named caller of the auth file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub roles: Roles,
    pub queues: Vec<QueuePattern>,
    /// Its own cap on queues with jobs (`max_queues`), else the server's.
    pub max_queues: Option<u32>,
}

impl Principal {
    pub fn may_use(&self, queue: &QueueName) -> bool {
        self.queues.iter().any(|pattern| pattern.matches(queue))
    }

    /// Its queue patterns, for messages: `billing.*, emails`.
    pub fn queue_list(&self) -> String {
        let patterns: Vec<String> = self.queues.iter().map(ToString::to_string).collect();
        patterns.join(", ")
    }
}

/// The principals of an auth file, found by their credentials.
#[derive(Debug, Default)]
pub struct Principals {
    by_token: HashMap<TokenHash, Arc<Principal>>,
    by_identity: HashMap<String, Arc<Principal>>,
    count: usize,
}

impl Principals {
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// Who made a call, once recognised.
#[derive(Debug, Clone)]
pub enum Caller {
    /// jobd runs without an auth file: every caller may do anything (on loopback only, behind
    /// mTLS, or with --insecure).
    Anyone,
    Principal(Arc<Principal>),
}

impl Caller {
    /// Its name for logs and messages.
    pub fn name(&self) -> &str {
        match self {
            Self::Anyone => "anyone",
            Self::Principal(principal) => &principal.name,
        }
    }

    pub fn roles(&self) -> Roles {
        match self {
            Self::Anyone => Roles::ALL,
            Self::Principal(principal) => principal.roles,
        }
    }

    pub fn may_use(&self, queue: &QueueName) -> bool {
        match self {
            Self::Anyone => true,
            Self::Principal(principal) => principal.may_use(queue),
        }
    }

    /// Its name and its cap on queues with jobs, `default` unless it has its own; `None` for
    /// `Anyone`, who has no cap.
    pub fn queue_cap(&self, default: u32) -> Option<(&str, u32)> {
        match self {
            Self::Anyone => None,
            Self::Principal(principal) => Some((
                principal.name.as_str(),
                principal.max_queues.unwrap_or(default),
            )),
        }
    }

    /// Its queue patterns, for messages.
    pub fn queue_list(&self) -> String {
        match self {
            Self::Anyone => "*".to_owned(),
            Self::Principal(principal) => principal.queue_list(),
        }
    }
}

/// Why a call's caller was not recognised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unrecognised {
    #[error(
        "no credentials: send `authorization: Bearer <token>`, or a client certificate whose \
         identity the auth file names"
    )]
    NoCredentials,
    #[error("the authorization header is not `Bearer <token>`")]
    Malformed,
    #[error("the bearer token is not in the auth file (mistyped, or removed)")]
    UnknownToken,
    #[error("the client certificate's identities ({0}) are not in the auth file")]
    UnknownIdentity(String),
}

#[cfg(test)]
mod tests {
    use super::{gate::bearer_token, *};

    fn queue(name: &str) -> QueueName {
        QueueName::parse("queue", name).unwrap()
    }

    #[test]
    fn patterns_match_names_prefixes_and_everything() {
        let billing = QueuePattern::parse("billing.*").unwrap();
        assert!(billing.matches(&queue("billing.eu")));
        assert!(billing.matches(&queue("billing.eu.invoices")));
        assert!(!billing.matches(&queue("billing")));
        assert!(!billing.matches(&queue("billingx.eu")));
        assert!(!billing.matches(&queue("emails")));
        let emails = QueuePattern::parse("emails").unwrap();
        assert!(emails.matches(&queue("emails")) && !emails.matches(&queue("emails.x")));
        assert!(
            QueuePattern::parse("*")
                .unwrap()
                .matches(&queue("anything"))
        );
        for bad in ["", "a b", "billing*", "*.billing", "billing.**", "{x}"] {
            assert!(QueuePattern::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(billing.to_string(), "billing.*");
    }

    #[test]
    fn roles_read_and_print() {
        let roles = Roles::SUBMITTER.or(Roles::OPERATOR);
        assert_eq!(roles.to_string(), "submitter, operator");
        assert!(roles.intersects(Roles::OPERATOR) && !roles.intersects(Roles::WORKER));
        assert_eq!(Roles::named("worker"), Some(Roles::WORKER));
        assert_eq!(Roles::named("admin"), None);
        assert_eq!(Roles::known(), "submitter, worker, operator");
    }

    #[test]
    fn bearer_tokens_are_read_from_the_header() {
        assert_eq!(bearer_token(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bearer "), None);
        assert_eq!(bearer_token(b"Bear"), None);
    }

    #[test]
    fn callers_are_recognised_by_token_then_by_identity() {
        let principals = parse_principals(
            r#"
            [[principal]]
            name = "api"
            roles = ["submitter"]
            queues = ["billing.*"]
            token_sha256 = ["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]

            [[principal]]
            name = "workers"
            roles = ["worker"]
            queues = ["*"]
            identities = ["spiffe://example.org/worker"]
            "#,
        )
        .unwrap();
        let gate = Gate::with(principals);
        // 9f86… is the SHA-256 of "test".
        let api = gate.recognise(Some(b"Bearer test"), &[]).unwrap();
        assert_eq!(api.name(), "api");
        assert!(api.may_use(&queue("billing.eu")) && !api.may_use(&queue("emails")));
        let worker = ["spiffe://example.org/worker".to_owned()];
        assert_eq!(gate.recognise(None, &worker).unwrap().name(), "workers");
        // A token decides alone, even beside a known certificate.
        assert_eq!(
            gate.recognise(Some(b"Bearer nope"), &worker).unwrap_err(),
            Unrecognised::UnknownToken
        );
        assert_eq!(
            gate.recognise(None, &[]).unwrap_err(),
            Unrecognised::NoCredentials
        );
        assert_eq!(
            gate.recognise(Some(b"Basic x"), &[]).unwrap_err(),
            Unrecognised::Malformed
        );
        assert!(matches!(
            gate.recognise(None, &["dns:other".to_owned()]),
            Err(Unrecognised::UnknownIdentity(_))
        ));
        gate.replace(Principals::default());
        assert_eq!(
            gate.recognise(Some(b"Bearer test"), &[]).unwrap_err(),
            Unrecognised::UnknownToken
        );
        assert!(matches!(
            Gate::open().recognise(None, &[]),
            Ok(Caller::Anyone)
        ));
    }
}
