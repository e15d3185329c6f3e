//! Online policy change: extents re-encoded one by one, data readable and
//! identical throughout, recorded in the history, resumable after a power
//! cut in the middle, refused when the members can't satisfy it.

use dfs_format::Policy;
use dynamicfs::device::{Device, FaultyDevice, MemDevice};
use dynamicfs::engine::state::{ChangeState, MemberState};
use dynamicfs::engine::{EngineError, FileKind, Pool, PoolOptions, ROOT_INO};
use std::sync::Arc;

const MIB: usize = 1 << 20;

fn devices(n: usize) -> Vec<Arc<FaultyDevice>> {
    let devs: Vec<Arc<FaultyDevice>> =
        (0..n).map(|_| Arc::new(FaultyDevice::new(Arc::new(MemDevice::new(64 << 20, 4096))))).collect();
    let refs: Vec<&dyn Device> = devs.iter().map(|d| d.as_ref() as &dyn Device).collect();
    dynamicfs::mkfs::format_devices(&refs, "admin", "replication:2".parse().unwrap()).unwrap();
    devs
}

fn open(devs: &[Arc<FaultyDevice>]) -> Pool {
    let ds: Vec<Arc<dyn Device>> = devs.iter().map(|d| d.clone() as Arc<dyn Device>).collect();
    Pool::open(ds, PoolOptions { no_lock: true, ..Default::default() }).unwrap()
}

fn fill(pool: &Pool) -> Vec<(u64, Vec<u8>)> {
    let (d, _) = pool.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap();
    (0..4u8)
        .map(|i| {
            let (ino, _) = pool.create(d, &[b'f', b'0' + i], FileKind::File, 0o644, 0, 0, 0).unwrap();
            let data: Vec<u8> = (0..(2 * MIB + 777 * i as usize)).map(|k| (k as u8) ^ i.wrapping_mul(37)).collect();
            pool.write(ino, 0, &data).unwrap();
            (ino, data)
        })
        .collect()
}

#[test]
fn change_policy_of_the_whole_pool() {
    let devs = devices(4);
    let pool = open(&devs);
    let files = fill(&pool);
    pool.sync_all().unwrap();
    let target: Policy = "erasure:2+1".parse().unwrap();
    let change = pool.change_policy(ROOT_INO, "/", true, target, &|_, _| {}).unwrap();
    assert_eq!(change.state, ChangeState::Done);
    assert_eq!(change.extents_done, change.extents_total);
    assert!(change.extents_total >= 8);
    // Bytes: every byte of every file was re-encoded.
    let bytes: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();
    assert_eq!((change.bytes_done, change.bytes_total), (bytes, bytes));
    for e in pool.list_extents() {
        assert_eq!(e.policy, "erasure:2+1", "{e:?}");
        assert_eq!(e.fragments.len(), 3);
    }
    for (ino, data) in &files {
        assert_eq!(&pool.read(*ino, 0, data.len()).unwrap(), data);
    }
    // New files follow the new default.
    let (g, _) = pool.create(ROOT_INO, b"g", FileKind::File, 0o644, 0, 0, 0).unwrap();
    pool.write(g, 0, &[1u8; 5000]).unwrap();
    pool.fsync(g).unwrap();
    assert!(pool.list_extents().iter().all(|e| e.policy == "erasure:2+1"));
    drop(pool);
    let pool = open(&devs);
    let last = pool.policy_history().last().unwrap().clone();
    assert_eq!(last.state, ChangeState::Done);
    assert_eq!((last.bytes_done, last.bytes_total), (bytes, bytes), "bytes survive a reopen");
    assert!(pool.check_allocations().is_empty(), "{:?}", pool.check_allocations());
}

