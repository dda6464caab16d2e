//! Man pages and shell completions generated from a binary's clap
//! [`Command`] (docs/packaging.md).
//!
//! `aokd` and `aoctl` each have a hidden `generate` subcommand that calls
//! [`generate`] with their own command definition, so that the pages and
//! completions always list the options and subcommands the binary really
//! has. The Debian package (dist/deb/build) runs it at build time.
//!
//! A man page is one page per binary: the top-level synopsis, description
//! and options, then a `COMMANDS` section with each visible subcommand's
//! synopsis, description and own options (the global options are listed
//! once, at the top), then the binary's hand-written sections (`EXIT
//! STATUS`, `FILES`, `SEE ALSO`, ...). The output has no date and no other
//! input than the command, so it is reproducible.

use std::io::{self, Write};

use clap::{Command, ValueEnum};
use clap_complete::Shell;
use clap_mangen::Man;

/// What `generate` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// The man page (roff).
    Man,
    /// The bash completion script.
    Bash,
    /// The zsh completion function.
    Zsh,
    /// The fish completion script.
    Fish,
}

/// The parts of a man page that clap does not know.
pub struct ManPage<'a> {
    /// The section: "8" for aokd and aoctl.
    pub section: &'a str,
    /// The manual's name in the page footer ("System Administration").
    pub manual: &'a str,
    /// Roff text appended after the generated sections (`.SH EXIT STATUS`
    /// and the like). Each section starts with its own `.SH` line.
    pub extra: &'a str,
}

/// Writes `what` for `cmd` to `out`.
pub fn generate(cmd: Command, what: Output, page: &ManPage, out: &mut dyn Write) -> io::Result<()> {
    match what {
        Output::Man => man(cmd, page, out),
        Output::Bash => complete(cmd, Shell::Bash, out),
        Output::Zsh => complete(cmd, Shell::Zsh, out),
        Output::Fish => complete(cmd, Shell::Fish, out),
    }
}

/// A shell's completion script.
fn complete(cmd: Command, shell: Shell, out: &mut dyn Write) -> io::Result<()> {
    let mut cmd = visible(&cmd);
    let name = cmd.get_name().to_owned();
    // clap_complete writes through `impl Write`; collect first so that a
    // write error is returned rather than lost.
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut buf);
    out.write_all(&buf)?;
    out.flush()
}

/// `cmd` without its hidden subcommands: clap_complete offers hidden
/// subcommands (`generate`) like any other, and a `Command` has no way to
/// remove one, so the tree is copied with what completion uses (name,
/// about, version, arguments, subcommands). Called before `build`, so
/// `--help` and `--version` are not among the arguments yet.
fn visible(cmd: &Command) -> Command {
    let mut out = Command::new(cmd.get_name().to_owned()).args(cmd.get_arguments().cloned());
    if let Some(about) = cmd.get_about() {
        out = out.about(about.clone());
    }
    if let Some(version) = cmd.get_version() {
        out = out.version(version.to_owned());
    }
    // A binary with its own `help` subcommand (aoctl's takes `--help`)
    // must not get clap's generated one too.
    if cmd.is_disable_help_subcommand_set() {
        out = out.disable_help_subcommand(true);
    }
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        out = out.subcommand(visible(sub));
    }
    out
}

/// The man page of `cmd` (module documentation).
fn man(cmd: Command, page: &ManPage, out: &mut dyn Write) -> io::Result<()> {
    let name = cmd.get_name().to_owned();
    let mut cmd = cmd.bin_name(&name).disable_help_subcommand(true);
    // Propagates global arguments into subcommands and names each
    // subcommand's binary "aoctl status" (for its synopsis).
    cmd.build();
    let top = Man::new(cmd.clone())
        .title(name.to_uppercase())
        .section(page.section)
        .manual(page.manual);
    let mut roff = Vec::new();
    top.render_title(&mut roff)?;
    top.render_name_section(&mut roff)?;
    top.render_synopsis_section(&mut roff)?;
    top.render_description_section(&mut roff)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        top.render_options_section(&mut roff)?;
    }
    let subs: Vec<&Command> = cmd.get_subcommands().filter(|s| !s.is_hide_set()).collect();
    if !subs.is_empty() {
        roff.extend_from_slice(b".SH COMMANDS\n");
        for sub in subs {
            subcommand(sub, &mut roff)?;
        }
    }
    roff.extend_from_slice(page.extra.as_bytes());
    if !page.extra.is_empty() && !page.extra.ends_with('\n') {
        roff.push(b'\n');
    }
    top.render_version_section(&mut roff)?;
    out.write_all(&roff)?;
    out.flush()
}

/// One subcommand under `COMMANDS`: `.SS status`, its synopsis, its
/// description and its own options (the global ones are hidden here, they
/// are listed at the top; so is `--help`).
fn subcommand(sub: &Command, roff: &mut Vec<u8>) -> io::Result<()> {
    let mut sub = sub.clone();
    let hide: Vec<clap::Id> = sub
        .get_arguments()
        .filter(|a| a.is_global_set() || a.get_id() == "help")
        .map(|a| a.get_id().clone())
        .collect();
    for id in hide {
        sub = sub.mut_arg(id, |a| a.hide(true));
    }
    roff.extend_from_slice(format!(".SS {}\n", sub.get_name().replace('-', "\\-")).as_bytes());
    let man = Man::new(sub.clone());
    // The synopsis and description as clap renders them, without their
    // `.SH` headings: here they belong to the subsection.
    for (render, has_content) in [
        (
            Man::render_synopsis_section as fn(&Man, &mut dyn Write) -> io::Result<()>,
            true,
        ),
        (
            Man::render_description_section,
            sub.get_about().is_some() || sub.get_long_about().is_some(),
        ),
        (
            Man::render_options_section,
            sub.get_arguments().any(|a| !a.is_hide_set()),
        ),
    ] {
        if !has_content {
            continue;
        }
        let mut part = Vec::new();
        render(&man, &mut part)?;
        let text = String::from_utf8_lossy(&part);
        // Each part starts with its `.SH` heading, which becomes a
        // paragraph break; an options part may have more (clap help
        // headings), which become bold paragraph titles.
        for line in text.lines() {
            if let Some(heading) = line.strip_prefix(".SH ") {
                if heading != "SYNOPSIS" && heading != "DESCRIPTION" && heading != "OPTIONS" {
                    roff.extend_from_slice(format!(".PP\n.B {heading}\n").as_bytes());
                } else {
                    roff.extend_from_slice(b".PP\n");
                }
                continue;
            }
            roff.extend_from_slice(line.as_bytes());
            roff.push(b'\n');
        }
    }
    Ok(())
}

/// The `generate` subcommand: writes `what` for `cmd` to standard output;
/// returns the exit status (1, with the reason on standard error, when
/// standard output cannot be written).
pub fn print(cmd: Command, what: Output, page: &ManPage) -> i32 {
    let name = cmd.get_name().to_owned();
    match generate(cmd, what, page, &mut io::stdout().lock()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{name} generate: cannot write to standard output: {e}");
            1
        }
    }
}
