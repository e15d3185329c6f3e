//! Helpers shared by the integration tests: `mod common;` in a test file.
#![allow(dead_code)]

pub mod files;
pub mod loopdev;
pub mod observe;
pub mod skip;

#[allow(unused_imports)]
pub use self::loopdev::{disk_tempdir, require_root_and_loop, LoopDevice};
pub mod mem_pool;
pub mod mounts;
