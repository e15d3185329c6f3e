//! mkfs and the member readers against real devices: loop devices (root
//! only; skipped with a printed reason elsewhere), image files and
//! directories. What is pinned here:
//!
//! - a pool of two loop devices and a directory formats, and every member
//!   reads back with the same pool UUID, its own member UUID and index, a
//!   valid root in slot 0 and an all-free bitmap;
//! - nothing is written when any member is refused (an ext4 filesystem, an
//!   existing pool, a partition table, too small, mounted, in use);
//!   `--force` overrides what may be overridden and wipes the old signature;
//! - a destroyed primary superblock is found, the backup wins, and
//!   `repair_superblock` rewrites the primary;
//! - garbage, empty and truncated images give errors, never panics.

mod common;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{disk_tempdir, require_root_and_loop, LoopDevice};
use dfs_format::superblock::SuperblockCopy;
use dfs_format::Policy;
use dynamicfs::device::{open_member_device, Device, DeviceKind, OpenMode};
use dynamicfs::member::{
    read_bitmap, read_root_ring, read_superblocks, repair_superblock, CopyProblem, MemberError, RootSlotState,
};
use dynamicfs::mkfs::{format_pool, MemberSpec, MkfsError, MkfsOptions};
use dynamicfs::probe::{probe_device, Finding, ProbeError};

const MIB: u64 = 1 << 20;

fn image(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    File::create(&p).unwrap().set_len(size).unwrap();
    p
}

fn ro(path: &Path) -> std::sync::Arc<dyn Device> {
    open_member_device(path, OpenMode { read_only: true, exclusive: false }).unwrap()
}

fn force() -> MkfsOptions {
    MkfsOptions { force: true, ..Default::default() }
}

/// The single refusal of a refused mkfs.
fn refusal(e: MkfsError) -> ProbeError {
    match e {
        MkfsError::Refused(mut v) if v.len() == 1 => v.remove(0),
        other => panic!("expected one refusal, got {other}"),
    }
}

fn blkid_finds_nothing(path: &Path) -> bool {
    Command::new("blkid").args(["-p", "-o", "export"]).arg(path).status().map(|s| s.code() == Some(2)).unwrap_or(false)
}

fn have(program: &str) -> bool {
    let ok = Command::new(program).arg("-V").output().is_ok();
    if !ok {
        common::skip::unavailable(&format!("{program} is not installed"));
    }
    ok
}

fn mkfs_ext4(path: &Path) {
    let st = Command::new("mkfs.ext4").args(["-q", "-F", "-L", "old"]).arg(path).status().unwrap();
    assert!(st.success());
}