#[test]
fn change_survives_a_power_cut_and_resumes() {
    // Cut the power at many points of the change; every time the data must
    // read back exact, and a change whose Running record survived must be
    // finished by resume. At least one cut must land mid-change.
    let target: Policy = "replication:3".parse().unwrap();
    let mut interrupted = 0;
    for n in (2..40).step_by(3) {
        let devs = devices(4);
        let files = {
            let pool = open(&devs);
            let files = fill(&pool);
            pool.sync_all().unwrap();
            devs[1].crash_at(n);
            if pool.change_policy(ROOT_INO, "/", true, target, &|_, _| {}).is_ok() {
                continue; // the cut came after the change
            }
            files
        };
        for (i, d) in devs.iter().enumerate() {
            d.crash_now();
            d.power_cycle(n ^ i as u64).unwrap();
        }
        let pool = open(&devs);
        for (ino, data) in &files {
            assert_eq!(&pool.read(*ino, 0, data.len()).unwrap(), data, "cut at {n}: readable after the cut");
        }
        let was_running = pool.policy_history().iter().any(|c| c.state == ChangeState::Running);
        let resumed = pool.resume_policy_changes(&|_, _| {}).unwrap();
        if was_running {
            interrupted += 1;
            assert!(resumed.iter().all(|c| c.state == ChangeState::Done));
            assert!(resumed.iter().all(|c| c.bytes_done == c.bytes_total), "{resumed:?}");
            for e in pool.list_extents() {
                assert_eq!(e.policy, "replication:3", "cut at {n}: {e:?}");
            }
        }
        for (ino, data) in &files {
            assert_eq!(&pool.read(*ino, 0, data.len()).unwrap(), data, "cut at {n}");
        }
        assert!(pool.state_snapshot().check().is_empty());
        assert!(pool.check_allocations().is_empty(), "{:?}", pool.check_allocations());
    }
    assert!(interrupted > 0, "no power cut landed in the middle of a change");
}

#[test]
fn change_with_a_failed_member_and_refusals() {
    let devs = devices(4);
    let pool = open(&devs);
    let files = fill(&pool);
    pool.sync_all().unwrap();
    pool.set_member_state(3, MemberState::Failed).unwrap();
    // 4+1 needs 5 members, and with one failed only 3 are online.
    let r = pool.change_policy(ROOT_INO, "/", true, "erasure:3+1".parse().unwrap(), &|_, _| {});
    assert!(matches!(r, Err(EngineError::PolicyUnsatisfiable { .. })), "{r:?}");
    let c = pool.change_policy(ROOT_INO, "/", true, "erasure:2+1".parse().unwrap(), &|_, _| {}).unwrap();
    assert_eq!(c.state, ChangeState::Done);
    for e in pool.list_extents() {
        assert!(e.fragments.iter().all(|f| f.member != 3), "nothing new on the failed member");
    }
    for (ino, data) in &files {
        assert_eq!(&pool.read(*ino, 0, data.len()).unwrap(), data);
    }
    let members = pool.list_members();
    assert_eq!(members[3].state, "failed");
}

/// Errors per member (`list-disks`' ERRORS): a bit flipped in one member's
/// fragment counts on that member only, whoever trips over it (a read,
/// scrub); so does an IO error of one member; the others stay at 0.
#[test]
fn errors_are_counted_on_the_member_that_had_them() {
    use dynamicfs::device::IoKind;
    let devs = devices(4);
    let pool = open(&devs);
    let files = fill(&pool);
    pool.sync_all().unwrap();
    let errors = |pool: &Pool| pool.list_members().iter().map(|m| m.errors).collect::<Vec<u64>>();
    assert_eq!(errors(&pool), vec![0; 4], "a clean pool has no errors");
    let extents = pool.list_extents();
    let first_of = |path: &str| extents.iter().find(|e| e.path.as_deref() == Some(path) && e.offset == 0).unwrap();
    let flip = |e: &dynamicfs::engine::admin::ExtentInfo| {
        let f = &e.fragments[0];
        let m = pool.members()[f.member as usize].as_ref().unwrap();
        let at = m.layout.data_offset(f.block) + m.layout.block_size as u64 + 1000;
        devs[f.member as usize].flip_bit(at, 3).unwrap();
        f.member as usize
    };
    let only_on = |before: &[u64], after: &[u64], member: usize, what: &str| {
        for i in 0..before.len() {
            if i == member {
                assert!(after[i] > before[i], "{what}: member {i} did not count it: {before:?} -> {after:?}");
            } else {
                assert_eq!(after[i], before[i], "{what}: member {i} counted another member's error");
            }
        }
    };

    // A read trips over a flipped bit (and repairs it).
    let before = errors(&pool);
    let bad = flip(first_of("/d/f0"));
    let (ino, data) = &files[0];
    assert_eq!(&pool.read(*ino, 0, data.len()).unwrap(), data);
    only_on(&before, &errors(&pool), bad, "read of a flipped bit");

    // Scrub finds one (without repairing it).
    let before = errors(&pool);
    let e = first_of("/d/f1");
    let bad = flip(e);
    let id = uuid::Uuid::parse_str(&e.id).unwrap().as_u128();
    let found = dynamicfs::engine::scrub::scrub_extent(&pool, id, false);
    assert_eq!(found.errors.len(), 1, "{found:?}");
    only_on(&before, &errors(&pool), bad, "scrub of a flipped bit");

    // The device of one member fails a read.
    let before = errors(&pool);
    let e = first_of("/d/f2");
    let member = e.fragments[0].member as usize;
    devs[member].fail_nth(1, IoKind::Read);
    let (ino, data) = &files[2];
    assert_eq!(&pool.read(*ino, 0, data.len()).unwrap(), data);
    devs[member].clear_fault_hook();
    only_on(&before, &errors(&pool), member, "IO error on read");
}

