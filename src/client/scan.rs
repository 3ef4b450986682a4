//! [`Scan`]: every key, page by page or one at a time ([`ScanStream`]), on
//! one server or every primary.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;

use super::{Client, Dedicated, DedicatedConn, FromValue};
use crate::error::Result;
use crate::resp::{cmd, Cmd};
use crate::transport::Endpoint;

/// A `SCAN` over the whole key space ([`Client::scan`]): standalone through
/// the stack, in a cluster on each primary in turn (a cursor belongs to one
/// node). Guarantees are `SCAN`'s: a key present from start to end is
/// returned at least once (possibly more); keys added or removed meanwhile
/// may or may not be.
///
/// ```no_run
/// # async fn run(client: redis_layers::client::Client) -> Result<(), redis_layers::Error> {
/// let mut scan = client.scan().pattern("user:*").count(500);
/// while let Some(keys) = scan.next_page::<String>().await? {
///     println!("{} keys", keys.len());
/// }
/// # Ok(()) }
/// ```
///
/// A failed page (a connection lost, a timeout) can be asked for again:
/// the cursor and the node stay where they were, and `SCAN` cursors keep
/// no state on the server, so nothing is skipped. [`Scan::into_stream`]
/// gives the keys one at a time.
#[derive(Debug)]
pub struct Scan {
    client: Client,
    pattern: Option<String>,
    count: Option<usize>,
    /// Cluster primaries not scanned yet, the one being scanned last
    /// (`None`: not read yet).
    nodes: Option<Vec<Endpoint>>,
    /// A connection to the last of `nodes`.
    conn: Option<DedicatedConn>,
    cursor: u64,
    done: bool,
}

impl Scan {
    pub(super) fn new(client: Client) -> Self {
        Scan {
            client,
            pattern: None,
            count: None,
            nodes: None,
            conn: None,
            cursor: 0,
            done: false,
        }
    }

    /// `MATCH pattern`: only keys that match the glob-style pattern.
    pub fn pattern(mut self, pattern: impl Into<String>) -> Self {
        self.pattern = Some(pattern.into());
        self
    }

    /// `COUNT n`: a hint of how much work each page does (default 10).
    pub fn count(mut self, n: usize) -> Self {
        self.count = Some(n);
        self
    }

    fn page_cmd(&self) -> Cmd {
        let mut c = cmd("SCAN").arg(self.cursor);
        if let Some(p) = &self.pattern {
            c = c.arg("MATCH").arg(p);
        }
        if let Some(n) = self.count {
            c = c.arg("COUNT").arg(n);
        }
        c
    }

    /// The next keys (never an empty page), or `None` once every node has
    /// been scanned.
    pub async fn next_page<T: FromValue>(&mut self) -> Result<Option<Vec<T>>> {
        while !self.done {
            let (cursor, keys): (u64, Vec<T>) = match &self.client.dedicated {
                Dedicated::Cluster(c) => {
                    if self.conn.is_none() {
                        let nodes = match &mut self.nodes {
                            Some(n) => n,
                            None => {
                                c.endpoint_for(None).await?;
                                self.nodes.insert(c.cluster.slot_map().primaries())
                            }
                        };
                        // The node leaves the list only when its scan is
                        // over: a failed connect is tried again.
                        let Some(node) = nodes.last() else {
                            self.done = true;
                            break;
                        };
                        self.conn = Some(DedicatedConn::leased(&c.leases(node)).await?);
                    }
                    let req = self.client.timed(self.page_cmd());
                    let conn = self.conn.as_mut().expect("connected above");
                    let reply = match conn.send(req).await {
                        Ok(r) => r,
                        Err(e) => {
                            // The next try takes a connection again: a new
                            // one if this one is closed, or this one back
                            // (after a timeout: the late reply is read and
                            // dropped in order).
                            self.conn = None;
                            return Err(e);
                        }
                    };
                    FromValue::from_value(reply.into_value()?)?
                }
                _ => self.client.cmd(self.page_cmd()).await?,
            };
            self.cursor = cursor;
            if cursor == 0 {
                match (&self.client.dedicated, &mut self.nodes) {
                    // Next node, if any.
                    (Dedicated::Cluster(_), Some(nodes)) => {
                        nodes.pop();
                        self.conn = None;
                    }
                    _ => self.done = true,
                }
            }
            if !keys.is_empty() {
                return Ok(Some(keys));
            }
        }
        Ok(None)
    }

