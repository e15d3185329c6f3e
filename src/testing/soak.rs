//! # Crash soak: random workloads, power cuts, and a model of what was durable
//!
//! For one seed: a pool of 3-5 `FaultyDevice` members over `MemDevice`s is
//! formatted and opened; a random workload (creates, mkdirs, writes of many
//! sizes, overwrites, truncates, renames, links, unlinks, symlinks, closes
//! that leave writes in flight, fsyncs, syncs) runs against the engine and a model; a power cut is armed at a
//! random write or sync of a random member (or falls between operations).
//! The crash images (synced writes kept; unsynced ones dropped, kept or torn
//! at random) are reopened and checked against the model:
//!
//! 1. the tree is consistent (`State::check`) and every allocated block is
//!    referenced exactly once (`Pool::check_allocations`);
//! 2. the namespace (paths, kinds, symlink targets, hard-link groups) equals
//!    the model at one durability point: the last one that completed, or
//!    the one in progress at the crash (the engine commits only inside
//!    fsync / sync, so no other state is possible);
//! 3. a file untouched since the last durability point that covered it
//!    (fsync of it, or sync) has exactly its content then; a file modified
//!    since shows, for each 1 MiB extent, the bytes of one of its versions
//!    since then (never garbage, never another file's bytes).
//!
//! Then the workload goes on from the recovered pool (the model reset to
//! what was recovered) for the next crash of the seed. Every crash is one
//! crash point.

use crate::device::{Device, FaultyDevice, MemDevice};
use crate::engine::state::{Body, FileKind, State, ROOT_INO};
use crate::engine::{EngineError, Pool, PoolOptions, RenameFlags, SetAttr};
use dfs_format::Policy;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

const MIB: u64 = 1 << 20;

/// Outcome of one seed.
#[derive(Debug, Default)]
pub struct SeedReport {
    pub seed: u64,
    pub crash_points: u64,
    pub violations: Vec<String>,
    pub ops: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    File(u64),
    Dir,
    Symlink(Vec<u8>),
}

#[derive(Debug, Clone)]
struct MFile {
    content: Vec<u8>,
    /// Versions since the last durability point that covered the file.
    versions: Vec<Vec<u8>>,
    /// Modified since that point.
    modified: bool,
    /// Content at that point.
    synced: Vec<u8>,
}

impl MFile {
    fn new(content: Vec<u8>, modified: bool) -> MFile {
        MFile { versions: vec![content.clone()], synced: content.clone(), content, modified }
    }
}

#[derive(Debug, Clone, Default)]
struct Model {
    ns: BTreeMap<String, Node>,
    files: HashMap<u64, MFile>,
    next_id: u64,
}

impl Model {
    fn dirs(&self) -> Vec<String> {
        let mut v = vec![String::new()];
        v.extend(self.ns.iter().filter(|(_, n)| **n == Node::Dir).map(|(p, _)| p.clone()));
        v
    }

    fn file_paths(&self) -> Vec<(String, u64)> {
        self.ns
            .iter()
            .filter_map(|(p, n)| match n {
                Node::File(id) => Some((p.clone(), *id)),
                _ => None,
            })
            .collect()
    }

    fn modify(&mut self, id: u64, f: impl FnOnce(&mut Vec<u8>)) {
        let mf = self.files.get_mut(&id).expect("model file");
        f(&mut mf.content);
        mf.versions.push(mf.content.clone());
        mf.modified = true;
    }

    fn durable(&mut self, id: u64) {
        let mf = self.files.get_mut(&id).expect("model file");
        mf.versions = vec![mf.content.clone()];
        mf.modified = false;
        mf.synced = mf.content.clone();
    }
}

