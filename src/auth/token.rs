//! Bearer tokens: made at random, given to a client once, and known to jobd only by their
//! SHA-256, which is all the auth file holds.

use std::fmt;

use rand::RngCore;

use super::{QueuePattern, Roles};

/// What every token jobd makes starts with, so that a secret scanner can recognise one.
const PREFIX: &str = "jobd_";

/// Random bytes in a token: 256 bits, written as 64 hex digits.
const TOKEN_BYTES: usize = 32;

/// The SHA-256 of a bearer token, as the auth file's `token_sha256` holds it (64 hex digits).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    pub fn of(token: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, token);
        let mut hash = [0; 32];
        hash.copy_from_slice(digest.as_ref());
        Self(hash)
    }

    /// Reads 64 hex digits.
    pub fn parse(hex: &str) -> Option<Self> {
        // const_hex would also take a "0x" prefix; the file holds the 64 digits alone.
        if hex.len() != 64 {
            return None;
        }
        const_hex::decode_to_array(hex).ok().map(Self)
    }
}

impl fmt::Display for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&const_hex::encode(self.0))
    }
}

// Not the hash itself: it stays out of logs too.
impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHash(..)")
    }
}

/// A token just made for a principal, and its entry for the auth file.
pub struct NewToken {
    pub token: String,
    pub name: String,
    pub roles: Roles,
    pub queues: Vec<QueuePattern>,
}

impl NewToken {
    /// A fresh random token for a principal named `name`.
    pub fn generate(name: String, roles: Roles, queues: Vec<QueuePattern>) -> Self {
        let mut bytes = [0u8; TOKEN_BYTES];
        // ThreadRng is a CSPRNG seeded from the operating system.
        rand::rng().fill_bytes(&mut bytes);
        Self {
            token: format!("{PREFIX}{}", const_hex::encode(bytes)),
            name,
            roles,
            queues,
        }
    }

    /// The principal's entry for the auth file, holding the token's SHA-256 only.
    pub fn entry(&self) -> String {
        let quoted = |items: Vec<String>| {
            let items: Vec<String> = items.iter().map(|item| format!("{item:?}")).collect();
            format!("[{}]", items.join(", "))
        };
        let roles = self.roles.to_string();
        let roles: Vec<String> = roles.split(", ").map(str::to_owned).collect();
        format!(
            "[[principal]]\nname = {:?}\nroles = {}\nqueues = {}\ntoken_sha256 = [\"{}\"]\n",
            self.name,
            quoted(roles),
            quoted(self.queues.iter().map(ToString::to_string).collect()),
            TokenHash::of(self.token.as_bytes()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Gate, parse_principals};

    #[test]
    fn hashes_read_back_as_written() {
        let hash = TokenHash::of(b"test");
        let hex = hash.to_string();
        assert_eq!(
            hex,
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
        assert!(TokenHash::parse(&hex) == Some(hash));
        assert!(TokenHash::parse(&hex.to_uppercase()) == Some(hash));
        assert!(TokenHash::parse(&hex[1..]).is_none());
        assert!(TokenHash::parse(&format!("{}g", &hex[1..])).is_none());
        assert_eq!(format!("{hash:?}"), "TokenHash(..)");
    }

    #[test]
    fn a_new_token_works_with_its_entry() {
        let queues = vec![QueuePattern::parse("billing.*").unwrap()];
        let new = NewToken::generate("billing-api".into(), Roles::SUBMITTER, queues);
        assert!(new.token.starts_with("jobd_") && new.token.len() == 5 + 64);
        let entry = new.entry();
        assert!(!entry.contains(&new.token), "{entry}");
        let gate = Gate::with(parse_principals(&entry).unwrap());
        let header = format!("Bearer {}", new.token);
        let caller = gate.recognise(Some(header.as_bytes()), &[]).unwrap();
        assert_eq!(caller.name(), "billing-api");
        assert_eq!(caller.roles(), Roles::SUBMITTER);
        let other = NewToken::generate("x".into(), Roles::WORKER, Vec::new());
        assert_ne!(other.token, new.token);
    }
}
