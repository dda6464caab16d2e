//! Which control socket aoctl talks to: `--socket` (or `AOKD_SOCKET`) when
//! given, else `daemon.control_socket` of the daemon's configuration file
//! (`--config FILE`, or [`DEFAULT_CONFIG`] when that file exists and this
//! user may read it), else [`crate::client::DEFAULT_SOCKET`].
//!
//! Only that one key is read: aoctl does not validate the file (that is
//! `aokd check-config`) and never opens the PSK files it names.

use std::path::{Path, PathBuf};

use crate::client::DEFAULT_SOCKET;

/// The configuration file aoctl looks at when `--config` is not given:
/// where the package and the unit put it.
pub const DEFAULT_CONFIG: &str = "/etc/aokd/aokd.toml";

/// The control socket for these options; an error names the file and what
/// is wrong with it (exit status 2).
pub fn resolve(socket: Option<PathBuf>, config: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(s) = socket {
        return Ok(s);
    }
    let (file, explicit) = match config {
        Some(f) => (f.to_path_buf(), true),
        None => (PathBuf::from(DEFAULT_CONFIG), false),
    };
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        // The default file is a hint: absent, or root's only, it does not count.
        Err(_) if !explicit => return Ok(PathBuf::from(DEFAULT_SOCKET)),
        Err(e) => return Err(format!("cannot read {}: {e}", file.display())),
    };
    match from_config(&text, &file) {
        Ok(s) => Ok(s),
        // aokd would refuse this file too; `aoctl gen-psk` still works.
        Err(_) if !explicit => Ok(PathBuf::from(DEFAULT_SOCKET)),
        Err(e) => Err(e),
    }
}

/// `daemon.control_socket` of the configuration `text` read from `file`,
/// relative to the file's directory as aokd reads it; the default socket
/// when the key is absent.
fn from_config(text: &str, file: &Path) -> Result<PathBuf, String> {
    let table: toml::Table =
        toml::from_str(text).map_err(|e| format!("{}: not a TOML file: {e}", file.display()))?;
    let value = table
        .get("daemon")
        .and_then(|d| d.as_table())
        .and_then(|d| d.get("control_socket"));
    let path = match value {
        None => return Ok(PathBuf::from(DEFAULT_SOCKET)),
        Some(toml::Value::String(s)) if !s.is_empty() => PathBuf::from(s),
        Some(_) => {
            return Err(format!(
                "{}: daemon.control_socket must be a non-empty string",
                file.display()
            ))
        }
    };
    if path.is_absolute() {
        return Ok(path);
    }
    let dir = file.parent().unwrap_or(Path::new("."));
    Ok(dir.join(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_from_the_configuration() {
        let f = Path::new("/etc/aokd/aokd.toml");
        let p = |t: &str| from_config(t, f);
        assert_eq!(p("").unwrap(), PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(
            p("[daemon]\ncontrol_socket = \"/run/x.sock\"\n").unwrap(),
            PathBuf::from("/run/x.sock")
        );
        assert_eq!(
            p("[daemon]\ncontrol_socket = \"run/x.sock\"\n").unwrap(),
            PathBuf::from("/etc/aokd/run/x.sock")
        );
        assert!(p("[daemon]\ncontrol_socket = 5\n")
            .unwrap_err()
            .contains("daemon.control_socket"));
        assert!(p("[daemon")
            .unwrap_err()
            .starts_with("/etc/aokd/aokd.toml: not a TOML"));
        assert_eq!(
            resolve(Some("/a.sock".into()), Some(Path::new("/nonexistent"))).unwrap(),
            PathBuf::from("/a.sock")
        );
        assert!(resolve(None, Some(Path::new("/nonexistent/aokd.toml")))
            .unwrap_err()
            .contains("cannot read /nonexistent/aokd.toml"));
    }
}
