//! # DynamicFS
//!
//! The engine library: the device layer (`device`), member-level access to
//! the on-disk format (`member`), pool creation (`mkfs`) and checks run
//! before anything is written (`probe`). The engine proper (metadata, data
//! path, redundancy) builds on these; `discover` finds a pool's members from
//! one of them, and `fuse` is the POSIX front-end over the engine's public
//! API; `control` is the control socket a mount serves the `dfs` CLI on;
//! `temperature` tracks access and moves extents between policies by
//! it. Arrows point down only: nothing below `fuse` knows FUSE or the CLI.

pub mod control;
pub mod device;
pub mod discover;
pub mod engine;
pub mod fsck;
pub mod fuse;
pub mod logging;
pub mod member;
pub mod metrics;
pub mod mkfs;
pub mod probe;
pub mod temperature;
pub mod testing;
