//! aoctl: inspects and drives a running aokd through its control socket
//! (docs/control.md), creates pre-shared key files, and verifies TCP-AO
//! signatures in captures.
//!
//! Exit status: 0 on success, 1 when aokd answers with an error (or a local
//! operation such as `gen-psk` fails), 2 when aokd cannot be reached or
//! understood.

mod client;
mod gen_psk;
mod output;
mod socket_path;
mod table;
mod verify;

use std::io::Write;
use std::path::{Path, PathBuf};

use aokd_api::control::{Command, ResponseData};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "aoctl",
    version,
    about = "Control tool for aokd",
    disable_help_subcommand = true
)]
struct Cli {
    /// aokd's control socket [default: daemon.control_socket of the
    /// configuration file, else /run/aokd/control.sock].
    #[arg(long, global = true, value_name = "PATH", env = client::SOCKET_ENV)]
    socket: Option<PathBuf>,
    /// aokd's configuration file, read only for its control socket
    /// (daemon.control_socket) when --socket is not given [default:
    /// /etc/aokd/aokd.toml where it exists and may be read].
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// How long to wait for aokd to accept the connection, and again for
    /// its answer, in seconds.
    #[arg(
        long,
        global = true,
        value_name = "SECS",
        env = client::TIMEOUT_ENV,
        default_value = client::DEFAULT_TIMEOUT_SECS,
        value_parser = clap::value_parser!(u64).range(1..=86_400)
    )]
    timeout: u64,
    /// Print the response's data as JSON (schema: docs/control.md) instead
    /// of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Daemon summary and one line per peer.
    Status,
    /// IKE SAs.
    Sas,
    /// TCP-AO master key tuples (metadata and fingerprints, never keys).
    Mkts,
    /// TCP sockets aokd keys: attached, keyed or guarded, and why.
    Sockets,
    /// Negotiate with a peer now.
    Initiate {
        /// The peer's name in the configuration.
        peer: String,
    },
    /// Delete a peer's IKE SA and its MKTs.
    Terminate {
        /// The peer's name in the configuration.
        peer: String,
    },
    /// Rekey the peer's newest MKT now (hitless: the old one retires after the overlap).
    Rekey {
        /// The peer's name in the configuration.
        peer: String,
        /// Rekey the IKE SA instead (CREATE_CHILD_SA; the MKTs stay as they are).
        #[arg(long)]
        ike: bool,
    },
    /// Make aokd read its configuration file again and apply it (as
    /// SIGHUP does): prints what changed; exits 1 with aokd's error, naming
    /// the file and the key, when the new file is refused (nothing changes).
    Reload,
    /// Write a new random pre-shared key file (mode 0600).
    GenPsk {
        /// The file to create.
        file: PathBuf,
        /// Replace the file if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Verify TCP-AO / TCP-MD5 signatures in a capture.
    Verify(verify::VerifyArgs),
    /// aokd's state in the OpenMetrics text format (for Prometheus, or
    /// node_exporter's textfile collector with `--output FILE`).
    Metrics {
        /// Write to FILE (atomically: a temporary file renamed over it)
        /// instead of standard output.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    // Not clap's generated `help` command, which refuses `aoctl help --help`.
    /// Print this message or the help of the given command (`aoctl help verify`).
    Help {
        /// The command, or command and subcommand.
        command: Vec<String>,
    },
    /// Print the man page or a shell completion script (packaging:
    /// docs/packaging.md).
    #[command(hide = true)]
    Generate {
        #[arg(value_enum)]
        what: aokd_clidoc::Output,
    },
}

// `verify::run` is `run_with` without aoctl's global options; main uses
// `run_with`. Referenced here so that it does not count as dead code.
const _: fn(&verify::VerifyArgs) -> i32 = verify::run;

fn main() {
    let Cli {
        socket,
        config,
        timeout,
        json,
        command,
    } = Cli::parse();
    let socket = match socket_path::resolve(socket, config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("aoctl: {e}");
            std::process::exit(2);
        }
    };
    let timeout = std::time::Duration::from_secs(timeout);
    let code = match command {
        Cmd::Verify(args) => verify::run_with(&args, Some(&socket), json),
        Cmd::GenPsk { file, force } => gen_psk::run(&file, force, json),
        Cmd::Status => query(&socket, timeout, json, Command::Status),
        Cmd::Sas => query(&socket, timeout, json, Command::Sas),
        Cmd::Mkts => query(&socket, timeout, json, Command::Mkts),
        Cmd::Sockets => query(&socket, timeout, json, Command::Sockets),
        Cmd::Initiate { peer } => query(&socket, timeout, json, Command::Initiate { peer }),
        Cmd::Terminate { peer } => query(&socket, timeout, json, Command::Terminate { peer }),
        Cmd::Rekey { peer, ike } => query(&socket, timeout, json, Command::Rekey { peer, ike }),
        Cmd::Reload => query(&socket, timeout, json, Command::Reload),
        Cmd::Metrics { output } => metrics_command(&socket, timeout, output.as_deref()),
        Cmd::Help { command } => help(&command),
        Cmd::Generate { what } => generate(what),
    };
    std::process::exit(code);
}

