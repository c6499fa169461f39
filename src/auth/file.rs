//! The auth file: TOML, one `[[principal]]` table per principal (docs/security.md shows one).
//!
//! Errors name the principal and the setting, never a value: the file holds token hashes,
//! which stay out of logs too.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use serde::Deserialize;

use super::{Principal, Principals, QueuePattern, Roles, TokenHash};

/// The longest principal name: names go into logs and messages.
const MAX_NAME: usize = 128;

/// A principal as the file spells it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    roles: Vec<String>,
    queues: Vec<String>,
    #[serde(default)]
    token_sha256: Vec<String>,
    #[serde(default)]
    identities: Vec<String>,
    #[serde(default)]
    max_queues: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    principal: Vec<Entry>,
}

/// Reads an auth file's text. An empty file has no principals: every call is refused.
pub fn parse_principals(text: &str) -> Result<Principals, String> {
    let file: File = toml::from_str(text).map_err(|error| syntax(text, &error))?;
    let mut principals = Principals::default();
    let mut names = HashSet::new();
    for (index, entry) in file.principal.into_iter().enumerate() {
        let at = format!("principal[{index}]");
        let at = |what: String| format!("{at} ({:?}): {what}", entry.name);
        if !names.insert(entry.name.clone()) {
            return Err(at("another principal has this name".into()));
        }
        let principal = Arc::new(principal(&entry).map_err(at)?);
        let credentials = entry.token_sha256.len() + entry.identities.len();
        if credentials == 0 {
            return Err(at("needs a token_sha256 or an identity".into()));
        }
        for (i, hex) in entry.token_sha256.iter().enumerate() {
            let hash = token_hash(hex).map_err(|what| at(format!("token_sha256[{i}] {what}")))?;
            insert(&mut principals.by_token, hash, &principal)
                .map_err(|()| at(format!("token_sha256[{i}] is another principal's too")))?;
        }
        for (i, identity) in entry.identities.into_iter().enumerate() {
            if identity.is_empty() || identity.chars().any(char::is_control) {
                return Err(at(format!("identities[{i}] must be a URI or DNS name")));
            }
            insert(&mut principals.by_identity, identity, &principal)
                .map_err(|()| at(format!("identities[{i}] is another principal's too")))?;
        }
        principals.count += 1;
    }
    Ok(principals)
}

fn principal(entry: &Entry) -> Result<Principal, String> {
    let name_ok = !entry.name.is_empty()
        && entry.name.len() <= MAX_NAME
        && entry
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '@' | '/'));
    if !name_ok {
        return Err(format!(
            "name must be 1 to {MAX_NAME} characters of A-Z a-z 0-9 . _ - : @ /"
        ));
    }
    let mut roles = Roles::NONE;
    for role in &entry.roles {
        let known = Roles::named(role)
            .ok_or_else(|| format!("unknown role {role:?} (roles: {})", Roles::known()))?;
        roles = roles.or(known);
    }
    if roles == Roles::NONE {
        return Err(format!("roles must name one or more of {}", Roles::known()));
    }
    if entry.queues.is_empty() {
        return Err("queues must name one or more queues (`*` for every queue)".into());
    }
    let queues = entry
        .queues
        .iter()
        .map(|pattern| QueuePattern::parse(pattern))
        .collect::<Result<_, _>>()?;
    if entry.max_queues == Some(0) {
        return Err("max_queues must be 1 or more".into());
    }
    Ok(Principal {
        name: entry.name.clone(),
        roles,
        queues,
        max_queues: entry.max_queues,
    })
}

/// A `token_sha256` value; a token put there by mistake is refused as such.
fn token_hash(hex: &str) -> Result<TokenHash, &'static str> {
    if hex.starts_with("jobd_") {
        return Err(
            "holds a token itself: put its SHA-256 there (`jobd token new` prints both), and \
             make a new token, since this one was written down",
        );
    }
    TokenHash::parse(hex).ok_or("must be a SHA-256 in 64 hex digits")
}

