//! # DynamicFS
//!
//! The engine library: the device layer (`device`), member-level access to
//! the on-disk format (`member`), pool creation (`mkfs`) and checks run
//! before anything is written (`probe`). The engine proper (metadata, data
//! path, redundancy) and the front-ends build on these. Arrows point down
//! only: nothing here knows FUSE or the CLI.

pub mod device;
pub mod discover;
pub mod engine;
pub mod fuse;
pub mod member;
pub mod mkfs;
pub mod probe;
pub mod testing;
