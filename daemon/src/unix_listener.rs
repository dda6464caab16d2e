//! Binding a Unix stream socket that only the intended users can reach: the
//! procedure shared by the control socket ([`crate::control`]) and the
//! attach socket ([`crate::attach`]).
//!
//! Whoever can connect to these sockets can ask aokd for things (the attach
//! socket hands out MKTs), so the socket's mode is its access control.
//! [`bind_private`] takes these steps, in order:
//!
//! 1. **Directory.** A missing parent directory is created (recursively)
//!    with `dir_mode`. An existing one is left alone; if `mode` grants
//!    access to group or others but the directory does not let them
//!    traverse it, a warning says so.
//! 2. **Stale socket.** Whatever is at the path is looked at first.
//!    Nothing: fine. Something that is not a socket: refused, never
//!    replaced. A socket on which a connection succeeds: refused, a live
//!    server (probably another aokd) owns it. A socket nobody accepts on:
//!    left by a process that died without removing it, so it is removed.
//! 3. **Bind, chmod, rename.** `bind(2)` creates the socket file with the
//!    mode the umask allows, which may be wider than `mode`. So the socket
//!    is bound under a temporary name in the same directory
//!    (`.aokd-LABEL-PID.tmp`), chmodded to `mode`, and only then renamed
//!    over the path (atomic within a directory): there is never a moment
//!    when a client can reach the path through a wider (or any other)
//!    mode. Only if the temporary path does not fit in `sun_path` (107
//!    octets) is the socket bound in place and chmodded right after.
//! 4. **Ownership.** The new file's device and inode are recorded, so that
//!    dropping the [`PrivateListener`] removes the socket file only while
//!    it is still the one created here (a successor may have replaced it).

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;
use tracing::{info, warn};

/// Longest `sun_path`, the terminating NUL excluded.
const MAX_SUN_PATH: usize = 107;

