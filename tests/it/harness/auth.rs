//! Credentials for tests of the perimeter: an auth file of the test's own, written as
//! docs/security.md shows it, with a fresh token per principal; requests that carry a token.

use jobd::auth::TokenHash;

use super::os::{TempDir, rand_u32};

/// An auth file and the tokens of its principals. Each change replaces the file at once (a
/// rename), as a Kubernetes Secret update does.
pub struct AuthFile {
    dir: TempDir,
    principals: Vec<Principal>,
}

struct Principal {
    name: String,
    roles: Vec<String>,
    queues: Vec<String>,
    tokens: Vec<String>,
    identities: Vec<String>,
}

impl AuthFile {
    /// A file naming nobody yet.
    pub fn new() -> Self {
        let file = Self {
            dir: TempDir::new("jobd-auth"),
            principals: Vec::new(),
        };
        file.write("");
        file
    }

    pub fn path(&self) -> String {
        self.dir
            .path()
            .join("principals.toml")
            .display()
            .to_string()
    }

    /// The flag that makes jobd read this file.
    pub fn flag(&self) -> String {
        format!("--auth-file={}", self.path())
    }

    /// Adds a principal with the roles and queue patterns given and a fresh token, which it
    /// returns.
    pub fn add(&mut self, name: &str, roles: &[&str], queues: &[&str]) -> String {
        self.push(name, roles, queues);
        self.add_token(name)
    }

    /// Adds a principal known by a client certificate's identity (a URI or DNS SAN).
    pub fn add_identity(&mut self, name: &str, roles: &[&str], queues: &[&str], identity: &str) {
        self.push(name, roles, queues);
        self.principal(name).identities.push(identity.to_owned());
        self.rewrite();
    }

    /// Gives the principal `name` one more token, which it returns.
    pub fn add_token(&mut self, name: &str) -> String {
        let token = format!("jobd_test_{name}_{:08x}{:08x}", rand_u32(), rand_u32());
        self.principal(name).tokens.push(token.clone());
        self.rewrite();
        token
    }

    /// Takes `token` from the principal `name`.
    pub fn remove_token(&mut self, name: &str, token: &str) {
        self.principal(name).tokens.retain(|kept| kept != token);
        self.rewrite();
    }

    /// Removes a principal, and with it its credentials.
    pub fn remove(&mut self, name: &str) {
        self.principals.retain(|principal| principal.name != name);
        self.rewrite();
    }

    /// Replaces the whole file with `text`.
    pub fn write(&self, text: &str) {
        let staged = self.dir.path().join("principals.toml.new");
        std::fs::write(&staged, text).unwrap();
        std::fs::rename(&staged, self.path()).unwrap();
    }

    fn push(&mut self, name: &str, roles: &[&str], queues: &[&str]) {
        let owned = |items: &[&str]| items.iter().map(|item| (*item).to_owned()).collect();
        self.principals.push(Principal {
            name: name.to_owned(),
            roles: owned(roles),
            queues: owned(queues),
            tokens: Vec::new(),
            identities: Vec::new(),
        });
    }

    fn principal(&mut self, name: &str) -> &mut Principal {
        self.principals
            .iter_mut()
            .find(|principal| principal.name == name)
            .unwrap_or_else(|| panic!("no principal {name}"))
    }

    /// The file as docs/security.md shows it.
    fn rewrite(&self) {
        let list = |items: &[String]| {
            let quoted: Vec<String> = items.iter().map(|item| format!("{item:?}")).collect();
            format!("[{}]", quoted.join(", "))
        };
        let mut text = String::new();
        for principal in &self.principals {
            let hashes: Vec<String> = principal
                .tokens
                .iter()
                .map(|token| TokenHash::of(token.as_bytes()).to_string())
                .collect();
            text.push_str(&format!(
                "[[principal]]\nname = {:?}\nroles = {}\nqueues = {}\ntoken_sha256 = {}\n\
                 identities = {}\n\n",
                principal.name,
                list(&principal.roles),
                list(&principal.queues),
                list(&hashes),
                list(&principal.identities),
            ));
        }
        self.write(&text);
    }
}

/// `message` as a request that carries `token`: many tokens on one connection. The stubs of a
/// client built with a token of its own (`ClientBuilder::token`) replace this one with it.
pub fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("a valid header"),
    );
    request
}
