//! Replies to Rust types: [`FromValue`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasher, Hash};

use bytes::Bytes;

use crate::error::{Error, Result, ServerError};
use crate::resp::Value;

/// A Rust type a reply converts to: what the typed helpers of
/// [`Client`](super::Client) return.
///
/// The conversions accept the RESP2 and the RESP3 shape of the same reply,
/// so code does not change with the protocol: a hash is a map in RESP3 and
/// a flat `[field, value, ...]` array in RESP2, a score is a double in RESP3
/// and a bulk string in RESP2, a pair list is `[[a, 1], ...]` in RESP3 and
/// `[a, 1, ...]` in RESP2.
///
/// | Rust type | accepts |
/// |---|---|
/// | [`Value`] | anything (error replies nested in arrays stay [`Value::Error`]) |
/// | `()` | anything but an error |
/// | `String`, `Vec<u8>`, [`Bytes`] | simple, bulk and verbatim strings; `String` also numbers |
/// | `i64`, `i32`, `u64`, `u32`, `usize` | integers, whole doubles, strings that parse |
/// | `f64` | doubles, integers, strings that parse (`inf`, `-inf`, `nan` too) |
/// | `bool` | booleans, integers (non-zero is true), `OK`, `nil` (false) |
/// | `Option<T>` | `nil` as `None`, anything else as `T` |
/// | `Vec<T>`, `HashSet<T>`, `BTreeSet<T>` | arrays, sets; `nil` as empty |
/// | `HashMap<K, V>`, `BTreeMap<K, V>` | maps, flat arrays, arrays of pairs; `nil` as empty |
/// | tuples of 1 to 4 | arrays of exactly that length |
///
/// A reply of another shape is an [`Error::Type`]; an error reply nested
/// in an array (a pipeline or `EXEC` result) is an [`Error::Server`].
///
/// ```
/// use std::collections::HashMap;
/// use redis_layers::client::FromValue;
/// use redis_layers::Value;
///
/// let resp2 = Value::Array(vec![Value::BulkString("f".into()), Value::BulkString("1".into())]);
/// let resp3 = Value::Map(vec![(Value::BulkString("f".into()), Value::Integer(1))]);
/// for v in [resp2, resp3] {
///     let h: HashMap<String, i64> = FromValue::from_value(v)?;
///     assert_eq!(h["f"], 1);
/// }
/// assert!(i64::from_value(Value::BulkString("x".into())).is_err());
/// # Ok::<(), redis_layers::Error>(())
/// ```
pub trait FromValue: Sized {
    /// Converts one reply.
    fn from_value(v: Value) -> Result<Self>;

    /// Converts the items of an array reply to a list. Pairs override it to
    /// read a flat RESP2 array (`[a, 1, b, 2]`) as well as nested pairs.
    fn from_items(items: Vec<Value>) -> Result<Vec<Self>> {
        items.into_iter().map(Self::from_value).collect()
    }

    /// Converts the entries of a map reply to a list. By default the map is
    /// read as a flat list (`[k1, v1, k2, v2]`); pairs read it as pairs.
    fn from_pairs(pairs: Vec<(Value, Value)>) -> Result<Vec<Self>> {
        let flat = pairs.into_iter().flat_map(|(k, v)| [k, v]).collect();
        Self::from_items(flat)
    }
}

/// The [`Error::Type`] for a reply that is not what `want` needs.
pub(crate) fn type_error(want: &str, got: &Value) -> Error {
    Error::Type(format!("expected {want}, got {}", describe(got)))
}

/// The shape of a reply, never its contents: an `Error::Type` message ends
/// up in logs, and a value may be a secret (a session token, a password).
fn describe(v: &Value) -> String {
    match v {
        Value::SimpleString(b) => format!("a simple string of {} bytes", b.len()),
        Value::Error(_) | Value::BlobError(_) => "an error reply".into(),
        Value::Integer(_) => "an integer".into(),
        Value::BulkString(b) => format!("a bulk string of {} bytes", b.len()),
        Value::Null => "nil".into(),
        Value::Array(a) => format!("an array of {}", a.len()),
        Value::Map(m) => format!("a map of {}", m.len()),
        Value::Set(s) => format!("a set of {}", s.len()),
        Value::Double(_) => "a double".into(),
        Value::Boolean(_) => "a boolean".into(),
        Value::BigNumber(_) => "a big number".into(),
        Value::VerbatimString { .. } => "a verbatim string".into(),
        Value::Push(_) => "a push".into(),
        Value::Attribute { .. } => "an attribute".into(),
        #[allow(unreachable_patterns)]
        _ => "another kind of reply".into(),
    }
}