/// Why a socket could not be bound; every variant names the socket's path
/// and the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum UnixListenerError {
    /// Creating the socket's parent directory failed.
    #[error("{}: cannot create directory {}: {source}", .path.display(), .dir.display())]
    CreateDir {
        path: PathBuf,
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Something exists at the socket path that is not a socket.
    #[error("{}: the path exists and is not a socket; refusing to replace it", .path.display())]
    NotASocket { path: PathBuf },
    /// A live server (probably another aokd) accepts connections there.
    #[error("{}: another process is listening on it (is aokd already running?)", .path.display())]
    InUse { path: PathBuf },
    /// Another I/O error; `what` says which step failed.
    #[error("{}: {what}: {source}", .path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// A listening socket bound by [`bind_private`]. Dropping it removes the
/// socket file if it is still the one that was bound.
#[derive(Debug)]
pub struct PrivateListener {
    listener: UnixListener,
    path: PathBuf,
    /// (st_dev, st_ino) of the socket file, to remove only our own.
    id: (u64, u64),
}

impl PrivateListener {
    /// The listening socket.
    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PrivateListener {
    fn drop(&mut self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.id {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Binds a listening socket at `path` with permission bits `mode` (at most
/// 0777), creating a missing parent directory with `dir_mode` and replacing
/// a stale socket, as the module documentation describes. `label` ("control",
/// "attach") names the socket in the temporary file name and in log lines.
/// Must run inside a tokio runtime.
pub fn bind_private(
    path: &Path,
    mode: u32,
    dir_mode: u32,
    label: &str,
) -> Result<PrivateListener, UnixListenerError> {
    bind_private_group(path, mode, dir_mode, None, label)
}

/// [`bind_private`], with the socket (and a directory created for it)
/// given group `group` before it is renamed into place; a created
/// directory then also lets the group traverse it.
pub fn bind_private_group(
    path: &Path,
    mode: u32,
    dir_mode: u32,
    group: Option<u32>,
    label: &str,
) -> Result<PrivateListener, UnixListenerError> {
    let dir_mode = if group.is_some() {
        dir_mode | 0o010
    } else {
        dir_mode
    };
    let io_err = |what: &'static str| {
        let path = path.to_owned();
        move |source| UnixListenerError::Io { path, what, source }
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(dir_mode)
            .create(&dir)
            .map_err(|source| UnixListenerError::CreateDir {
                path: path.to_owned(),
                dir: dir.clone(),
                source,
            })?;
        if let Some(gid) = group {
            std::os::unix::fs::chown(&dir, None, Some(gid)).map_err(|source| {
                UnixListenerError::CreateDir {
                    path: path.to_owned(),
                    dir: dir.clone(),
                    source,
                }
            })?;
        }
    } else if mode & 0o077 != 0 {
        if let Ok(meta) = std::fs::metadata(&dir) {
            if meta.mode() & 0o011 == 0 {
                warn!(
                    dir = %dir.display(),
                    "{label} socket mode {mode:o} grants access to other users, \
                     but its directory does not let them reach it"
                );
            }
        }
    }
    remove_stale(path, label)?;

    let tmp = dir.join(format!(".aokd-{label}-{}.tmp", std::process::id()));
    let perms = std::fs::Permissions::from_mode(mode);
    let std_listener = if tmp.as_os_str().len() <= MAX_SUN_PATH {
        // Leftover from a previous run with the same pid.
        let _ = std::fs::remove_file(&tmp);
        let l = std::os::unix::net::UnixListener::bind(&tmp)
            .map_err(io_err("cannot bind a temporary socket in its directory"))?;
        let placed = group
            .map_or(Ok(()), |gid| {
                std::os::unix::fs::chown(&tmp, None, Some(gid))
            })
            .and_then(|()| std::fs::set_permissions(&tmp, perms))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_err("cannot chmod and rename the socket into place")(e));
        }
        l
    } else {
        let l = std::os::unix::net::UnixListener::bind(path).map_err(io_err("cannot bind"))?;
        if let Some(gid) = group {
            std::os::unix::fs::chown(path, None, Some(gid)).map_err(io_err("cannot chown"))?;
        }
        std::fs::set_permissions(path, perms).map_err(io_err("cannot chmod"))?;
        l
    };
    let meta = std::fs::symlink_metadata(path).map_err(io_err("cannot stat the new socket"))?;
    std_listener
        .set_nonblocking(true)
        .map_err(io_err("cannot make the socket non-blocking"))?;
    let listener =
        UnixListener::from_std(std_listener).map_err(io_err("cannot register the socket"))?;
    Ok(PrivateListener {
        listener,
        path: path.to_owned(),
        id: (meta.dev(), meta.ino()),
    })
}

/// Removes a socket left at `path` by a process that no longer listens.
fn remove_stale(path: &Path, label: &str) -> Result<(), UnixListenerError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(UnixListenerError::Io {
                path: path.to_owned(),
                what: "cannot stat",
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(UnixListenerError::NotASocket {
            path: path.to_owned(),
        });
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(UnixListenerError::InUse {
            path: path.to_owned(),
        });
    }
    info!(path = %path.display(), "removing stale {label} socket");
    std::fs::remove_file(path).map_err(|source| UnixListenerError::Io {
        path: path.to_owned(),
        what: "cannot remove the stale socket",
        source,
    })
}

/// The socket's group for a log field: the numeric gid, or `-` when the
/// socket keeps the daemon's group.
pub fn gid_field(group: Option<u32>) -> String {
    group.map_or_else(|| "-".into(), |g| g.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A path whose temporary name would not fit in `sun_path` is bound in
    /// place, with the same mode and the same removal on drop.
    #[tokio::test]
    async fn long_paths_are_bound_in_place() {
        let base = std::env::temp_dir().join(format!("aokd-ul-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let pad = 100usize.saturating_sub(base.as_os_str().len() + 1).max(1);
        let dir = base.join("d".repeat(pad));
        let path = dir.join("s.sock");
        assert!(path.as_os_str().len() <= MAX_SUN_PATH, "{}", path.display());
        let socket = bind_private(&path, 0o640, 0o700, "test").expect("bind");
        assert_eq!(socket.path(), path);
        let meta = std::fs::metadata(&path).expect("stat");
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.mode() & 0o777, 0o640);
        assert_eq!(
            std::fs::metadata(&dir).expect("stat dir").mode() & 0o777,
            0o700
        );
        drop(socket);
        assert!(!path.exists(), "removed on drop");
        let _ = std::fs::remove_dir_all(&base);
    }
}
