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

/// A script's source as Redis gets it: a shebang with the script's flags, the shared helpers
/// of `lua/lib.lua`, then the script. The flags say what a Redis past its `maxmemory` does:
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
        concat!(
            $shebang,
            include_str!("lua/lib.lua"),
            include_str!(concat!("lua/", $name, ".lua"))
        )
    };
}

/// One script; see the header of its `lua/*.lua` file for its KEYS, ARGV and reply.
#[derive(Clone)]
pub struct LuaScript {
    name: &'static str,
    script: Script,
}

impl LuaScript {
    fn new(name: &'static str, source: &'static str) -> Self {
        Self {
            name,
            script: Script::from_lua(source),
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
            // fred's pipelines have no EVALSHA of their own: the command as Redis reads it,
            // routed (in a cluster) by its first key, the third argument.
            let mut call: Vec<Value> = Vec::with_capacity(2 + keys.len() + args.len());
            call.push(self.script.sha1().clone().into());
            call.push(Value::Integer(keys.len() as i64));
            call.extend(keys.iter().map(|key| Value::from(key.as_str())));
            call.extend(args.iter().cloned());
            let evalsha = CustomCommand::new_static("EVALSHA", ClusterHash::Offset(2), false);
            let _: () = pipeline.custom(evalsha, call).await?;
            for key in then {
                let _: () = pipeline.hmget(key, fields.to_vec()).await?;
            }
            let mut replies = pipeline.try_all::<Value>().await.into_iter();
            match replies.next() {
                // A Redis that lost its scripts (restart, SCRIPT FLUSH): load, then again.
                Some(Err(error)) if error.details().starts_with("NOSCRIPT") && !loaded => {
                    self.script.load(client).await?;
                    loaded = true;
                }
                Some(reply) => return Ok((reply?, replies.collect::<Result<_, _>>()?)),
                None => return Err(Error::new(fred::error::ErrorKind::Unknown, "no reply")),
            }
        }
    }
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
            submit_keyed: LuaScript::new("submit_keyed", script!(intake "submit_keyed")),
            submit_many: LuaScript::new("submit_many", script!(intake "submit_many")),
            promote: LuaScript::new("promote", script!(drain "promote")),
            claim: LuaScript::new("claim", script!(intake "claim")),
            release: LuaScript::new("release", script!(drain "release")),
            heartbeat: LuaScript::new("heartbeat", script!(drain "heartbeat")),
            progress: LuaScript::new("progress", script!(intake "progress")),
            complete: LuaScript::new("complete", script!(drain "complete")),
            fail: LuaScript::new("fail", script!(drain "fail")),
            expire: LuaScript::new("expire", script!(drain "expire")),
            cancel: LuaScript::new("cancel", script!(drain "cancel")),
            sweep: LuaScript::new("sweep", script!(drain "sweep")),
            due: LuaScript::new("due", script!(drain "due")),
            admit: LuaScript::new("admit", script!(intake "admit")),
            stats: LuaScript::new("stats", script!(read "stats")),
            list_after: LuaScript::new("list_after", script!(read "list_after")),
        }
    }
}

impl Default for Scripts {
    fn default() -> Self {
        Self::new()
    }
}
