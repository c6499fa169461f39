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
        field: &'static str,
        size: usize,
        limit: usize,
    },
}

impl RequestError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
