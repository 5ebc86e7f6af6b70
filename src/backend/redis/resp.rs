//! RESP2 replies read off a byte buffer, for the async flavor's own pipelined
//! connection (`pipeline.rs`): IO-free, compiled once.
//!
//! A reply is parsed only once it is complete, into the `redis` crate's [`Value`]
//! exactly as its own parser makes it (`+OK` is [`Value::Okay`], `$-1` and `*-1` are
//! [`Value::Nil`]); an error reply is handed to the crate's parser, so that its
//! [`ServerError`](redis::ServerError) and codes (`NOSCRIPT`, ...) are the crate's.
//!
//! ```text
//! parse(b"$5\r\nhello\r\n:1\r\n") == Ok(Some((Value::BulkString(b"hello"), 11)))
//! parse(b"$5\r\nhel")            == Ok(None)   // incomplete: read more
//! ```

use redis::{ErrorKind, RedisError, RedisResult, Value};

/// Arrays nested deeper than this are refused (the replies we read are flat).
const MAX_DEPTH: usize = 16;

/// The longest bulk string or array accepted (Redis's own `proto-max-bulk-len` is
/// 512 MB).
const MAX_LEN: i64 = 512 * 1024 * 1024;

/// The reply at the start of `buf` and the bytes it took; `None` while it is
/// incomplete.
pub(crate) fn parse(buf: &[u8]) -> RedisResult<Option<(Value, usize)>> {
    let mut at = 0;
    match value(buf, &mut at, 0)? {
        Some(v) => Ok(Some((v, at))),
        None => Ok(None),
    }
}

fn malformed(what: &str) -> RedisError {
    RedisError::from((
        ErrorKind::Parse,
        "malformed reply from Redis",
        what.to_owned(),
    ))
}

/// The line starting at `*at` (without its CRLF), and `*at` moved past it.
#[inline]
fn line<'a>(buf: &'a [u8], at: &mut usize) -> RedisResult<Option<&'a [u8]>> {
    let rest = &buf[*at..];
    let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
        return Ok(None);
    };
    if lf == 0 || rest[lf - 1] != b'\r' {
        return Err(malformed("a line not ended by CRLF"));
    }
    *at += lf + 1;
    Ok(Some(&rest[..lf - 1]))
}

fn int(digits: &[u8]) -> RedisResult<i64> {
    let (negative, digits) = match digits {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, digits),
    };
    if digits.is_empty() || digits.len() > 19 {
        return Err(malformed("an integer"));
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(malformed("an integer"));
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(i64::from(d - b'0')))
            .ok_or_else(|| malformed("an integer"))?;
    }
    Ok(if negative { -n } else { n })
}

fn value(buf: &[u8], at: &mut usize, depth: usize) -> RedisResult<Option<Value>> {
    let start = *at;
    let Some(&kind) = buf.get(start) else {
        return Ok(None);
    };
    *at += 1;
    let Some(head) = line(buf, at)? else {
        return Ok(None);
    };
    Ok(Some(match kind {
        b'+' if head == b"OK" => Value::Okay,
        b'+' => Value::SimpleString(
            String::from_utf8(head.to_vec()).map_err(|_| malformed("a simple string"))?,
        ),
        b':' => Value::Int(int(head)?),
        b'-' => redis::parse_redis_value(&buf[start..*at])?,
        b'$' => {
            let len = int(head)?;
            if len < 0 {
                return Ok(Some(Value::Nil));
            }
            if len > MAX_LEN {
                return Err(malformed("a bulk string too long"));
            }
            let len = len as usize;
            let data = *at;
            let Some(end) = data.checked_add(len + 2).filter(|&e| e <= buf.len()) else {
                return Ok(None);
            };
            if &buf[end - 2..end] != b"\r\n" {
                return Err(malformed("a bulk string not ended by CRLF"));
            }
            *at = end;
            Value::BulkString(buf[data..end - 2].to_vec())
        }
        b'*' => {
            let len = int(head)?;
            if len < 0 {
                return Ok(Some(Value::Nil));
            }
            if len > MAX_LEN || depth >= MAX_DEPTH {
                return Err(malformed("an array too long or too deep"));
            }
            // Each element takes at least 3 bytes: no room reserved past what came.
            let mut items = Vec::with_capacity((len as usize).min((buf.len() - *at) / 3));
            for _ in 0..len {
                match value(buf, at, depth + 1)? {
                    Some(v) => items.push(v),
                    None => return Ok(None),
                }
            }
            Value::Array(items)
        }
        _ => return Err(malformed("an unknown reply type")),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(v: &Value, out: &mut Vec<u8>) {
        match v {
            Value::Nil => out.extend_from_slice(b"$-1\r\n"),
            Value::Okay => out.extend_from_slice(b"+OK\r\n"),
            Value::SimpleString(s) => out.extend_from_slice(format!("+{s}\r\n").as_bytes()),
            Value::Int(n) => out.extend_from_slice(format!(":{n}\r\n").as_bytes()),
            Value::BulkString(b) => {
                out.extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Value::Array(items) => {
                out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
                for i in items {
                    encode(i, out);
                }
            }
            other => unreachable!("not RESP2: {other:?}"),
        }
    }

    fn resp2() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Nil),
            Just(Value::Okay),
            "[a-zA-Z0-9 ]{0,12}"
                .prop_filter("not OK", |s| s != "OK")
                .prop_map(Value::SimpleString),
            any::<i64>().prop_map(Value::Int),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::BulkString),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            proptest::collection::vec(inner, 0..6).prop_map(Value::Array)
        })
    }

    proptest! {
        /// Whole replies parse as the `redis` crate parses them, taking exactly their
        /// bytes; every shorter prefix is incomplete, never an error or a wrong value.
        #[test]
        fn parses_as_the_redis_crate(v in resp2(), tail in proptest::collection::vec(any::<u8>(), 0..4)) {
            let mut bytes = Vec::new();
            encode(&v, &mut bytes);
            let whole = bytes.len();
            prop_assert_eq!(&redis::parse_redis_value(&bytes).unwrap(), &v);
            for cut in 0..whole {
                prop_assert!(parse(&bytes[..cut]).unwrap().is_none(), "prefix of {} bytes", cut);
            }
            bytes.extend_from_slice(&tail);
            prop_assert_eq!(parse(&bytes).unwrap(), Some((v, whole)));
        }
    }

    #[test]
    fn errors_are_the_crates() {
        let (v, n) = parse(b"-NOSCRIPT No matching script.\r\n+OK\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(n, 31);
        let e = v.extract_error().unwrap_err();
        assert_eq!(e.code(), Some("NOSCRIPT"));
        let (v, _) = parse(b"-WRONGPASS invalid password\r\n").unwrap().unwrap();
        assert_eq!(v.extract_error().unwrap_err().code(), Some("WRONGPASS"));
        assert_eq!(parse(b"-ERR unfinished").unwrap(), None);
    }

    #[test]
    fn nil_forms() {
        assert_eq!(parse(b"$-1\r\n").unwrap(), Some((Value::Nil, 5)));
        assert_eq!(parse(b"*-1\r\n").unwrap(), Some((Value::Nil, 5)));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b"?x\r\n"[..],
            b":12a\r\n",
            b":\r\n",
            b":99999999999999999999\r\n",
            b"$3\r\nabcd\r\n",
            b"+OK\n",
            b"$9999999999\r\n",
            b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