/// Strips attributes and turns an error reply into [`Error::Server`].
/// Inlined: every typed reply passes here, nearly always unchanged.
#[inline]
fn plain(v: Value) -> Result<Value> {
    match v {
        Value::Attribute { .. } | Value::Error(_) | Value::BlobError(_) => unwrap_reply(v),
        v => Ok(v),
    }
}

/// [`plain`]'s rare cases.
fn unwrap_reply(v: Value) -> Result<Value> {
    match v {
        Value::Attribute { value, .. } => plain(*value),
        Value::Error(e) | Value::BlobError(e) => Err(Error::Server(ServerError::parse(e))),
        v => Ok(v),
    }
}

impl FromValue for Value {
    fn from_value(v: Value) -> Result<Self> {
        Ok(v)
    }
}

impl FromValue for () {
    fn from_value(v: Value) -> Result<Self> {
        plain(v).map(drop)
    }
}

impl FromValue for Bytes {
    #[inline]
    fn from_value(v: Value) -> Result<Self> {
        // The string cases first, straight from `v`: through `plain` each
        // element of an MGET reply was moved twice more, with store
        // forwarding stalls (the `Client` took 1.6-1.9 us more CPU per MGET
        // of 100 keys than its untyped stack; 0.4-0.8 us after). The rare
        // cases repeat the string arms after `plain` instead of calling this
        // function again on its result: the recursive form is not inlined
        // and cost 12 ns per element instead of 1.7 (in-process loop).
        match v {
            Value::SimpleString(b) | Value::BulkString(b) => Ok(b),
            Value::VerbatimString { text, .. } => Ok(text),
            v => match plain(v)? {
                Value::SimpleString(b) | Value::BulkString(b) => Ok(b),
                Value::VerbatimString { text, .. } => Ok(text),
                other => Err(type_error("a string", &other)),
            },
        }
    }
}

impl FromValue for Vec<u8> {
    fn from_value(v: Value) -> Result<Self> {
        Bytes::from_value(v).map(Vec::from)
    }
}

impl FromValue for String {
    fn from_value(v: Value) -> Result<Self> {
        match plain(v)? {
            Value::SimpleString(b) | Value::BulkString(b) | Value::BigNumber(b) => utf8(b),
            Value::VerbatimString { text, .. } => utf8(text),
            Value::Integer(i) => Ok(i.to_string()),
            Value::Double(d) => Ok(format_double(d)),
            other => Err(type_error("a string", &other)),
        }
    }
}

/// A double the way Redis spells it (`inf`, `-inf`, `nan`, `1.5`).
fn format_double(d: f64) -> String {
    if d.is_infinite() {
        if d > 0.0 { "inf" } else { "-inf" }.into()
    } else if d.is_nan() {
        "nan".into()
    } else {
        format!("{d}")
    }
}

fn utf8(b: Bytes) -> Result<String> {
    String::from_utf8(b.into()).map_err(|e| {
        Error::Type(format!(
            "expected UTF-8 text, got {} bytes that are not",
            e.as_bytes().len()
        ))
    })
}

macro_rules! int_from_value {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn from_value(v: Value) -> Result<Self> {
                let v = plain(v)?;
                let parsed = match &v {
                    Value::Integer(i) => <$t>::try_from(*i).ok(),
                    Value::Boolean(b) => Some(<$t>::from(*b)),
                    // A RESP3 score of 3 is the double 3.0.
                    Value::Double(d) if d.is_finite() && d.fract() == 0.0 => {
                        <$t>::try_from(*d as i128).ok()
                    }
                    other => other
                        .as_bytes()
                        .and_then(|b| std::str::from_utf8(b).ok())
                        .and_then(|s| s.parse().ok()),
                };
                parsed.ok_or_else(|| type_error(concat!("an integer (", stringify!($t), ")"), &v))
            }
        }
    )*};
}
int_from_value!(i64, i32, u64, u32, usize);

impl FromValue for f64 {
    fn from_value(v: Value) -> Result<Self> {
        let v = plain(v)?;
        let parsed = match &v {
            Value::Double(d) => Some(*d),
            Value::Integer(i) => Some(*i as f64),
            other => other
                .as_bytes()
                .and_then(|b| std::str::from_utf8(b).ok())
                .and_then(|s| match s {
                    "inf" | "+inf" => Some(f64::INFINITY),
                    "-inf" => Some(f64::NEG_INFINITY),
                    s => s.parse().ok(),
                }),
        };
        parsed.ok_or_else(|| type_error("a number", &v))
    }
}

