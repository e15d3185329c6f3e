//! Model-based test of the mount: random sequences of namespace and data
//! operations (create, write at offsets, truncate, rename with its flags,
//! link, unlink, mkdir, rmdir, symlink, setxattr / removexattr with their
//! flags, chmod, fsync, punch hole, copy_file_range) run both on a mounted pool of three loop devices of
//! different sizes (64, 96 and 160 MiB, direct IO) and on a local temporary
//! directory; after every step the errno of the operation and the whole
//! tree (kinds, sizes, permissions, link counts, contents, symlink targets,
//! `user.*` xattrs) must agree. A failing sequence is shrunk by proptest
//! to a minimal one. Each case runs in its own subdirectory of the same
//! mount; at the end the pool is unmounted, closed and mounted again
//! through another member, and every file must be byte-exact.
//!
//! Needs root, loop devices and /dev/fuse; skips with a message otherwise.
//! Cases: 16 of up to 50 operations (after a fixed prelude) by default (`DFS_MODEL_CASES` to change).

mod common;
mod fuse_util;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use fuse_util::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// Names collide on purpose: few paths, some of them under others.
const PATHS: [&str; 8] = ["a", "b", "d", "d/a", "d/b", "d/e", "d/e/a", "e"];
const TARGETS: [&str; 5] = ["a", "../a", "e", "nowhere", "d"];
const MODES: [u32; 5] = [0o600, 0o644, 0o755, 0o700, 0o444];
const XNAMES: [&str; 2] = ["user.x", "user.y"];
const XFLAGS: [i32; 3] = [0, libc::XATTR_CREATE, libc::XATTR_REPLACE];
const RFLAGS: [u32; 3] = [0, libc::RENAME_NOREPLACE, libc::RENAME_EXCHANGE];

#[derive(Debug, Clone)]
enum Op {
    Create(usize),
    Write {
        p: usize,
        off: u64,
        len: usize,
        seed: u8,
    },
    Truncate {
        p: usize,
        size: u64,
    },
    Rename {
        from: usize,
        to: usize,
        flags: usize,
    },
    Link {
        from: usize,
        to: usize,
    },
    Unlink(usize),
    Mkdir(usize),
    Rmdir(usize),
    Symlink {
        target: usize,
        p: usize,
    },
    SetXattr {
        p: usize,
        name: usize,
        value: u8,
        flags: usize,
    },
    RemoveXattr {
        p: usize,
        name: usize,
    },
    Chmod {
        p: usize,
        mode: usize,
    },
    Fsync(usize),
    /// fallocate(PUNCH_HOLE | KEEP_SIZE).
    Punch {
        p: usize,
        off: u64,
        len: u64,
    },
    /// copy_file_range from one path to another.
    Copy {
        from: usize,
        to: usize,
        off_in: u64,
        off_out: u64,
        len: usize,
    },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let p = 0..PATHS.len();
    prop_oneof![
        3 => p.clone().prop_map(Op::Create),
        4 => (p.clone(), 0u64..3 * MIB as u64, 1usize..300_000, any::<u8>())
            .prop_map(|(p, off, len, seed)| Op::Write { p, off, len, seed }),
        1 => (p.clone(), 0u64..3 * MIB as u64).prop_map(|(p, size)| Op::Truncate { p, size }),
        2 => (p.clone(), p.clone(), 0..RFLAGS.len()).prop_map(|(from, to, flags)| Op::Rename { from, to, flags }),
        1 => (p.clone(), p.clone()).prop_map(|(from, to)| Op::Link { from, to }),
        1 => p.clone().prop_map(Op::Unlink),
        2 => p.clone().prop_map(Op::Mkdir),
        1 => p.clone().prop_map(Op::Rmdir),
        1 => (0..TARGETS.len(), p.clone()).prop_map(|(target, p)| Op::Symlink { target, p }),
        1 => (p.clone(), 0..XNAMES.len(), any::<u8>(), 0..XFLAGS.len())
            .prop_map(|(p, name, value, flags)| Op::SetXattr { p, name, value, flags }),
        1 => (p.clone(), 0..XNAMES.len()).prop_map(|(p, name)| Op::RemoveXattr { p, name }),
        1 => (p.clone(), 0..MODES.len()).prop_map(|(p, mode)| Op::Chmod { p, mode }),
        1 => p.clone().prop_map(Op::Fsync),
        1 => (p.clone(), 0u64..3 * MIB as u64, 1u64..2 * MIB as u64).prop_map(|(p, off, len)| Op::Punch { p, off, len }),
        1 => (p.clone(), p, 0u64..2 * MIB as u64, 0u64..2 * MIB as u64, 1usize..2 * MIB)
            .prop_map(|(from, to, off_in, off_out, len)| Op::Copy { from, to, off_in, off_out, len }),
    ]
}

