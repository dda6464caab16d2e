//! # aokd-sys
//!
//! The socket system calls that the daemon, the attach client, the preload
//! library and the test programs share, written once, with safe wrappers
//! (`// SAFETY:` on every `unsafe` block, errors passed through as
//! `io::Error`). It depends on libc alone: the attach client and the
//! preload library link it into routing daemons.
//!
//! - [`addr`]: `SocketAddr` to and from `sockaddr_in`/`sockaddr_in6`,
//!   `getsockname`/`getpeername`;
//! - [`scm`]: one descriptor sent or received with `SCM_RIGHTS`;
//! - [`pidfd`]: `pidfd_open` and `pidfd_getfd`, and waiting for a process
//!   to exit;
//! - [`group`]: group names to ids;
//! - [`sock`]: TCP sockets, `connect`, and the socket queries (`SO_COOKIE`,
//!   `SO_DOMAIN`, `TCP_INFO` state, ...).
//!
//! Nothing here allocates on success, and the functions the preload
//! library calls from its interposers ([`addr::read_sockaddr`],
//! [`addr::getsockname`], [`sock::tcp_state`]) allocate on no path: they
//! may run between `fork` and `exec`.
//!
//! The TCP-AO/TCP-MD5 uapi structs are not here: only the daemon installs
//! keys (daemon/src/kernel/sys.rs).

pub mod addr;
pub mod group;
pub mod pidfd;
pub mod scm;
pub mod sock;

pub use addr::{
    from_sockaddr_storage, getpeername, getsockname, local_address, peer_address, read_sockaddr,
    to_sockaddr,
};
pub use group::group_id;
pub use pidfd::{pidfd_getfd, pidfd_open, wait_exit};
pub use scm::{recv_with_fd, recv_with_fd_wait, send_with_fd, send_with_fds, MAX_RECEIVED_FDS};
pub use sock::{
    connect, is_listening, set_receive_buffer, socket_cookie, socket_domain, socket_protocol,
    socket_type, tcp_socket, tcp_state, TcpState,
};
