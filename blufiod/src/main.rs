//! blufiod, the blufio daemon: argument parsing, logging, the runtime, and exit codes. Everything
//! else happens in [`daemon::run`].
//!
//! Exit codes: 0 after a clean shutdown; 1 when the daemon fails at runtime (a subsystem failed,
//! storage or the socket cannot be used, another daemon is running); 2 for a usage error or an
//! invalid configuration (systemd should not restart into the same mistake).

mod agent;
mod backup;
mod config;
mod control;
mod daemon;
mod devices;
mod events;
mod gateway;
mod health;
mod hooks;
mod lifecycle;
mod lockfile;
mod logging;
mod memory;
mod metrics;
mod notify;
mod paths;
mod process;
mod secrets;
mod storage;
mod util;
mod vault;
mod watchdog;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Exit code: the daemon failed at runtime.
const EXIT_FAILURE: u8 = 1;
/// Exit code: usage error or invalid configuration.
const EXIT_CONFIG: u8 = 2;

/// The blufio daemon: an always-on personal AI agent.
///
/// Runs in the foreground (under systemd, Type=notify). Reload the configuration with SIGHUP;
/// reopen log.file with SIGUSR1 (after logrotate renamed it); stop with SIGTERM or SIGINT.
/// blufioctl(1) talks to it over its control socket; the configuration is documented in
/// /usr/share/doc/blufio/blufiod.example.toml.
#[derive(Debug, Parser)]
#[command(
    name = "blufiod",
    version,
    after_help = "Exit codes: 0 clean shutdown, 1 runtime failure, 2 usage error or invalid configuration."
)]
struct Args {
    /// Config file [env: BLUFIO_CONFIG]. Default: $CONFIGURATION_DIRECTORY/blufiod.toml under
    /// systemd, else /etc/blufio/blufiod.toml for root, else ~/.config/blufio/blufiod.toml.
    #[arg(long, value_name = "PATH", global = true)]
    config: Option<PathBuf>,
    /// Validate the configuration, print the effective values (secrets masked) and exit.
    #[arg(long)]
    check_config: bool,
    /// With --check-config: print one JSON document instead (what `blufioctl doctor` reads when
    /// the daemon is down): the config file, whether it is valid or why not, the paths the daemon
    /// would use, and every key. Exit codes as without it.
    #[arg(long, requires = "check_config")]
    json: bool,
    /// Print the blufiod(8) man page (roff) and exit; `cargo xtask dist` installs it.
    #[arg(long, hide = true)]
    man_page: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

/// What blufiod does instead of running.
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Restores a backup archive (from `blufioctl backup`) while no daemon runs on this state
    /// directory: verifies it whole, keeps the current database as a safety copy, swaps it in.
    /// With a daemon running, use `blufioctl restore` instead.
    Restore {
        /// The archive.
        archive: PathBuf,
        /// Restore even though this machine's vault key does not open the archive's secrets
        /// (they are dropped and must be stored again).
        #[arg(long)]
        without_secrets: bool,
        /// Also install the archive's config file over this one.
        #[arg(long)]
        restore_config: bool,
        /// Also install the archive's TLS key pair (from `backup --include-tls`).
        #[arg(long)]
        restore_tls: bool,
    },
}

