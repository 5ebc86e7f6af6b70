//! Lock tokens: random 128-bit values, written as 32 lowercase hex digits so that they
//! read well in `redis-cli` and `mg` output.

use std::fmt;

/// The value a [`RedLock`](crate::RedLock) holder stores under the lock key. Only the
/// holder of the token can release the lock.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token([u8; 32]);

impl Token {
    /// A fresh random token from the thread-local CSPRNG.
    pub fn random() -> Self {
        Token::from_u128(rand::random())
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

    #[test]
    fn random_tokens_differ() {
        let set: std::collections::HashSet<Token> = (0..1000).map(|_| Token::random()).collect();
        assert_eq!(set.len(), 1000);
    }
}