impl FromValue for bool {
    fn from_value(v: Value) -> Result<Self> {
        match plain(v)? {
            Value::Boolean(b) => Ok(b),
            Value::Integer(i) => Ok(i != 0),
            Value::Null => Ok(false),
            Value::SimpleString(s) if &s[..] == b"OK" => Ok(true),
            Value::SimpleString(s) | Value::BulkString(s) if &s[..] == b"1" => Ok(true),
            Value::SimpleString(s) | Value::BulkString(s) if &s[..] == b"0" => Ok(false),
            other => Err(type_error("a boolean", &other)),
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    #[inline]
    fn from_value(v: Value) -> Result<Self> {
        match v {
            Value::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// The elements of a list-shaped reply, converted; `nil` is empty.
fn list<T: FromValue>(v: Value) -> Result<Vec<T>> {
    match plain(v)? {
        Value::Array(items) | Value::Set(items) | Value::Push(items) => T::from_items(items),
        Value::Map(pairs) => T::from_pairs(pairs),
        Value::Null => Ok(Vec::new()),
        other => Err(type_error("an array", &other)),
    }
}

impl<T: FromValue> FromValue for Vec<T> {
    fn from_value(v: Value) -> Result<Self> {
        list(v)
    }
}

impl<T: FromValue + Eq + Hash, S: BuildHasher + Default> FromValue for HashSet<T, S> {
    fn from_value(v: Value) -> Result<Self> {
        Ok(list(v)?.into_iter().collect())
    }
}

impl<T: FromValue + Ord> FromValue for BTreeSet<T> {
    fn from_value(v: Value) -> Result<Self> {
        Ok(list(v)?.into_iter().collect())
    }
}

impl<K: FromValue + Eq + Hash, V: FromValue, S: BuildHasher + Default> FromValue
    for HashMap<K, V, S>
{
    fn from_value(v: Value) -> Result<Self> {
        Ok(list::<(K, V)>(v)?.into_iter().collect())
    }
}

impl<K: FromValue + Ord, V: FromValue> FromValue for BTreeMap<K, V> {
    fn from_value(v: Value) -> Result<Self> {
        Ok(list::<(K, V)>(v)?.into_iter().collect())
    }
}

macro_rules! tuple_from_value {
    ($n:literal; $($t:ident),+) => {
        impl<$($t: FromValue),+> FromValue for ($($t,)+) {
            fn from_value(v: Value) -> Result<Self> {
                match plain(v)? {
                    Value::Array(items) if items.len() == $n => {
                        let mut it = items.into_iter();
                        Ok(($($t::from_value(it.next().expect("length checked"))?,)+))
                    }
                    other => Err(type_error(concat!("an array of ", $n), &other)),
                }
            }

            // One macro for every arity: `% 1` is there for the 1-tuple.
            #[allow(clippy::modulo_one)]
            fn from_items(items: Vec<Value>) -> Result<Vec<Self>> {
                // Nested (`[[a, 1], [b, 2]]`, RESP3) or flat (`[a, 1, b, 2]`, RESP2).
                let nested = items
                    .iter()
                    .all(|i| matches!(i, Value::Array(a) if a.len() == $n));
                if nested || $n == 1 {
                    return items.into_iter().map(Self::from_value).collect();
                }
                if items.len() % $n != 0 {
                    return Err(Error::Type(format!(
                        "expected a flat array of {}-tuples, got {} elements",
                        $n,
                        items.len()
                    )));
                }
                let mut out = Vec::with_capacity(items.len() / $n);
                let mut it = items.into_iter();
                while it.len() > 0 {
                    out.push(($($t::from_value(it.next().expect("length checked"))?,)+));
                }
                Ok(out)
            }

            fn from_pairs(pairs: Vec<(Value, Value)>) -> Result<Vec<Self>> {
                if $n == 2 {
                    let items = pairs
                        .into_iter()
                        .map(|(k, v)| Value::Array(vec![k, v]))
                        .collect();
                    return items_of::<Self>(items);
                }
                let flat = pairs.into_iter().flat_map(|(k, v)| [k, v]).collect();
                Self::from_items(flat)
            }
        }
    };
}

fn items_of<T: FromValue>(items: Vec<Value>) -> Result<Vec<T>> {
    items.into_iter().map(T::from_value).collect()
}

tuple_from_value!(1; A);
tuple_from_value!(2; A, B);
tuple_from_value!(3; A, B, C);
tuple_from_value!(4; A, B, C, D);

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn scalars() {
        assert_eq!(String::from_value(bulk("hi")).unwrap(), "hi");
        assert_eq!(String::from_value(Value::Integer(3)).unwrap(), "3");
        assert!(String::from_value(Value::Null).is_err());
        assert_eq!(i64::from_value(bulk("-7")).unwrap(), -7);
        assert!(u32::from_value(Value::Integer(-1)).is_err());
        assert!(matches!(i64::from_value(bulk("x")), Err(Error::Type(_))));
        assert_eq!(f64::from_value(bulk("1.5")).unwrap(), 1.5);
        assert_eq!(f64::from_value(bulk("-inf")).unwrap(), f64::NEG_INFINITY);
        assert_eq!(f64::from_value(Value::Double(2.0)).unwrap(), 2.0);
        assert!(bool::from_value(Value::SimpleString("OK".into())).unwrap());
        assert!(!bool::from_value(Value::Null).unwrap());
        assert!(bool::from_value(Value::Integer(1)).unwrap());
        assert_eq!(Option::<String>::from_value(Value::Null).unwrap(), None);
        assert!(matches!(
            i64::from_value(Value::Error("WRONGTYPE no".into())),
            Err(Error::Server(_))
        ));
        assert!(<()>::from_value(Value::Error("ERR x".into())).is_err());
    }

    /// `Bytes` takes its string cases first; the rest still go through
    /// `plain`: attributes stripped, error replies typed, other shapes refused.
    #[test]
    fn bytes_from_every_shape() {
        assert_eq!(Bytes::from_value(bulk("v")).unwrap(), "v");
        assert_eq!(
            Bytes::from_value(Value::SimpleString("OK".into())).unwrap(),
            "OK"
        );
        let verbatim = Value::VerbatimString {
            format: *b"txt",
            text: "t".into(),
        };
        assert_eq!(Bytes::from_value(verbatim).unwrap(), "t");
        let annotated = Value::Attribute {
            attributes: vec![(bulk("ttl"), Value::Integer(3))],
            value: Box::new(bulk("v")),
        };
        assert_eq!(Bytes::from_value(annotated).unwrap(), "v");
        assert!(matches!(
            Bytes::from_value(Value::Error("WRONGTYPE no".into())),
            Err(Error::Server(_))
        ));
        assert!(matches!(
            Bytes::from_value(Value::BlobError("ERR x".into())),
            Err(Error::Server(_))
        ));
        assert!(matches!(
            Bytes::from_value(Value::Integer(1)),
            Err(Error::Type(_))
        ));
        assert!(matches!(
            Bytes::from_value(Value::Null),
            Err(Error::Type(_))
        ));
        assert_eq!(Option::<Bytes>::from_value(Value::Null).unwrap(), None);
    }

    #[test]
    fn pairs_in_both_shapes() {
        let flat = Value::Array(vec![bulk("a"), bulk("1"), bulk("b"), bulk("2")]);
        let nested = Value::Array(vec![
            Value::Array(vec![bulk("a"), Value::Double(1.0)]),
            Value::Array(vec![bulk("b"), Value::Double(2.0)]),
        ]);
        let map = Value::Map(vec![
            (bulk("a"), Value::Integer(1)),
            (bulk("b"), Value::Integer(2)),
        ]);
        for v in [flat, nested, map] {
            let got: Vec<(String, f64)> = FromValue::from_value(v.clone()).unwrap();
            assert_eq!(got, vec![("a".into(), 1.0), ("b".into(), 2.0)]);
            let m: BTreeMap<String, i64> = FromValue::from_value(v).unwrap();
            assert_eq!(m.len(), 2);
        }
        let odd = Value::Array(vec![bulk("a"), bulk("1"), bulk("b")]);
        assert!(Vec::<(String, String)>::from_value(odd).is_err());
        let flat_list: Vec<String> =
            FromValue::from_value(Value::Map(vec![(bulk("k"), bulk("v"))])).unwrap();
        assert_eq!(flat_list, vec!["k", "v"]);
        assert!(Vec::<String>::from_value(Value::Null).unwrap().is_empty());
    }

    #[test]
    fn tuples_check_length() {
        let v = Value::Array(vec![Value::Integer(1), bulk("x")]);
        let (a, b): (i64, String) = FromValue::from_value(v.clone()).unwrap();
        assert_eq!((a, b.as_str()), (1, "x"));
        assert!(<(i64, String, i64)>::from_value(v).is_err());
    }
}
