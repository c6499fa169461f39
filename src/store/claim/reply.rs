//! claim.lua's reply, decoded: which claimants are full, and each job claimed with its lease.

use fred::types::Value;

use super::{DueMark, Result, StoreError};
use crate::domain::{Claimed, Job, JobId, LeaseToken, UnixMillis};

/// claim.lua's reply: {now, full claimants, entries..., and maybe a `due:` mark}.
pub(super) fn split_reply(
    reply: Value,
    claimants: usize,
) -> Result<(Vec<usize>, Vec<Value>, Option<DueMark>)> {
    let mut reply: Vec<Value> = reply.convert().map_err(|_| shape())?;
    let due = DueMark::take(&mut reply);
    if reply.len() < 2 {
        return Err(shape());
    }
    let entries = reply.split_off(2);
    let full: Vec<i64> = reply
        .pop()
        .ok_or_else(shape)?
        .convert()
        .map_err(|_| shape())?;
    let full = full
        .into_iter()
        .map(|claimant| claimant_index(claimant, claimants))
        .collect::<Result<_>>()?;
    Ok((full, entries, due))
}

/// A job the claim script claimed, as its reply gives it.
pub(super) struct ClaimedEntry {
    pub(super) claimant: usize,
    pub(super) id: JobId,
    token: LeaseToken,
    lease_expires_at: UnixMillis,
    ack_deadline: UnixMillis,
    pub(super) size: usize,
}

impl ClaimedEntry {
    /// An entry of the reply, {claimant, job id, token, lease expiry, acknowledgement
    /// deadline, size}, for one of `claimants`.
    pub(super) fn decode(entry: Value, claimants: usize) -> Result<Self> {
        let Value::Array(parts) = entry else {
            return Err(shape());
        };
        let [claimant, id, token, expires, ack, size]: [Value; 6] =
            parts.try_into().map_err(|_| shape())?;
        let id = id.as_string().ok_or_else(shape)?;
        let token = token.as_string().ok_or_else(shape)?;
        Ok(Self {
            claimant: claimant_index(claimant.as_i64().ok_or_else(shape)?, claimants)?,
            id: JobId::parse("id", &id).map_err(|_| StoreError::corrupt("claimed job id"))?,
            token: match LeaseToken::parse("token", &token) {
                Ok(Ok(token)) => token,
                _ => return Err(StoreError::corrupt("lease token")),
            },
            lease_expires_at: UnixMillis(expires.as_u64().ok_or_else(shape)?),
            ack_deadline: UnixMillis(ack.as_u64().ok_or_else(shape)?),
            size: size
                .as_u64()
                .and_then(|size| usize::try_from(size).ok())
                .ok_or_else(shape)?,
        })
    }

    pub(super) fn into_claimed(self, job: Job) -> Claimed {
        Claimed {
            job,
            token: self.token,
            lease_expires_at: self.lease_expires_at,
            ack_deadline: self.ack_deadline,
        }
    }
}

/// A claimant's place in its call from the script's 1-based number.
fn claimant_index(claimant: i64, claimants: usize) -> Result<usize> {
    usize::try_from(claimant)
        .ok()
        .and_then(|c| c.checked_sub(1))
        .filter(|&c| c < claimants)
        .ok_or_else(shape)
}

/// The error of a reply that is not shaped as claim.lua replies.
pub(super) fn shape() -> StoreError {
    StoreError::corrupt("claim reply shape")
}
