//! The Lua scripts, loaded once and called by SHA; a Redis that lost them (restart, SCRIPT
//! FLUSH) gets them again on the NOSCRIPT reply.

use fred::{
    clients::Client,
    error::Error,
    types::{FromValue, MultipleKeys, MultipleValues, scripts::Script},
};

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
}

#[derive(Clone)]
pub struct Scripts {
    pub submit: LuaScript,
    pub submit_many: LuaScript,
    pub promote: LuaScript,
    pub claim: LuaScript,
    pub heartbeat: LuaScript,
    pub complete: LuaScript,
    pub fail: LuaScript,
    pub cancel: LuaScript,
    pub sweep: LuaScript,
}

impl Scripts {
    pub fn new() -> Self {
        Self {
            submit: LuaScript::new("submit", include_str!("lua/submit.lua")),
            submit_many: LuaScript::new("submit_many", include_str!("lua/submit_many.lua")),
            promote: LuaScript::new("promote", include_str!("lua/promote.lua")),
            claim: LuaScript::new("claim", include_str!("lua/claim.lua")),
            heartbeat: LuaScript::new("heartbeat", include_str!("lua/heartbeat.lua")),
            complete: LuaScript::new("complete", include_str!("lua/complete.lua")),
            fail: LuaScript::new("fail", include_str!("lua/fail.lua")),
            cancel: LuaScript::new("cancel", include_str!("lua/cancel.lua")),
            sweep: LuaScript::new("sweep", include_str!("lua/sweep.lua")),
        }
    }
}

impl Default for Scripts {
    fn default() -> Self {
        Self::new()
    }
}
