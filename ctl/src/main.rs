//! aoctl: inspects and drives a running aokd through its control socket.

mod verify;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "aoctl", version, about = "Control tool for aokd")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Verify TCP-AO / TCP-MD5 signatures in a capture.
    Verify(verify::VerifyArgs),
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Cmd::Verify(args) => verify::run(&args),
    };
    std::process::exit(code);
}
