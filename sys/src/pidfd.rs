//! `pidfd_open(2)` and `pidfd_getfd(2)`, by raw `syscall(2)` (glibc has no
//! wrapper for the latter): how aokd takes a fresh descriptor of a socket
//! that an attached process still holds. Also [`wait_exit`]: waiting for a
//! process to end, with a deadline, as an event (the tests' child
//! processes).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use libc::c_int;

/// Converts the return value of `syscall(2)` into a new owned descriptor.
///
/// # Safety
/// A non-negative `rc` is a descriptor that the system call just created
/// for this process and that nothing else owns.
unsafe fn owned_from_syscall(rc: libc::c_long) -> io::Result<OwnedFd> {
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = c_int::try_from(rc).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "the kernel returned a descriptor out of range",
        )
    })?;
    // SAFETY: the caller's promise: `fd` is new, open and owned by nothing
    // else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `pidfd_open(pid, 0)` (Linux 5.3): a descriptor that refers to the
/// process `pid` (in the caller's PID namespace) for as long as it is open,
/// even if the pid is later reused. `ESRCH`: no such process. The
/// descriptor is close-on-exec.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    if pid <= 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("pidfd_open: invalid pid {pid}"),
        ));
    }
    // SAFETY: pidfd_open takes two integers and touches no memory of ours.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_open,
            libc::c_long::from(pid),
            0 as libc::c_long,
        )
    };
    // SAFETY: pidfd_open returns a new descriptor or -1.
    unsafe { owned_from_syscall(rc) }
}

/// Waits up to `timeout` for the process of `pidfd` to exit: `poll(2)`
/// reports a pidfd readable once its process has ended. Returns whether it
/// has (it is not reaped: `wait` it afterwards).
pub fn wait_exit(pidfd: BorrowedFd<'_>, timeout: std::time::Duration) -> io::Result<bool> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        // Rounded up, so that a wait never ends before the deadline.
        let ms = c_int::try_from(left.as_micros().div_ceil(1000)).unwrap_or(c_int::MAX);
        let mut pfd = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd that lives across the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc > 0 {
            return Ok(true);
        }
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        } else if std::time::Instant::now() >= deadline {
            return Ok(false);
        }
    }
}

/// `pidfd_getfd(pidfd, fd, 0)` (Linux 5.6): a new descriptor in this
/// process for the open file that descriptor `fd` refers to in the process
/// of `pidfd`, close-on-exec. Closing it does not close the target's
/// descriptor. Needs ptrace access (`PTRACE_MODE_ATTACH_REALCREDS`) to the
/// target: `EPERM` otherwise; `EBADF` if `fd` is not open there; `ESRCH`
/// if the process has exited.
pub fn pidfd_getfd(pidfd: BorrowedFd<'_>, fd: i32) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: pidfd_getfd takes three integers and touches no memory of
    // ours; `pidfd` stays open for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_getfd,
            libc::c_long::from(pidfd.as_raw_fd()),
            libc::c_long::from(fd),
            0 as libc::c_long,
        )
    };
    // SAFETY: pidfd_getfd returns a new descriptor or -1.
    unsafe { owned_from_syscall(rc) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sock::{socket_cookie, socket_domain, tcp_socket};
    use std::os::fd::AsFd;

    #[test]
    fn wait_exit_sees_a_child_end_and_times_out_while_it_runs() {
        use std::time::Duration;
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let pid = i32::try_from(child.id()).expect("pid");
        let pidfd = pidfd_open(pid).expect("pidfd_open");
        assert!(!wait_exit(pidfd.as_fd(), Duration::from_millis(30)).expect("poll"));
        child.kill().expect("kill");
        assert!(wait_exit(pidfd.as_fd(), Duration::from_secs(10)).expect("poll"));
        assert!(
            child.try_wait().expect("wait").is_some(),
            "exited, so reaped at once"
        );
    }

    #[test]
    fn pidfd_getfd_on_our_own_pid_yields_the_same_socket() {
        let sock = tcp_socket(false).expect("socket");
        let pid = i32::try_from(std::process::id()).expect("pid");
        let pidfd = pidfd_open(pid).expect("pidfd_open");
        let copy = pidfd_getfd(pidfd.as_fd(), sock.as_raw_fd()).expect("pidfd_getfd");
        assert_ne!(copy.as_raw_fd(), sock.as_raw_fd());
        assert_eq!(
            socket_cookie(copy.as_fd()).expect("SO_COOKIE"),
            socket_cookie(sock.as_fd()).expect("SO_COOKIE")
        );
        // Closing the copy leaves the original open.
        drop(copy);
        assert_eq!(
            socket_domain(sock.as_fd()).expect("still open"),
            libc::AF_INET
        );
        // A closed descriptor: EBADF.
        let raw = sock.as_raw_fd();
        drop(sock);
        // The number may have been reused by another test's descriptor.
        if let Err(e) = pidfd_getfd(pidfd.as_fd(), raw) {
            assert_eq!(e.raw_os_error(), Some(libc::EBADF), "{e}");
        }
        assert!(pidfd_open(0).is_err());
        assert!(pidfd_open(-1).is_err());
        let e = pidfd_getfd(pidfd.as_fd(), -1).expect_err("negative fd");
        assert_eq!(e.raw_os_error(), Some(libc::EBADF));
    }
}
