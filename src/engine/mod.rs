//! # The engine
//!
//! Metadata (`state`, `journal`, `pool`: namespace and extent table in
//! memory, journal with group commit, checkpoints and versioned roots), the
//! data path (`data`, `redundancy`, `placement`) and the typed API the
//! front-ends call (`namespace`). Devices are reached only through
//! `crate::device::Device`.

pub mod admin;
pub(crate) mod block_sums;
pub mod data;
pub mod error;
pub mod journal;
pub mod lock;
pub mod namespace;
pub mod orphans;
pub(crate) mod partial;
pub mod placement;
pub mod pool;
pub(crate) mod readahead;
pub mod rebuild;
pub mod redundancy;
pub mod repair;
pub mod scrub;
pub mod scrub_daemon;
pub mod sparse;
pub mod state;

pub use error::{EngineError, Result};
pub use namespace::{DirEntry, RenameFlags, SetAttr, StatFs, TimeSet, XattrMode};
pub use pool::{Pool, PoolOptions};
pub use sparse::{FallocMode, SeekWhence};
pub use state::{Attrs, FileKind, Ino, ROOT_INO};
