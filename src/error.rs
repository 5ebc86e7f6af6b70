//! The one error type of both flavors.

use std::borrow::Cow;
use std::fmt;

/// A specialized `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, in broad classes a caller can act on, and what the caller may
/// assume about the state of the backend afterwards.
///
/// Not getting a lock is *not* an error: [`RedLock::acquire`](crate::RedLock::acquire)
/// reports it as an [`Outcome`](crate::Outcome). A failed compare-and-set is
/// [`ErrorKind::Conflict`].
///
/// | kind | nothing was sent | nothing was written | retry |
/// |---|---|---|---|
/// | `InvalidArgument`, `InvalidKey`, `Unsupported` | yes | yes | no: fix the input |
/// | `Conflict` | | yes | begin again |
/// | `Backend` | | yes (the server refused it) | after fixing the cause |
/// | `Timeout`, `Connection` | | **unknown** | read back first |
/// | `Protocol` | | **unknown** | no |
/// | `Lost` | | yes | take the lock again |
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// An argument is out of range: a zero, negative, NaN, infinite or sub-nanosecond
    /// duration, a malformed URL, an unknown URL option.
    ///
    /// Nothing was sent: the call was refused before any I/O, and the backend is as it
    /// was.
    InvalidArgument,
    /// The backend cannot store this key (empty; for memcached longer than 250 bytes,
    /// namespace and lock suffix included, or containing a space or a control byte).
    ///
    /// Nothing was sent.
    InvalidKey,
    /// [`OptimisticLock::cas`](crate::OptimisticLock::cas): the key changed since
    /// the lock began.
    ///
    /// Nothing was written: the other writer's value is in place. Begin again (read,
    /// recompute) and retry.
    Conflict,
    /// The backend did not answer in time.
    ///
    /// The request may have been applied or not: **the outcome of a write is unknown**
    /// (a lock may be held by this caller until its lease ends, a `set` or `cas` may
    /// have been stored). Read back before retrying anything that is not idempotent.
    Timeout,
    /// The backend cannot be reached, or the connection broke.
    ///
    /// When the connection broke after the request was sent (the message says the
    /// outcome is unknown), **the outcome of a write is unknown**, as for
    /// [`Timeout`](ErrorKind::Timeout). When it could not be reached at all, nothing
    /// was applied.
    Connection,
    /// The backend answered something this client does not understand (or a server
    /// configuration it cannot work with). The connection is dropped; what the server
    /// did with the request is unknown.
    Protocol,
    /// The backend refused the command (an error reply, wrong credentials, a
    /// misconfigured server). The server refused it: nothing was applied.
    Backend,
    /// The URL names a backend this build does not include, or the backend cannot do
    /// what was asked (a custom [`Backend`](crate::Backend) without fencing tokens).
    /// Nothing was sent.
    Unsupported,
    /// The lock is no longer this caller's: its lease ended (another caller may hold
    /// it now), it was deleted, or the guard never held it
    /// ([`LockGuard::extend`](crate::LockGuard::extend), a watchdog's renewal).
    ///
    /// Nothing was written: another holder's lock is left alone. Stop the work that
    /// needed the lock (its writes may now race with the next holder's) and take the
    /// lock again.
    Lost,
}

impl ErrorKind {
    /// A short, stable description of the kind.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "invalid argument",
            ErrorKind::InvalidKey => "invalid key",
            ErrorKind::Conflict => "optimistic lock conflict",
            ErrorKind::Timeout => "timed out",
            ErrorKind::Connection => "connection error",
            ErrorKind::Protocol => "protocol error",
            ErrorKind::Backend => "backend error",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Lost => "lock lost",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An aiolock error: a [kind](Error::kind), a message, and maybe the underlying cause.
///
/// Messages are for people and logs, and safe to show: [`message`](Error::message)
/// and `to_string()` are one line (control characters are escaped as `\n`, `\u{1b}`
/// …), bounded ([`MAX_MESSAGE_CHARS`](Error::MAX_MESSAGE_CHARS) and
/// [`MAX_DISPLAY_CHARS`](Error::MAX_DISPLAY_CHARS) characters, cut with `…`), and
/// never contain a password: the password of a URL (`redis://user:secret@host`) and
/// `pass=`/`password=` query values are replaced by `***`, also in the text of the
/// underlying cause.
///
/// ```
/// # #[cfg(feature = "blocking")] {
/// use aiolock::{ErrorKind, blocking::Cache};
///
/// let err = Cache::from_url("nosuch://x").unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::InvalidArgument);
/// assert!(err.to_string().contains("nosuch"));
///
/// let err = Cache::from_url("nosuch://user:secret@host").unwrap_err();
/// assert!(!err.to_string().contains("secret"));
/// # }
/// ```
pub struct Error {
    inner: Box<Inner>,
}

struct Inner {
    kind: ErrorKind,
    message: Cow<'static, str>,
    source: Option<Source>,
}

impl Error {
    /// The longest [`message`](Error::message), in characters.
    pub const MAX_MESSAGE_CHARS: usize = 240;

