//! Key rules: namespacing and the checks every backend shares.

use smallvec::SmallVec;

use crate::error::{Error, Result};

/// A key held by value: short keys (most, lock keys included) stay inline, saving an
/// allocation on every lock cycle.
pub(crate) type KeyBuf = SmallVec<[u8; KEY_INLINE]>;

/// The longest key a [`KeyBuf`] holds without an allocation.
const KEY_INLINE: usize = 40;

/// The suffix aiocache appends to a key to name its lock, and aiolock's default
/// (configurable per cache: the `lock_suffix` URL option).
pub const DEFAULT_LOCK_SUFFIX: &[u8] = b"-lock";

/// `namespace + key`, after checking that `key` is not empty.
///
/// Backends add their own limits (memcached: [`check_memcached`]).
pub(crate) fn namespaced(namespace: &[u8], key: &[u8]) -> Result<KeyBuf> {
    with_suffix(namespace, key, b"")
}

/// `namespace + key + suffix` (the suffix is `-lock` unless the cache says otherwise):
/// the key a `RedLock` on `key` holds.
pub(crate) fn lock_key(namespace: &[u8], key: &[u8], suffix: &[u8]) -> Result<KeyBuf> {
    with_suffix(namespace, key, suffix)
}

fn with_suffix(namespace: &[u8], key: &[u8], suffix: &[u8]) -> Result<KeyBuf> {
    if key.is_empty() {
        return Err(Error::invalid_key("the key is empty"));
    }
    Ok(concat([namespace, key, suffix]))
}

/// The bytes of `parts` one after the other, written straight into the inline buffer
/// when they fit (one copy each, no growth checks), else into one allocation.
fn concat<const N: usize>(parts: [&[u8]; N]) -> KeyBuf {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if len > KEY_INLINE {
        return KeyBuf::from_vec(parts.concat());
    }
    let mut buf = [0u8; KEY_INLINE];
    let mut at = 0;
    for part in parts {
        buf[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    KeyBuf::from_buf_and_len(buf, len)
}

/// What a fenced lock appends to its lock key to name its fencing-token counter.
pub const FENCE_SUFFIX: &[u8] = b"-fence";

/// The key of the fencing-token counter of the lock key `lock_key`:
/// `lock_key + "-fence"` (`app:report-lock-fence`).
pub(crate) fn fence_key(lock_key: &[u8]) -> KeyBuf {
    concat([lock_key, FENCE_SUFFIX])
}

/// The longest key memcached accepts.
pub const MEMCACHED_MAX_KEY: usize = 250;

/// Checks a full (namespaced) key against memcached's text-protocol rules:
/// 1–250 bytes, no byte <= 0x20 (space, control characters) and no 0x7F.
pub(crate) fn check_memcached(key: &[u8]) -> Result<()> {
    if key.is_empty() {
        return Err(Error::invalid_key("the key is empty"));
    }
    if key.len() > MEMCACHED_MAX_KEY {
        return Err(Error::invalid_key(format!(
            "memcached keys are at most {MEMCACHED_MAX_KEY} bytes, namespace (and for a \
             lock, its suffix) included; this one has {}",
            key.len()
        )));
    }
    if let Some(pos) = key.iter().position(|&b| b <= 0x20 || b == 0x7f) {
        return Err(Error::invalid_key(format!(
            "memcached keys cannot contain spaces or control bytes (byte 0x{:02x} at {pos})",
            key[pos]
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn lock_key_is_namespace_key_suffix() {
        assert_eq!(
            &*lock_key(b"app:", b"user", DEFAULT_LOCK_SUFFIX).unwrap(),
            b"app:user-lock"
        );
        assert_eq!(&*lock_key(b"", b"user", b":lk").unwrap(), b"user:lk");
        assert_eq!(&*namespaced(b"", b"k").unwrap(), b"k");
        assert_eq!(&*fence_key(b"app:user-lock"), b"app:user-lock-fence");
    }

    #[test]
    fn keys_of_every_length_are_built_whole() {
        for len in 0..100 {
            let ns: Vec<u8> = (0..len / 3).map(|i| b'a' + (i % 26) as u8).collect();
            let key: Vec<u8> = (0..len - len / 3 + 1)
                .map(|i| b'A' + (i % 26) as u8)
                .collect();
            let want = [&ns[..], &key, DEFAULT_LOCK_SUFFIX].concat();
            let got = lock_key(&ns, &key, DEFAULT_LOCK_SUFFIX).unwrap();
            assert_eq!(&*got, &want[..]);
            assert_eq!(got.spilled(), want.len() > KEY_INLINE, "{len}");
        }
    }

    #[test]
    fn empty_key_is_rejected() {
        assert_eq!(
            lock_key(b"ns", b"", DEFAULT_LOCK_SUFFIX)
                .unwrap_err()
                .kind(),
            ErrorKind::InvalidKey
        );
    }

    #[test]
    fn memcached_rules() {
        assert!(check_memcached(&[b'a'; 250]).is_ok());
        for bad in [
            &b""[..],
            &[b'a'; 251][..],
            b"a b",
            b"a\rb",
            b"a\nb",
            b"a\0b",
            b"a\tb",
            b"a\x7fb",
        ] {
            assert_eq!(
                check_memcached(bad).unwrap_err().kind(),
                ErrorKind::InvalidKey,
                "{bad:?}"
            );
        }
    }
}
