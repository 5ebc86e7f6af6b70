//! The one error type of both flavors.

use std::borrow::Cow;
use std::fmt;

/// A specialized `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, in broad classes a caller can act on.
///
/// Not getting a lock is *not* an error: [`RedLock::acquire`](crate::RedLock::acquire)
/// reports it as an [`Outcome`](crate::Outcome). A failed compare-and-set is
/// [`ErrorKind::Conflict`].
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// An argument is out of range: a zero, negative, NaN or infinite lease, a
    /// malformed URL, an unknown option.
    InvalidArgument,
    /// The backend cannot store this key (empty; for memcached longer than 250 bytes
    /// or containing a space or a control byte). Nothing was sent.
    InvalidKey,
    /// [`OptimisticLock::cas`](crate::OptimisticLock::cas): the key changed since
    /// the lock began. Nothing was written.
    Conflict,
    /// The backend did not answer in time.
    Timeout,
    /// The backend cannot be reached, or the connection broke.
    Connection,
    /// The backend answered something this client does not understand.
    Protocol,
    /// The backend refused the command (an error reply, wrong credentials, a
    /// misconfigured server).
    Backend,
    /// The URL names a backend this build does not include.
    Unsupported,
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
/// ```
/// # #[cfg(feature = "blocking")] {
/// use aiolock::{ErrorKind, blocking::Cache};
///
/// let err = Cache::from_url("nosuch://x").unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::InvalidArgument);
/// assert!(err.to_string().contains("nosuch"));
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
    /// A new error of `kind` with a message for people.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Error {
            inner: Box::new(Inner {
                kind,
                message: message.into(),
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

    /// Whether an argument (key, lease, URL) was rejected before anything was sent.
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::InvalidArgument | ErrorKind::InvalidKey
        )
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
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.inner.kind, self.inner.message)?;
        if let Some(source) = &self.inner.source {
            write!(f, ": {source}")?;
        }
        Ok(())
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
}