    /// The longest `to_string()` (kind, message and cause), in characters.
    pub const MAX_DISPLAY_CHARS: usize = 300;

    /// A new error of `kind` with a message for people.
    ///
    /// The message is made safe here, once for every error: passwords are masked,
    /// control characters escaped, and it is cut to
    /// [`MAX_MESSAGE_CHARS`](Error::MAX_MESSAGE_CHARS).
    ///
    /// ```
    /// use aiolock::{Error, ErrorKind};
    ///
    /// let err = Error::new(ErrorKind::Protocol, "bad reply \"-ERR x\\r\\ny\"");
    /// assert_eq!(err.message(), r#"bad reply "-ERR x\r\ny""#);
    /// let err = Error::new(ErrorKind::Connection, "cannot reach redis://u:pw@h:1".to_string());
    /// assert_eq!(err.message(), "cannot reach redis://u:***@h:1");
    /// ```
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Error {
            inner: Box::new(Inner {
                kind,
                message: safe_text(message.into(), Self::MAX_MESSAGE_CHARS),
                source: None,
            }),
        }
    }

    /// Attaches the underlying cause.
    pub fn with_source(
        mut self,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        self.inner.source = Some(source.into());
        self
    }

    /// The class of the error.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The message, without the kind or the cause.
    pub fn message(&self) -> &str {
        &self.inner.message
    }

    /// Whether the key changed under an [`OptimisticLock`](crate::OptimisticLock).
    pub fn is_conflict(&self) -> bool {
        self.kind() == ErrorKind::Conflict
    }

    /// Whether the backend did not answer in time.
    pub fn is_timeout(&self) -> bool {
        self.kind() == ErrorKind::Timeout
    }

    /// Whether the backend could not be reached or the connection broke.
    pub fn is_connection(&self) -> bool {
        self.kind() == ErrorKind::Connection
    }

    /// Whether the lock is no longer this caller's ([`ErrorKind::Lost`]).
    pub fn is_lost(&self) -> bool {
        self.kind() == ErrorKind::Lost
    }

