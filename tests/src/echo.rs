//! The echo exchange of the test programs `tcp-peer` and `plain-tcp`: the
//! client sends N octets of a fixed pattern, the server reads exactly N and
//! sends them back, the client checks what it gets. Both report one JSON
//! line on stdout; this module holds the parts they share, including a
//! minimal command-line reader (the programs must run with nothing but
//! their binary, e.g. inside the test VM).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Value};

/// The octet at `offset` of the pattern the client sends.
pub fn pattern_byte(offset: usize) -> u8 {
    (offset.wrapping_mul(31).wrapping_add(offset / 251)) as u8
}

/// `n` octets of the pattern.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(pattern_byte).collect()
}

/// Server side of one connection: reads `n` octets, echoes them, and
/// returns the JSON report (`event: "accepted"`).
pub fn serve(mut stream: TcpStream, n: usize, io_timeout: Duration) -> Value {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let result = (|| -> std::io::Result<()> {
        stream.set_read_timeout(Some(io_timeout))?;
        stream.set_write_timeout(Some(io_timeout))?;
        let mut buf = vec![0u8; n];
        stream.read_exact(&mut buf)?;
        stream.write_all(&buf)?;
        stream.flush()?;
        // Let the client close first (its FIN is part of the capture).
        let mut rest = [0u8; 1];
        let _ = stream.read(&mut rest);
        Ok(())
    })();
    json!({
        "event": "accepted",
        "peer": peer,
        "ok": result.is_ok(),
        "bytes": if result.is_ok() { n } else { 0 },
        "error": result.err().map(|e| e.to_string()),
    })
}

/// Client side on a connected stream: sends `n` octets, reads the echo and
/// compares. Returns the number of octets echoed correctly.
pub fn exchange(mut stream: TcpStream, n: usize, io_timeout: Duration) -> Result<usize, String> {
    stream
        .set_read_timeout(Some(io_timeout))
        .and_then(|_| stream.set_write_timeout(Some(io_timeout)))
        .map_err(|e| format!("socket options: {e}"))?;
    let data = pattern(n);
    stream.write_all(&data).map_err(|e| format!("write: {e}"))?;
    let mut back = vec![0u8; n];
    stream
        .read_exact(&mut back)
        .map_err(|e| format!("read echo: {e}"))?;
    if back != data {
        let at = back.iter().zip(&data).position(|(a, b)| a != b);
        return Err(format!("echo differs at offset {at:?}"));
    }
    stream
        .shutdown(std::net::Shutdown::Both)
        .map_err(|e| format!("shutdown: {e}"))?;
    Ok(n)
}

/// Prints one JSON line on stdout and flushes it (the tests wait for lines).
pub fn emit(v: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// The `main` of a test program named `name`: `run`'s exit code, or, when
/// it fails, the error on stderr (`NAME: error`) and exit status 2.
pub fn main(name: &str, run: impl FnOnce() -> Result<ExitCode, String>) -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::from(2)
        }
    }
}

/// `--name value` options after a subcommand.
pub struct Args {
    pub command: String,
    pairs: Vec<(String, String)>,
}

impl Args {
    /// Parses `PROGRAM COMMAND [--name value]...`; `Err` with a usage text.
    pub fn parse(usage: &str) -> Result<Args, String> {
        let mut it = std::env::args().skip(1);
        let command = it.next().ok_or_else(|| usage.to_string())?;
        let mut pairs = Vec::new();
        while let Some(name) = it.next() {
            let Some(name) = name.strip_prefix("--") else {
                return Err(format!("unexpected argument {name:?}\n{usage}"));
            };
            let value = it
                .next()
                .ok_or_else(|| format!("--{name} needs a value\n{usage}"))?;
            pairs.push((name.to_string(), value));
        }
        Ok(Args { command, pairs })
    }

    /// The value of `--name`, if given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `--name` parsed, `default` when absent.
    pub fn parsed<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, String>
    where
        T::Err: std::fmt::Display,
    {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|e| format!("--{name} {v:?}: {e}")),
        }
    }

    /// Every option name given that is not in `known`.
    pub fn unknown(&self, known: &[&str]) -> Vec<String> {
        self.pairs
            .iter()
            .filter(|(n, _)| !known.contains(&n.as_str()))
            .map(|(n, _)| format!("--{n}"))
            .collect()
    }

    /// `Err` naming the options given that are not in `known`, followed by
    /// `usage`; `Ok` when there are none.
    pub fn check_known(&self, known: &[&str], usage: &str) -> Result<(), String> {
        let unknown = self.unknown(known);
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(format!("unknown options {unknown:?}\n{usage}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_not_constant() {
        let p = pattern(600);
        assert_eq!(p.len(), 600);
        assert!(p.windows(2).any(|w| w[0] != w[1]));
        assert_eq!(p[300], pattern_byte(300));
    }
}
