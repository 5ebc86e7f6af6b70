//! The memcached meta-protocol codec (memcached >= 1.6.10), free of IO.
//!
//! Requests are built into a byte buffer after the key is checked
//! ([`check_memcached`](crate::key::check_memcached)), so a key memcached would misread
//! (a space turns the rest into flags, a newline ends the command) is never sent.
//! Replies are parsed strictly, by their flag letters, from a byte buffer that may hold
//! a partial reply: [`parse`] says "need more bytes", returns a reply and how many
//! bytes it used, or fails with [`ErrorKind::Protocol`]. It never panics, whatever
//! the bytes (property-tested below).
//!
//! ```text
//!   mg <key> v c t        VA <len> c<cas> t<ttl>\r\n<data>\r\n  |  EN
//!   ms <key> <len> ME T4  HD c<cas>  |  NS
//!   md <key> C<cas>       HD  |  EX  |  NF
//!   ma <key> N0 J<n> v    VA <len>\r\n<counter>\r\n  |  CLIENT_ERROR (not a number)
//!   mn                    MN
//! ```

use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};
use crate::key::check_memcached;

/// The longest reply line (without its data block) this client accepts.
pub const MAX_LINE: usize = 4096;

/// The largest data block accepted in a `VA` reply (memcached's own maximum item size).
pub const MAX_VALUE: usize = 1 << 30;

/// memcached reads an expiry above this many seconds as an absolute unix time.
pub const RELATIVE_EXPTIME_MAX: u64 = 60 * 60 * 24 * 30;

/// A request flag: one letter, maybe a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flag {
    /// `v`: return the value.
    Value,
    /// `c`: return the CAS unique.
    Cas,
    /// `t`: return the remaining TTL in seconds (`-1`: none).
    Ttl,
    /// `ME`: store only if absent (add).
    ModeAdd,
    /// `T<n>`: set the expiry (see [`exptime`]).
    SetExptime(u64),
    /// `C<n>`: only if the CAS unique is still `n`.
    CompareCas(u64),
    /// `N<n>` (`ma`): on a miss, create the counter with the expiry `n` (0: never
    /// expires).
    AutoCreate(u64),
    /// `J<n>` (`ma`): the value a counter [`AutoCreate`](Flag::AutoCreate) creates
    /// (and returns, not incremented).
    Initial(u64),
}

impl Flag {
    fn encode(self, out: &mut Vec<u8>) {
        out.push(b' ');
        match self {
            Flag::Value => out.push(b'v'),
            Flag::Cas => out.push(b'c'),
            Flag::Ttl => out.push(b't'),
            Flag::ModeAdd => out.extend_from_slice(b"ME"),
            Flag::SetExptime(n) => {
                out.push(b'T');
                push_number(out, n);
            }
            Flag::CompareCas(n) => {
                out.push(b'C');
                push_number(out, n);
            }
            Flag::AutoCreate(n) => {
                out.push(b'N');
                push_number(out, n);
            }
            Flag::Initial(n) => {
                out.push(b'J');
                push_number(out, n);
            }
        }
    }
}

