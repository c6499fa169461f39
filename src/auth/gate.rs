//! The gate every call passes: the auth file's principals in force, and who a call's
//! credentials name.

use std::sync::{Arc, RwLock};

use super::{Caller, Principals, TokenHash, Unrecognised};

/// What every call is checked against: the principals of the auth file, replaced whenever
/// the file changes, or no auth file at all.
#[derive(Debug)]
pub struct Gate {
    principals: Option<RwLock<Arc<Principals>>>,
}

impl Gate {
    /// Without an auth file: every caller is `Anyone`.
    pub fn open() -> Self {
        Self { principals: None }
    }

    pub fn with(principals: Principals) -> Self {
        Self {
            principals: Some(RwLock::new(Arc::new(principals))),
        }
    }

    /// Puts a new version of the auth file in force: later calls are checked against it.
    pub fn replace(&self, principals: Principals) {
        if let Some(current) = &self.principals {
            *current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(principals);
        }
    }

    /// Who made a call that carried the `authorization` header `authorization` (if any) on
    /// a connection whose client certificate names `identities`. A bearer token, when sent,
    /// decides alone.
    pub fn recognise(
        &self,
        authorization: Option<&[u8]>,
        identities: &[String],
    ) -> Result<Caller, Unrecognised> {
        let Some(principals) = &self.principals else {
            return Ok(Caller::Anyone);
        };
        let principals = principals.read().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(header) = authorization {
            let token = bearer_token(header).ok_or(Unrecognised::Malformed)?;
            let hash = TokenHash::of(token);
            return match principals.by_token.get(&hash) {
                Some(principal) => Ok(Caller::Principal(principal.clone())),
                None => Err(Unrecognised::UnknownToken),
            };
        }
        if identities.is_empty() {
            return Err(Unrecognised::NoCredentials);
        }
        identities
            .iter()
            .find_map(|identity| principals.by_identity.get(identity))
            .map(|principal| Caller::Principal(principal.clone()))
            .ok_or_else(|| Unrecognised::UnknownIdentity(identities.join(", ")))
    }
}

/// The token of an `authorization: Bearer <token>` header (the scheme in any case).
pub(super) fn bearer_token(header: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = header.split_at_checked(7)?;
    let token = token.trim_ascii();
    (scheme.eq_ignore_ascii_case(b"bearer ") && !token.is_empty()).then_some(token)
}
