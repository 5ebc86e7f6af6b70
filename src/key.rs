//! Key rules: namespacing and the checks every backend shares.

use std::mem::MaybeUninit;

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
#[inline]
pub(crate) fn namespaced(namespace: &[u8], key: &[u8]) -> Result<KeyBuf> {
    with_suffix(namespace, key, b"")
}

/// `namespace + key + suffix` (the suffix is `-lock` unless the cache says otherwise):
/// the key a `RedLock` on `key` holds.
#[inline]
pub(crate) fn lock_key(namespace: &[u8], key: &[u8], suffix: &[u8]) -> Result<KeyBuf> {
    with_suffix(namespace, key, suffix)
}

#[inline]
fn with_suffix(namespace: &[u8], key: &[u8], suffix: &[u8]) -> Result<KeyBuf> {
    if key.is_empty() {
        return Err(Error::invalid_key("the key is empty"));
    }
    Ok(concat([namespace, key, suffix]))
}

/// The bytes of `parts` one after the other, written straight into the inline buffer
/// when they fit (a word copy or two each, no call, no growth check), else into one
/// allocation.
#[inline(always)]
fn concat<const N: usize>(parts: [&[u8]; N]) -> KeyBuf {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if len > KEY_INLINE {
        return KeyBuf::from_vec(parts.concat());
    }
    let mut buf = MaybeUninit::<[u8; KEY_INLINE]>::uninit();
    let base = buf.as_mut_ptr().cast::<u8>();
    let mut at = 0;
    for part in parts {
        // SAFETY: `at + part.len() <= len <= KEY_INLINE`: inside the buffer.
        unsafe { put(base.add(at), part) };
        at += part.len();
    }
    // SAFETY: the first `len` bytes are written (the rest is never read).
    unsafe { KeyBuf::from_buf_and_len_unchecked(buf, len) }
}

/// `bytes` held by value: inline up to [`KEY_INLINE`] bytes (what the memory store
/// keeps its keys and values in).
#[inline]
pub(crate) fn buf(bytes: &[u8]) -> KeyBuf {
    concat([bytes])
}

/// Replaces the bytes of `dst` with `src`, in place when both are short.
#[inline(always)]
pub(crate) fn assign(dst: &mut KeyBuf, src: &[u8]) {
    if dst.spilled() || src.len() > KEY_INLINE {
        *dst = buf(src);
        return;
    }
    // SAFETY: not spilled, `dst` points to its inline buffer of KEY_INLINE bytes, and
    // the first `src.len()` of them are written before the length covers them.
    unsafe {
        put(dst.as_mut_ptr(), src);
        dst.set_len(src.len());
    }
}

/// Copies `src` to `dst`: short slices by two overlapping loads and stores of a word,
/// the way `memcpy` does, without calling it.
///
/// # Safety
///
/// `dst` is valid for `src.len()` bytes of writes and does not overlap `src`.
#[inline(always)]
unsafe fn put(dst: *mut u8, src: &[u8]) {
    /// The `W` bytes of `src` at `at` to `dst + at`.
    ///
    /// # Safety
    ///
    /// As for `put`, with `at + W <= src.len()`.
    #[inline(always)]
    unsafe fn word<const W: usize>(dst: *mut u8, src: &[u8], at: usize) {
        let w: [u8; W] = src[at..at + W].try_into().unwrap_or([0; W]);
        // SAFETY: the caller's.
        unsafe { dst.add(at).cast::<[u8; W]>().write_unaligned(w) }
    }
    let n = src.len();
    // SAFETY: every write is inside `dst[..n]`.
    unsafe {
        match n {
            0 => {}
            1..=3 => {
                word::<1>(dst, src, 0);
                word::<1>(dst, src, n / 2);
                word::<1>(dst, src, n - 1);
            }
            4..=7 => {
                word::<4>(dst, src, 0);
                word::<4>(dst, src, n - 4);
            }
            8..=15 => {
                word::<8>(dst, src, 0);
                word::<8>(dst, src, n - 8);
            }
            16..=32 => {
                word::<16>(dst, src, 0);
                word::<16>(dst, src, n - 16);
            }
            _ => std::ptr::copy_nonoverlapping(src.as_ptr(), dst, n),
        }
    }
}

/// `a == b`, for short slices (keys, tokens) by two overlapping word comparisons
/// rather than a call to `memcmp`.
#[inline(always)]
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    fn word<const W: usize>(s: &[u8], at: usize) -> [u8; W] {
        s[at..at + W].try_into().unwrap_or([0; W])
    }
    match n {
        0 => true,
        1..=3 => a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1],
        4..=7 => word::<4>(a, 0) == word::<4>(b, 0) && word::<4>(a, n - 4) == word::<4>(b, n - 4),
        8..=15 => {
            u64::from_ne_bytes(word(a, 0)) == u64::from_ne_bytes(word(b, 0))
                && u64::from_ne_bytes(word(a, n - 8)) == u64::from_ne_bytes(word(b, n - 8))
        }
        16..=32 => {
            u128::from_ne_bytes(word(a, 0)) == u128::from_ne_bytes(word(b, 0))
                && u128::from_ne_bytes(word(a, n - 16)) == u128::from_ne_bytes(word(b, n - 16))
        }
        _ => a == b,
    }
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
    fn same_is_slice_equality() {
        let base: Vec<u8> = (0..80u8).collect();
        for n in 0..80 {
            let a = &base[..n];
            assert!(same(a, &base[..n]), "{n}");
            for i in 0..n {
                let mut b = a.to_vec();
                b[i] ^= 0x80;
                assert!(!same(a, &b), "{n} differ at {i}");
                assert_eq!(&*buf(&b), &b[..]);
                let mut into = buf(&base[..(i * 7) % 60]);
                assign(&mut into, &b);
                assert_eq!(&*into, &b[..]);
            }
            assert!(!same(a, &base[..n + 1]));
        }
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