fn push_number(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// `mg <key> <flags>\r\n`. Fails with [`ErrorKind::InvalidKey`] before writing anything.
pub fn get(key: &[u8], flags: &[Flag]) -> Result<Vec<u8>> {
    command(b"mg", key, None, flags)
}

/// `ms <key> <len> <flags>\r\n<value>\r\n`.
pub fn set(key: &[u8], value: &[u8], flags: &[Flag]) -> Result<Vec<u8>> {
    command(b"ms", key, Some(value), flags)
}

/// `md <key> <flags>\r\n`.
pub fn delete(key: &[u8], flags: &[Flag]) -> Result<Vec<u8>> {
    command(b"md", key, None, flags)
}

/// `ma <key> <flags>\r\n`: increments the decimal counter under `key` by one
/// (`v`: returns the new value; memcached wraps around at 2^64).
pub fn increment(key: &[u8], flags: &[Flag]) -> Result<Vec<u8>> {
    command(b"ma", key, None, flags)
}

/// The value of a counter as `ma v` returns it: a decimal `u64`.
pub fn counter(value: &[u8]) -> Option<u64> {
    number(value)
}

/// `mn\r\n`: the no-op, answered `MN` (a ping).
pub fn noop() -> Vec<u8> {
    b"mn\r\n".to_vec()
}

fn command(name: &[u8], key: &[u8], value: Option<&[u8]>, flags: &[Flag]) -> Result<Vec<u8>> {
    check_memcached(key)?;
    let data = value.map_or(0, |v| v.len() + 2);
    let mut out = Vec::with_capacity(name.len() + key.len() + 24 + 12 * flags.len() + data);
    out.extend_from_slice(name);
    out.push(b' ');
    out.extend_from_slice(key);
    if let Some(value) = value {
        out.push(b' ');
        push_number(&mut out, value.len() as u64);
    }
    for flag in flags {
        flag.encode(&mut out);
    }
    out.extend_from_slice(b"\r\n");
    if let Some(value) = value {
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    Ok(out)
}

/// The `T` field for a TTL: `None` → 0 (never expires); otherwise
/// `ceil(ttl + TICK_MARGIN) + 2` whole seconds, so that the key never expires before
/// `ttl` has passed since the server stored it.
///
/// Why 2 and the margin: memcached stores the expiry `clock + T` on a clock of whole
/// seconds that a one-second timer updates, and drops the key at the first tick where
/// the clock reaches it. The key may be stored just before a tick, and the clock
/// steps by 2 in one tick whenever the timer's phase (it drifts by about 1 ms a tick)
/// crosses a whole second: a key lives more than `T - 1 s - (length of the tick it
/// was stored in)`, that is more than `T - 2 s - TICK_MARGIN` while the timer fires
/// at most [`TICK_MARGIN`](crate::core::poll::TICK_MARGIN) late. It lives at most
/// `T + 1.25 s`: less than `ttl + 4.5 s`. (Measured on memcached 1.6.18: `T3` keys
/// stored in the two seconds before such a step lived 1.0 to 2.0 s.)
///
/// Past 30 days memcached reads the field as an absolute unix time: then it is
/// `now_unix + seconds`, clamped to the largest time memcached parses (2038-01-19).
pub fn exptime(ttl: Option<Duration>, now_unix: u64) -> u64 {
    let Some(ttl) = ttl else { return 0 };
    let floor = ttl.saturating_add(crate::core::poll::TICK_MARGIN);
    let whole = floor.as_secs() + u64::from(floor.subsec_nanos() > 0);
    let secs = whole.saturating_add(2);
    if secs <= RELATIVE_EXPTIME_MAX {
        secs
    } else {
        now_unix.saturating_add(secs).min(i32::MAX as u64)
    }
}

/// The reply flags this client reads; other letters are checked for form and ignored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplyFlags {
    /// `c<n>`: the CAS unique (0 on a server run with CAS disabled, `-C`).
    pub cas: Option<u64>,
    /// `t<n>`: the remaining TTL in seconds, `-1` for none.
    pub ttl: Option<i64>,
}

/// Which error line the server sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorLine {
    /// `ERROR`: an unknown command.
    Generic,
    /// `CLIENT_ERROR <message>`.
    Client,
    /// `SERVER_ERROR <message>`.
    Server,
}

/// One reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `HD`: success without a value (stored, deleted, or a hit without `v`).
    Hd(ReplyFlags),
    /// `VA <len>` and its data block: a hit with a value.
    Va(Vec<u8>, ReplyFlags),
    /// `EN`: a miss.
    En,
    /// `NS`: not stored (an add found the key).
    Ns(ReplyFlags),
    /// `EX`: the CAS unique did not match.
    Ex(ReplyFlags),
    /// `NF`: not found (a CAS or delete found no key).
    Nf(ReplyFlags),
    /// `MN`: the answer to `mn`.
    Mn,
    /// An error line; the connection should be dropped after it (memcached may read
    /// the rest of a rejected request as commands).
    Error(ErrorLine, String),
}

