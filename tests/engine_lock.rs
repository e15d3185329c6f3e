//! The pool lock: one writer per pool.
//!
//! Story: a pool is open (mounted) and a second `Pool::open` of the same
//! members comes along (a second mount, an fsck without `-n`). It must be
//! refused with `PoolInUse`, naming the PID that holds the pool (here: this
//! very process, since flock conflicts between two open file descriptions
//! even within one process), and mapping to EBUSY. A read-only open takes no
//! lock and is allowed. Once the first opener is gone, the pool opens again.

use dfs_format::Policy;
use dynamicfs::device::{Device, MemDevice};
use dynamicfs::engine::{EngineError, FileKind, Pool, PoolOptions, ROOT_INO};
use std::path::Path;
use std::sync::Arc;

const MIB: u64 = 1 << 20;

fn format(n: usize) -> Vec<Arc<dyn Device>> {
    let devs: Vec<Arc<MemDevice>> = (0..n).map(|_| Arc::new(MemDevice::new(40 * MIB, 4096))).collect();
    let refs: Vec<&dyn Device> = devs.iter().map(|d| d.as_ref() as &dyn Device).collect();
    dynamicfs::mkfs::format_devices(&refs, "lock-test", Policy::Replication { copies: 2 }).expect("mkfs");
    devs.into_iter().map(|d| d as Arc<dyn Device>).collect()
}

fn opts(lock_dir: &Path) -> PoolOptions {
    PoolOptions { lock_dir: Some(lock_dir.to_path_buf()), ..Default::default() }
}

#[test]
fn second_open_gets_pool_in_use_with_our_pid_then_reopens_after_drop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lock_dir = dir.path().join("locks");
    let devs = format(3);

    let first = Pool::open(devs.clone(), opts(&lock_dir)).expect("first open");
    let (ino, _) = first.create(ROOT_INO, b"f", FileKind::File, 0o644, 0, 0, 0).expect("create");
    first.write(ino, 0, b"held by the first opener").expect("write");
    first.fsync(ino).expect("fsync");

    let lock_file = lock_dir.join(format!("{}.lock", first.uuid()));
    let content = std::fs::read_to_string(&lock_file).expect("lock file exists while the pool is open");
    assert_eq!(content.trim(), std::process::id().to_string(), "the lock file holds the owner's PID");

    let e = match Pool::open(devs.clone(), opts(&lock_dir)) {
        Err(e) => e,
        Ok(_) => panic!("a second writer opened a pool that is in use"),
    };
    let EngineError::PoolInUse { pool, pid, lock } = &e else { panic!("expected PoolInUse, got {e}") };
    assert_eq!(*pool, first.uuid());
    assert_eq!(*pid, std::process::id(), "names this process");
    assert_eq!(Path::new(lock), lock_file.as_path());
    assert_eq!(e.errno(), libc::EBUSY);
    let msg = e.to_string();
    assert!(msg.contains(&format!("PID {}", std::process::id())), "{msg}");
    assert!(msg.contains(&first.uuid().to_string()), "{msg}");
    // The refused opener wrote nothing: the first pool still works.
    first.write(ino, 0, b"still the first opener!!").expect("write after refusal");
    first.fsync(ino).expect("fsync after refusal");

    // A read-only open takes no lock.
    let ro = Pool::open(devs.clone(), PoolOptions { read_only: true, ..opts(&lock_dir) }).expect("read-only open");
    let (rino, _) = ro.lookup(ROOT_INO, b"f").expect("lookup read-only");
    assert_eq!(ro.read(rino, 0, 100).unwrap(), b"still the first opener!!");
    drop(ro);

    drop(first);
    let again = Pool::open(devs.clone(), opts(&lock_dir)).expect("reopen after the first opener is gone");
    let (ino, _) = again.lookup(ROOT_INO, b"f").expect("lookup");
    assert_eq!(again.read(ino, 0, 100).unwrap(), b"still the first opener!!");
    // And a clean close releases it too.
    again.close().expect("close");
    Pool::open(devs, opts(&lock_dir)).expect("reopen after close").close().expect("close");
}

#[test]
fn locks_of_different_pools_do_not_conflict() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Pool::open(format(2), opts(dir.path())).expect("pool a");
    let b = Pool::open(format(2), opts(dir.path())).expect("pool b");
    assert_ne!(a.uuid(), b.uuid());
    a.close().expect("close a");
    b.close().expect("close b");
}