#[test]
fn pool_of_two_loop_devices_and_a_directory() {
    if !require_root_and_loop() {
        return;
    }
    let l0 = LoopDevice::new(96 * MIB).unwrap();
    let l1 = LoopDevice::new(64 * MIB).unwrap();
    let tmp = disk_tempdir();
    let dir = tmp.path().join("member2");
    let members = vec![
        MemberSpec::Device(l0.path().to_path_buf()),
        MemberSpec::Device(l1.path().to_path_buf()),
        MemberSpec::Dir { path: dir.clone(), size: 48 * MIB },
    ];
    let opts = MkfsOptions { label: "test pool".into(), ..Default::default() };
    let summary = format_pool(&members, &opts).unwrap();
    assert_eq!(summary.default_policy, Policy::Replication { copies: 3 });
    assert_eq!(summary.members.len(), 3);
    assert_eq!(summary.members[0].kind, DeviceKind::Block);
    assert_eq!(summary.members[2].kind, DeviceKind::Dir);
    assert_eq!(summary.members[0].size, 96 * MIB);

    let json = serde_json::to_value(&summary).unwrap();
    assert_eq!(json["pool_uuid"], summary.pool_uuid.to_string());
    assert_eq!(json["default_policy"], "replication:3");
    assert_eq!(json["members"][1]["kind"], "block");
    assert_eq!(json["members"][2]["kind"], "dir");

    let mut member_uuids = Vec::new();
    for (i, spec) in members.iter().enumerate() {
        let dev = ro(spec.path());
        let choice = read_superblocks(&*dev).unwrap();
        assert!(!choice.needs_repair(), "{}", spec.path().display());
        let sb = &choice.superblock;
        assert_eq!(sb.pool_uuid, summary.pool_uuid);
        assert_eq!(sb.member_index, i as u32);
        assert_eq!(sb.member_uuid, summary.members[i].member_uuid);
        assert_eq!(sb.label, "test pool");
        assert_eq!(sb.update_seq, 1);
        member_uuids.push(sb.member_uuid);

        let ring = read_root_ring(&*dev, &sb.layout).unwrap();
        let RootSlotState::Valid(root) = &ring[0].state else { panic!("slot 0: {:?}", ring[0].state) };
        assert_eq!((root.pool_uuid, root.generation, root.journal_seq, root.journal_offset), (sb.pool_uuid, 1, 1, 0));
        assert_eq!(root.member_count, 3);
        assert!(root.checkpoint.is_none());
        // mkfs then opens the pool once: generation 2 (open) and 3 (close)
        // hold the first checkpoint, with the member table.
        let best = dynamicfs::member::best_root(&ring, sb.pool_uuid).expect("a best root").1;
        assert_eq!(best.generation, 3);
        assert!(best.checkpoint.is_some());
        assert!(ring[4..].iter().all(|s| s.state == RootSlotState::Empty));

        let bm = read_bitmap(&*dev, &sb.layout, sb.pool_uuid).unwrap();
        assert_eq!(bm.bad_blocks(), 0);
        assert_eq!(bm.used(), 0);
        assert_eq!(bm.data_blocks, sb.layout.data_blocks());
    }
    member_uuids.sort();
    member_uuids.dedup();
    assert_eq!(member_uuids.len(), 3, "member UUIDs are distinct");
    assert!(blkid_finds_nothing(l0.path()));

    // Formatting the same members again is refused: each is a member now.
    let e = format_pool(&members, &MkfsOptions::default()).unwrap_err();
    let MkfsError::Refused(all) = e else { panic!("expected refusals") };
    assert_eq!(all.len(), 3);
    for r in &all {
        assert!(matches!(r, ProbeError::Refused { finding: Finding::DynamicFs { .. }, .. }), "{r}");
        assert!(r.to_string().contains("is already a DynamicFS member"), "{r}");
    }
    // With --force: a new pool over all three.
    let again = format_pool(&members, &force()).unwrap();
    assert_ne!(again.pool_uuid, summary.pool_uuid);
    assert!(again.members[2].overwritten[0].contains("already a DynamicFS member"));
    assert_eq!(read_superblocks(&*ro(&dir)).unwrap().superblock.pool_uuid, again.pool_uuid);
}

#[test]
fn ext4_loop_device_refused_without_force() {
    if !require_root_and_loop() || !have("mkfs.ext4") {
        return;
    }
    let l = LoopDevice::new(64 * MIB).unwrap();
    mkfs_ext4(l.path());
    let members = [MemberSpec::Device(l.path().to_path_buf())];
    let e = refusal(format_pool(&members, &MkfsOptions::default()).unwrap_err());
    let msg = e.to_string();
    assert!(msg.starts_with(&format!("{}: contains an ext4 filesystem (UUID ", l.path().display())), "{msg}");
    assert!(msg.ends_with("label \"old\"); use --force to overwrite"), "{msg}");
    assert!(!blkid_finds_nothing(l.path()), "nothing was written");

    let s = format_pool(&members, &force()).unwrap();
    assert!(s.members[0].overwritten[0].starts_with("contains an ext4 filesystem"));
    assert!(blkid_finds_nothing(l.path()), "the ext4 signature is gone");
    read_superblocks(&*ro(l.path())).unwrap();
}

