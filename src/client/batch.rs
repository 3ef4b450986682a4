//! Pipelines, transactions and `WATCH`: [`Batch`] and [`Watch`].

use bytes::Bytes;

use super::from_value::type_error;
use super::{Client, Dedicated, DedicatedConn, FromValue};
use crate::error::{Error, Result, ServerError};
use crate::handoff::leaves_state;
use crate::resp::{cmd, Cmd, Pipeline, Value};

/// Commands sent as one request: a pipeline ([`Client::pipeline`]) or a
/// `MULTI`/`EXEC` transaction ([`Client::transaction`]).
///
/// Every typed helper of [`Client`] has a twin here that queues the command
/// (`batch.get("k").incr("n")`); [`Batch::cmd`] queues any command. Replies
/// are converted together by [`Batch::query`] into a tuple (one element per
/// reply not [ignored](Batch::ignore)), a `Vec`, or [`Value`].
///
/// ```no_run
/// # async fn run(client: redis_layers::client::Client) -> Result<(), redis_layers::Error> {
/// let mut p = client.pipeline();
/// for i in 0..3 {
///     p.rpush("list", [i]).ignore();
/// }
/// p.lrange("list", 0, -1);
/// let (all,): (Vec<i64>,) = p.query().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Batch {
    client: Client,
    cmds: Pipeline,
    /// Positions of the commands whose replies are left out, ascending
    /// (usually none: no allocation, and no pass over the replies).
    ignored: Vec<usize>,
    atomic: bool,
}

impl Batch {
    pub(super) fn new(client: Client, atomic: bool) -> Self {
        Batch {
            client,
            cmds: Pipeline::new(),
            ignored: Vec::new(),
            atomic,
        }
    }

    pub(super) fn push(&mut self, c: Cmd) -> &mut Self {
        self.cmds.push(c);
        self
    }

    /// Queues any command.
    pub fn cmd(&mut self, c: Cmd) -> &mut Self {
        self.push(c)
    }

    /// Leaves the reply of the last command queued out of the result of
    /// [`Batch::query`] (an error reply still fails the query).
    pub fn ignore(&mut self) -> &mut Self {
        if let Some(last) = self.cmds.len().checked_sub(1) {
            if self.ignored.last() != Some(&last) {
                self.ignored.push(last);
            }
        }
        self
    }

    /// Number of commands queued.
    pub fn len(&self) -> usize {
        self.cmds.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.cmds.is_empty()
    }

    /// True for a transaction.
    pub fn is_atomic(&self) -> bool {
        self.atomic
    }

    /// Sends the commands and converts the replies not ignored, as one
    /// array, into `T` (e.g. a tuple).
    ///
    /// The commands are moved into the request, not copied, so the batch is
    /// empty afterwards (whatever the outcome), ready for the next commands.
    /// To send the same commands again, send a [clone](Clone) of the batch
    /// (it copies each command shorter than 1 KiB; longer ones share their
    /// buffer once sent).
    ///
    /// ```no_run
    /// # async fn run(client: redis_layers::client::Client) -> Result<(), redis_layers::Error> {
    /// let mut p = client.pipeline();
    /// p.incr("hits").get("greeting");
    /// let (hits, again): ((i64, String), (i64, String)) = (p.clone().query().await?, p.query().await?);
    /// assert_eq!(again.0, hits.0 + 1);
    /// assert!(p.is_empty());
    /// # Ok(()) }
    /// ```
    ///
    /// A command's error reply fails the conversion with [`Error::Server`]
    /// (unless `T` keeps raw values: `Vec<Value>`). In a transaction, a
    /// command the server refused to queue fails the whole transaction
    /// with that command's error, and nothing is applied.
    pub async fn query<T: FromValue>(&mut self) -> Result<T> {
        let cmds = std::mem::take(&mut self.cmds);
        let ignored = std::mem::take(&mut self.ignored);
        let sent = cmds.len();
        if cmds.is_empty() {
            return T::from_value(Value::Array(Vec::new()));
        }
        let replies = if self.atomic {
            // One request: the connection writes it whole, and the cluster
            // layer sends a transaction to the node of its slot in one piece.
            let replies = exec_reply(
                self.client
                    .send(transaction(cmds.into_cmds().into_iter()))
                    .await?
                    .into_pipeline()?,
            )?;
            replies.ok_or_else(|| {
                Error::Type("EXEC answered nil: the transaction was aborted".into())
            })?
        } else {
            self.client
                .send(cmds)
                .await?
                .into_pipeline()?
                .into_iter()
                .map(|r| r.unwrap_or_else(error_value))
                .collect()
        };
        T::from_value(Value::Array(kept(&ignored, sent, replies)?))
    }
}

