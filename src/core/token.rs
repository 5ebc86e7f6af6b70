//! Lock tokens: random 128-bit values, written as 32 lowercase hex digits so that they
//! read well in `redis-cli` and `mg` output.

use std::cell::RefCell;
use std::fmt;

use rand::rngs::{StdRng, SysRng};
use rand::{RngExt, SeedableRng};

use crate::core::fork;

thread_local! {
    /// This thread's generator and the process generation it was seeded in: a child
    /// forked after the parent drew tokens reseeds instead of repeating them.
    static RNG: RefCell<Option<(u64, StdRng)>> = const { RefCell::new(None) };
}

/// The value a [`RedLock`](crate::RedLock) holder stores under the lock key. Only the
/// holder of the token can release the lock.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token([u8; 32]);

impl Token {
    /// A fresh random token from a thread-local CSPRNG, seeded from the operating
    /// system and reseeded in a forked child (the process generation of `core::fork`).
    pub fn random() -> Self {
        let generation = fork::generation();
        let n = RNG.with_borrow_mut(|slot| match slot {
            Some((seeded_in, rng)) if *seeded_in == generation => rng.random(),
            _ => {
                let mut rng = StdRng::try_from_rng(&mut SysRng)
                    .unwrap_or_else(|_| StdRng::from_rng(&mut rand::rng()));
                let n = rng.random();
                *slot = Some((generation, rng));
                n
            }
        });
        Token::from_u128(n)
    }

    /// The token whose hex form is that of `n` (tests and tools).
    pub fn from_u128(n: u128) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 32];
        for (pair, byte) in out.chunks_exact_mut(2).zip(n.to_be_bytes()) {
            pair[0] = HEX[usize::from(byte >> 4)];
            pair[1] = HEX[usize::from(byte & 0xf)];
        }
        Token(out)
    }

    /// The bytes stored in the backend.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({self})")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Always ASCII hex.
        f.write_str(std::str::from_utf8(&self.0).unwrap_or("?"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_form() {
        assert_eq!(
            Token::from_u128(0x0123_4567_89ab_cdef_0011_2233_4455_6677).to_string(),
            "0123456789abcdef0011223344556677"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_forked_child_draws_other_tokens_than_its_parent() {
        let _ = Token::random(); // seed this thread's generator before the fork
        let mut pipe = [0; 2];
        // SAFETY: a pipe for the child's token.
        assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
        // SAFETY: the child draws a token, writes it and exits without unwinding.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let t = Token::random();
            unsafe {
                libc::write(pipe[1], t.as_bytes().as_ptr().cast(), 32);
                libc::_exit(0);
            }
        }
        let parent = Token::random();
        let mut child = [0u8; 32];
        // SAFETY: reads the child's 32 bytes (a pipe write of <= PIPE_BUF is atomic).
        let n = unsafe { libc::read(pipe[0], child.as_mut_ptr().cast(), 32) };
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        assert_eq!(n, 32);
        assert_ne!(
            &child,
            parent.as_bytes(),
            "the child repeated the parent's token"
        );
    }

    #[test]
    fn random_tokens_differ() {
        let set: std::collections::HashSet<Token> = (0..1000).map(|_| Token::random()).collect();
        assert_eq!(set.len(), 1000);
    }
}