#[test]
fn busy_and_mounted_loop_devices_refused_even_with_force() {
    if !require_root_and_loop() || !have("mkfs.ext4") {
        return;
    }
    let l = LoopDevice::new(64 * MIB).unwrap();
    // Held exclusively by someone else.
    {
        let _holder = OpenOptions::new().read(true).custom_flags(libc::O_EXCL).open(l.path()).unwrap();
        let p = probe_device(l.path()).unwrap();
        assert_eq!(p.findings, vec![Finding::InUse { holders: vec![] }]);
        let e = refusal(format_pool(&[MemberSpec::Device(l.path().to_path_buf())], &force()).unwrap_err());
        assert!(e.to_string().ends_with("; refusing to format it"), "{e}");
    }
    // Mounted.
    mkfs_ext4(l.path());
    let mnt = disk_tempdir();
    let st = Command::new("mount").arg(l.path()).arg(mnt.path()).status();
    if !st.is_ok_and(|s| s.success()) {
        common::skip::unavailable("the mounted case: mount failed");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Unmount(mnt.path());
    let e = refusal(format_pool(&[MemberSpec::Device(l.path().to_path_buf())], &force()).unwrap_err());
    let msg = e.to_string();
    assert!(msg.contains(&format!("is mounted at {}", mnt.path().display())), "{msg}");
    assert!(msg.ends_with("refusing to format it"), "{msg}");

    // The image file behind the mounted loop device is refused too.
    let e = refusal(format_pool(&[MemberSpec::Device(l.image_path().to_path_buf())], &force()).unwrap_err());
    assert!(e.to_string().contains(&format!("(through {})", l.path().display())), "{e}");
}

#[test]
fn image_attached_to_a_loop_device_needs_force() {
    if !require_root_and_loop() {
        return;
    }
    let l = LoopDevice::new(64 * MIB).unwrap();
    let p = probe_device(l.image_path()).unwrap();
    assert_eq!(p.findings, vec![Finding::LoopAttached { loop_device: l.path().to_path_buf() }]);
    assert!(p.verdict(false).is_err());
    p.verdict(true).unwrap();
}

#[test]
fn nothing_is_written_when_one_member_is_refused() {
    let tmp = disk_tempdir();
    let good = image(tmp.path(), "good.img", 64 * MIB);
    let small = image(tmp.path(), "small.img", 16 * MIB);
    let members = [MemberSpec::Device(good.clone()), MemberSpec::Device(small.clone())];
    let e = refusal(format_pool(&members, &force()).unwrap_err());
    assert_eq!(
        e.to_string(),
        format!(
            "{}: is too small (16.00 MiB); a member needs at least 32.00 MiB; refusing to format it",
            small.display()
        )
    );
    let mut buf = vec![0u8; 1 << 20];
    File::open(&good).unwrap().read_exact_at(&mut buf, 0).unwrap();
    assert!(buf.iter().all(|&b| b == 0), "the good member was not touched");

    // A directory member that is too small is refused the same way.
    let d = MemberSpec::Dir { path: tmp.path().join("d"), size: 8 * MIB };
    assert!(matches!(
        refusal(format_pool(&[d], &force()).unwrap_err()),
        ProbeError::Refused { finding: Finding::TooSmall { .. }, .. }
    ));
    assert!(!tmp.path().join("d").exists());
}

#[test]
fn ext4_image_and_partition_table_refused_without_force() {
    let tmp = disk_tempdir();
    let mbr = image(tmp.path(), "mbr.img", 64 * MIB);
    // One partition entry (type 0x83, start 2048, 65536 sectors) and the signature.
    let mut sector = [0u8; 512];
    sector[446..462].copy_from_slice(&[0, 0x20, 0x21, 0, 0x83, 0x20, 0x21, 0, 0, 8, 0, 0, 0, 0, 1, 0]);
    sector[510] = 0x55;
    sector[511] = 0xaa;
    OpenOptions::new().write(true).open(&mbr).unwrap().write_all_at(&sector, 0).unwrap();
    let e = refusal(format_pool(&[MemberSpec::Device(mbr.clone())], &MkfsOptions::default()).unwrap_err());
    assert_eq!(
        e.to_string(),
        format!("{}: carries an MBR (dos) partition table; use --force to overwrite", mbr.display())
    );
    format_pool(&[MemberSpec::Device(mbr.clone())], &force()).unwrap();
    assert!(blkid_finds_nothing(&mbr));

    if have("mkfs.ext4") {
        let ext = image(tmp.path(), "ext4.img", 64 * MIB);
        mkfs_ext4(&ext);
        let e = refusal(format_pool(&[MemberSpec::Device(ext.clone())], &MkfsOptions::default()).unwrap_err());
        assert!(
            matches!(&e, ProbeError::Refused { finding: Finding::Signature { fs_type, .. }, overridable: true, .. } if fs_type == "ext4")
        );
        format_pool(&[MemberSpec::Device(ext.clone())], &force()).unwrap();
        assert!(blkid_finds_nothing(&ext));
    }
}

#[test]
fn a_non_empty_directory_is_refused_even_with_force() {
    let tmp = disk_tempdir();
    let d = tmp.path().join("d");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("precious.txt"), b"keep me").unwrap();
    let spec = MemberSpec::Dir { path: d.clone(), size: 64 * MIB };
    let e = refusal(format_pool(&[spec], &force()).unwrap_err());
    assert!(e.to_string().contains("is a directory that is not empty (1 entries, e.g. \"precious.txt\")"), "{e}");
    assert_eq!(std::fs::read(d.join("precious.txt")).unwrap(), b"keep me");
}

