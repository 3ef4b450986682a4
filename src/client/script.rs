//! [`Script`]: Lua by SHA1, loaded on demand.

use std::sync::{Arc, Mutex};

use super::{Client, FromValue};
use crate::error::{Error, Result};
use crate::resp::{cmd, Cmd, ToArgs};
use crate::ServerErrorKind;

/// `EVAL`/`EVALSHA` arguments: `numkeys keys... args...`.
pub(super) fn with_keys(c: Cmd, keys: impl ToArgs, args: impl ToArgs) -> Cmd {
    let keys = Cmd::new().with_args(keys);
    let args = Cmd::new().with_args(args);
    c.arg(keys.arg_count()).args(keys.argv()).args(args.argv())
}

/// A Lua script run by its SHA1: `EVALSHA`, falling back to `EVAL` when
/// the server does not know it (`NOSCRIPT`: after a restart, a failover,
/// `SCRIPT FLUSH`, or on a new cluster node). The SHA1 comes from `SCRIPT
/// LOAD` on first use (in a cluster, every primary loads it) and is kept;
/// clones share it.
///
/// ```no_run
/// use redis_layers::client::{Client, Script};
///
/// # async fn run(client: Client) -> Result<(), redis_layers::Error> {
/// let add = Script::new("return redis.call('INCRBY', KEYS[1], ARGV[1])");
/// let n: i64 = add.invoke(&client, ["counter"], [5]).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Script {
    source: Arc<str>,
    sha: Arc<Mutex<Option<String>>>,
}

impl Script {
    /// A script with this Lua source.
    pub fn new(source: impl Into<String>) -> Self {
        Script {
            source: source.into().into(),
            sha: Arc::default(),
        }
    }

    /// The Lua source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The SHA1, once known (after the first [`invoke`](Self::invoke) or
    /// [`load`](Self::load)).
    pub fn sha1(&self) -> Option<String> {
        self.sha.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// `SCRIPT LOAD`s the script and keeps its SHA1.
    pub async fn load(&self, client: &Client) -> Result<String> {
        let sha = client.script_load(&*self.source).await?;
        *self.sha.lock().unwrap_or_else(|p| p.into_inner()) = Some(sha.clone());
        Ok(sha)
    }

    /// Runs the script with `keys` and `args`: `EVALSHA`, or `EVAL` if the
    /// server answers `NOSCRIPT` (which also loads it there).
    pub async fn invoke<T: FromValue>(
        &self,
        client: &Client,
        keys: impl ToArgs,
        args: impl ToArgs,
    ) -> Result<T> {
        let tail = with_keys(Cmd::new(), keys, args);
        let sha = match self.sha1() {
            Some(sha) => sha,
            None => self.load(client).await?,
        };
        let evalsha = cmd("EVALSHA").arg(&sha).args(tail.argv());
        match client.cmd(evalsha).await {
            Err(Error::Server(e)) if e.kind() == &ServerErrorKind::NoScript => {
                client
                    .cmd(cmd("EVAL").arg(&*self.source).args(tail.argv()))
                    .await
            }
            other => other,
        }
    }
}