/// `MULTI`, the commands, `EXEC`.
fn transaction(cmds: impl ExactSizeIterator<Item = Cmd>) -> Pipeline {
    let mut p = Pipeline::with_capacity(cmds.len() + 2);
    p.push(cmd("MULTI"));
    cmds.for_each(|c| {
        p.push(c);
    });
    p.push(cmd("EXEC"));
    p
}

/// The replies not ignored (`ignored`: positions, ascending), of `sent`
/// commands; an ignored error reply is still an error.
fn kept(ignored: &[usize], sent: usize, replies: Vec<Value>) -> Result<Vec<Value>> {
    if replies.len() != sent {
        return Err(Error::Type(format!(
            "expected {sent} replies, got {}",
            replies.len()
        )));
    }
    if ignored.is_empty() {
        return Ok(replies);
    }
    let mut out = Vec::with_capacity(sent.saturating_sub(ignored.len()));
    let mut skip = ignored.iter().peekable();
    for (i, v) in replies.into_iter().enumerate() {
        if skip.next_if_eq(&&i).is_none() {
            out.push(v);
        } else if let Value::Error(e) = v {
            return Err(Error::Server(ServerError::parse(e)));
        }
    }
    Ok(out)
}

fn error_value(e: ServerError) -> Value {
    Value::Error(Bytes::copy_from_slice(e.as_bytes()))
}

/// Reads the replies of `MULTI`, the queued commands and `EXEC`: the
/// commands' replies, or `None` when `EXEC` answered nil (a watched key
/// changed).
fn exec_reply(results: Vec<Result<Value, ServerError>>) -> Result<Option<Vec<Value>>> {
    let queued = results.len().saturating_sub(2);
    let mut it = results.into_iter();
    if let Some(Err(e)) = it.next() {
        // No transaction was open, so the server ran each queued command
        // as it came (and then refused EXEC): MULTI's refusal alone would
        // read as "nothing happened". The code (NOPERM, ...) stays first.
        let line = String::from_utf8_lossy(e.as_bytes());
        return Err(Error::Server(ServerError::parse(format!(
            "{line} (MULTI was refused: the queued commands may have run, outside a transaction)"
        ))));
    }
    let mut refused = None;
    for r in it.by_ref().take(queued) {
        if let Err(e) = r {
            refused.get_or_insert(e);
        }
    }
    match it.next() {
        Some(Ok(Value::Null)) => Ok(None),
        Some(Ok(Value::Array(v))) => Ok(Some(v.into_iter().map(plain_error).collect())),
        Some(Ok(other)) => Err(type_error("the EXEC reply (an array)", &other)),
        // EXECABORT: the command that was refused says why.
        Some(Err(e)) => Err(Error::Server(refused.unwrap_or(e))),
        None => Err(Error::Type("no reply to EXEC".into())),
    }
}

/// RESP3 blob errors as plain errors, so every conversion sees one kind.
fn plain_error(v: Value) -> Value {
    match v {
        Value::BlobError(e) => Value::Error(e),
        v => v,
    }
}

/// An optimistic transaction under way ([`Client::watch`]): a dedicated
/// connection with `WATCH` sent. Read with [`Watch::cmd`], then
/// [`Watch::exec`] a transaction. Dropped without `exec`, the connection is
/// closed (the watch goes with it).
pub struct Watch {
    conn: DedicatedConn,
    client: Client,
    slot: Option<u16>,
    /// A command of the caller's own left state on the connection (other
    /// than `WATCH`, which the transaction ends): it is not reused.
    tainted: bool,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("slot", &self.slot)
            .finish_non_exhaustive()
    }
}

impl Watch {
    pub(super) fn new(conn: DedicatedConn, client: Client, slot: Option<u16>) -> Self {
        Watch {
            conn,
            client,
            slot,
            tainted: false,
        }
    }

    /// Sends a command on the watched connection (reads, or more `WATCH`es).
    pub async fn cmd<T: FromValue>(&mut self, c: Cmd) -> Result<T> {
        self.tainted |= leaves_state(&c) && !c.is("WATCH");
        let req = self.client.timed(c);
        T::from_value(self.conn.send(req).await?.into_value()?)
    }

