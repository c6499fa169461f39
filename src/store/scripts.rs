//! The Lua scripts, loaded once and called by SHA; a Redis that lost them (restart, SCRIPT
//! FLUSH) gets them again on the NOSCRIPT reply.

use fred::{
    clients::Client,
    error::Error,
    interfaces::{ClientLike, HashesInterface},
    types::{
        ClusterHash, CustomCommand, FromValue, MultipleKeys, MultipleValues, Value, scripts::Script,
    },
};

/// A script's source as Redis gets it: a shebang with the script's flags, the helpers of
/// `lua/lib.lua` the script calls (see `with_helpers`), then the script. The flags say what a
/// Redis past its `maxmemory` does:
///
/// - `intake`: scripts that take work in (submissions, claims) are refused whole, before they
///   run, with Redis's OOM error (Redis's default for a script with a shebang): no job is
///   accepted, and no job started, whose outcome could not be recorded.
/// - `drain`: scripts that carry work already started to its end (lease renewals, completions,
///   failures, cancellations, releases, promotions, the sweeper) run anyway (`allow-oom`): a
///   full Redis does not cost running jobs their leases or their results, and finished jobs
///   expire and free memory on their retention.
///
/// - `read`: scripts that only read (`no-writes`) run whatever Redis's memory.
///
/// A script without a shebang would be refused only at its first write that Redis deems
/// memory-growing (Redis 7.0's rule for old scripts), which took claims in and refused
/// heartbeats. Shebangs need Redis 7.0 (see `MIN_REDIS_VERSION`).
macro_rules! script {
    (intake $name:literal) => {
        script!(@ "#!lua\n", $name)
    };
    (drain $name:literal) => {
        script!(@ "#!lua flags=allow-oom\n", $name)
    };
    (read $name:literal) => {
        script!(@ "#!lua flags=no-writes\n", $name)
    };
    (@ $shebang:literal, $name:literal) => {
        LuaScript::new(
            $name,
            $shebang,
            include_str!(concat!("lua/", $name, ".lua")),
        )
    };
}

/// The helpers every script may call.
const LIB: &str = include_str!("lua/lib.lua");

/// One script; see the header of its `lua/*.lua` file for its KEYS, ARGV and reply.
#[derive(Clone)]
pub struct LuaScript {
    name: &'static str,
    script: Script,
}