    /// The keys one at a time, as a [`Stream`]: each page is asked for
    /// when the one before has been taken. An error ends the stream (use
    /// [`next_page`](Self::next_page) to try a page again).
    ///
    /// ```no_run
    /// # async fn run(client: redis_layers::client::Client) -> Result<(), redis_layers::Error> {
    /// use futures::TryStreamExt;
    /// let keys: Vec<String> = client.scan().pattern("session:*").into_stream().try_collect().await?;
    /// # Ok(()) }
    /// ```
    pub fn into_stream<T: FromValue + Send + 'static>(self) -> ScanStream<T> {
        ScanStream {
            page: Vec::new().into_iter(),
            state: State::Idle(Box::new(self)),
        }
    }
}

type Fetch<T> = Pin<Box<dyn Future<Output = (Box<Scan>, Result<Option<Vec<T>>>)> + Send>>;

/// The keys of a [`Scan`], one at a time ([`Scan::into_stream`]). A key may
/// come more than once, as with `SCAN` itself.
///
/// ```no_run
/// # async fn run(client: redis_layers::client::Client) -> Result<(), redis_layers::Error> {
/// use futures::StreamExt;
/// let mut keys = client.scan().count(1000).into_stream::<String>();
/// while let Some(key) = keys.next().await {
///     let key = key?;
///     # let _ = key;
/// }
/// # Ok(()) }
/// ```
pub struct ScanStream<T> {
    /// The rest of the last page.
    page: std::vec::IntoIter<T>,
    state: State<T>,
}

enum State<T> {
    Idle(Box<Scan>),
    Fetching(Fetch<T>),
    Done,
}

impl<T> std::fmt::Debug for ScanStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Idle(_) => "idle",
            State::Fetching(_) => "fetching",
            State::Done => "done",
        };
        f.debug_struct("ScanStream")
            .field("buffered", &self.page.len())
            .field("state", &state)
            .finish()
    }
}

// Nothing in it is pinned: the page fetch is boxed.
impl<T> Unpin for ScanStream<T> {}

impl<T: FromValue + Send + 'static> Stream for ScanStream<T> {
    type Item = Result<T>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<T>>> {
        let this = &mut *self;
        loop {
            if let Some(key) = this.page.next() {
                return Poll::Ready(Some(Ok(key)));
            }
            match std::mem::replace(&mut this.state, State::Done) {
                State::Idle(mut scan) => {
                    this.state = State::Fetching(Box::pin(async move {
                        let page = scan.next_page::<T>().await;
                        (scan, page)
                    }));
                }
                State::Fetching(mut fetch) => match fetch.as_mut().poll(cx) {
                    Poll::Pending => {
                        this.state = State::Fetching(fetch);
                        return Poll::Pending;
                    }
                    Poll::Ready((scan, Ok(Some(keys)))) => {
                        this.page = keys.into_iter();
                        this.state = State::Idle(scan);
                    }
                    // Done, or an error, which is the last item.
                    Poll::Ready((_, Ok(None))) => return Poll::Ready(None),
                    Poll::Ready((_, Err(e))) => return Poll::Ready(Some(Err(e))),
                },
                State::Done => return Poll::Ready(None),
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let more = match self.state {
            State::Done => Some(self.page.len()),
            _ => None,
        };
        (self.page.len(), more)
    }
}
