//! aokd: negotiates TCP-AO master key tuples with configured peers over
//! IKEv2. This file is only the command line: argument parsing, logging
//! setup, and calls into the library ([`aokd::config`], [`aokd::control`]).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use aokd::attach::AttachServer;
use aokd::config::{format_duration, Config};
use aokd::control::ControlServer;
use aokd::kernel;
use aokd::keys::KeyManager;
use aokd::persist::Persist;
use aokd::runtime::{self, Daemon};
use aokd::state::StateStore;
use clap::{Parser, Subcommand, ValueEnum};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

#[derive(Parser)]
#[command(
    name = "aokd",
    version,
    about = "Automatic keying for TCP-AO over IKEv2"
)]
#[command(subcommand_negates_reqs = true, args_conflicts_with_subcommands = true)]
struct Cli {
    /// The configuration file.
    #[arg(long, value_name = "FILE", required = true)]
    config: Option<PathBuf>,
    /// Log format on stderr (RUST_LOG sets the level; default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Validate a configuration file, print a summary and exit.
    CheckConfig {
        /// The configuration file.
        file: PathBuf,
    },
    /// The embedded default: two aokd instances on loopback negotiate an
    /// MKT with a generated PSK, and each prints what it holds.
    Demo {
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
    /// Print the man page or a shell completion script (packaging:
    /// docs/packaging.md).
    #[command(hide = true)]
    Generate {
        #[arg(value_enum)]
        what: aokd_clidoc::Output,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match (cli.command, cli.config) {
        (Some(Cmd::CheckConfig { file }), _) => check_config(&file),
        (Some(Cmd::Demo { timeout }), _) => {
            init_logging(cli.log_format, "warn");
            demo(timeout)
        }
        (Some(Cmd::Generate { what }), _) => generate(what),
        (None, Some(file)) => {
            init_logging(cli.log_format, "info");
            run(&file)
        }
        // clap requires --config when there is no subcommand.
        (None, None) => ExitCode::from(2),
    }
}

/// `aokd generate WHAT`: aokd(8), with the sections clap does not know
/// from `manual.roff`, or a completion script.
fn generate(what: aokd_clidoc::Output) -> ExitCode {
    let page = aokd_clidoc::ManPage {
        section: "8",
        manual: "System Administration",
        extra: include_str!("manual.roff"),
    };
    match aokd_clidoc::print(<Cli as clap::CommandFactory>::command(), what, &page) {
        0 => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}

/// Logs to stderr; RUST_LOG overrides `default_level`.
fn init_logging(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// `aokd demo`.
fn demo(timeout: u64) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("aokd demo: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(aokd::demo::run(std::time::Duration::from_secs(timeout))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aokd demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Appends a line to a String (writing to a String cannot fail).
macro_rules! outln {
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($out, $($arg)*);
    }};
}

/// The `auth: pubkey` lines of `check-config`: the files, and each
/// certificate's and CA's subject and expiry.
fn print_signature(out: &mut String, sig: &aokd::config::SignatureFiles) {
    outln!(
        out,
        "  auth: pubkey, {} certificate(s) from {}, key from {}, {} trust anchor(s) from {}",
        sig.certificates.len(),
        sig.certificate_file.display(),
        sig.private_key_file.display(),
        sig.ca.len(),
        sig.ca_file.display()
    );
    let certs = sig.certificates.iter().map(|c| ("certificate", c));
    for (what, der) in certs.chain(sig.ca.iter().map(|c| ("ca", c))) {
        match aokd::cert_info::subject_and_expiry(der) {
            Some((subject, expiry)) => {
                outln!(out, "    {what}: {subject}, expires {expiry}")
            }
            None => outln!(out, "    {what}: (subject and expiry unreadable)"),
        }
    }
    print_crls(out, sig);
}

/// The `crl` lines of `check-config`: each CRL's file, issuer, update
/// times and entry count; a nextUpdate in the past and an issuer that is
/// not a configured CA are said (both are used, docs/configuration.md).
fn print_crls(out: &mut String, sig: &aokd::config::SignatureFiles) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let now = aokd::cert_info::compact_utc(now);
    let cas: Vec<String> = sig
        .ca
        .iter()
        .filter_map(|c| aokd::cert_info::subject_and_expiry(c).map(|(s, _)| s))
        .collect();
    for f in &sig.crl {
        for der in &f.crls {
            let Some(c) = aokd::cert_info::crl_summary(der) else {
                outln!(
                    out,
                    "    crl: {}: (issuer and times unreadable)",
                    f.file.display()
                );
                continue;
            };
            let next = c.next_update.as_deref().unwrap_or("none");
            let mut notes = Vec::new();
            if c.next_update_compact.as_deref().is_some_and(|n| *n <= *now) {
                notes.push("nextUpdate has passed, still used");
            }
            if !cas.contains(&c.issuer) {
                notes.push("issuer is not a ca certificate: used for what an intermediate of that name issued");
            }
            let notes = if notes.is_empty() {
                String::new()
            } else {
                format!(" ({})", notes.join("; "))
            };
            outln!(
                out,
                "    crl: {}: issuer {}, this update {}, next update {next}, {} revoked{notes}",
                f.file.display(),
                c.issuer,
                c.this_update,
                c.revoked
            );
        }
    }
}

/// `aokd check-config FILE`.
fn check_config(file: &Path) -> ExitCode {
    let config = match Config::load(file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("aokd: {e}");
            return ExitCode::FAILURE;
        }
    };
    let d = &config.daemon;
    let mut out = String::new();
    outln!(out, "{}: OK", file.display());
    let listen: Vec<String> = d.listen_addrs().iter().map(ToString::to_string).collect();
    outln!(out, "listen: {}", listen.join(", "));
    outln!(out, "control socket: {}", d.control_socket.display());
    outln!(out, "state dir: {}", d.state_dir.display());
    outln!(
        out,
        "liveness: {}",
        d.liveness
            .map_or_else(|| "off".to_string(), format_duration)
    );
    if config.peers.is_empty() {
        outln!(out, "no peers configured");
    }
    for p in &config.peers {
        let join = |v: Vec<String>| v.join(", ");
        outln!(out, "peer {}:", p.name);
        outln!(out, "  remote: {}", p.remote_addr());
        if let Some(local) = p.local {
            outln!(out, "  local: {local}");
        }
        let local_id = match &p.local_id {
            Some(id) => format!("{id} ({})", id.id_type),
            None => "the local address".into(),
        };
        outln!(out, "  local id: {local_id}");
        outln!(
            out,
            "  remote id: {} ({})",
            p.remote_id,
            p.remote_id.id_type
        );
        match &p.signature {
            None => outln!(
                out,
                "  psk: {} octets from {}",
                p.psk.len(),
                p.psk_file.display()
            ),
            Some(sig) => print_signature(&mut out, sig),
        }
        outln!(
            out,
            "  mac algorithms: {}",
            join(p.mac_algorithms.iter().map(ToString::to_string).collect())
        );
        outln!(out, "  include tcp options: {}", p.include_tcp_options);
        outln!(
            out,
            "  tcp ports: {}",
            join(p.tcp_ports.iter().map(ToString::to_string).collect())
        );
        outln!(
            out,
            "  ike proposals: {}",
            join(p.ike_proposals.iter().map(ToString::to_string).collect())
        );
        outln!(out, "  initiate: {}", p.initiate);
        outln!(
            out,
            "  lifetimes: ike_rekey {}, mkt_rekey {}, mkt_lifetime {}, pfs {}",
            format_duration(p.lifetimes.ike_rekey),
            format_duration(p.lifetimes.mkt_rekey),
            format_duration(p.lifetimes.mkt_lifetime),
            if p.lifetimes.pfs { "on" } else { "off" }
        );
    }
    for g in &config.groups {
        let t = &g.template;
        let join = |v: Vec<String>| v.join(", ");
        outln!(out, "peer group {}:", g.name);
        outln!(
            out,
            "  remote: {} (IKE port {})",
            join(g.prefixes.iter().map(ToString::to_string).collect()),
            t.remote_port
        );
        if let Some(local) = t.local {
            outln!(out, "  local: {local}");
        }
        outln!(
            out,
            "  members: named {}/ADDRESS, identity {}",
            g.name,
            g.identity
        );
        if let Some(sig) = &t.signature {
            print_signature(&mut out, sig);
        }
        outln!(
            out,
            "  mac algorithms: {}",
            join(t.mac_algorithms.iter().map(ToString::to_string).collect())
        );
        outln!(
            out,
            "  tcp ports: {}",
            join(t.tcp_ports.iter().map(ToString::to_string).collect())
        );
        outln!(
            out,
            "  lifetimes: ike_rekey {}, mkt_rekey {}, mkt_lifetime {}, pfs {}",
            format_duration(t.lifetimes.ike_rekey),
            format_duration(t.lifetimes.mkt_rekey),
            format_duration(t.lifetimes.mkt_lifetime),
            if t.lifetimes.pfs { "on" } else { "off" }
        );
    }
    // A closed pipe (`aokd check-config F | head`) is not worth a panic.
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), out.as_bytes());
    ExitCode::SUCCESS
}