    /// Whether an argument (key, lease, URL) was rejected before anything was sent.
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::InvalidArgument | ErrorKind::InvalidKey
        )
    }

    /// Another error like this one (its kind, message and the text of its cause):
    /// the same failure told to several callers.
    #[cfg_attr(not(feature = "memcached"), allow(dead_code))]
    pub(crate) fn duplicate(&self) -> Self {
        let copy = Error::new(self.inner.kind, self.inner.message.clone());
        match &self.inner.source {
            Some(source) => copy.with_source(source.to_string()),
            None => copy,
        }
    }

    pub(crate) fn invalid_argument(message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(ErrorKind::InvalidArgument, message)
    }

    pub(crate) fn invalid_key(message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(ErrorKind::InvalidKey, message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("aiolock::Error");
        d.field("kind", &self.inner.kind)
            .field("message", &self.inner.message);
        if let Some(source) = &self.inner.source {
            // The cause's text, made safe: `unwrap()` prints this.
            let text = safe_text(source.to_string().into(), Self::MAX_DISPLAY_CHARS);
            d.field("source", &text);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner.source {
            None => write!(f, "{}: {}", self.inner.kind, self.inner.message),
            // The cause's text comes from elsewhere (a client library, the OS): made
            // safe like a message, the whole line bounded.
            Some(source) => {
                let line = format!("{}: {}: {source}", self.inner.kind, self.inner.message);
                f.write_str(&safe_text(line.into(), Self::MAX_DISPLAY_CHARS))
            }
        }
    }
}

/// `text` on one line, at most `max` characters, without passwords: the one place
/// every message goes through. Clean text (the common case: a static message) is
/// returned as it is, without an allocation.
fn safe_text(text: Cow<'static, str>, max: usize) -> Cow<'static, str> {
    let text = match redact(&text) {
        Cow::Borrowed(_) => text,
        Cow::Owned(r) => Cow::Owned(r),
    };
    let unsafe_char = |c: char| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}');
    if text.len() <= max && !text.contains(unsafe_char) {
        return text;
    }
    let mut out = String::with_capacity(text.len().min(4 * max));
    let mut chars = 0;
    let mut iter = text.chars().peekable();
    while let Some(c) = iter.next() {
        let piece: smallvec::SmallVec<[char; 10]> = if unsafe_char(c) {
            c.escape_default().collect()
        } else {
            smallvec::smallvec![c]
        };
        // Keep one character for the ellipsis unless this is the end.
        let room = if iter.peek().is_some() { max - 1 } else { max };
        if chars + piece.len() > room {
            out.push('…');
            return Cow::Owned(out);
        }
        chars += piece.len();
        out.extend(piece);
    }
    Cow::Owned(out)
}

/// `text` with the passwords it may contain replaced by `***`: the password of every
/// URL in it (`scheme://user:password@host`, the user name is kept) and the values of
/// `pass=` and `password=` query options.
///
/// A URL is recognised by its `://`; its user information runs to the last `@`
/// before the next space or quote, so a password with an unescaped `/`, `?` or `@` in
/// it is masked too.
pub(crate) fn redact(text: &str) -> Cow<'_, str> {
    if !text.contains("://") && !text.contains("pass") {
        return Cow::Borrowed(text);
    }
    let ends_url = |c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>');
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    // URLs' user information.
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let end = tail.find(ends_url).unwrap_or(tail.len());
        let url = &tail[..end];
        match url.rfind('@') {
            Some(userinfo_end) => {
                let userinfo = &url[..userinfo_end];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..colon]);
                        out.push_str(":***");
                    }
                    None => out.push_str(userinfo),
                }
                rest = &tail[userinfo_end..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    // `pass=…` and `password=…` option values.
    let mut masked = String::with_capacity(out.len());
    let mut rest = &out[..];
    while let Some(pos) = rest.find("pass") {
        let name_end = if rest[pos..].starts_with("password=") {
            pos + "password=".len()
        } else if rest[pos..].starts_with("pass=") {
            pos + "pass=".len()
        } else {
            masked.push_str(&rest[..pos + 4]);
            rest = &rest[pos + 4..];
            continue;
        };
        let option = pos == 0 || rest[..pos].ends_with(['?', '&', ';', ' ']);
        masked.push_str(&rest[..name_end]);
        rest = &rest[name_end..];
        if option {
            let end = rest
                .find(|c: char| ends_url(c) || matches!(c, '&' | '#' | ';' | ','))
                .unwrap_or(rest.len());
            if end > 0 {
                masked.push_str("***");
            }
            rest = &rest[end..];
        }
    }
    masked.push_str(rest);
    if masked == text {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(masked)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .source
            .as_ref()
            .map(|s| &**s as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_small_and_thread_safe() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<Error>();
        assert_eq!(std::mem::size_of::<Error>(), std::mem::size_of::<usize>());
    }

    #[test]
    fn display_names_kind_message_and_source() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err = Error::new(ErrorKind::Connection, "cannot reach 127.0.0.1:1").with_source(io);
        assert_eq!(
            err.to_string(),
            "connection error: cannot reach 127.0.0.1:1: refused"
        );
        assert!(err.is_connection());
        assert!(!err.is_conflict());
        assert!(std::error::Error::source(&err).is_some());
    }

    fn is_one_line(s: &str) -> bool {
        !s.contains(|c: char| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}'))
    }

    #[test]
    fn control_characters_are_escaped() {
        let err = Error::new(
            ErrorKind::Protocol,
            "reply \"-ERR a\r\nb\"\t\u{1b}[0m".to_string(),
        );
        assert_eq!(err.message(), "reply \"-ERR a\\r\\nb\"\\t\\u{1b}[0m");
        let static_message = Error::new(ErrorKind::Timeout, "static");
        assert!(matches!(static_message.inner.message, Cow::Borrowed(_)));
    }

    #[test]
    fn long_messages_are_cut_with_an_ellipsis() {
        let err = Error::new(ErrorKind::InvalidArgument, "x".repeat(5000));
        assert_eq!(err.message().chars().count(), Error::MAX_MESSAGE_CHARS);
        assert!(err.message().ends_with('…'));
        let exact = "y".repeat(Error::MAX_MESSAGE_CHARS);
        assert_eq!(
            Error::new(ErrorKind::Backend, exact.clone()).message(),
            exact
        );
        // An escape is not split by the cut.
        let err = Error::new(ErrorKind::Backend, format!("{}\n", "z".repeat(239)));
        assert_eq!(err.message(), format!("{}…", "z".repeat(239)));
    }

    #[test]
    fn passwords_are_masked() {
        for (text, want) in [
            ("redis://:secret@h:1/0", "redis://:***@h:1/0"),
            ("redis://user:secret@h", "redis://user:***@h"),
            (
                "\"redis://u:se/cr@et@[::1\" is not valid",
                "\"redis://u:***@[::1\" is not valid",
            ),
            (
                "redis+unix:///s.sock?db=1&pass=secret&x=1",
                "redis+unix:///s.sock?db=1&pass=***&x=1",
            ),
            (
                "memcached://h?password=secret",
                "memcached://h?password=***",
            ),
            (
                "redis://user@h (no password)",
                "redis://user@h (no password)",
            ),
            ("wrong password (WRONGPASS)", "wrong password (WRONGPASS)"),
            ("a://x b://y:z@w", "a://x b://y:***@w"),
        ] {
            assert_eq!(redact(text), want, "{text}");
            assert_eq!(
                Error::new(ErrorKind::Backend, text.to_string()).message(),
                want
            );
        }
        let io = std::io::Error::other("from redis://u:secret@h\nline two");
        let err = Error::new(ErrorKind::Connection, "cannot connect").with_source(io);
        assert_eq!(
            err.to_string(),
            "connection error: cannot connect: from redis://u:***@h\\nline two"
        );
        assert!(!format!("{err:?}").contains("secret"));
    }

    proptest::proptest! {
        /// Whatever a message and its cause hold, `message()`, `to_string()` and
        /// `{:?}` are one line and bounded, and a URL's password never shows.
        #[test]
        fn any_message_is_one_line_bounded_and_secret_free(
            message in "(?s).{0,600}",
            cause in proptest::option::of("(?s).{0,600}"),
            password in "[A-Z]{8,12}",
            at in 0usize..600,
        ) {
            // The password in a URL somewhere in the message and the cause (the
            // rest of the text has no upper-case ASCII, so it cannot spell it).
            let lower = |s: &str| -> String { s.chars().filter(|c| !c.is_ascii_uppercase()).collect() };
            let splice = |s: &str| {
                let s = lower(s);
                let at = s.char_indices().map(|(i, _)| i).nth(at).unwrap_or(s.len());
                format!("{} redis://u:{password}@h:1/0 {}", &s[..at], &s[at..])
            };
            let mut err = Error::new(ErrorKind::Protocol, splice(&message));
            if let Some(cause) = &cause {
                err = err.with_source(std::io::Error::other(splice(cause)));
            }
            let display = err.to_string();
            let debug = format!("{err:?}");
            proptest::prop_assert!(err.message().chars().count() <= Error::MAX_MESSAGE_CHARS);
            proptest::prop_assert!(display.chars().count() <= Error::MAX_DISPLAY_CHARS);
            for text in [err.message(), &display, &debug] {
                proptest::prop_assert!(is_one_line(text), "{text:?}");
                proptest::prop_assert!(!text.contains(&password), "{text:?}");
            }
        }
    }
}
