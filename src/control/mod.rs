//! # Control socket of a mounted pool
//!
//! A mounted pool (the mount daemon) listens on a Unix socket,
//! `/run/dfs/<pool-uuid>.sock` by default ([`socket_path`]), mode 0600;
//! every connection's peer credentials (`SO_PEERCRED`) are checked and only
//! root (and the uid the daemon runs as) may talk to it
//! ([`server::check_peer`]). The `dfs` CLI finds the socket by pool UUID and
//! sends its commands there, so the process that holds the pool lock is the
//! only one that writes the pool.
//!
//! - [`protocol`]: versioned JSON lines (parsing and encoding, no IO),
//!   with the caller's request id (`req`) that the server serves the
//!   request under (a `control` tracing span), so the mount's log lines
//!   for a `dfs` command carry the command's id;
//! - [`server`]: the listener, one thread per connection, and the
//!   [`Registry`] of methods;
//! - [`client`]: what the CLI uses to call a method;
//! - [`methods`]: the administration methods every mount registers.
//!
//! ## Adding a method
//!
//! Methods are looked up by name in a [`Registry`]; a method is any
//! `Fn(&Pool, serde_json::Value) -> Result<Value, WireError>`. A feature
//! adds its own with one line where the mount builds the registry
//! (`tools/src/cli/mount.rs`), e.g.
//!
//! ```ignore
//! registry.register("scrub", move |pool, params| scrub::control(pool, params));
//! ```
//!
//! Closures may capture the feature's own state (an `Arc` of a worker).
//! This module never interprets pool data itself: it only routes requests
//! to engine calls and returns their answers.

pub mod client;
pub mod methods;
pub mod protocol;
pub mod server;

pub use client::{Client, ClientError};
pub use protocol::{ErrorKind, WireError};
pub use server::{Registry, Server};

use std::path::{Path, PathBuf};

/// Where sockets live unless told otherwise (next to the pool locks).
pub const DEFAULT_SOCKET_DIR: &str = "/run/dfs";

/// The socket of pool `pool` in `dir`.
pub fn socket_path(dir: &Path, pool: uuid::Uuid) -> PathBuf {
    dir.join(format!("{pool}.sock"))
}