    /// Runs `tx` (made with [`Client::transaction`] or
    /// [`Client::pipeline`]: either way it runs between `MULTI` and
    /// `EXEC`) on the watched connection: `Some` with the converted
    /// replies, or `None` when a watched key changed since `WATCH` and
    /// nothing was applied.
    ///
    /// In a cluster, the transaction's keys must be in the watched keys'
    /// slot ([`Error::Config`] otherwise, and nothing is sent).
    pub async fn exec<T: FromValue>(mut self, tx: &Batch) -> Result<Option<T>> {
        if let Dedicated::Cluster(c) = &self.client.dedicated {
            let slot = c.slot_of(tx.cmds.cmds())?;
            if slot.is_some() && slot != self.slot {
                return Err(Error::config(format!(
                    "the transaction's keys are in slot {slot:?}, the watched keys in {:?}",
                    self.slot
                )));
            }
        }
        let req = self
            .client
            .timed(transaction(tx.cmds.cmds().iter().cloned()));
        let replies = exec_reply(self.conn.send(req).await?.into_pipeline()?);
        // `EXEC` ran (applied, or aborted by a watched key): the
        // transaction and the watch are over, and the connection can serve
        // the next user, unless a command left state on it (one of the
        // caller's own through `cmd`, or one in the transaction). A failed
        // `MULTI` or `EXEC` leaves it dirty.
        if replies.is_ok() && !self.tainted && !tx.cmds.cmds().iter().any(leaves_state) {
            self.conn.mark_clean();
        }
        match replies? {
            Some(replies) => {
                T::from_value(Value::Array(kept(&tx.ignored, tx.len(), replies)?)).map(Some)
            }
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> Result<Value, ServerError> {
        Ok(Value::SimpleString("OK".into()))
    }

    fn queued() -> Result<Value, ServerError> {
        Ok(Value::SimpleString("QUEUED".into()))
    }

    #[test]
    fn kept_replies() {
        let v = |i| Value::Integer(i);
        let replies = || vec![v(0), v(1), v(2), v(3)];
        assert_eq!(kept(&[], 4, replies()).unwrap(), replies());
        assert_eq!(kept(&[0, 2], 4, replies()).unwrap(), vec![v(1), v(3)]);
        assert_eq!(kept(&[3], 4, replies()).unwrap(), vec![v(0), v(1), v(2)]);
        assert!(kept(&[0, 1, 2, 3], 4, replies()).unwrap().is_empty());
        // A reply more or less than commands sent: a type error, not a shift.
        assert!(matches!(kept(&[], 3, replies()), Err(Error::Type(_))));
        assert!(matches!(kept(&[1], 5, replies()), Err(Error::Type(_))));
        // An ignored error reply still fails; a kept one is a value.
        let with_error = vec![v(0), Value::Error("ERR no".into())];
        assert!(matches!(
            kept(&[1], 2, with_error.clone()),
            Err(Error::Server(_))
        ));
        assert_eq!(
            kept(&[0], 2, with_error.clone()).unwrap(),
            vec![with_error[1].clone()]
        );
    }

    #[test]
    fn exec_replies() {
        let done = exec_reply(vec![
            ok(),
            queued(),
            Ok(Value::Array(vec![Value::Integer(1)])),
        ]);
        assert_eq!(done.unwrap(), Some(vec![Value::Integer(1)]));
        // A watched key changed.
        assert_eq!(
            exec_reply(vec![ok(), queued(), Ok(Value::Null)]).unwrap(),
            None
        );
        // A command refused at queue time: its error, not EXECABORT's.
        let refused = ServerError::parse("ERR wrong number of arguments for 'incr' command");
        let r = exec_reply(vec![
            ok(),
            Err(refused.clone()),
            Err(ServerError::parse("EXECABORT Transaction discarded")),
        ]);
        assert!(matches!(r, Err(Error::Server(e)) if e == refused));
        // MULTI itself refused (e.g. nested).
        let r = exec_reply(vec![Err(ServerError::parse(
            "ERR MULTI calls can not be nested",
        ))]);
        assert!(matches!(r, Err(Error::Server(_))));
        assert!(matches!(
            exec_reply(vec![ok(), Ok(Value::Integer(3))]),
            Err(Error::Type(_))
        ));
    }
}