impl LuaScript {
    fn new(name: &'static str, shebang: &str, body: &str) -> Self {
        Self {
            name,
            script: Script::from_lua(format!("{shebang}{}", with_helpers(LIB, body))),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub async fn call<R, K, V>(&self, client: &Client, keys: K, args: V) -> Result<R, Error>
    where
        R: FromValue,
        K: Into<MultipleKeys> + Send,
        V: TryInto<MultipleValues> + Send,
        V::Error: Into<Error> + Send,
    {
        self.script.evalsha_with_reload(client, keys, args).await
    }

    /// Calls the script once per `(keys, args)` in one pipeline: one round trip for them all
    /// (on Redis Cluster, one per node: each call goes to its own first key's slot). Each
    /// call's reply, in order; the calls that found the script lost (restart, SCRIPT FLUSH)
    /// run again once it is loaded.
    pub async fn call_each(
        &self,
        client: &Client,
        calls: &[(Vec<String>, Vec<Value>)],
    ) -> Vec<Result<Value, Error>> {
        let mut replies: Vec<Result<Value, Error>> = vec![Ok(Value::Null); calls.len()];
        let mut pending: Vec<usize> = (0..calls.len()).collect();
        let mut loaded = false;
        while !pending.is_empty() {
            let pipeline = client.pipeline();
            for &i in &pending {
                let (command, call) = self.evalsha(&calls[i].0, &calls[i].1);
                if let Err(error) = pipeline.custom::<(), _>(command, call).await {
                    return vec![Err(error); calls.len()];
                }
            }
            let mut answers = pipeline.try_all::<Value>().await;
            if answers.len() != pending.len() {
                // The pipeline could not be sent: one error for all.
                let error = answers.pop().and_then(Result::err).unwrap_or_else(|| {
                    Error::new(fred::error::ErrorKind::Unknown, "pipeline replies missing")
                });
                return vec![Err(error); calls.len()];
            }
            for (&i, answer) in pending.iter().zip(answers) {
                replies[i] = answer;
            }
            pending.retain(|&i| matches!(&replies[i], Err(error) if script_lost(error)));
            if pending.is_empty() || loaded {
                break;
            }
            if let Err(error) = self.script.load(client).await {
                return vec![Err(error); calls.len()];
            }
            loaded = true;
        }
        replies
    }

    /// Calls the script and, in the same round trip, reads `fields` of each hash in `then`
    /// (HMGET), right after the script ran: its reply, and the values per hash.
    pub async fn call_then_read(
        &self,
        client: &Client,
        keys: Vec<String>,
        args: Vec<Value>,
        then: &[String],
        fields: &[&str],
    ) -> Result<(Value, Vec<Value>), Error> {
        let mut loaded = false;
        loop {
            let pipeline = client.pipeline();
            let (command, call) = self.evalsha(&keys, &args);
            let _: () = pipeline.custom(command, call).await?;
            for key in then {
                let _: () = pipeline.hmget(key, fields.to_vec()).await?;
            }
            let mut replies = pipeline.try_all::<Value>().await.into_iter();
            match replies.next() {
                // A Redis that lost its scripts (restart, SCRIPT FLUSH): load, then again.
                Some(Err(error)) if script_lost(&error) && !loaded => {
                    self.script.load(client).await?;
                    loaded = true;
                }
                Some(reply) => return Ok((reply?, replies.collect::<Result<_, _>>()?)),
                None => return Err(Error::new(fred::error::ErrorKind::Unknown, "no reply")),
            }
        }
    }

    /// An EVALSHA of the script for a pipeline (fred's pipelines have none of their own): the
    /// command as Redis reads it, routed (in a cluster) by its first key, the third argument.
    fn evalsha(&self, keys: &[String], args: &[Value]) -> (CustomCommand, Vec<Value>) {
        let mut call: Vec<Value> = Vec::with_capacity(2 + keys.len() + args.len());
        call.push(self.script.sha1().clone().into());
        call.push(Value::Integer(keys.len() as i64));
        call.extend(keys.iter().map(|key| Value::from(key.as_str())));
        call.extend(args.iter().cloned());
        let command = CustomCommand::new_static("EVALSHA", ClusterHash::Offset(2), false);
        (command, call)
    }
}

/// Whether `error` is Redis's NOSCRIPT: it lost its scripts (restart, SCRIPT FLUSH).
fn script_lost(error: &Error) -> bool {
    error.details().starts_with("NOSCRIPT")
}

#[derive(Clone)]
pub struct Scripts {
    pub submit_keyed: LuaScript,
    pub submit_many: LuaScript,
    pub promote: LuaScript,
    pub claim: LuaScript,
    pub release: LuaScript,
    pub heartbeat: LuaScript,
    pub progress: LuaScript,
    pub complete: LuaScript,
    pub fail: LuaScript,
    pub expire: LuaScript,
    pub cancel: LuaScript,
    pub sweep: LuaScript,
    pub due: LuaScript,
    pub admit: LuaScript,
    pub stats: LuaScript,
    pub list_after: LuaScript,
}

impl Scripts {
    pub fn new() -> Self {
        Self {
            submit_keyed: script!(intake "submit_keyed"),
            submit_many: script!(intake "submit_many"),
            promote: script!(drain "promote"),
            claim: script!(intake "claim"),
            release: script!(drain "release"),
            heartbeat: script!(drain "heartbeat"),
            progress: script!(intake "progress"),
            complete: script!(drain "complete"),
            fail: script!(drain "fail"),
            expire: script!(drain "expire"),
            cancel: script!(drain "cancel"),
            sweep: script!(drain "sweep"),
            due: script!(drain "due"),
            admit: script!(intake "admit"),
            stats: script!(read "stats"),
            list_after: script!(read "list_after"),
        }
    }
}

impl Default for Scripts {
    fn default() -> Self {
        Self::new()
    }
}

/// `lib`'s helpers that `body` calls, directly or through one another, in `lib`'s order, then
/// `body`. Every call of a script runs its top level again, which makes a closure of each
/// helper defined there, called or not: some 500 Redis instructions a helper, every call.
///
/// `lib` is read as blocks, each from a top-level `local` line to the next: a block that
/// defines `local function <name>` is kept when its name is a word of the code kept after it
/// (whole-line comments aside); any other, always.
fn with_helpers(lib: &str, body: &str) -> String {
    let blocks = blocks(lib);
    let mut code = code_of(body);
    let mut kept = vec![false; blocks.len()];
    // A helper calls only helpers defined before it: from the last block to the first.
    for (index, block) in blocks.iter().enumerate().rev() {
        if helper_name(block).is_none_or(|name| mentions(&code, name)) {
            kept[index] = true;
            code.push_str(&code_of(block));
        }
    }
    let mut source: String = blocks
        .iter()
        .zip(kept)
        .filter_map(|(block, kept)| kept.then_some(*block))
        .collect();
    source.push_str(body);
    source
}

/// `lib` cut before each top-level `local` line.
fn blocks(lib: &str) -> Vec<&str> {
    let mut blocks = Vec::new();
    let (mut start, mut offset) = (0, 0);
    for line in lib.split_inclusive('\n') {
        if offset > start && line.starts_with("local ") {
            blocks.push(&lib[start..offset]);
            start = offset;
        }
        offset += line.len();
    }
    blocks.push(&lib[start..]);
    blocks
}

/// The helper a block defines, if it is one.
fn helper_name(block: &str) -> Option<&str> {
    block.strip_prefix("local function ")?.split('(').next()
}

fn code_of(text: &str) -> String {
    text.lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .flat_map(|line| [line, "\n"])
        .collect()
}

/// Whether `name` stands in `code` as a whole word.
fn mentions(code: &str, name: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    code.match_indices(name)
        .any(|(at, _)| !code[..at].ends_with(word) && !code[at + name.len()..].starts_with(word))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELPERS: &str = "-- Helpers.\nlocal function a(x) return x end\n-- b calls a.\n\
        local function b(x)\n  return a(x)\nend\nlocal function ab() return 0 end\n\
        local function c() return 1 end\nlocal K = c()\nlocal function d() return 2 end\n";

    #[test]
    fn a_script_gets_the_helpers_it_calls_and_theirs() {
        let source = with_helpers(HELPERS, "-- d() is not called.\nreturn b(K)\n");
        assert!(source.contains("local function a(x)"), "{source}");
        assert!(source.contains("  return a(x)\nend\n"), "{source}");
        // Other top-level code stays, with what it calls.
        assert!(source.contains("local K = c()\n"), "{source}");
        assert!(source.contains("local function c()"), "{source}");
        // Not called: named in a comment, or part of another word.
        assert!(!source.contains("function d("), "{source}");
        assert!(!source.contains("function ab("), "{source}");
        assert!(source.ends_with("return b(K)\n"));
    }

    #[test]
    fn jobs_scripts_leave_out_what_they_do_not_call() {
        let claim = with_helpers(LIB, include_str!("lua/claim.lua"));
        for called in ["clock", "event_start", "finish_event", "promise"] {
            assert!(
                claim.contains(&format!("local function {called}(")),
                "{called}"
            );
        }
        for other in ["renew_lease", "end_attempt", "requeue", "promised"] {
            assert!(
                !claim.contains(&format!("local function {other}(")),
                "{other}"
            );
        }
    }
}