fn insert<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, Arc<Principal>>,
    key: K,
    principal: &Arc<Principal>,
) -> Result<(), ()> {
    match map.insert(key, principal.clone()) {
        Some(other) if other != *principal => Err(()),
        _ => Ok(()),
    }
}

/// A TOML error as its line and message, without toml's excerpt of the file and without the
/// strings the message quotes (`invalid type: string "…"` could be a token hash).
fn syntax(text: &str, error: &toml::de::Error) -> String {
    let mut message = String::new();
    for (i, part) in error.message().trim_end().split('"').enumerate() {
        match i {
            0 => {}
            _ if i % 2 == 1 => message.push_str("\"…"),
            _ => message.push('"'),
        }
        if i % 2 == 0 {
            message.push_str(part);
        }
    }
    let line = error
        .span()
        .map(|span| text[..span.start.min(text.len())].lines().count().max(1));
    match line {
        Some(line) => format!("line {line}: {message}"),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn one(body: &str) -> Result<Principals, String> {
        parse_principals(&format!("[[principal]]\nname = \"p\"\n{body}"))
    }

    #[test]
    fn a_file_reads_into_principals() {
        let principals = one(&format!(
            "roles = [\"submitter\", \"operator\"]\nqueues = [\"a\", \"b.*\"]\n\
             token_sha256 = [\"{HASH}\"]\nidentities = [\"spiffe://x/y\"]\n"
        ))
        .unwrap();
        assert_eq!(principals.len(), 1);
        let principal = principals.by_identity["spiffe://x/y"].clone();
        assert_eq!(principal.roles, Roles::SUBMITTER.or(Roles::OPERATOR));
        assert_eq!(principal.queue_list(), "a, b.*");
        assert!(parse_principals("").unwrap().is_empty());
    }

    #[test]
    fn mistakes_are_named_without_values() {
        let cases = [
            (
                "roles = [\"admin\"]\nqueues = [\"a\"]",
                "unknown role \"admin\"",
            ),
            ("roles = []\nqueues = [\"a\"]", "roles must name"),
            ("roles = [\"worker\"]\nqueues = []", "queues must name"),
            ("roles = [\"worker\"]\nqueues = [\"a b\"]", "queue pattern"),
            (
                "roles = [\"worker\"]\nqueues = [\"a\"]",
                "needs a token_sha256",
            ),
            (
                "roles = [\"worker\"]\nqueues = [\"a\"]\ntoken_sha256 = [\"jobd_abc\"]",
                "holds a token itself",
            ),
            (
                "roles = [\"worker\"]\nqueues = [\"a\"]\ntoken_sha256 = [\"abc\"]",
                "token_sha256[0] must be a SHA-256",
            ),
            (
                "roles = [\"worker\"]\nqueues = [\"a\"]\ntoken = [\"secret\"]",
                "unknown field `token`",
            ),
        ];
        for (body, expected) in cases {
            let error = one(body).unwrap_err();
            assert!(error.contains(expected), "{body}: {error}");
            assert!(
                !error.contains("secret") && !error.contains("jobd_abc"),
                "{error}"
            );
        }
        let twice = format!(
            "[[principal]]\nname = \"a\"\nroles = [\"worker\"]\nqueues = [\"*\"]\n\
             token_sha256 = [\"{HASH}\"]\n\
             [[principal]]\nname = \"b\"\nroles = [\"worker\"]\nqueues = [\"*\"]\n\
             token_sha256 = [\"{HASH}\"]\n"
        );
        let error = parse_principals(&twice).unwrap_err();
        assert!(error.contains("another principal's too"), "{error}");
        assert!(!error.contains(HASH), "{error}");
        let error = parse_principals("[[principal]\nname = 1").unwrap_err();
        assert!(error.starts_with("line 1:"), "{error}");
        let error = one(&format!(
            "roles = [\"worker\"]\nqueues = [\"a\"]\ntoken_sha256 = \"{HASH}\""
        ))
        .unwrap_err();
        assert!(
            error.contains("invalid type") && !error.contains(HASH),
            "{error}"
        );
    }
}
