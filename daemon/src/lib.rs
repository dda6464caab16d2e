//! The aokd daemon as a library, shared by the `aokd` binary and its tests:
//! configuration ([`config`]), the control socket server ([`control`]), the
//! event loop that drives the IKE endpoint ([`runtime`]), the embedded demo
//! ([`demo`]), and key installation into the kernel ([`kernel`]).

pub mod attach;
pub mod config;
pub mod control;
pub mod demo;
pub mod kernel;
pub mod keys;
pub mod persist;
pub mod runtime;
pub mod sockets;
pub mod state;
pub mod unix_listener;
