//! RESP2 and RESP3: values, an incremental decoder with limits, the command
//! encoder and builder, and a `tokio_util` codec.
//!
//! The decoder is our own rather than a crate's because it sits on the hot
//! path of every reply: it scans without allocating, resumes where a partial
//! read stopped, enforces limits before allocating, slices replies out of the
//! read buffer without copying, and lifts pushes nested in aggregates out of
//! them (a Redis 7.0 behaviour no RESP crate handles).

mod cmd;
pub(crate) mod decoder;
mod value;

pub use cmd::{cmd, ArgWriter, Argv, Cmd, Each, Pipeline, ToArg, ToArgs};
pub use decoder::{Decoder, Limits};
pub use value::Value;

use bytes::BytesMut;

use crate::error::Error;

/// A [`tokio_util::codec`] codec: decodes [`Value`]s, encodes [`Value`]s and
/// [`Cmd`]s. Handy for servers, proxies and tests built on `Framed`.
///
/// ```
/// use redis_layers::{resp::RespCodec, cmd, Value};
/// use tokio_util::codec::{Decoder as _, Encoder as _};
/// use bytes::BytesMut;
///
/// let mut codec = RespCodec::default();
/// let mut buf = BytesMut::new();
/// codec.encode(&cmd("PING"), &mut buf).unwrap();
/// assert_eq!(&buf[..], b"*1\r\n$4\r\nPING\r\n");
/// codec.encode(Value::Integer(3), &mut buf).unwrap();
/// buf.clear();
/// buf.extend_from_slice(b"+PONG\r\n");
/// assert_eq!(codec.decode(&mut buf).unwrap(), Some(Value::SimpleString("PONG".into())));
/// ```
#[derive(Debug, Default)]
pub struct RespCodec {
    decoder: Decoder,
}

impl RespCodec {
    /// A codec whose decoder enforces `limits`.
    pub fn with_limits(limits: Limits) -> Self {
        RespCodec {
            decoder: Decoder::with_limits(limits),
        }
    }
}

impl tokio_util::codec::Decoder for RespCodec {
    type Item = Value;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Value>, Error> {
        Ok(self.decoder.decode(src)?)
    }
}

impl tokio_util::codec::Encoder<Value> for RespCodec {
    type Error = Error;

    fn encode(&mut self, item: Value, dst: &mut BytesMut) -> Result<(), Error> {
        item.encode(dst);
        Ok(())
    }
}

impl tokio_util::codec::Encoder<&Value> for RespCodec {
    type Error = Error;

    fn encode(&mut self, item: &Value, dst: &mut BytesMut) -> Result<(), Error> {
        item.encode(dst);
        Ok(())
    }
}

impl tokio_util::codec::Encoder<&Cmd> for RespCodec {
    type Error = Error;

    fn encode(&mut self, item: &Cmd, dst: &mut BytesMut) -> Result<(), Error> {
        item.write_to(dst);
        Ok(())
    }
}