fn split(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("", path),
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

fn resolve(pool: &Pool, path: &str) -> Option<u64> {
    let mut ino = ROOT_INO;
    for part in path.split('/').filter(|s| !s.is_empty()) {
        ino = pool.lookup(ino, part.as_bytes()).ok()?.0;
    }
    Some(ino)
}

type Seen = BTreeMap<String, (u64, Node, Vec<u8>)>;

/// What a pool shows: path (without leading '/') → (ino, node, file content).
fn observe(pool: &Pool, state: &State) -> Result<Seen, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(String::new(), ROOT_INO)];
    while let Some((path, ino)) = stack.pop() {
        let inode = state.inodes.get(&ino).ok_or(format!("{path}: inode {ino} missing"))?;
        if let Body::Dir { entries, .. } = &inode.body {
            for (name, child) in entries {
                let p = join(&path, &String::from_utf8_lossy(name));
                let c = state.inodes.get(child).ok_or(format!("{p}: inode {child} missing"))?;
                match &c.body {
                    Body::Dir { .. } => {
                        out.insert(p.clone(), (*child, Node::Dir, Vec::new()));
                        stack.push((p, *child));
                    }
                    Body::Symlink(t) => {
                        out.insert(p, (*child, Node::Symlink(t.to_vec()), Vec::new()));
                    }
                    Body::File(_) => {
                        let data = pool
                            .read(*child, 0, c.attrs.size as usize)
                            .map_err(|e| format!("{p}: read failed after recovery: {e}"))?;
                        if data.len() as u64 != c.attrs.size {
                            return Err(format!("{p}: read {} bytes of {}", data.len(), c.attrs.size));
                        }
                        out.insert(p, (*child, Node::File(0), data));
                    }
                    Body::Special => {}
                }
            }
        }
    }
    Ok(out)
}

/// Does the recovered namespace match this model snapshot (paths, kinds,
/// targets, hard-link groups)? Returns the path → model file id map.
fn match_snapshot(seen: &Seen, snap: &BTreeMap<String, Node>) -> Option<BTreeMap<String, u64>> {
    if seen.len() != snap.len() {
        return None;
    }
    let mut ino_to_id: HashMap<u64, u64> = HashMap::new();
    let mut id_to_ino: HashMap<u64, u64> = HashMap::new();
    let mut ids = BTreeMap::new();
    for ((p, (ino, node, _)), (q, m)) in seen.iter().zip(snap.iter()) {
        if p != q {
            return None;
        }
        match (node, m) {
            (Node::Dir, Node::Dir) => {}
            (Node::Symlink(a), Node::Symlink(b)) if a == b => {}
            (Node::File(_), Node::File(id)) => {
                if *ino_to_id.entry(*ino).or_insert(*id) != *id || *id_to_ino.entry(*id).or_insert(*ino) != *ino {
                    return None;
                }
                ids.insert(q.clone(), *id);
            }
            _ => return None,
        }
    }
    Some(ids)
}

fn random_data(rng: &mut StdRng, len: usize) -> Vec<u8> {
    // A random 8-byte pattern per write, varied per 4 KiB block, so torn or
    // misplaced data shows.
    let pat: [u8; 8] = rng.gen();
    (0..len).map(|i| pat[i % 8] ^ (i / 4096) as u8).collect()
}

fn open(devs: &[Arc<FaultyDevice>]) -> Result<Pool, String> {
    let ds: Vec<Arc<dyn Device>> = devs.iter().map(|d| d.clone() as Arc<dyn Device>).collect();
    Pool::open(ds, PoolOptions { no_lock: true, ..Default::default() }).map_err(|e| format!("open failed: {e}"))
}