/// `aokd --config FILE`: negotiates with every configured peer and serves
/// the control socket until SIGINT or SIGTERM; SIGHUP reloads FILE (as
/// `aoctl reload` does).
fn run(file: &Path) -> ExitCode {
    let config = match load_compact(file) {
        Ok(c) => c,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    use anyhow::Context;
    use tokio::signal::unix::{signal, SignalKind};

    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    // SIGHUP reloads the configuration (its default action would kill
    // aokd without its shutdown).
    let mut sighup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    info!(
        config = %config.file.display(),
        peers = config.peers.len(),
        "aokd {} starting",
        env!("CARGO_PKG_VERSION")
    );
    let endpoint = runtime::endpoint_config(&config)?;
    let support = kernel::probe().context("cannot probe the kernel for TCP-AO and TCP-MD5")?;
    info!(
        tcp_ao = support.tcp_ao,
        tcp_md5 = support.tcp_md5,
        "kernel probed"
    );
    let keys = KeyManager::new(&config, support)?;
    // Everything that can fail for want of a port or a socket path is
    // bound first, and the state directory and file are created only
    // then: a start that fails leaves nothing behind. A corrupt or newer
    // state file still stops aokd with the reason, untouched; the sockets
    // (and the socket directories created for them) are removed again.
    let created_dirs =
        missing_parents(&[&config.daemon.control_socket, &config.daemon.attach_socket]);
    let bound = async {
        let daemon =
            Daemon::bind(&config.daemon.listen_addrs(), endpoint, "main", Some(keys)).await?;
        let server = ControlServer::bind_with_group(
            &config.daemon.control_socket,
            config.daemon.control_socket_group.as_ref().map(|g| g.gid),
        )
        .await?;
        let attach = AttachServer::bind_with_group(
            &config.daemon.attach_socket,
            config.daemon.attach_socket_mode,
            config.daemon.attach_socket_group.as_ref().map(|g| g.gid),
        )
        .await
        .with_context(|| format!("attach socket {}", config.daemon.attach_socket.display()))?;
        anyhow::Ok((daemon, server, attach))
    };
    let opened = match bound.await {
        Ok(bound) => open_state(&config).map(|state| (bound, state)),
        Err(e) => Err(e),
    };
    let ((mut daemon, server, mut attach), (persist, writer, snapshot, state_opened)) = match opened
    {
        Ok(o) => o,
        Err(e) => {
            // The listeners were dropped (their socket files removed).
            for dir in created_dirs.iter().rev() {
                let _ = std::fs::remove_dir(dir);
            }
            return Err(e);
        }
    };
    daemon.set_retired_keys(config.daemon.retired_keys);
    // The configuration first: restoring makes the peer group members of
    // the state file again from it.
    let acquire_timeout = config.daemon.acquire_timeout;
    let metrics_file = config
        .daemon
        .metrics_file
        .clone()
        .map(|f| (f, config.daemon.metrics_interval));
    // Moved, not copied: a route server's peers are kept once.
    daemon.set_config(config);
    daemon.restore(persist, &snapshot);
    drop(snapshot);
    aokd::memory::release_free_memory();
    if let Some((file, interval)) = metrics_file {
        let metrics =
            aokd::metrics_file::MetricsFile::start(file, interval, std::time::Instant::now())
                .context("cannot start the metrics file's writer")?;
        daemon.set_metrics_file(metrics);
    }
    attach.set_default_wait(acquire_timeout);
    // The state writer finishes opening the state file (every page's
    // checksum, then the file itself) while the event loop starts: a file
    // that fails stops aokd with the reason, before any record it was
    // waiting for is durable, so before any new key goes on a socket.
    let state_failed = std::rc::Rc::new(std::cell::RefCell::new(None));
    let state_failed_in = std::rc::Rc::clone(&state_failed);
    let (calls_tx, calls_rx) = mpsc::channel(16);
    let reload_tx = calls_tx.clone();
    let (attach_tx, attach_rx) = mpsc::channel(64);
    let shutdown = async move {
        let serve_control = server.run(calls_tx);
        let serve_attach = attach.run(attach_tx);
        tokio::pin!(serve_control, serve_attach);
        let mut state_opened = std::pin::pin!(state_opened);
        let mut state_open = false;
        loop {
            tokio::select! {
                opened = &mut state_opened, if !state_open => {
                    state_open = true;
                    match opened {
                        Ok(Ok(())) => ready(),
                        Ok(Err(e)) => {
                            *state_failed_in.borrow_mut() = Some(anyhow::Error::new(e));
                            break;
                        }
                        Err(_) => {
                            *state_failed_in.borrow_mut() =
                                Some(anyhow::anyhow!("the state writer stopped while opening the state file"));
                            break;
                        }
                    }
                }
                () = &mut serve_control => break,
                () = &mut serve_attach => break,
                _ = sigint.recv() => {
                    info!("SIGINT: shutting down");
                    break;
                }
                _ = sigterm.recv() => {
                    info!("SIGTERM: shutting down");
                    break;
                }
                _ = sighup.recv() => {
                    info!("SIGHUP: reloading the configuration");
                    // The event loop logs the outcome; nobody waits for the answer.
                    let (reply, _answer) = tokio::sync::oneshot::channel();
                    let call = aokd::control::ControlCall {
                        command: aokd_api::control::Command::Reload,
                        peer_uid: 0,
                        reply,
                    };
                    if reload_tx.try_send(call).is_err() {
                        warn!("SIGHUP: the event loop is busy; reload not started (send SIGHUP again)");
                    }
                }
            }
        }
    };
    daemon.run(calls_rx, Some(attach_rx), shutdown).await?;
    if let Some(e) = state_failed.borrow_mut().take() {
        // The writer holds no file open and answers nothing: the state
        // file is as it was found.
        return Err(e);
    }
    let _ = aokd::sd_notify::notify("STOPPING=1");
    // Every handle is gone with the daemon: the writer applies what is
    // queued and closes the file cleanly (no repair at the next start).
    if writer.join().is_err() {
        anyhow::bail!("the state writer panicked");
    }
    Ok(())
}

/// Every socket exists and the state file is open: systemd may start what
/// is ordered after aokd (routing daemons that attach).
fn ready() {
    match aokd::sd_notify::notify("READY=1\nSTATUS=aokd running") {
        Ok(true) => info!("readiness sent to systemd (NOTIFY_SOCKET)"),
        Ok(false) => {}
        Err(e) => warn!(error = %e, "cannot tell systemd that aokd is ready (NOTIFY_SOCKET)"),
    }
}

/// Reads the state file and starts its writer, which finishes opening it
/// ([`StateStore::open_staged`]); returns the writer's handles, what the
/// file holds, and how the writer's open went.
fn open_state(
    config: &Config,
) -> anyhow::Result<(
    Persist,
    std::thread::JoinHandle<()>,
    aokd::state::StateSnapshot,
    aokd::persist::OpenResult,
)> {
    use anyhow::Context;
    // `StateStore::open_staged` logs the file and its record counts.
    let (staged, snapshot) = StateStore::open_staged(&config.daemon.state_dir)?;
    let (persist, writer, opened) =
        Persist::start_staged(staged, &snapshot.mkts).context("cannot start the state writer")?;
    Ok((persist, writer, snapshot, opened))
}

/// [`Config::load`] on a thread of its own, and a copy of the result made
/// here: the parser's document (many times the size of what is kept, for a
/// route server's thousands of peers) lives and dies in that thread's
/// allocator arena, so the configuration kept is not scattered among its
/// freed pieces, which would stay resident ([`aokd::memory::release_free_memory`] gives
/// the whole arena back).
fn load_compact(file: &Path) -> Result<Config, aokd::config::ConfigError> {
    let parsed = std::thread::scope(|s| {
        s.spawn(|| Config::load(file).map(Box::new))
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })?;
    let kept = parsed.unshared_copy();
    drop(parsed);
    Ok(kept)
}

/// The directories above `paths` that do not exist yet, outermost first
/// (binding a socket creates them).
fn missing_parents(paths: &[&Path]) -> Vec<PathBuf> {
    let mut missing = Vec::new();
    for path in paths {
        let mut dir = path.parent();
        let mut chain = Vec::new();
        while let Some(d) = dir {
            if d.as_os_str().is_empty() || d.exists() {
                break;
            }
            chain.push(d.to_path_buf());
            dir = d.parent();
        }
        for d in chain.into_iter().rev() {
            if !missing.contains(&d) {
                missing.push(d);
            }
        }
    }
    missing
}
