//! A tiny TCP client and server for exercising `libaokd_preload.so` (run it
//! with `LD_PRELOAD`); `preload/tests/preload.rs` drives it. Std only: its
//! socket calls reach libc's `connect`, `listen` and `accept4`, which the
//! preload library interposes.
//!
//! ```text
//! tcp_probe connect ADDR TIMEOUT_MS    non-blocking connect (EINPROGRESS, poll)
//! tcp_probe connect-blocking ADDR      blocking connect
//! tcp_probe serve ADDR COUNT           listen, then accept COUNT times
//! ```
//!
//! Each outcome is one line on stdout: `connected LOCAL`, `error ERRNO
//! MESSAGE`, `listening ADDR`, `accepted PEER`, `accept-error ERRNO
//! MESSAGE`. A connected client reads one line from the server and prints
//! `read LINE`; the server writes `hello` to each accepted connection.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

fn error_line(error: &std::io::Error) -> String {
    let code = error
        .raw_os_error()
        .map_or("none".to_owned(), |c| c.to_string());
    format!("{code} {error}")
}

fn after_connect(stream: TcpStream) -> ExitCode {
    let local = stream
        .local_addr()
        .map_or("?".to_owned(), |a| a.to_string());
    println!("connected {local}");
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut line = String::new();
    match BufReader::new(stream).read_line(&mut line) {
        Ok(_) => println!("read {}", line.trim_end()),
        Err(e) => println!("read-error {}", error_line(&e)),
    }
    ExitCode::SUCCESS
}

fn run(args: &[String]) -> Result<ExitCode, String> {
    let addr = |i: usize| -> Result<SocketAddr, String> {
        args.get(i)
            .ok_or("missing address")?
            .parse()
            .map_err(|e| format!("bad address: {e}"))
    };
    let number = |i: usize| -> Result<u64, String> {
        args.get(i)
            .ok_or("missing number")?
            .parse()
            .map_err(|e| format!("bad number: {e}"))
    };
    match args.first().map(String::as_str) {
        Some("connect") => {
            let timeout = Duration::from_millis(number(2)?);
            match TcpStream::connect_timeout(&addr(1)?, timeout) {
                Ok(stream) => Ok(after_connect(stream)),
                Err(e) => {
                    println!("error {}", error_line(&e));
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Some("connect-blocking") => match TcpStream::connect(addr(1)?) {
            Ok(stream) => Ok(after_connect(stream)),
            Err(e) => {
                println!("error {}", error_line(&e));
                Ok(ExitCode::FAILURE)
            }
        },
        Some("serve") => {
            let listener = match TcpListener::bind(addr(1)?) {
                Ok(listener) => listener,
                Err(e) => {
                    println!("error {}", error_line(&e));
                    return Ok(ExitCode::FAILURE);
                }
            };
            let local = listener.local_addr().map_err(|e| e.to_string())?;
            println!("listening {local}");
            let _ = std::io::stdout().flush();
            for _ in 0..number(2)? {
                match listener.accept() {
                    Ok((mut stream, peer)) => {
                        println!("accepted {peer}");
                        let _ = stream.write_all(b"hello\n");
                    }
                    Err(e) => println!("accept-error {}", error_line(&e)),
                }
                let _ = std::io::stdout().flush();
            }
            Ok(ExitCode::SUCCESS)
        }
        _ => Err(
            "usage: tcp_probe connect ADDR TIMEOUT_MS | connect-blocking ADDR | serve ADDR COUNT"
                .into(),
        ),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("tcp_probe: {message}");
            ExitCode::from(2)
        }
    }
}