fn io(r: std::io::Result<impl Sized>) -> Result<(), i32> {
    r.map(|_| ()).map_err(|e| e.raw_os_error().unwrap_or(-1))
}

fn c(r: i32) -> Result<(), i32> {
    if r == 0 {
        Ok(())
    } else {
        Err(r)
    }
}

/// Apply `op` under `root`; Ok or the errno.
fn apply(root: &Path, op: &Op) -> Result<(), i32> {
    let at = |i: usize| root.join(PATHS[i]);
    match *op {
        Op::Create(p) => io(OpenOptions::new().write(true).create(true).truncate(false).mode(0o644).open(at(p))),
        Op::Write { p, off, len, seed } => {
            let f = OpenOptions::new().write(true).open(at(p)).map_err(|e| e.raw_os_error().unwrap_or(-1))?;
            io(f.write_all_at(&pattern(len, seed), off))
        }
        Op::Truncate { p, size } => {
            let f = OpenOptions::new().write(true).open(at(p)).map_err(|e| e.raw_os_error().unwrap_or(-1))?;
            io(f.set_len(size))
        }
        Op::Rename { from, to, flags } => {
            let (a, b) = (cpath(&at(from)), cpath(&at(to)));
            // SAFETY: valid NUL-terminated paths.
            c(rc(unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), RFLAGS[flags]) }))
        }
        Op::Link { from, to } => io(fs::hard_link(at(from), at(to))),
        Op::Unlink(p) => io(fs::remove_file(at(p))),
        Op::Mkdir(p) => io(fs::create_dir(at(p))),
        Op::Rmdir(p) => io(fs::remove_dir(at(p))),
        Op::Symlink { target, p } => io(std::os::unix::fs::symlink(TARGETS[target], at(p))),
        Op::SetXattr { p, name, value, flags } => {
            c(setxattr(&at(p), XNAMES[name], &vec![value; value as usize % 7 + 1], XFLAGS[flags]))
        }
        Op::RemoveXattr { p, name } => {
            let (p, n) = (cpath(&at(p)), CString::new(XNAMES[name]).unwrap());
            // SAFETY: valid NUL-terminated strings.
            c(rc(unsafe { libc::removexattr(p.as_ptr(), n.as_ptr()) }))
        }
        Op::Chmod { p, mode } => io(fs::set_permissions(at(p), fs::Permissions::from_mode(MODES[mode]))),
        Op::Fsync(p) => {
            let f = fs::File::open(at(p)).map_err(|e| e.raw_os_error().unwrap_or(-1))?;
            io(f.sync_all())
        }
        Op::Punch { p, off, len } => {
            let f = OpenOptions::new().write(true).open(at(p)).map_err(|e| e.raw_os_error().unwrap_or(-1))?;
            let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
            // SAFETY: valid fd.
            c(rc(unsafe { libc::fallocate(f.as_raw_fd(), mode, off as i64, len as i64) }))
        }
        Op::Copy { from, to, off_in, off_out, len } => {
            let fi = fs::File::open(at(from)).map_err(|e| e.raw_os_error().unwrap_or(-1))?;
            let fo = OpenOptions::new().write(true).open(at(to)).map_err(|e| e.raw_os_error().unwrap_or(-1))?;
            let (mut oi, mut oo) = (off_in as i64, off_out as i64);
            let mut left = len;
            while left > 0 {
                // SAFETY: valid fds and offset pointers.
                let n = unsafe { libc::copy_file_range(fi.as_raw_fd(), &mut oi, fo.as_raw_fd(), &mut oo, left, 0) };
                if n < 0 {
                    return Err(errno());
                }
                if n == 0 {
                    break;
                }
                left -= n as usize;
            }
            Ok(())
        }
    }
}

/// What is compared of one entry.
#[derive(Debug, PartialEq, Eq)]
enum Node {
    File { perm: u32, nlink: u64, size: u64, blake3: String, xattrs: Vec<(Vec<u8>, Vec<u8>)> },
    Dir { perm: u32, nlink: u64, xattrs: Vec<(Vec<u8>, Vec<u8>)> },
    Symlink { target: PathBuf },
    Other,
}

fn user_xattrs(p: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    llistxattr(p)
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.starts_with(b"user.") && n.as_slice() != b"user.dfs.policy")
        .map(|n| {
            let v = lgetxattr(p, &n).unwrap_or_default();
            (n, v)
        })
        .collect()
}

/// The whole tree under `root`, by relative path.
fn snapshot(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let md = fs::symlink_metadata(&p).unwrap();
            let ft = md.file_type();
            let node = if ft.is_symlink() {
                Node::Symlink { target: fs::read_link(&p).unwrap() }
            } else if ft.is_dir() {
                stack.push(p.clone());
                Node::Dir { perm: md.mode() & 0o7777, nlink: md.nlink(), xattrs: user_xattrs(&p) }
            } else if ft.is_file() {
                let bytes = fs::read(&p).unwrap();
                Node::File {
                    perm: md.mode() & 0o7777,
                    nlink: md.nlink(),
                    size: md.len(),
                    blake3: blake3::hash(&bytes).to_hex().to_string(),
                    xattrs: user_xattrs(&p),
                }
            } else {
                Node::Other
            };
            out.insert(rel, node);
        }
    }
    out
}

