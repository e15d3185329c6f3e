//! Test support shipped with the library so tests, examples and scripts
//! share it: the crash-soak harness. Never used by the product itself.

pub mod soak;
