//! The aokd daemon as a library: configuration ([`config`]) and the control
//! socket server ([`control`]), shared by the `aokd` binary and its tests.

pub mod config;
pub mod control;
pub mod kernel;
