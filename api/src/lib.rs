//! # aokd-api
//!
//! The message types of aokd's two local protocols:
//!
//! - [`control`]: aokd and aoctl (docs/control.md), also aoctl's `--json`
//!   schema;
//! - [`attach`]: aokd and the processes that hand it TCP sockets, the
//!   attach client and the preload library among them (docs/attach.md);
//!
//! and [`metrics`], the OpenMetrics text made from the control protocol's
//! answers, which aoctl and the daemon's metrics file share.
//!
//! The crate depends only on serde, so that aoctl and the preload library
//! speak these protocols without linking the IKE crypto stack of
//! `aokd-proto`.

pub mod attach;
pub mod control;
pub mod metrics;
