//! Why a request was refused before it reached the store.

/// A request that cannot be carried out as given. Nothing was written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    /// A field is missing or malformed; `field` names it as the API spells it.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// A field is larger than the server accepts.
    #[error("{field} is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        field: String,
        size: usize,
        limit: usize,
    },
}

impl RequestError {
    /// The same error for an element of a list, e.g. `jobs[3].queue`.
    pub fn within(self, element: &str) -> Self {
        match self {
            Self::Invalid { field, reason } => Self::Invalid {
                field: format!("{element}.{field}"),
                reason,
            },
            Self::TooLarge { field, size, limit } => Self::TooLarge {
                field: format!("{element}.{field}"),
                size,
                limit,
            },
        }
    }

    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