impl Reply {
    /// A short name for error messages.
    pub fn code(&self) -> &'static str {
        match self {
            Reply::Hd(_) => "HD",
            Reply::Va(..) => "VA",
            Reply::En => "EN",
            Reply::Ns(_) => "NS",
            Reply::Ex(_) => "EX",
            Reply::Nf(_) => "NF",
            Reply::Mn => "MN",
            Reply::Error(ErrorLine::Generic, _) => "ERROR",
            Reply::Error(ErrorLine::Client, _) => "CLIENT_ERROR",
            Reply::Error(ErrorLine::Server, _) => "SERVER_ERROR",
        }
    }
}

fn protocol(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Protocol, message.into())
}

/// Parses one reply from the start of `buf`.
///
/// `Ok(None)`: `buf` holds only the beginning of a reply; read more and call again.
/// `Ok(Some((reply, used)))`: the reply and how many bytes of `buf` it took.
/// `Err`: the bytes are not a reply this client understands (a
/// [`Protocol`](ErrorKind::Protocol) error); drop the connection.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>> {
    let Some(nl) = buf.iter().take(MAX_LINE).position(|&b| b == b'\n') else {
        if buf.len() >= MAX_LINE {
            return Err(protocol(format!(
                "a reply line longer than {MAX_LINE} bytes"
            )));
        }
        return Ok(None);
    };
    if nl == 0 || buf[nl - 1] != b'\r' {
        return Err(protocol("a reply line not ended by CR LF"));
    }
    let line = &buf[..nl - 1];
    let after_line = nl + 1;
    if let Some(reply) = error_line(line)? {
        return Ok(Some((reply, after_line)));
    }
    let mut words = line.split(|&b| b == b' ');
    let code = words.next().unwrap_or_default();
    let reply = match code {
        b"VA" => {
            let len = words
                .next()
                .and_then(number::<u64>)
                .filter(|&n| n <= MAX_VALUE as u64)
                .ok_or_else(|| protocol("a VA reply without a valid length"))?
                as usize;
            let flags = reply_flags(words)?;
            let end = after_line + len;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(protocol("a VA data block not ended by CR LF"));
            }
            return Ok(Some((
                Reply::Va(buf[after_line..end].to_vec(), flags),
                end + 2,
            )));
        }
        b"HD" => Reply::Hd(reply_flags(words)?),
        b"NS" => Reply::Ns(reply_flags(words)?),
        b"EX" => Reply::Ex(reply_flags(words)?),
        b"NF" => Reply::Nf(reply_flags(words)?),
        b"EN" | b"MN" => {
            if words.next().is_some() {
                return Err(protocol(format!(
                    "unexpected flags after {}",
                    String::from_utf8_lossy(code)
                )));
            }
            if code == b"EN" { Reply::En } else { Reply::Mn }
        }
        _ => {
            return Err(protocol(format!(
                "unknown reply {:?}",
                String::from_utf8_lossy(&line[..line.len().min(64)])
            )));
        }
    };
    Ok(Some((reply, after_line)))
}

fn error_line(line: &[u8]) -> Result<Option<Reply>> {
    let (kind, rest) = if line == b"ERROR" {
        (ErrorLine::Generic, &b""[..])
    } else if let Some(rest) = line.strip_prefix(b"CLIENT_ERROR") {
        (ErrorLine::Client, rest)
    } else if let Some(rest) = line.strip_prefix(b"SERVER_ERROR") {
        (ErrorLine::Server, rest)
    } else if let Some(rest) = line.strip_prefix(b"ERROR ") {
        (ErrorLine::Generic, rest)
    } else {
        return Ok(None);
    };
    if !rest.is_empty() && rest[0] != b' ' && kind != ErrorLine::Generic {
        return Err(protocol("a malformed error line"));
    }
    let message = String::from_utf8_lossy(rest.trim_ascii()).into_owned();
    Ok(Some(Reply::Error(kind, message)))
}

