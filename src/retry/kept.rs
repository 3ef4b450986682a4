//! What a response future keeps of its request for a retry.

use std::any::Any;

use tower::retry::Policy;

use super::RedisPolicy;
use crate::error::Error;
use crate::request::{Body, CommandTimeout, Request, Response};

/// The longest command (its encoded arguments, [`Cmd::raw`](crate::Cmd))
/// kept inline: a `GET` of a key of up to 31 bytes.
pub(super) const INLINE_MAX: usize = 48;

/// The copy of a request kept for the next attempt.
pub(super) enum Kept {
    /// No retry is possible (the policy keeps no copy).
    Nothing,
    /// The policy's copy.
    Request(Request),
    /// A short command in place, for the [`RedisPolicy`], which reads the
    /// request only when an attempt failed: a success costs no copy on the
    /// heap, a failure rebuilds the request.
    Inline(Inline),
}

/// A short single command and its settings.
pub(super) struct Inline {
    bytes: [u8; INLINE_MAX],
    len: u8,
    argc: u8,
    idempotent: bool,
    timeout: CommandTimeout,
}

/// `policy` as the crate's own policy, when it is one (known at compile
/// time: the check folds away).
pub(super) fn redis_policy<P: 'static>(policy: &mut P) -> Option<&mut RedisPolicy> {
    (policy as &mut dyn Any).downcast_mut()
}

impl Kept {
    /// What to keep of `req` for `policy`: its `clone_request`, except
    /// that the [`RedisPolicy`] keeps a short command inline.
    pub(super) fn of<P>(policy: &mut P, req: &Request) -> Kept
    where
        P: Policy<Request, Response, Error> + 'static,
    {
        match redis_policy(policy) {
            Some(p) if !p.may_retry() => Kept::Nothing,
            Some(_) => Inline::of(req).map_or_else(|| Kept::Request(req.clone()), Kept::Inline),
            None => policy
                .clone_request(req)
                .map_or(Kept::Nothing, Kept::Request),
        }
    }

    /// The kept request, rebuilt if it is inline; `None`: nothing kept.
    pub(super) fn request_mut(&mut self) -> Option<&mut Request> {
        if let Kept::Inline(i) = self {
            *self = Kept::Request(i.rebuild());
        }
        match self {
            Kept::Request(r) => Some(r),
            _ => None,
        }
    }

    /// The kept request, rebuilt if it is inline, leaving nothing.
    pub(super) fn take(&mut self) -> Option<Request> {
        match std::mem::replace(self, Kept::Nothing) {
            Kept::Nothing => None,
            Kept::Request(r) => Some(r),
            Kept::Inline(i) => Some(i.rebuild()),
        }
    }
}

impl Inline {
    /// `req` in place, if it is a single command of at most
    /// [`INLINE_MAX`] encoded bytes.
    fn of(req: &Request) -> Option<Inline> {
        let Body::Cmd(c) = req.body() else {
            return None;
        };
        let (raw, argc) = c.raw();
        let mut bytes = [0; INLINE_MAX];
        bytes.get_mut(..raw.len())?.copy_from_slice(raw);
        Some(Inline {
            bytes,
            // Both fit: an argument takes at least 6 bytes (`$0\r\n\r\n`).
            len: raw.len() as u8,
            argc: argc as u8,
            idempotent: req.is_idempotent(),
            timeout: req.timeout(),
        })
    }

    /// The request it was made from.
    fn rebuild(&self) -> Request {
        let raw = self.bytes[..usize::from(self.len)].to_vec();
        let r = Request::from(crate::Cmd::from_raw(raw, usize::from(self.argc)))
            .with_command_timeout(self.timeout);
        if self.idempotent {
            r.idempotent()
        } else {
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::resp::{cmd, Pipeline};

    fn kept(req: &Request) -> Kept {
        Kept::of(&mut RedisPolicy::new(), req)
    }

    #[test]
    fn rebuilt_request_equals_the_original() {
        let short = cmd("GET").arg("k");
        // Exactly INLINE_MAX encoded bytes: `$3\r\nSET\r\n` (9), `$1\r\nk\r\n`
        // (7) and a 25-byte value (`$25\r\n` ... `\r\n`: 32).
        let boundary = cmd("SET").arg("k").arg("v".repeat(25));
        assert_eq!(boundary.raw().0.len(), INLINE_MAX);
        let over = cmd("SET").arg("k").arg("v".repeat(26));
        let long = cmd("SET").arg("k").arg("v".repeat(1000));
        let ms = Duration::from_millis(250);
        for (c, inline) in [
            (short, true),
            (boundary, true),
            (over, false),
            (long, false),
        ] {
            let plain = Request::from(c);
            for req in [
                plain.clone(),
                plain.clone().with_timeout(ms).idempotent(),
                plain.clone().without_timeout(),
                plain.clone().idempotent(),
            ] {
                let mut k = kept(&req);
                assert_eq!(matches!(k, Kept::Inline(_)), inline, "{req:?}");
                assert_eq!(k.request_mut(), Some(&mut req.clone()));
                assert_eq!(kept(&req).take(), Some(req.clone()));
            }
        }
        // A pipeline is copied, however short.
        let p = Request::from(Pipeline::new().cmd(cmd("GET").arg("k")));
        assert!(matches!(kept(&p), Kept::Request(ref r) if *r == p));
    }

    #[test]
    fn the_response_future_stays_small() {
        use crate::handoff::Handoff;
        use crate::relax::RelaxTimeout;
        use std::mem::size_of;
        type Stack = RelaxTimeout<Handoff<crate::Connector>>;
        type Inner = <Stack as tower_service::Service<Request>>::Future;
        // The inline copy is no larger than its bytes and the settings.
        assert!(size_of::<Kept>() <= INLINE_MAX + 24);
        // The backoff's sleep and the deadline's timer are boxed: the
        // future holds the service, the policy, the copy, the attempt (or
        // an error) and the deadline, and little else.
        let parts = size_of::<Stack>()
            + size_of::<RedisPolicy>()
            + size_of::<Kept>()
            + size_of::<Inner>().max(size_of::<Option<Error>>())
            + size_of::<Option<tokio::time::Instant>>()
            + size_of::<Option<Box<tokio::time::Sleep>>>();
        assert!(size_of::<super::super::ResponseFuture<Stack, RedisPolicy>>() <= parts + 8);
    }

    #[test]
    fn no_copy_without_retries() {
        let mut off = RedisPolicy::new().max_retries(0);
        let req = Request::from(cmd("GET").arg("k"));
        assert!(Kept::of(&mut off, &req).take().is_none());
    }
}