/// A member's device dies in the middle of a change-policy (every IO on it
/// errs from the third extent on): the change stops with the device's
/// error but stays Running (resumable), and every byte reads back at once.
/// With the member marked failed (after a reopen), the resume completes
/// the change and a rebuild empties the member. Each member in turn: some
/// hold a journal copy, so their death also stops commits.
#[test]
fn a_member_dying_mid_change_leaves_it_resumable() {
    use dynamicfs::device::Fault;
    let target: Policy = "erasure:2+1".parse().unwrap();
    let mut stopped = 0;
    for bad in 0..4 {
        let devs = devices(4);
        let pool = open(&devs);
        let files = fill(&pool);
        pool.sync_all().unwrap();
        let dev = devs[bad].clone();
        let r = pool.change_policy(ROOT_INO, "/", true, target, &|done, _| {
            if done == 3 {
                dev.set_fault_hook(Box::new(|_| Some(Fault::Error)));
            }
        });
        match &r {
            Ok(c) => assert_eq!(c.state, ChangeState::Done, "member {bad}"),
            Err(e) => {
                stopped += 1;
                assert!(matches!(e, EngineError::Device(_)), "member {bad}: {e}");
                // What policy-status shows meanwhile: running, with the error.
                let last = pool.policy_history().last().unwrap().clone();
                assert_eq!(last.state, ChangeState::Running, "member {bad}: {last:?}");
                assert!(last.message.contains("stopped by an IO error at "), "member {bad}: {last:?}");
                assert!(last.extents_done >= 3 && last.extents_done < last.extents_total, "member {bad}: {last:?}");
            }
        }
        for (ino, data) in &files {
            assert_eq!(&pool.read(*ino, 0, data.len()).unwrap(), data, "member {bad} dead: read back");
        }
        drop(pool);
        devs[bad].clear_fault_hook();
        let pool = open(&devs);
        if r.is_err() {
            let last = pool.policy_history().last().unwrap().clone();
            assert_eq!(last.state, ChangeState::Running, "member {bad}: not resumable: {last:?}");
        }
        pool.set_member_state(bad as u32, MemberState::Failed).unwrap();
        let resumed = pool.resume_policy_changes(&|_, _| {}).unwrap();
        assert!(resumed.iter().all(|c| c.state == ChangeState::Done), "member {bad}: {resumed:?}");
        let c = pool.policy_history().last().unwrap().clone();
        assert_eq!((c.state, c.extents_done), (ChangeState::Done, c.extents_total), "member {bad}");
        assert!(pool.list_extents().iter().all(|e| e.policy == "erasure:2+1"), "member {bad}");
        pool.rebuild_all(usize::MAX).unwrap();
        assert!(
            pool.list_extents().iter().all(|e| e.fragments.iter().all(|f| f.member != bad as u32)),
            "member {bad}: fragments left on the failed member after a rebuild"
        );
        for (ino, data) in &files {
            assert_eq!(&pool.read(*ino, 0, data.len()).unwrap(), data, "member {bad}: after the resume");
        }
        assert!(pool.check_allocations().is_empty(), "{:?}", pool.check_allocations());
    }
    assert!(stopped > 0, "no change was stopped by the dying member");
}
