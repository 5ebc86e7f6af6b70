//! Exit codes: stable, documented in `--help` (`EXIT_CODES`) and in the README.

/// The conflict code `run` uses unless `-E` says otherwise: the lock was held
/// (`-n`, or still held when `-w` ran out). Also "no" for the query commands.
pub const CONFLICT: i32 = 1;
/// A usage error: bad arguments, a missing or unusable URL. Nothing was taken.
pub const USAGE: i32 = 2;
/// The lock was lost while the command ran (a renewal failed or found the lock gone,
/// or none was confirmed in time): the command was sent SIGTERM (SIGKILL after the
/// grace period). As GNU timeout(1)'s 124: the tool stopped the command.
pub const LOST: i32 = 124;
/// aiolock itself failed: the cache could not be reached or refused a command.
/// Nothing was run.
pub const FAILED: i32 = 125;
/// The command was found but could not be run (as the shell's 126).
pub const CANNOT_EXECUTE: i32 = 126;
/// The command was not found (as the shell's 127).
pub const NOT_FOUND: i32 = 127;
/// The command, or aiolock while it waited, was ended by signal N: 128 + N.
pub const SIGNAL_BASE: i32 = 128;

/// The table shown by `aiolock --help` and `aiolock run --help`, and in the README.
pub const EXIT_CODES: &str = "\
Exit status:
  run      the command's own status, when it ran and the lock held throughout
           (128+N when a signal N ended it); otherwise:
    1      the lock was held by another holder (-n, or -w ran out); see -E
    2      usage error (bad argument, no URL, memory:// URL); nothing was taken
    124    the lock was lost while the command ran; it was sent SIGTERM
           (SIGKILL after --kill-after)
    125    aiolock failed (cache unreachable, refused a command); nothing ran
    126    the command could not be executed
    127    the command was not found
    128+N  aiolock got signal N while waiting for the lock; nothing was taken
  status   0 held, 1 not held
  release  0 released, 1 not held (or changed hands, or not confirmed)
  get      0 found (the value on stdout), 1 missing
  set      0 stored
  delete   0 deleted, 1 missing
  every command: 2 usage error, 125 aiolock failed";
