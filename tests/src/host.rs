//! The host the kernel, namespace and VM tests run on: whether `CI` is set,
//! whether we are root, whether a command is installed, where cargo put the
//! binaries, and the skip-or-fail rule they share: a test whose
//! prerequisites are missing fails loudly when `CI` is set, and is
//! otherwise skipped with the reason printed.

use std::path::{Path, PathBuf};

/// Whether `CI` is set (to anything but empty, `0` or `false`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// Whether the effective user is root.
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether `cmd` is a file in a directory of `PATH` or of the usual system
/// directories (which a non-root `PATH` may lack).
pub fn on_path(cmd: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .any(|d| d.join(cmd).is_file())
}

/// target/<profile>/, where cargo puts aokd, aoctl and the preload library
/// (the test executables are in target/<profile>/deps/).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target directory")
        .to_path_buf()
}

/// The skip-or-fail rule. Returns true when nothing is `missing`; false
/// (after printing `SKIPPED <test>: missing: <what>`) otherwise; panics
/// when something is missing and `CI` is set.
pub fn can_run(test: &str, missing: &[String]) -> bool {
    if missing.is_empty() {
        return true;
    }
    let reason = format!("missing: {}", missing.join("; "));
    assert!(!in_ci(), "{test} cannot run in CI: {reason}");
    eprintln!("SKIPPED {test}: {reason}");
    false
}
