//! The test files of the fsck and scrub suites: the first in `/`, the
//! others in `/d`; written and fsynced through the engine, looked up, and
//! read back byte-exact. Also where an extent of one of them lives.

use dynamicfs::engine::state::{Body, Extent};
use dynamicfs::engine::{FileKind, Pool, ROOT_INO};

/// Test files: (name, contents).
pub type Files = Vec<(&'static [u8], Vec<u8>)>;

/// Make `/d`, write every file (the first in `/`, the others in `/d`) and
/// fsync it.
pub fn write_files(pool: &Pool, files: &Files) {
    let (dir, _) = pool.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap();
    for (i, (name, data)) in files.iter().enumerate() {
        let parent = if i == 0 { ROOT_INO } else { dir };
        let (ino, _) = pool.create(parent, name, FileKind::File, 0o644, 0, 0, 0).unwrap();
        pool.write(ino, 0, data).unwrap();
        pool.fsync(ino).unwrap();
    }
}

/// Every file reads back byte-exact from `pool`.
pub fn assert_files(pool: &Pool, files: &Files) {
    let (d, _) = pool.lookup(ROOT_INO, b"d").unwrap();
    for (i, (name, data)) in files.iter().enumerate() {
        let parent = if i == 0 { ROOT_INO } else { d };
        let (ino, attrs) = pool.lookup(parent, name).unwrap();
        assert_eq!(attrs.size, data.len() as u64);
        assert!(pool.read(ino, 0, data.len()).unwrap() == *data, "{} differs", String::from_utf8_lossy(name));
    }
}

/// Extent `index` of file `name` (in `/` or `/d`).
pub fn extent_of(pool: &Pool, name: &[u8], index: u64) -> Extent {
    let ino = match pool.lookup(ROOT_INO, name) {
        Ok((ino, _)) => ino,
        Err(_) => {
            let (d, _) = pool.lookup(ROOT_INO, b"d").unwrap();
            pool.lookup(d, name).unwrap().0
        }
    };
    let st = pool.state_snapshot();
    let Body::File(map) = &st.inodes[&ino].body else { panic!("not a file") };
    st.extents[&map[&index]].clone()
}
