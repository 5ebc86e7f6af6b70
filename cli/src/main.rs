//! `aiolock`: a distributed flock(1) for shell scripts and cron, on Redis or memcached.
//!
//! `aiolock run KEY -- COMMAND` takes the exclusive lock KEY (fenced, with a lease
//! renewed while the command runs), runs the command in its own process group,
//! forwards signals to it, stops it when the lock is lost, and releases the lock when
//! it ends. `status`, `release --force`, `get`, `set` and `delete` are for operators
//! and scripts. The exit codes are in [`code`].

mod admin;
mod code;
mod keeper;
mod open;
mod run;

use std::ffi::OsString;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// A distributed flock(1): run a command while holding a lock on Redis or memcached.
///
/// The lock is an aiolock exclusive lock with a lease, renewed while the command runs
/// and fenced: every acquisition of a key gets a larger number (AIOLOCK_FENCE), for the
/// storage the command writes to to refuse a stale holder's writes.
#[derive(Parser, Debug)]
#[command(name = "aiolock", version, after_long_help = code::EXIT_CODES)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug, Clone)]
struct Global {
    /// The cache: redis://HOST[:PORT][/DB], rediss://…, redis+unix:///PATH,
    /// memcached://HOST[:PORT], memcached+unix:///PATH, with aiolock's options
    /// (?namespace=…). memory:// is refused: it cannot lock across processes.
    #[arg(
        long,
        global = true,
        env = "AIOLOCK_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    url: Option<String>,
    /// No messages but errors and lock loss: no conflict message, no live status line.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Say what happens: waiting, acquired (with the fence), released.
    #[arg(short, long, global = true)]
    verbose: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Take the lock KEY, run COMMAND, release the lock when it exits; exit with its status.
    ///
    /// The lease is renewed every third of it while the command runs. When a renewal
    /// fails or finds the lock gone, or none is confirmed while a third of the lease is
    /// left, the lock counts as lost: the command's process group gets SIGTERM, then
    /// SIGKILL after --kill-after, and aiolock exits with 124. INT, TERM, HUP, QUIT,
    /// USR1, USR2 and ALRM sent to aiolock are forwarded to the command's process
    /// group; the lock is released once the command ends. TSTP is ignored while the
    /// command runs (a stopped aiolock could not renew the lease). The command gets
    /// AIOLOCK_KEY, AIOLOCK_TOKEN and AIOLOCK_FENCE in its environment. It runs in its
    /// own process group, so it cannot read from the terminal.
    #[command(after_long_help = code::EXIT_CODES)]
    Run(RunArgs),
    /// Whether KEY's lock is held, how much of its lease is left (as the server counts
    /// it), its holder's token and its fence.
    Status {
        /// The lock's key, as given to `run`.
        #[arg(value_parser = key)]
        key: String,
    },
    /// Release KEY's lock whoever holds it (the holder's aiolock then loses it and
    /// stops its command). Asks for confirmation when stdin is a terminal.
    Release {
        /// Required: this releases another process's lock.
        #[arg(long)]
        force: bool,
        /// Do not ask for confirmation.
        #[arg(short, long)]
        yes: bool,
        /// The lock's key, as given to `run`.
        #[arg(value_parser = key)]
        key: String,
    },
    /// Print the value of KEY (as stored, no newline added).
    Get {
        #[arg(value_parser = key)]
        key: String,
    },
    /// Store VALUE (or standard input, without VALUE) under KEY.
    Set {
        /// Expire after SECS (default: never).
        #[arg(long, value_name = "SECS", value_parser = positive_secs, allow_negative_numbers = true)]
        ttl: Option<Duration>,
        #[arg(value_parser = key)]
        key: String,
        value: Option<OsString>,
    },
    /// Delete KEY.
    Delete {
        #[arg(value_parser = key)]
        key: String,
    },
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Wait at most SECS for the lock (default: as long as it takes, like flock).
    #[arg(short, long, value_name = "SECS", value_parser = secs, allow_negative_numbers = true)]
    wait: Option<Duration>,
    /// Do not wait: fail at once if the lock is held (same as -w 0).
    #[arg(short, long, conflicts_with = "wait")]
    nonblock: bool,
    /// Exit status when the lock is held (-n, or -w ran out).
    #[arg(short = 'E', long, value_name = "N", default_value_t = code::CONFLICT as u8)]
    conflict_exit_code: u8,
    /// The lease, renewed while the command runs: how long others wait for the lock
    /// when this aiolock dies without releasing it (SIGKILL, a crashed host).
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = positive_secs, allow_negative_numbers = true)]
    lease: Duration,
    /// Keep the lock at least SECS from its acquisition, even when the command ends
    /// sooner (left to expire then): dedupes cron jobs across hosts with skewed clocks.
    #[arg(long, value_name = "SECS", value_parser = secs, allow_negative_numbers = true)]
    min_hold: Option<Duration>,
    /// After the lock is lost, SIGKILL the command's process group SECS after SIGTERM
    /// (default: a quarter of the lease: SIGTERM comes with a third of it left).
    #[arg(long, value_name = "SECS", value_parser = secs, allow_negative_numbers = true)]
    kill_after: Option<Duration>,
    /// The lock's name; the lock is stored under KEY + "-lock" (in the URL's namespace).
    #[arg(value_parser = key)]
    key: String,
    /// The command and its arguments (after `--` when they start with `-`).
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    command: Vec<OsString>,
}

fn key(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("the key is empty".into());
    }
    Ok(s.to_owned())
}

/// Seconds as a float: finite, not negative.
fn secs(s: &str) -> Result<Duration, String> {
    let x: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    aiolock::seconds(x)
        .map_err(|_| format!("{s} is not a valid number of seconds (finite, not negative)"))
}

/// Seconds as a float: finite, more than zero.
fn positive_secs(s: &str) -> Result<Duration, String> {
    let d = secs(s)?;
    if d.is_zero() {
        return Err("it must be more than zero".into());
    }
    Ok(d)
}

/// Prints `aiolock: MESSAGE` on stderr and returns `code`.
pub fn fail(code: i32, message: impl std::fmt::Display) -> i32 {
    eprintln!("aiolock: {message}");
    code
}

/// Parses the arguments; a usage error is one line on stderr and exit status 2.
fn parse() -> Cli {
    match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind as K;
            if matches!(
                e.kind(),
                K::DisplayHelp | K::DisplayVersion | K::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                e.exit();
            }
            std::process::exit(fail(code::USAGE, one_line(&e.render().to_string())));
        }
    }
}

/// clap's message without its `error:` prefix, usage and hint, on one line.
fn one_line(rendered: &str) -> String {
    let first: Vec<&str> = rendered
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let text = first.join(" ");
    let text = text.strip_prefix("error: ").unwrap_or(&text);
    format!("{text} (see aiolock --help)")
}

fn main() {
    let cli = parse();
    let g = cli.global;
    let status = match cli.command {
        Command::Run(args) => run::run(&g, args),
        Command::Status { key } => admin::status(&g, &key),
        Command::Release { force, yes, key } => admin::release(&g, &key, force, yes),
        Command::Get { key } => admin::get(&g, &key),
        Command::Set { ttl, key, value } => admin::set(&g, &key, value, ttl),
        Command::Delete { key } => admin::delete(&g, &key),
    };
    std::process::exit(status);
}
