//! Fork detection. A forked child inherits its parent's sockets and its random
//! generator's state: a child that kept using either could read the parent's replies
//! or draw the parent's next lock tokens. [`generation`] changes in every child, so
//! whatever depends on the process (pooled connections, the token generator) can tell
//! it was inherited and start afresh.
//!
//! The child is told by a `pthread_atfork` handler, registered on first use: it runs
//! on every `fork()` through the C library (Python's `os.fork`, Ruby's `fork`, the
//! preforking servers), not on a raw `clone` system call that bypasses it.

use std::sync::Once;
use std::sync::atomic::{AtomicU64, Ordering};

static GENERATION: AtomicU64 = AtomicU64::new(0);
static HOOK: Once = Once::new();

#[cfg(unix)]
extern "C" fn in_child() {
    // Async-signal-safe: one atomic add.
    GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// The process generation: 0 in the process that first asked, one more in each
/// forked descendant since. Compare a remembered value to tell "inherited by fork".
#[inline]
pub(crate) fn generation() -> u64 {
    HOOK.call_once(|| {
        #[cfg(unix)]
        // SAFETY: registers a handler that only touches an atomic; it stays valid for
        // the life of the process (a static function).
        unsafe {
            libc::pthread_atfork(None, None, Some(in_child));
        }
    });
    GENERATION.load(Ordering::Relaxed)
}

/// [`generation`] in 32 bits, for the guards (which have room for no more): it
/// wraps only after 2^32 nested forks, so a process's value differs from those of
/// its ancestors.
#[inline]
pub(crate) fn generation32() -> u32 {
    generation() as u32
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn a_forked_child_sees_a_new_generation() {
        let parent = generation();
        // SAFETY: the child only reads an atomic and exits without unwinding.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let code = if generation() == parent + 1 { 0 } else { 1 };
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child just forked.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        assert_eq!(
            generation(),
            parent,
            "the parent's generation does not change"
        );
    }
}