fn compare(step: &str, mounted: &Path, local: &Path) -> Result<(), TestCaseError> {
    let (a, b) = (snapshot(mounted), snapshot(local));
    if a != b {
        let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        let diff: Vec<String> = keys
            .into_iter()
            .filter(|k| a.get(*k) != b.get(*k))
            .map(|k| format!("  {k}: mount {:?} / local {:?}", a.get(k), b.get(k)))
            .collect();
        return Err(TestCaseError::fail(format!("{step}: trees differ:\n{}", diff.join("\n"))));
    }
    Ok(())
}

#[test]
fn random_operations_match_a_local_directory_then_remount() {
    if !common::require_root_and_loop() || !fuse_available() {
        return;
    }
    let loops: Vec<common::LoopDevice> =
        [64u64, 96, 160].iter().map(|mib| common::LoopDevice::new(mib << 20).expect("loop device")).collect();
    let fx = Fixture::on(loops.iter().map(|l| l.path().to_path_buf()).collect(), Some("replication:2"));
    let local = tempfile::tempdir().unwrap();
    let mnt = fx.mnt();
    let (pool, m) = fx.mount_via(0, false);

    let cases = std::env::var("DFS_MODEL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(16);
    let mut runner =
        TestRunner::new(Config { cases, max_shrink_iters: 200, failure_persistence: None, ..Config::default() });
    let case = AtomicUsize::new(0);
    // Operation kind -> (succeeded, failed with the same errno on both sides).
    let tally: std::sync::Mutex<BTreeMap<String, (u32, u32)>> = Default::default();
    let result = runner.run(&proptest::collection::vec(op_strategy(), 1..50), |ops| {
        let n = case.fetch_add(1, Ordering::Relaxed);
        let (dm, dl) = (mnt.join(format!("case-{n}")), local.path().join(format!("case-{n}")));
        fs::create_dir(&dm).unwrap();
        fs::create_dir(&dl).unwrap();
        // A small tree first, so that most operations find what they act on.
        let prelude = [
            Op::Mkdir(2),
            Op::Mkdir(5),
            Op::Create(0),
            Op::Write { p: 0, off: 0, len: 5000, seed: 1 },
            Op::Create(3),
            Op::Write { p: 3, off: MIB as u64 - 100, len: 300, seed: 2 },
            Op::SetXattr { p: 0, name: 0, value: 3, flags: 0 },
        ];
        for op in &prelude {
            prop_assert_eq!(apply(&dm, op), Ok(()), "prelude {:?} on the mount", op);
            prop_assert_eq!(apply(&dl, op), Ok(()), "prelude {:?} locally", op);
        }
        for (i, op) in ops.iter().enumerate() {
            let (rm, rl) = (apply(&dm, op), apply(&dl, op));
            prop_assert_eq!(rm, rl, "step {} {:?}: errno differs (mount vs local)", i, op);
            let kind = format!("{op:?}").split([' ', '(']).next().unwrap_or("").to_string();
            let mut t = tally.lock().unwrap();
            let e = t.entry(kind).or_default();
            if rm.is_ok() {
                e.0 += 1;
            } else {
                e.1 += 1;
            }
            compare(&format!("case {n} step {i} {op:?}"), &dm, &dl)?;
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let tally = tally.into_inner().unwrap();
    eprintln!("operations (ok, same errno): {tally:?}");
    // The sequences must exercise success paths, not only errors.
    for k in ["Create", "Write", "Mkdir", "Rename"] {
        assert!(tally.get(k).is_some_and(|t| t.0 > 0), "no successful {k} in {tally:?}");
    }
    // The comparison itself can fail: a file on one side only is seen.
    let probe = local.path().join("case-0/probe-only-here");
    fs::write(&probe, b"x").unwrap();
    assert!(compare("probe", &mnt.join("case-0"), &local.path().join("case-0")).is_err());
    fs::remove_file(&probe).unwrap();
    let before = snapshot(&mnt);
    assert!(!before.is_empty());
    unmount_and_close(pool, m);

    // Through another member (a different loop device): byte-exact.
    let (pool, m) = fx.mount_via(2, false);
    let after = snapshot(&mnt);
    assert!(after == before, "the tree changed across umount / mount through another member");
    if let Err(e) = compare("after remount", &mnt, local.path()) {
        panic!("{e}");
    }
    let problems = pool.check_allocations();
    assert!(problems.is_empty(), "{problems:?}");
    unmount_and_close(pool, m);
    drop(loops);
}
