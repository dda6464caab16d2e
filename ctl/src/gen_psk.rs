//! `aoctl gen-psk FILE`: writes a new random pre-shared key for aokd's
//! `psk_file`: 32 octets from the operating system's RNG as 64 lower-case
//! hex digits and a newline, in a file of mode 0600 (missing directories
//! on the way are created with mode 0700). Only the key's fingerprint is
//! printed, never the key.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

/// Octets of key material.
const KEY_LEN: usize = 32;

/// Creates the key file; returns the process exit status.
pub fn run(file: &Path, force: bool, json: bool) -> i32 {
    match generate(file, force) {
        Ok(fingerprint) => {
            let text = if json {
                crate::output::json(&serde_json::json!({
                    "file": file.display().to_string(),
                    "fingerprint": fingerprint,
                }))
            } else {
                format!(
                    "wrote a new PSK to {}\nfingerprint: {fingerprint}\n\
                     copy the file to the peer over a secure channel\n",
                    file.display()
                )
            };
            crate::print(&text);
            0
        }
        Err(e) => {
            eprintln!("aoctl gen-psk: {e:#}");
            1
        }
    }
}

fn generate(file: &Path, force: bool) -> anyhow::Result<String> {
    use anyhow::Context;

    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    OsRng.try_fill_bytes(&mut key[..]).map_err(|e| {
        anyhow::anyhow!("cannot read the operating system's random number generator: {e}")
    })?;
    let mut text = Zeroizing::new(String::with_capacity(2 * KEY_LEN + 1));
    for b in key.iter() {
        text.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        text.push(char::from_digit(u32::from(b & 15), 16).unwrap_or('0'));
    }
    text.push('\n');

    // `aoctl gen-psk /etc/aokd/r2.psk` on a router where /etc/aokd does not
    // exist yet: the missing directories are made, 0700 like the keys.
    if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .with_context(|| format!("cannot create the directory {}", parent.display()))?;
        }
    }

    if force {
        // Write a fresh 0600 file next to the target and rename it over,
        // so an existing file's (possibly wider) mode is not inherited.
        let tmp = temp_name(file);
        write_new(&tmp, text.as_bytes())?;
        if let Err(e) = std::fs::rename(&tmp, file) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("cannot replace {}", file.display()));
        }
    } else {
        write_new(file, text.as_bytes()).map_err(|e| {
            let exists = e
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::AlreadyExists);
            if exists {
                anyhow::anyhow!(
                    "{} already exists; use --force to replace it",
                    file.display()
                )
            } else {
                e
            }
        })?;
    }
    Ok(aokd_tcpao::fingerprint(&key[..]))
}

/// Creates `path` (which must not exist) with mode 0600 and writes `data`.
fn write_new(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                anyhow::Error::new(e)
            } else {
                anyhow::Error::new(e).context(format!("cannot create {}", path.display()))
            }
        })?;
    let written = f.write_all(data).and_then(|()| f.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(path);
        return Err(anyhow::Error::new(e).context(format!("cannot write {}", path.display())));
    }
    Ok(())
}

/// `dir/.name.tmp-PID` next to `file`.
fn temp_name(file: &Path) -> PathBuf {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "psk".into());
    file.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}
