//! The aokd daemon as a library, shared by the `aokd` binary and its tests.
//!
//! - [`config`]: the configuration file; [`endpoint_config`]: its
//!   translation into the IKE endpoint's.
//! - [`runtime`]: the event loop (bytes and time in and out of the
//!   endpoint); [`clock`]: the wake-up's time and wall-clock mapping;
//!   [`reload`]: what reading the configuration again changes.
//! - [`event_log`]: one log line per endpoint event; [`records`]: state-file
//!   records from events; [`state`] and [`persist`]: the state file and its
//!   writer thread.
//! - [`status`]: aoctl's answers; [`control`]: the control socket server;
//!   [`metrics_file`]: those answers as OpenMetrics, written periodically.
//! - [`attach`]: the attach socket server; [`keys`]: which keys go on which
//!   attached socket (the key policy); [`group_guard`]: the peer groups'
//!   prefix guard on listeners; [`sockets`]: the attached sockets and
//!   reconciling one socket's keys; [`socket_keys`]: the one interface from
//!   the key policy to a socket's keys (the kernel's, or a fake in tests);
//!   [`kernel`]: TCP-AO and TCP-MD5 in the Linux kernel.
//! - [`demo`]: `aokd demo`; [`unix_listener`]: the private Unix sockets;
//!   [`client_limit`]: how many clients they serve and for how long;
//!   [`sd_notify`]: readiness for systemd; [`memory`]: freed memory back
//!   to the system.

pub mod attach;
pub mod cert_info;
pub mod client_limit;
pub mod clock;
pub mod config;
pub mod control;
pub mod demo;
pub mod endpoint_config;
pub mod event_log;
pub mod group_guard;
pub mod held;
pub mod kernel;
pub mod keys;
pub mod memory;
pub mod metrics_file;
pub mod persist;
pub mod records;
pub mod reload;
pub mod retired_keys;
pub mod runtime;
pub mod sd_notify;
pub mod socket_keys;
pub mod sockets;
pub mod state;
pub mod status;
pub mod unix_listener;