fn main() -> ExitCode {
    let started = Instant::now();
    // Everything the daemon creates (database, keys, config) is private unless a step widens it
    // on purpose, as the control socket does for its group.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    // The process will hold the API key and the TLS private key, and a panic aborts it: no core
    // dump may carry them to disk, and no other process of the same user may ptrace it or read
    // its memory through /proc (the unit also sets LimitCORE=0).
    if let Err(error) = nix::sys::prctl::set_dumpable(false) {
        complain(format_args!(
            "blufiod: cannot disable core dumps (PR_SET_DUMPABLE): {error}"
        ));
        return ExitCode::from(EXIT_FAILURE);
    }
    let args = Args::parse();
    if args.man_page {
        return print_man_page();
    }
    let args_command = args.command;
    let source = config::ConfigSource::resolve(
        args.config,
        |name| std::env::var_os(name),
        nix::unistd::geteuid().as_raw(),
    );
    let loaded = match source.load() {
        Ok(loaded) => loaded,
        Err(error) => {
            if args.json {
                let document = serde_json::json!({
                    "config": source.path,
                    "present": source.path.exists(),
                    "valid": false,
                    "error": error_chain(&error),
                });
                let _ = print_json(&document);
            }
            complain(format_args!("blufiod: {}", error_chain(&error)));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if args.check_config {
        let printed = if args.json {
            print_json(&config_json(&source, &loaded))
        } else {
            print_config(&mut std::io::stdout().lock(), &source, &loaded)
        };
        return match printed {
            Ok(()) => ExitCode::SUCCESS,
            // The reader has gone (`blufiod --check-config | head`): nothing is wrong.
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
            Err(error) => {
                complain(format_args!(
                    "blufiod: cannot write the configuration to standard output: {error}"
                ));
                ExitCode::from(EXIT_FAILURE)
            }
        };
    }
    let log = match logging::init(&loaded.config.log) {
        Ok(handle) => handle,
        Err(error) => {
            complain(format_args!("blufiod: {}", error_chain(&error)));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    install_panic_hook();

    if let Some(Command::Restore {
        archive,
        without_secrets,
        restore_config,
        restore_tls,
    }) = &args_command
    {
        return restore(
            &source,
            &loaded,
            archive,
            backup::restore::RestoreOptions {
                without_secrets: *without_secrets,
                restore_config: *restore_config,
                restore_tls: *restore_tls,
            },
        );
    }
    let inherited_socket = match inherited_socket() {
        Ok(socket) => socket,
        Err(error) => {
            tracing::error!(%error, "cannot take the sockets systemd passed (LISTEN_FDS)");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("blufiod-worker")
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the async runtime");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let outcome = runtime.block_on(daemon::run(daemon::Startup {
        started,
        source,
        loaded,
        log: Some(log),
        inherited_socket,
    }));
    // Do not wait for blocking tasks that may never finish (a hung disk): the drain is over.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %error_chain(&error), "blufiod failed");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// `--check-config`: the effective configuration, one key per line.
/// `blufiod restore`: exit 0 when restored, 1 when refused or failed (the error says why).
fn restore(
    source: &config::ConfigSource,
    loaded: &config::Loaded,
    archive: &std::path::Path,
    options: backup::restore::RestoreOptions,
) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            complain(format_args!("blufiod: cannot start the async runtime: {error}"));
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match runtime.block_on(daemon::restore_offline(source, loaded, archive, options)) {
        Ok(restored) => {
            println!(
                "restored the backup of {} made at {} (blufio {}); the previous database is kept as {}{}",
                restored.manifest.daemon.hostname,
                restored.manifest.created_at,
                restored.manifest.blufio_version,
                restored.safety_copy.display(),
                if restored.secrets_restored {
                    ""
                } else {
                    "; its secrets were dropped: store them again with `blufioctl config set-secret`"
                }
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            complain(format_args!("blufiod: {}", error_chain(&error)));
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn print_config(
    out: &mut impl std::io::Write,
    source: &config::ConfigSource,
    loaded: &config::Loaded,
) -> std::io::Result<()> {
    let present = if source.path.exists() {
        ""
    } else {
        " (not present; defaults and environment only)"
    };
    writeln!(out, "configuration OK: {}{present}", source.path.display())?;
    let entries = config::entries(loaded, None).expect("listing all keys cannot fail");
    let width = entries.iter().map(|entry| entry.spec.key.len()).max().unwrap_or(0);
    for entry in entries {
        let value = if entry.unset {
            "(unset)"
        } else {
            entry.value_toml.as_str()
        };
        writeln!(out, "{:width$}  {value}  [{}]", entry.spec.key, entry.source.as_str())?;
    }
    out.flush()
}

/// The listening socket systemd passed for the control socket (socket activation), if any. The
/// `LISTEN_*` variables are removed, so no child sees them. Only the first descriptor is used;
/// any more are closed.
fn inherited_socket() -> std::io::Result<Option<std::os::fd::OwnedFd>> {
    use std::os::fd::FromRawFd as _;
    // SAFETY: called before the runtime or any other thread exists, so nothing reads the
    // environment concurrently (the crate's stated precondition).
    #[allow(unsafe_code, reason = "the environment is changed while the process has one thread")]
    let fds: Vec<std::os::fd::RawFd> = unsafe { sd_notify::listen_fds_and_unset_env() }?.collect();
    // SAFETY: systemd passed these descriptors to this process (LISTEN_PID is ours), open and
    // owned by nobody else in it; each is wrapped exactly once.
    #[allow(unsafe_code, reason = "taking ownership of the descriptors systemd passed")]
    let mut owned: std::collections::VecDeque<std::os::fd::OwnedFd> = fds
        .into_iter()
        .map(|fd| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
        .collect();
    let first = owned.pop_front();
    if !owned.is_empty() {
        tracing::warn!(
            extra = owned.len(),
            "systemd passed more than one socket; only the first is the control socket, the rest are closed"
        );
    }
    // Dropping the rest closes them: no listener is left open that nothing accepts on.
    drop(owned);
    Ok(first)
}

/// `--man-page`: blufiod(8).
fn print_man_page() -> ExitCode {
    use clap::CommandFactory as _;
    use std::io::Write as _;
    let mut page = Vec::new();
    let rendered = clap_mangen::Man::new(Args::command())
        .section("8")
        .render(&mut page)
        .and_then(|()| std::io::stdout().lock().write_all(&page));
    match rendered {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            complain(format_args!("blufiod: cannot write the man page: {error}"));
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// `--check-config --json`: the file, the paths the daemon would use (as `blufioctl doctor`
/// checks them with the daemon down) and every key with its source.
fn config_json(source: &config::ConfigSource, loaded: &config::Loaded) -> serde_json::Value {
    let paths = paths::Paths::resolve(
        &loaded.config,
        &source.path,
        |name| std::env::var_os(name),
        nix::unistd::geteuid().as_raw(),
    );
    let mut socket_lock = paths.socket.as_os_str().to_owned();
    socket_lock.push(".lock");
    let keys: Vec<serde_json::Value> = config::entries(loaded, None)
        .expect("listing all keys cannot fail")
        .into_iter()
        .map(|entry| {
            serde_json::json!({
                "key": entry.spec.key,
                "value": (!entry.unset).then_some(entry.value_toml),
                "source": entry.source.as_str(),
            })
        })
        .collect();
    serde_json::json!({
        "config": source.path,
        "present": source.path.exists(),
        "valid": true,
        "paths": {
            "state_dir": paths.state_dir,
            "runtime_dir": paths.runtime_dir,
            "socket": paths.socket,
            "socket_lock": std::path::PathBuf::from(socket_lock),
            "state_lock": paths.state_dir.join("blufiod.lock"),
            "database": paths.database,
            "log_file": loaded.config.log.file,
        },
        "keys": keys,
    })
}

fn print_json(document: &serde_json::Value) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut stdout, document)?;
    writeln!(stdout)?;
    stdout.flush()
}

/// Writes one line to stderr before the logger exists; a closed stderr drops it rather than
/// panicking, so the exit code still says what went wrong.
fn complain(line: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Logs panics through tracing (so they reach the journal with the daemon's format) before the
/// default hook prints them. In release builds `panic = "abort"` then ends the process so that
/// systemd restarts a fresh one.
fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!(panic = %info, "panic");
        default(info);
    }));
}

pub(crate) use util::error_chain;