/// `aoctl help [COMMAND...]`: the long help of aoctl or of the command
/// named; an unknown command is an error (exit status 2, as clap's).
fn help(path: &[String]) -> i32 {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    cmd.build();
    let mut current = &mut cmd;
    for name in path {
        match current.find_subcommand_mut(name) {
            Some(sub) => current = sub,
            None => {
                eprintln!("aoctl help: no command {name:?}; `aoctl help` lists them");
                return 2;
            }
        }
    }
    print(&current.render_long_help().to_string());
    0
}

/// `aoctl generate WHAT`: aoctl(8), with the sections clap does not know
/// from `manual.roff`, or a completion script.
fn generate(what: aokd_clidoc::Output) -> i32 {
    let page = aokd_clidoc::ManPage {
        section: "8",
        manual: "System Administration",
        extra: include_str!("manual.roff"),
    };
    aokd_clidoc::print(<Cli as clap::CommandFactory>::command(), what, &page)
}

/// Writes `text` to stdout; a closed pipe (`aoctl sas | head`) is not an
/// error worth a panic.
fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// `aoctl metrics`: four answers, one OpenMetrics text.
fn metrics_command(socket: &Path, timeout: std::time::Duration, output: Option<&Path>) -> i32 {
    let ask = |command: Command| {
        client::call(socket, command, timeout).map_err(|e| {
            eprintln!("aoctl: {e}");
            e.exit_code()
        })
    };
    let answers = (|| {
        let status = ask(Command::Status)?;
        let sas = ask(Command::Sas)?;
        let mkts = ask(Command::Mkts)?;
        let sockets = ask(Command::Sockets)?;
        Ok::<_, i32>((status, sas, mkts, sockets))
    })();
    let (status, sas, mkts, sockets) = match answers {
        Ok(a) => a,
        Err(code) => return code,
    };
    let (
        ResponseData::Status(status),
        ResponseData::Sas { sas },
        ResponseData::Mkts { mkts },
        ResponseData::Sockets { sockets },
    ) = (status, sas, mkts, sockets)
    else {
        eprintln!(
            "aoctl: control socket {}: unexpected answers from aokd",
            socket.display()
        );
        return 2;
    };
    let text = aokd_api::metrics::render(&aokd_api::metrics::Snapshot {
        status: &status,
        sas: &sas,
        mkts: &mkts,
        sockets: &sockets,
    });
    match output {
        None => {
            print(&text);
            0
        }
        Some(file) => match aokd_api::metrics::write_atomically(file, &text) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("aoctl metrics: cannot write {}: {e}", file.display());
                1
            }
        },
    }
}

/// Sends `command`, prints the answer; returns the exit status.
fn query(socket: &Path, timeout: std::time::Duration, json: bool, command: Command) -> i32 {
    let expected = command.clone();
    let data = match client::call(socket, command, timeout) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("aoctl: {e}");
            return e.exit_code();
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let text = match (&expected, &data) {
        (Command::Status, ResponseData::Status(s)) if json => output::json(s),
        (Command::Status, ResponseData::Status(s)) => output::status(s, now),
        (Command::Sas, ResponseData::Sas { sas }) if json => output::json(&output::SasJson { sas }),
        (Command::Sas, ResponseData::Sas { sas }) => output::sas(sas, now),
        (Command::Mkts, ResponseData::Mkts { mkts }) if json => {
            output::json(&output::MktsJson { mkts })
        }
        (Command::Mkts, ResponseData::Mkts { mkts }) => output::mkts(mkts, now),
        (Command::Sockets, ResponseData::Sockets { sockets }) if json => {
            output::json(&output::SocketsJson { sockets })
        }
        (Command::Sockets, ResponseData::Sockets { sockets }) => output::sockets(sockets, now),
        (
            Command::Initiate { .. } | Command::Terminate { .. } | Command::Rekey { .. },
            ResponseData::Accepted { message },
        ) => {
            if json {
                output::json(&output::AcceptedJson { message })
            } else {
                format!("{}\n", table::sanitize(message))
            }
        }
        (Command::Reload, ResponseData::Reloaded(report)) if json => output::json(report),
        (Command::Reload, ResponseData::Reloaded(report)) => output::reload(report),
        _ => {
            eprintln!(
                "aoctl: control socket {}: unexpected answer to {expected:?} from aokd",
                socket.display()
            );
            return 2;
        }
    };
    print(&text);
    0
}
