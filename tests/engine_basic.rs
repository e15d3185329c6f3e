//! Engine smoke and durability tests on in-memory members: bytes written and
//! fsynced read back exactly after reopen, under every policy; the namespace
//! API gives the errors a Linux filesystem gives.

mod common;

use common::mem_pool::{mem_members as pool_devices, open_pool as open};
use dfs_format::Policy;
use dynamicfs::engine::{EngineError, FileKind, RenameFlags, SetAttr, ROOT_INO};

const MIB: u64 = 1 << 20;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8).collect()
}

#[test]
fn write_fsync_reopen_read_every_policy() {
    for policy in ["replication:1", "replication:2", "replication:3", "erasure:2+1", "erasure:3+2"] {
        let policy: Policy = policy.parse().unwrap();
        let devs = pool_devices(5, 64 * MIB, policy);
        let data = pattern(3 * MIB as usize + 12345, 7);
        {
            let pool = open(&devs);
            let (ino, _) = pool.create(ROOT_INO, b"f", FileKind::File, 0o644, 0, 0, 0).unwrap();
            pool.write(ino, 0, &data).unwrap();
            pool.fsync(ino).unwrap();
            assert_eq!(pool.read(ino, 0, data.len() + 10).unwrap(), data, "{policy}: read before reopen");
            // No close: a crash right after fsync.
        }
        let pool = open(&devs);
        let (ino, attrs) = pool.lookup(ROOT_INO, b"f").unwrap();
        assert_eq!(attrs.size, data.len() as u64, "{policy}");
        assert_eq!(pool.read(ino, 0, data.len()).unwrap(), data, "{policy}: read after reopen");
        assert!(pool.state_snapshot().check().is_empty());
        assert!(pool.check_allocations().is_empty(), "{:?}", pool.check_allocations());
    }
}

#[test]
fn overwrite_truncate_and_holes() {
    let devs = pool_devices(3, 64 * MIB, "replication:2".parse().unwrap());
    let pool = open(&devs);
    let (ino, _) = pool.create(ROOT_INO, b"f", FileKind::File, 0o644, 0, 0, 0).unwrap();
    let mut model = pattern(2 * MIB as usize, 1);
    pool.write(ino, 0, &model).unwrap();
    pool.fsync(ino).unwrap();
    let patch = pattern(5000, 9);
    pool.write(ino, MIB - 100, &patch).unwrap();
    model[(MIB - 100) as usize..(MIB - 100) as usize + 5000].copy_from_slice(&patch);
    pool.setattr(ino, SetAttr { size: Some(MIB + 10), ..Default::default() }).unwrap();
    model.truncate((MIB + 10) as usize);
    pool.setattr(ino, SetAttr { size: Some(4 * MIB), ..Default::default() }).unwrap();
    model.resize(4 * MIB as usize, 0);
    pool.write(ino, 6 * MIB, b"tail").unwrap();
    model.resize(6 * MIB as usize, 0);
    model.extend_from_slice(b"tail");
    pool.sync_all().unwrap();
    assert_eq!(pool.read(ino, 0, 8 * MIB as usize).unwrap(), model);
    drop(pool);
    let pool = open(&devs);
    assert_eq!(pool.read(ino, 0, 8 * MIB as usize).unwrap(), model);
    // Holes cost no extent: only extents 0, 1 and 6 exist.
    let st = pool.state_snapshot();
    assert_eq!(st.extents.len(), 3, "holes must not be stored");
    assert!(pool.check_allocations().is_empty(), "{:?}", pool.check_allocations());
}

#[test]
fn namespace_errors_are_linux_errors() {
    let devs = pool_devices(3, 40 * MIB, "replication:2".parse().unwrap());
    let pool = open(&devs);
    let (d, _) = pool.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap();
    let (f, _) = pool.create(d, b"f", FileKind::File, 0o644, 0, 0, 0).unwrap();
    assert!(matches!(pool.mkdir(ROOT_INO, b"d", 0o755, 0, 0), Err(EngineError::Exists)));
    assert!(matches!(pool.rmdir(ROOT_INO, b"d"), Err(EngineError::NotEmpty)));
    assert!(matches!(pool.unlink(ROOT_INO, b"d"), Err(EngineError::IsDir)));
    assert!(matches!(pool.lookup(ROOT_INO, b"nope"), Err(EngineError::NotFound)));
    assert!(matches!(pool.lookup(ROOT_INO, &[b'x'; 256]), Err(EngineError::NameTooLong)));
    assert!(matches!(pool.rename(ROOT_INO, b"d", d, b"inside", RenameFlags::default()), Err(EngineError::Invalid(_))));
    pool.create(ROOT_INO, b"g", FileKind::File, 0o644, 0, 0, 0).unwrap();
    assert!(matches!(
        pool.rename(ROOT_INO, b"g", d, b"f", RenameFlags { noreplace: true, exchange: false }),
        Err(EngineError::Exists)
    ));
    pool.rename(ROOT_INO, b"g", d, b"f", RenameFlags { noreplace: false, exchange: true }).unwrap();
    assert_eq!(pool.lookup(ROOT_INO, b"g").unwrap().0, f);
    pool.link(f, ROOT_INO, b"h").unwrap();
    assert_eq!(pool.getattr(f).unwrap().nlink, 2);
    assert!(matches!(
        pool.setxattr(f, b"user.dfs.policy", b"erasure:0+2", Default::default()),
        Err(EngineError::Invalid(_))
    ));
    pool.setxattr(f, b"user.dfs.policy", b"replication:3", Default::default()).unwrap();
    assert_eq!(pool.getxattr(f, b"user.dfs.policy").unwrap(), b"replication:3");
    assert!(matches!(pool.getxattr(f, b"user.x"), Err(EngineError::NoData)));
    assert_eq!(EngineError::NotEmpty.errno(), libc::ENOTEMPTY);
    pool.sync_all().unwrap();
    drop(pool);
    let pool = open(&devs);
    assert!(pool.state_snapshot().check().is_empty(), "{:?}", pool.state_snapshot().check());
    assert_eq!(pool.getattr(f).unwrap().nlink, 2);
}
