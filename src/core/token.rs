//! Lock tokens: random 128-bit values, written as 32 lowercase hex digits so that they
//! read well in `redis-cli` and `mg` output.

use std::cell::RefCell;
use std::fmt;

use rand::rngs::{StdRng, SysRng};
use rand::{RngExt, SeedableRng};

use crate::core::fork;

/// Tokens drawn from the generator at a time: 256 bytes, the generator's own batch
/// (four ChaCha blocks).
const BATCH: usize = 16;

/// This thread's generator and the tokens drawn from it but not handed out yet.
struct Pool {
    /// The process generation the generator was seeded in: a child forked after the
    /// parent drew tokens reseeds (and draws afresh) instead of repeating them.
    generation: u64,
    /// The next of `drawn` to hand out (`BATCH`: none left).
    next: usize,
    drawn: [u128; BATCH],
    rng: Option<StdRng>,
}

thread_local! {
    static POOL: RefCell<Pool> = const {
        RefCell::new(Pool { generation: 0, next: BATCH, drawn: [0; BATCH], rng: None })
    };
}

/// The value a [`RedLock`](crate::RedLock) holder stores under the lock key. Only the
/// holder of the token can release the lock.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token([u8; 32]);

impl Token {
    /// All zeros: never drawn in practice (a 2^-128 chance), for a fallback that is
    /// never returned.
    pub(crate) const NONE: Token = Token([b'0'; 32]);

    /// A fresh random token from a thread-local CSPRNG, seeded from the operating
    /// system and reseeded in a forked child (the process generation of `core::fork`).
    #[inline]
    pub fn random() -> Self {
        let generation = fork::generation();
        let n = POOL.with_borrow_mut(|pool| match pool.drawn.get(pool.next) {
            Some(&n) if pool.generation == generation => {
                pool.next += 1;
                n
            }
            _ => pool.refill(generation),
        });
        Token::from_u128(n)
    }

    /// The token whose hex form is that of `n` (tests and tools).
    #[inline]
    pub fn from_u128(n: u128) -> Self {
        Token(hex(n))
    }

    /// The bytes stored in the backend.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl Pool {
    /// Draws the next `BATCH` tokens and hands out the first; seeds the generator
    /// first on this thread's first use and in a forked child.
    #[cold]
    #[inline(never)]
    fn refill(&mut self, generation: u64) -> u128 {
        let rng = match &mut self.rng {
            Some(rng) if self.generation == generation => rng,
            slot => {
                self.generation = generation;
                slot.insert(
                    StdRng::try_from_rng(&mut SysRng)
                        .unwrap_or_else(|_| StdRng::from_rng(&mut rand::rng())),
                )
            }
        };
        rng.fill(&mut self.drawn[..]);
        self.next = 1;
        self.drawn[0]
    }
}

/// The 32 lowercase hex digits of `n`, most significant first: with SSE2 (every
/// x86-64 CPU), all at once.
#[cfg(target_arch = "x86_64")]
#[inline]
fn hex(n: u128) -> [u8; 32] {
    use std::arch::x86_64::{
        __m128i, _mm_add_epi8, _mm_and_si128, _mm_cmpgt_epi8, _mm_loadu_si128, _mm_set1_epi8,
        _mm_srli_epi16, _mm_storeu_si128, _mm_unpackhi_epi8, _mm_unpacklo_epi8,
    };
    let bytes = n.to_be_bytes();
    let mut out = [0u8; 32];
    // SAFETY: SSE2 is part of the x86-64 baseline; the loads and stores are unaligned
    // ones inside `bytes` (16 bytes) and `out` (32 bytes).
    unsafe {
        let v = _mm_loadu_si128(bytes.as_ptr().cast::<__m128i>());
        let nibble = _mm_set1_epi8(0x0f);
        let high = _mm_and_si128(_mm_srli_epi16::<4>(v), nibble);
        let low = _mm_and_si128(v, nibble);
        // Each digit d becomes '0' + d, plus 'a' - '0' - 10 where d > 9.
        let ascii = |d: __m128i| {
            let letter = _mm_and_si128(_mm_cmpgt_epi8(d, _mm_set1_epi8(9)), _mm_set1_epi8(39));
            _mm_add_epi8(_mm_add_epi8(d, _mm_set1_epi8(b'0' as i8)), letter)
        };
        let first = ascii(_mm_unpacklo_epi8(high, low));
        let second = ascii(_mm_unpackhi_epi8(high, low));
        _mm_storeu_si128(out.as_mut_ptr().cast::<__m128i>(), first);
        _mm_storeu_si128(out.as_mut_ptr().add(16).cast::<__m128i>(), second);
    }
    out
}

/// The 32 lowercase hex digits of `n`, most significant first, 8 at a time.
#[cfg(any(not(target_arch = "x86_64"), test))]
fn hex_swar(n: u128) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (digits, word) in out.chunks_exact_mut(8).zip(n.to_be_bytes().chunks_exact(4)) {
        let word = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        digits.copy_from_slice(&hex8(word).to_be_bytes());
    }
    out
}

#[cfg(not(target_arch = "x86_64"))]
use hex_swar as hex;

/// The 8 lowercase hex digits of `x`, most significant first when the result is
/// written big-endian: each nibble is spread into a byte of its own, then every byte
/// becomes its digit at once (`'0' + d`, plus `'a' - '0' - 10` where `d > 9`), with no
/// table and no branch.
#[cfg(any(not(target_arch = "x86_64"), test))]
fn hex8(x: u32) -> u64 {
    let x = u64::from(x);
    // Nibble i (from the least significant) into byte i.
    let x = (x | (x << 16)) & 0x0000_ffff_0000_ffff;
    let x = (x | (x << 8)) & 0x00ff_00ff_00ff_00ff;
    let x = (x | (x << 4)) & 0x0f0f_0f0f_0f0f_0f0f;
    // 1 in each byte whose digit is a letter (d + 6 carries into bit 4 for d > 9).
    let letters = ((x + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    x + 0x3030_3030_3030_3030 + letters * (b'a' - b'0' - 10) as u64
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
    fn the_hex_form_is_that_of_format() {
        let mut samples = vec![
            0,
            u128::MAX,
            1,
            0xf << 124,
            0xa5a5_5a5a_0f0f_f0f0_1234_5678_9abc_def0,
        ];
        samples.extend((0..128).map(|i| 1u128 << i));
        samples.extend((0..16u128).map(|d| d * 0x1111_1111_1111_1111_1111_1111_1111_1111));
        samples.extend((0..1000).map(|_| rand::random::<u128>()));
        for n in samples {
            assert_eq!(Token::from_u128(n).to_string(), format!("{n:032x}"));
            assert_eq!(&hex_swar(n), format!("{n:032x}").as_bytes());
        }
    }

    #[test]
    fn random_tokens_differ() {
        let set: std::collections::HashSet<Token> = (0..1000).map(|_| Token::random()).collect();
        assert_eq!(set.len(), 1000);
    }
}
