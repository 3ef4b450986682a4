//! [`Scan`]: every key, page by page, on one server or every primary.

use super::{Client, Dedicated, FromValue};
use crate::error::Result;
use crate::resp::{cmd, Cmd};
use crate::transport::{Connection, Endpoint};

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
#[derive(Debug)]
pub struct Scan {
    client: Client,
    pattern: Option<String>,
    count: Option<usize>,
    /// Cluster primaries not scanned yet (`None`: not read yet).
    nodes: Option<Vec<Endpoint>>,
    /// The cluster node being scanned.
    conn: Option<Connection>,
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
                        let Some(node) = nodes.pop() else {
                            self.done = true;
                            break;
                        };
                        self.conn = Some(c.connector.connect(node).await?);
                    }
                    let conn = self.conn.as_ref().expect("connected above");
                    let req = self.client.timed(self.page_cmd());
                    FromValue::from_value(conn.send(req).await?.into_value()?)?
                }
                _ => self.client.cmd(self.page_cmd()).await?,
            };
            self.cursor = cursor;
            if cursor == 0 {
                match &self.client.dedicated {
                    // Next node, if any.
                    Dedicated::Cluster(_) => self.conn = None,
                    _ => self.done = true,
                }
            }
            if !keys.is_empty() {
                return Ok(Some(keys));
            }
        }
        Ok(None)
    }
}