fn reply_flags<'a>(words: impl Iterator<Item = &'a [u8]>) -> Result<ReplyFlags> {
    let mut flags = ReplyFlags::default();
    for word in words {
        let Some((&letter, value)) = word.split_first() else {
            return Err(protocol("an empty reply flag (two spaces)"));
        };
        if !letter.is_ascii_alphabetic() || value.iter().any(|&b| b <= b' ' || b == 0x7f) {
            return Err(protocol(format!(
                "a malformed reply flag {:?}",
                String::from_utf8_lossy(word)
            )));
        }
        let bad = || {
            protocol(format!(
                "a malformed or repeated reply flag {:?}",
                String::from_utf8_lossy(word)
            ))
        };
        let repeated = match letter {
            b'c' => flags.cas.replace(number(value).ok_or_else(bad)?).is_some(),
            b't' => {
                let ttl = if value == b"-1" {
                    -1
                } else {
                    number::<u32>(value).ok_or_else(bad)?.into()
                };
                flags.ttl.replace(ttl).is_some()
            }
            _ => false,
        };
        if repeated {
            return Err(bad());
        }
    }
    Ok(flags)
}

/// A decimal number of ASCII digits only (no sign, no spaces), without overflow.
fn number<T: std::str::FromStr>(digits: &[u8]) -> Option<T> {
    if digits.is_empty() || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// A read buffer for one connection: bytes come in, replies go out.
#[derive(Debug, Default)]
pub struct ReplyBuffer {
    /// Initialized storage; `buf[..end]` holds received bytes not yet parsed.
    buf: Vec<u8>,
    end: usize,
}

/// How many bytes a read asks for at least.
const READ_CHUNK: usize = 16 * 1024;

impl ReplyBuffer {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next complete reply, if the buffer holds one.
    pub fn next_reply(&mut self) -> Result<Option<Reply>> {
        match parse(&self.buf[..self.end])? {
            Some((reply, used)) => {
                self.buf.copy_within(used..self.end, 0);
                self.end -= used;
                if self.end == 0 && self.buf.len() > 1 << 20 {
                    self.buf = Vec::new(); // after a large value
                }
                Ok(Some(reply))
            }
            None => Ok(None),
        }
    }

    /// Whether no unparsed byte is left (after a reply, a leftover byte means the
    /// connection is out of step).
    pub fn is_empty(&self) -> bool {
        self.end == 0
    }

    /// Space to read into; call [`filled`](ReplyBuffer::filled) with the count read.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.buf.len() - self.end < READ_CHUNK {
            self.buf.resize(self.end + READ_CHUNK, 0);
        }
        &mut self.buf[self.end..]
    }

    /// Counts `n` bytes of the last [`spare`](ReplyBuffer::spare) as received.
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn one(bytes: &[u8]) -> Reply {
        let (reply, used) = parse(bytes).unwrap().unwrap();
        assert_eq!(used, bytes.len(), "{bytes:?}");
        reply
    }

    fn bad(bytes: &[u8]) {
        let err = parse(bytes).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol, "{bytes:?}");
    }

    #[test]
    fn requests() {
        assert_eq!(
            get(b"k", &[Flag::Value, Flag::Cas, Flag::Ttl]).unwrap(),
            b"mg k v c t\r\n"
        );
        assert_eq!(
            set(b"lock", b"tok", &[Flag::ModeAdd, Flag::SetExptime(31)]).unwrap(),
            b"ms lock 3 ME T31\r\ntok\r\n"
        );
        assert_eq!(
            set(b"k", b"", &[Flag::CompareCas(u64::MAX)]).unwrap(),
            b"ms k 0 C18446744073709551615\r\n\r\n"
        );
        assert_eq!(
            delete(b"k", &[Flag::CompareCas(0)]).unwrap(),
            b"md k C0\r\n"
        );
        assert_eq!(noop(), b"mn\r\n");
        assert_eq!(
            increment(
                b"k-fence",
                &[
                    Flag::AutoCreate(0),
                    Flag::Initial(1_800_000_000_000_000),
                    Flag::Value
                ]
            )
            .unwrap(),
            b"ma k-fence N0 J1800000000000000 v\r\n"
        );
        assert_eq!(counter(b"18446744073709551615"), Some(u64::MAX));
        for bad in [&b""[..], b"-1", b" 1", b"1x", b"18446744073709551616"] {
            assert_eq!(counter(bad), None, "{bad:?}");
        }
        let binary = set(b"b", b"\0\r\n x", &[]).unwrap();
        assert_eq!(binary, b"ms b 5\r\n\0\r\n x\r\n");
    }

    #[test]
    fn bad_keys_are_never_encoded() {
        for key in [
            &b""[..],
            b"a b",
            b"a\rb",
            b"a\nb",
            b"a\0b",
            &[b'k'; 251][..],
        ] {
            assert_eq!(get(key, &[]).unwrap_err().kind(), ErrorKind::InvalidKey);
            assert_eq!(
                set(key, b"v", &[]).unwrap_err().kind(),
                ErrorKind::InvalidKey
            );
            assert_eq!(delete(key, &[]).unwrap_err().kind(), ErrorKind::InvalidKey);
            assert_eq!(
                increment(key, &[]).unwrap_err().kind(),
                ErrorKind::InvalidKey
            );
        }
    }

    #[test]
    fn exptime_is_a_floor_on_a_clock_that_steps_by_two() {
        let ms = Duration::from_millis;
        assert_eq!(exptime(None, 0), 0);
        assert_eq!(exptime(Some(ms(1)), 0), 3);
        assert_eq!(exptime(Some(ms(750)), 0), 3);
        assert_eq!(exptime(Some(ms(751)), 0), 4);
        assert_eq!(exptime(Some(ms(1000)), 0), 4);
        assert_eq!(exptime(Some(ms(1750)), 0), 4);
        assert_eq!(exptime(Some(Duration::from_secs(30)), 0), 33);
        // The floor: a key lives more than T - 2 s - TICK_MARGIN.
        for millis in (1..10_000).step_by(37) {
            let t = exptime(Some(ms(millis)), 0);
            let shortest =
                Duration::from_secs(t) - Duration::from_secs(2) - crate::core::poll::TICK_MARGIN;
            assert!(shortest >= ms(millis), "{millis} ms → T{t}");
            assert!(
                shortest < ms(millis) + Duration::from_secs(1),
                "{millis} ms → T{t}"
            );
        }
        let month = Duration::from_secs(RELATIVE_EXPTIME_MAX);
        assert_eq!(
            exptime(Some(month - Duration::from_secs(3)), 7),
            RELATIVE_EXPTIME_MAX
        );
        assert_eq!(
            exptime(Some(month), 1_800_000_000),
            1_800_000_000 + RELATIVE_EXPTIME_MAX + 3
        );
        assert_eq!(
            exptime(Some(crate::MAX_DURATION), 1_800_000_000),
            i32::MAX as u64
        );
    }

    #[test]
    fn replies_by_flag_letter() {
        assert_eq!(
            one(b"VA 3 t-1 c42\r\nabc\r\n"),
            Reply::Va(
                b"abc".to_vec(),
                ReplyFlags {
                    cas: Some(42),
                    ttl: Some(-1)
                }
            )
        );
        assert_eq!(
            one(b"VA 2 c7 t12 Oxyz kfoo b\r\n\r\n\r\n"),
            Reply::Va(
                b"\r\n".to_vec(),
                ReplyFlags {
                    cas: Some(7),
                    ttl: Some(12)
                }
            )
        );
        assert_eq!(one(b"HD\r\n"), Reply::Hd(ReplyFlags::default()));
        assert_eq!(
            one(b"HD c0\r\n"),
            Reply::Hd(ReplyFlags {
                cas: Some(0),
                ttl: None
            })
        );
        assert_eq!(one(b"EN\r\n"), Reply::En);
        assert_eq!(one(b"NS\r\n"), Reply::Ns(ReplyFlags::default()));
        assert_eq!(one(b"EX\r\n"), Reply::Ex(ReplyFlags::default()));
        assert_eq!(one(b"NF\r\n"), Reply::Nf(ReplyFlags::default()));
        assert_eq!(one(b"MN\r\n"), Reply::Mn);
        assert_eq!(
            one(b"ERROR\r\n"),
            Reply::Error(ErrorLine::Generic, String::new())
        );
        assert_eq!(
            one(b"CLIENT_ERROR bad command line format\r\n"),
            Reply::Error(ErrorLine::Client, "bad command line format".into())
        );
        assert_eq!(
            one(b"SERVER_ERROR out of memory\r\n"),
            Reply::Error(ErrorLine::Server, "out of memory".into())
        );
    }

    #[test]
    fn partial_replies_ask_for_more() {
        for partial in [
            &b""[..],
            b"H",
            b"HD",
            b"HD\r",
            b"VA 3 c1\r\n",
            b"VA 3 c1\r\nab",
            b"VA 3 c1\r\nabc",
            b"VA 3 c1\r\nabc\r",
        ] {
            assert_eq!(parse(partial).unwrap(), None, "{partial:?}");
        }
        let (reply, used) = parse(b"HD\r\nEN\r\n").unwrap().unwrap();
        assert_eq!((reply, used), (Reply::Hd(ReplyFlags::default()), 4));
    }

    #[test]
    fn malformed_replies_are_protocol_errors() {
        for b in [
            &b"\n"[..],
            b"HD\n",
            b"XX\r\n",
            b"hd\r\n",
            b"VA\r\n",
            b"VA x\r\n",
            b"VA -1\r\n",
            b"VA +3\r\nabc\r\n",
            b"VA 3\r\nabcd\r\n",
            b"VA 99999999999999999999999\r\n",
            b"VA 2000000000\r\n",
            b"HD c\r\n",
            b"HD cx\r\n",
            b"HD c1 c2\r\n",
            b"HD c-1\r\n",
            b"HD t-2\r\n",
            b"HD t\r\n",
            b"HD  c1\r\n",
            b"HD 1\r\n",
            b"EN c1\r\n",
            b"MN x\r\n",
            b"CLIENT_ERRORx\r\n",
        ] {
            bad(b);
        }
        bad(&[b'H'; MAX_LINE]);
    }

    #[test]
    fn reply_buffer_reads_in_pieces() {
        let mut rb = ReplyBuffer::new();
        let stream = b"VA 5 c9\r\nhello\r\nMN\r\n";
        let mut got = Vec::new();
        for &byte in stream {
            let spare = rb.spare();
            spare[0] = byte;
            rb.filled(1);
            while let Some(reply) = rb.next_reply().unwrap() {
                got.push(reply);
            }
        }
        assert!(rb.is_empty());
        assert_eq!(got.len(), 2);
        assert_eq!(got[1], Reply::Mn);
    }

    /// Encodes a reply as a server would (the inverse of `parse`, for the tests).
    fn encode(reply: &Reply) -> Vec<u8> {
        let flags = |f: &ReplyFlags| {
            let mut s = String::new();
            if let Some(c) = f.cas {
                s += &format!(" c{c}");
            }
            if let Some(t) = f.ttl {
                s += &format!(" t{t}");
            }
            s
        };
        match reply {
            Reply::Va(data, f) => {
                let mut out = format!("VA {}{}\r\n", data.len(), flags(f)).into_bytes();
                out.extend_from_slice(data);
                out.extend_from_slice(b"\r\n");
                out
            }
            Reply::Hd(f) => format!("HD{}\r\n", flags(f)).into_bytes(),
            Reply::Ns(f) => format!("NS{}\r\n", flags(f)).into_bytes(),
            Reply::Ex(f) => format!("EX{}\r\n", flags(f)).into_bytes(),
            Reply::Nf(f) => format!("NF{}\r\n", flags(f)).into_bytes(),
            Reply::En => b"EN\r\n".to_vec(),
            Reply::Mn => b"MN\r\n".to_vec(),
            Reply::Error(ErrorLine::Generic, _) => b"ERROR\r\n".to_vec(),
            Reply::Error(ErrorLine::Client, m) => format!("CLIENT_ERROR {m}\r\n").into_bytes(),
            Reply::Error(ErrorLine::Server, m) => format!("SERVER_ERROR {m}\r\n").into_bytes(),
        }
    }

    fn reply() -> impl Strategy<Value = Reply> {
        let flags = (
            proptest::option::of(any::<u64>()),
            proptest::option::of(prop_oneof![Just(-1i64), (0u32..).prop_map(i64::from)]),
        )
            .prop_map(|(cas, ttl)| ReplyFlags { cas, ttl });
        prop_oneof![
            (proptest::collection::vec(any::<u8>(), 0..64), flags.clone())
                .prop_map(|(d, f)| Reply::Va(d, f)),
            flags.clone().prop_map(Reply::Hd),
            flags.clone().prop_map(Reply::Ns),
            flags.clone().prop_map(Reply::Ex),
            flags.prop_map(Reply::Nf),
            Just(Reply::En),
            Just(Reply::Mn),
            "[a-z ]{0,20}".prop_map(|m| Reply::Error(ErrorLine::Server, m.trim().to_string())),
        ]
    }

    proptest! {
        /// Whatever the bytes: no panic, and a reply never claims more than it was given.
        #[test]
        fn never_panics_on_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(Some((_, used))) = parse(&bytes) {
                prop_assert!(used > 0 && used <= bytes.len());
            }
        }

        /// Bytes that look almost like replies (the most likely way to find a bug).
        #[test]
        fn never_panics_on_reply_like_bytes(
            text in "(VA|HD|EN|NS|EX|NF|MN|CLIENT_ERROR|ERROR)( [0-9ctvOkbf-]{0,6}){0,4}(\r\n|\n|\r)?[a-z\r\n]{0,8}"
        ) {
            let _ = parse(text.as_bytes());
        }

        /// Every reply parses back from its encoding; every strict prefix asks for more;
        /// what follows it is left alone.
        #[test]
        fn round_trip(r in reply(), tail in proptest::collection::vec(any::<u8>(), 0..8)) {
            let bytes = encode(&r);
            for cut in 0..bytes.len() {
                prop_assert_eq!(parse(&bytes[..cut]).unwrap(), None);
            }
            let mut more = bytes.clone();
            more.extend_from_slice(&tail);
            prop_assert_eq!(parse(&more).unwrap(), Some((r, bytes.len())));
        }

        /// A request for any valid key and any value is one line plus the data block.
        #[test]
        fn requests_frame_any_value(
            key in "[!-~]{1,250}",
            value in proptest::collection::vec(any::<u8>(), 0..64),
            ttl in any::<u32>(),
        ) {
            let req = set(key.as_bytes(), &value, &[Flag::ModeAdd, Flag::SetExptime(ttl.into())]).unwrap();
            let line_end = req.iter().position(|&b| b == b'\n').unwrap();
            let line = &req[..line_end - 1];
            prop_assert_eq!(line.split(|&b| b == b' ').count(), 5);
            prop_assert_eq!(&req[line_end + 1..req.len() - 2], &value[..]);
        }
    }
}