/// Check a recovered pool against the model; returns the problems and what was seen.
fn check(pool: &Pool, model: &Model, candidates: &[BTreeMap<String, Node>]) -> (Vec<String>, Seen) {
    let state = pool.state_snapshot();
    let mut problems = state.check();
    problems.extend(pool.check_allocations());
    let seen = match observe(pool, &state) {
        Ok(s) => s,
        Err(e) => {
            problems.push(e);
            return (problems, BTreeMap::new());
        }
    };
    let Some(ids) = candidates.iter().find_map(|snap| match_snapshot(&seen, snap)) else {
        problems.push(format!(
            "namespace matches no durable point: recovered {:?}, last durable {:?}",
            seen.keys().collect::<Vec<_>>(),
            candidates[0].keys().collect::<Vec<_>>()
        ));
        return (problems, seen);
    };
    for (path, id) in &ids {
        let got = &seen[path].2;
        let mf = &model.files[id];
        if !mf.modified {
            if got != &mf.synced {
                problems.push(format!(
                    "{path}: fsynced content lost ({} bytes, expected {})",
                    got.len(),
                    mf.synced.len()
                ));
            }
            continue;
        }
        let maxlen = mf.versions.iter().map(|v| v.len()).max().unwrap_or(0);
        if got.len() > maxlen {
            problems.push(format!("{path}: size {} beyond every version ({maxlen})", got.len()));
            continue;
        }
        for (ci, chunk) in got.chunks(MIB as usize).enumerate() {
            let start = ci * MIB as usize;
            let ok = mf
                .versions
                .iter()
                .any(|v| chunk.iter().enumerate().all(|(k, b)| v.get(start + k).copied().unwrap_or(0) == *b));
            if !ok {
                problems.push(format!("{path}: extent {ci} matches no version written since the last fsync"));
            }
        }
    }
    (problems, seen)
}

/// Run one seed: `cycles` crashes, each after up to `ops_per_cycle` operations.
pub fn run_seed(seed: u64, cycles: u32, ops_per_cycle: u32) -> SeedReport {
    let mut rep = SeedReport { seed, ..Default::default() };
    let mut rng = StdRng::seed_from_u64(seed);
    let n: usize = rng.gen_range(3..=5);
    let devs: Vec<Arc<FaultyDevice>> =
        (0..n).map(|_| Arc::new(FaultyDevice::new(Arc::new(MemDevice::new(40 * MIB, 4096))))).collect();
    let policy = match rng.gen_range(0..3) {
        0 => Policy::Replication { copies: 2 },
        1 => Policy::Replication { copies: 3 },
        _ => Policy::Erasure { data: (n as u8 - 1).min(3), parity: 1 },
    };
    {
        let refs: Vec<&dyn Device> = devs.iter().map(|d| d.as_ref() as &dyn Device).collect();
        if let Err(e) = crate::mkfs::format_devices(&refs, "soak", policy) {
            rep.violations.push(format!("mkfs failed: {e}"));
            return rep;
        }
    }
    let mut model = Model { next_id: 1, ..Default::default() };
    for cycle in 0..cycles {
        let pool = match open(&devs) {
            Ok(p) => p,
            Err(e) => {
                rep.violations.push(format!("cycle {cycle}: {e}"));
                return rep;
            }
        };
        // Arm the power cut: the n-th write or sync of one member.
        let victim = rng.gen_range(0..devs.len());
        devs[victim].crash_at(rng.gen_range(1..600u64));
        let mut last_done = model.ns.clone();
        let mut in_progress: Option<BTreeMap<String, Node>> = None;
        let nops = rng.gen_range(1..=ops_per_cycle);
        for _ in 0..nops {
            rep.ops += 1;
            let r = step(&pool, &mut model, &mut rng, &mut last_done, &mut in_progress);
            let crashed = devs.iter().any(|d| d.is_crashed());
            match r {
                Err(e) if !crashed => {
                    rep.violations.push(format!("cycle {cycle}: operation failed without a crash: {e}"));
                    return rep;
                }
                _ if crashed => break,
                _ => {}
            }
        }
        // Power cut for everyone.
        for d in &devs {
            d.crash_now();
        }
        drop(pool);
        // What the power cut left: synced writes, and each unsynced write
        // dropped, kept or torn (patched into the inner device, no copies).
        let crash_seed: u64 = rng.gen();
        for (i, d) in devs.iter().enumerate() {
            if let Err(e) = d.power_cycle(crash_seed ^ i as u64) {
                rep.violations.push(format!("cycle {cycle}: power cycle of member {i}: {e}"));
                return rep;
            }
        }
        rep.crash_points += 1;
        let pool = match open(&devs) {
            Ok(p) => p,
            Err(e) => {
                rep.violations.push(format!("cycle {cycle}: reopen after crash: {e}"));
                return rep;
            }
        };
        let mut candidates = vec![last_done.clone()];
        candidates.extend(in_progress.clone());
        let (problems, seen) = check(&pool, &model, &candidates);
        if !problems.is_empty() {
            rep.violations.extend(problems.into_iter().map(|p| format!("cycle {cycle}: {p}")));
            return rep;
        }
        // Reset the model to what was recovered, close cleanly, go on.
        let mut m = Model { next_id: 1, ..Default::default() };
        let mut by_ino: HashMap<u64, u64> = HashMap::new();
        for (p, (ino, node, data)) in &seen {
            let node = match node {
                Node::File(_) => Node::File(*by_ino.entry(*ino).or_insert_with(|| {
                    let id = m.next_id;
                    m.next_id += 1;
                    m.files.insert(id, MFile::new(data.clone(), false));
                    id
                })),
                other => other.clone(),
            };
            m.ns.insert(p.clone(), node);
        }
        model = m;
        if let Err(e) = pool.close() {
            rep.violations.push(format!("cycle {cycle}: clean close after recovery failed: {e}"));
            return rep;
        }
    }
    rep
}

