//! The `dfs` command line, one module per subcommand, and what `mount.dfs`
//! shares with `dfs mount` (the same code path: [`mount`]).

pub mod admin;
pub mod health;
pub mod mount;
pub mod mountinfo;
pub mod scrub;
pub mod status;
pub mod temperature;