#[test]
fn primary_destroyed_backup_wins_and_repair_rewrites_it() {
    let tmp = disk_tempdir();
    let img = image(tmp.path(), "m.img", 64 * MIB);
    let s = format_pool(&[MemberSpec::Device(img.clone())], &MkfsOptions::default()).unwrap();
    OpenOptions::new().write(true).open(&img).unwrap().write_all_at(&[0u8; 4096], 0).unwrap();

    // Not exclusive: the exclusive flock of mkfs's own RawDevice may outlive
    // its drop for a moment while the kernel tears its io_uring down.
    let dev = open_member_device(&img, OpenMode { read_only: false, exclusive: false }).unwrap();
    let choice = read_superblocks(&*dev).unwrap();
    assert_eq!(choice.from, SuperblockCopy::Backup);
    assert_eq!(choice.superblock.pool_uuid, s.pool_uuid);
    assert!(matches!(choice.primary.problem, Some(CopyProblem::Invalid(_))));
    assert!(choice.backup.problem.is_none());
    let r = repair_superblock(&*dev, &choice).unwrap();
    assert!(r.rewrote_primary && !r.rewrote_backup);
    drop(dev);

    let choice = read_superblocks(&*ro(&img)).unwrap();
    assert_eq!(choice.from, SuperblockCopy::Primary);
    assert!(!choice.needs_repair());
    assert_eq!(choice.superblock.pool_uuid, s.pool_uuid);
}

#[test]
fn garbage_empty_and_truncated_images_are_errors() {
    let tmp = disk_tempdir();
    let empty = image(tmp.path(), "empty.img", 0);
    let garbage = tmp.path().join("garbage.img");
    let mut bytes = vec![0u8; (40 * MIB) as usize];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for b in bytes.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    // Our magic at the start, garbage after it.
    bytes[..8].copy_from_slice(b"DYNFS_SB");
    std::fs::write(&garbage, &bytes).unwrap();

    let e = read_superblocks(&*ro(&empty)).unwrap_err();
    assert!(matches!(e, MemberError::NotAMember { .. }), "{e}");
    let e = read_superblocks(&*ro(&garbage)).unwrap_err();
    assert!(e.to_string().contains("not a DynamicFS member: primary superblock:"), "{e}");

    let member = image(tmp.path(), "m.img", 64 * MIB);
    format_pool(&[MemberSpec::Device(member.clone())], &MkfsOptions::default()).unwrap();
    OpenOptions::new().write(true).open(&member).unwrap().set_len(48 * MIB).unwrap();
    let e = read_superblocks(&*ro(&member)).unwrap_err();
    assert!(matches!(e, MemberError::Truncated { recorded, actual, .. } if recorded == 64 * MIB && actual == 48 * MIB));

    // The probe of an empty image refuses it as too small; of garbage, finds nothing.
    let e = refusal(format_pool(&[MemberSpec::Device(empty)], &force()).unwrap_err());
    assert!(matches!(e, ProbeError::Refused { finding: Finding::TooSmall { size: 0, .. }, .. }), "{e}");
    assert!(probe_device(&garbage).unwrap().findings.iter().all(|f| !matches!(f, Finding::DynamicFs { .. })));
}

#[test]
fn policies_the_pool_cannot_satisfy_are_refused() {
    let tmp = disk_tempdir();
    let a = image(tmp.path(), "a.img", 64 * MIB);
    let b = image(tmp.path(), "b.img", 64 * MIB);
    let opts = MkfsOptions { default_policy: Some(Policy::Replication { copies: 3 }), ..Default::default() };
    let e = format_pool(&[MemberSpec::Device(a.clone()), MemberSpec::Device(b.clone())], &opts).unwrap_err();
    assert_eq!(e.to_string(), "policy replication:3 needs 3 distinct members; the pool has 2");
    let s = format_pool(&[MemberSpec::Device(a), MemberSpec::Device(b)], &MkfsOptions::default()).unwrap();
    assert_eq!(s.default_policy, Policy::Replication { copies: 2 });
}
