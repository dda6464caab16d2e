//! `aoctl verify`: checks TCP-AO and TCP-MD5 signatures in a packet capture.
//! (Being written: see issue 3.)

/// Arguments of `aoctl verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The capture file (pcap or pcapng).
    #[arg(long)]
    pub pcap: std::path::PathBuf,
}

/// Runs the verification; returns the process exit status.
pub fn run(args: &VerifyArgs) -> i32 {
    eprintln!("aoctl verify: not implemented yet ({})", args.pcap.display());
    2
}
