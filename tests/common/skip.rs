//! Skipping a test that needs what this machine lacks (root, loop devices,
//! `/dev/fuse`, a program), and refusing to skip where it must not.
//!
//! `scripts/test` (what CI runs) sets `DFS_TEST_REQUIRE_PRIVILEGES=1`: there
//! a test that would skip panics instead, so a CI machine that lost root or
//! `/dev/fuse` fails loudly rather than passing every mounted test unrun.
//! A developer's `cargo test` without the variable still skips, saying why.

/// Says why the test skips and returns `false` (so guards read
/// `if !ok { return unavailable("...") }`); panics instead when
/// `DFS_TEST_REQUIRE_PRIVILEGES=1`.
pub fn unavailable(why: &str) -> bool {
    if std::env::var_os("DFS_TEST_REQUIRE_PRIVILEGES").is_some_and(|v| v == "1") {
        panic!("cannot run: {why} (DFS_TEST_REQUIRE_PRIVILEGES=1 forbids skipping)");
    }
    eprintln!("skipping: {why}");
    false
}