fn name(rng: &mut StdRng) -> String {
    ["a", "b", "c", "d", "e", "f"][rng.gen_range(0..6)].to_string()
}

/// One random operation on engine and model. Errors the engine may rightly
/// give (exists, not found, ...) are fine; the model changes only when the
/// engine call succeeded.
fn step(
    pool: &Pool,
    model: &mut Model,
    rng: &mut StdRng,
    last_done: &mut BTreeMap<String, Node>,
    in_progress: &mut Option<BTreeMap<String, Node>>,
) -> Result<(), String> {
    use EngineError as E;
    let expected = |e: &E| {
        matches!(e, E::Exists | E::NotFound | E::NotEmpty | E::NotDir | E::IsDir | E::Invalid(_) | E::NotPermitted)
    };
    let dirs = model.dirs();
    let files = model.file_paths();
    let r: Result<(), E> = match rng.gen_range(0..100) {
        0..=11 => {
            let d = dirs[rng.gen_range(0..dirs.len())].clone();
            let n = name(rng);
            let parent = resolve(pool, &d).ok_or("model dir missing in engine")?;
            pool.create(parent, n.as_bytes(), FileKind::File, 0o644, 0, 0, 0).map(|_| {
                let id = model.next_id;
                model.next_id += 1;
                model.files.insert(id, MFile::new(Vec::new(), true));
                model.ns.insert(join(&d, &n), Node::File(id));
            })
        }
        12..=15 => {
            let d = dirs[rng.gen_range(0..dirs.len())].clone();
            let n = name(rng);
            let parent = resolve(pool, &d).ok_or("model dir missing")?;
            pool.mkdir(parent, n.as_bytes(), 0o755, 0, 0).map(|_| {
                model.ns.insert(join(&d, &n), Node::Dir);
            })
        }
        16..=45 if !files.is_empty() => {
            let (p, id) = files[rng.gen_range(0..files.len())].clone();
            let ino = resolve(pool, &p).ok_or("model file missing")?;
            let off = match rng.gen_range(0..4) {
                0 => 0,
                1 => model.files[&id].content.len() as u64,
                _ => rng.gen_range(0..3 * MIB),
            };
            let len = match rng.gen_range(0..5) {
                0 => rng.gen_range(1..200),
                1 => 4096,
                2 => 65536,
                3 => MIB as usize + 3,
                _ => rng.gen_range(1..(MIB as usize * 3 / 2)),
            };
            let data = random_data(rng, len);
            pool.write(ino, off, &data).map(|_| {
                model.modify(id, |c| {
                    let end = off as usize + len;
                    if c.len() < end {
                        c.resize(end, 0);
                    }
                    c[off as usize..end].copy_from_slice(&data);
                });
            })
        }
        46..=51 if !files.is_empty() => {
            let (p, id) = files[rng.gen_range(0..files.len())].clone();
            let ino = resolve(pool, &p).ok_or("model file missing")?;
            let size = if rng.gen_bool(0.3) { 0 } else { rng.gen_range(0..3 * MIB) };
            pool.setattr(ino, SetAttr { size: Some(size), ..Default::default() }).map(|_| {
                model.modify(id, |c| c.resize(size as usize, 0));
            })
        }
        52..=59 if !model.ns.is_empty() => {
            let all: Vec<String> = model.ns.keys().cloned().collect();
            let src = all[rng.gen_range(0..all.len())].clone();
            let d = dirs[rng.gen_range(0..dirs.len())].clone();
            let n = name(rng);
            let dst = join(&d, &n);
            let (sd, sn) = split(&src);
            let sp = resolve(pool, sd).ok_or("model dir missing")?;
            let dp = resolve(pool, &d).ok_or("model dir missing")?;
            let noreplace = rng.gen_bool(0.2);
            pool.rename(sp, sn.as_bytes(), dp, n.as_bytes(), RenameFlags { noreplace, exchange: false }).map(|_| {
                let same_file =
                    matches!((model.ns.get(&src), model.ns.get(&dst)), (Some(Node::File(a)), Some(Node::File(b))) if a == b);
                if src == dst || same_file {
                    return;
                }
                model.ns.remove(&dst);
                let prefix = format!("{src}/");
                let moved: Vec<(String, Node)> = model
                    .ns
                    .iter()
                    .filter(|(k, _)| **k == src || k.starts_with(&prefix))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                for (k, _) in &moved {
                    model.ns.remove(k);
                }
                for (k, v) in moved {
                    model.ns.insert(format!("{dst}{}", &k[src.len()..]), v);
                }
            })
        }
        60..=63 if !files.is_empty() => {
            let (p, id) = files[rng.gen_range(0..files.len())].clone();
            let d = dirs[rng.gen_range(0..dirs.len())].clone();
            let n = name(rng);
            let ino = resolve(pool, &p).ok_or("model file missing")?;
            let dp = resolve(pool, &d).ok_or("model dir missing")?;
            pool.link(ino, dp, n.as_bytes()).map(|_| {
                model.ns.insert(join(&d, &n), Node::File(id));
            })
        }
        64..=71 if !model.ns.is_empty() => {
            let all: Vec<(String, Node)> = model.ns.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            let (p, node) = all[rng.gen_range(0..all.len())].clone();
            let (d, n) = split(&p);
            let dp = resolve(pool, d).ok_or("model dir missing")?;
            let r = if node == Node::Dir { pool.rmdir(dp, n.as_bytes()) } else { pool.unlink(dp, n.as_bytes()) };
            r.map(|_| {
                model.ns.remove(&p);
            })
        }
        72..=74 => {
            let d = dirs[rng.gen_range(0..dirs.len())].clone();
            let n = name(rng);
            let target = format!("target-{}", rng.gen_range(0..1000));
            let dp = resolve(pool, &d).ok_or("model dir missing")?;
            pool.symlink(dp, n.as_bytes(), target.as_bytes(), 0, 0).map(|_| {
                model.ns.insert(join(&d, &n), Node::Symlink(target.into_bytes()));
            })
        }
        75..=87 if !files.is_empty() => {
            let (p, id) = files[rng.gen_range(0..files.len())].clone();
            let ino = resolve(pool, &p).ok_or("model file missing")?;
            *in_progress = Some(model.ns.clone());
            let r = pool.fsync(ino);
            if r.is_ok() {
                model.durable(id);
                *last_done = in_progress.take().expect("set");
            }
            r
        }
        88..=95 => {
            *in_progress = Some(model.ns.clone());
            let r = pool.sync_all();
            if r.is_ok() {
                let ids: Vec<u64> = model.files.keys().copied().collect();
                for id in ids {
                    model.durable(id);
                }
                *last_done = in_progress.take().expect("set");
            }
            r
        }
        96..=99 if !files.is_empty() => {
            // close(2): the file's data goes to the write-behind, not
            // waited for and not durable until an fsync or sync.
            let (p, _) = files[rng.gen_range(0..files.len())].clone();
            let ino = resolve(pool, &p).ok_or("model file missing")?;
            pool.close_flush(ino)
        }
        _ => Ok(()),
    };
    match r {
        Ok(()) => Ok(()),
        Err(e) if expected(&e) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}
