//! Redundancy codec and placement: round trips under every tolerated loss
//! pattern, refusals one loss beyond, repair of lost fragments, typed errors
//! on malformed input, and placement that is distinct, healthy-only, refuses
//! rather than weakens, and fills disks of any size evenly.

use dfs_format::{Policy, MAX_EXTENT_LEN};
use dynamicfs::engine::placement::{self, MemberState, MemberView, PlacementError};
use dynamicfs::engine::redundancy::{self, CodecError, Fragment, SHARD_ALIGN};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const MIB: u32 = 1 << 20;
const LENGTHS: [u32; 7] = [1, 2, 4095, 4096, 65537, MIB - 1, MIB];

fn rep(copies: u8) -> Policy {
    Policy::Replication { copies }
}

fn ec(data: u8, parity: u8) -> Policy {
    Policy::Erasure { data, parity }
}

fn policies() -> Vec<Policy> {
    vec![rep(1), rep(2), rep(3), ec(2, 1), ec(4, 2), ec(3, 2), ec(6, 3), ec(10, 4)]
}

/// Deterministic bytes with no long zero runs (so padding mistakes show).
fn bytes(len: u32, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// All `r`-element subsets of `0..n`, in lexicographic order.
fn combinations(n: usize, r: usize) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    let mut cur = Vec::with_capacity(r);
    fn rec(start: usize, n: usize, r: usize, cur: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        if cur.len() == r {
            out.push(cur.clone());
            return;
        }
        for i in start..n {
            if n - i < r - cur.len() {
                break;
            }
            cur.push(i);
            rec(i + 1, n, r, cur, out);
            cur.pop();
        }
    }
    rec(0, n, r, &mut cur, &mut out);
    out
}

/// Loss patterns of at most `t` of `n` fragments: all of them, or when
/// `sample` is given and a size class has more patterns than that, the
/// all-data-first and all-parity-last patterns plus `sample` random ones.
fn loss_patterns(n: usize, t: usize, sample: Option<usize>, rng: &mut StdRng) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    for r in 0..=t {
        let all = combinations(n, r);
        match sample {
            Some(s) if all.len() > s => {
                out.push((0..r).collect());
                out.push((n - r..n).collect());
                for _ in 0..s {
                    out.push(all[rng.gen_range(0..all.len())].clone());
                }
            }
            _ => out.extend(all),
        }
    }
    out
}

/// Whether the Reed-Solomon code runs optimized (`cargo test --release`, or
/// `[profile.dev.package.reed-solomon-simd] opt-level = 3` in the workspace
/// manifest). Unoptimized, every decode costs ~30 ms plus ~0.4 s per MiB,
/// which makes the exhaustive loss-pattern runs take many minutes; they are
/// then sampled instead (and say so on stderr).
fn codec_is_fast() -> bool {
    static FAST: OnceLock<bool> = OnceLock::new();
    *FAST.get_or_init(|| {
        let p = ec(4, 2);
        let data = bytes(MIB, 0);
        let frags = redundancy::encode(p, &data).unwrap();
        let present = with_lost(&frags, &[0, 1]);
        let _ = redundancy::decode(p, MIB, &present).unwrap();
        let t = Instant::now();
        let _ = redundancy::decode(p, MIB, &present).unwrap();
        t.elapsed() < Duration::from_millis(60)
    })
}

fn with_lost<'a>(frags: &'a [Fragment], lost: &[usize]) -> Vec<Option<&'a [u8]>> {
    frags.iter().enumerate().map(|(i, f)| (!lost.contains(&i)).then_some(f.bytes())).collect()
}

// ---------------------------------------------------------------------------
// Codec

#[test]
fn shard_lengths() {
    assert_eq!(redundancy::shard_len(ec(4, 2), MIB), 262_144);
    assert_eq!(redundancy::shard_len(ec(10, 4), MIB), 104_896);
    assert_eq!(redundancy::shard_len(ec(4, 2), 1), 64);
    assert_eq!(redundancy::shard_len(rep(3), 4095), 4095);
    for p in policies() {
        for len in LENGTHS.into_iter().chain([3, 63, 64, 65, 1000, 333_333]) {
            let s = redundancy::fragment_payload_len(p, len).unwrap();
            assert_eq!(s, redundancy::shard_len(p, len));
            match p {
                Policy::Replication { .. } => assert_eq!(s, len),
                Policy::Erasure { data, .. } => {
                    let k = u32::from(data);
                    assert_eq!(s % SHARD_ALIGN, 0, "{p} {len}");
                    assert_eq!(s % 2, 0);
                    assert!(s * k >= len);
                    assert!(s - len.div_ceil(k) < SHARD_ALIGN);
                }
            }
            assert_eq!(redundancy::stored_len(p, len).unwrap(), u64::from(s) * u64::from(p.fragment_count()));
        }
    }
    // Never panics, even on nonsense.
    let _ = redundancy::shard_len(ec(0, 0), u32::MAX);
    let _ = redundancy::shard_len(ec(1, 1), u32::MAX);
    assert!(matches!(redundancy::fragment_payload_len(ec(4, 2), 0), Err(CodecError::ExtentLength { len: 0, .. })));
    assert!(matches!(
        redundancy::fragment_payload_len(ec(4, 2), MAX_EXTENT_LEN + 1),
        Err(CodecError::ExtentLength { .. })
    ));
    assert!(matches!(redundancy::fragment_payload_len(ec(0, 2), 10), Err(CodecError::InvalidPolicy { .. })));
}

#[test]
fn encode_layout() {
    for p in policies() {
        for (n, len) in LENGTHS.into_iter().enumerate() {
            let data = bytes(len, n as u64);
            let frags = redundancy::encode(p, &data).unwrap();
            let s = redundancy::shard_len(p, len) as usize;
            assert_eq!(frags.len(), p.fragment_count() as usize);
            for (i, f) in frags.iter().enumerate() {
                assert_eq!(f.index as usize, i);
                assert_eq!(f.len(), s);
            }
            match p {
                Policy::Replication { .. } => {
                    for f in &frags {
                        assert_eq!(f.bytes(), &data[..]);
                        assert!(f.shares_buffer_with(&frags[0]), "replicas are not copies");
                    }
                }
                Policy::Erasure { data: k, .. } => {
                    // Data shards are the extent, cut and zero-padded.
                    let mut joined: Vec<u8> =
                        frags[..k as usize].iter().flat_map(|f| f.bytes().iter().copied()).collect();
                    assert!(joined[data.len()..].iter().all(|&b| b == 0));
                    joined.truncate(data.len());
                    assert_eq!(joined, data);
                    // Parity matches the reference one-shot encoder.
                    let parity = reed_solomon_simd::encode(
                        k as usize,
                        p.tolerated_losses() as usize,
                        frags[..k as usize].iter().map(|f| f.bytes()),
                    )
                    .unwrap();
                    for (j, ps) in parity.iter().enumerate() {
                        assert_eq!(&frags[k as usize + j].bytes(), ps);
                    }
                }
            }
            // The owned and into-buffer variants give the same fragments.
            assert_eq!(redundancy::encode_owned(p, data.clone()).unwrap(), frags);
            let mut bufs = vec![vec![0xAAu8; s]; frags.len()];
            let mut outs: Vec<&mut [u8]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
            redundancy::encode_into(p, &data, &mut outs).unwrap();
            for (b, f) in bufs.iter().zip(&frags) {
                assert_eq!(&b[..], f.bytes());
            }
        }
    }
    let owned = redundancy::encode_owned(rep(3), vec![7u8; 100]).unwrap();
    assert_eq!(owned[2].clone().into_vec(), vec![7u8; 100]);
}

/// The heart of it: every length × every tolerated loss pattern decodes
/// byte-exact, and rebuilding the lost fragments gives back exactly what was
/// encoded; one loss more is refused. Exhaustive, except 10+4 above 4 KiB
/// (1471 patterns of ≤ 4 losses: 200 random ones per loss count) — when the
/// codec is optimized; unoptimized, every policy is sampled (see
/// `codec_is_fast`).
fn check_loss_patterns(p: Policy) {
    let mut rng = StdRng::seed_from_u64(u64::from(p.fragment_count()) * 1000 + 42);
    let n = p.fragment_count() as usize;
    let t = p.tolerated_losses() as usize;
    let fast = codec_is_fast();
    let mut checked = 0usize;
    let mut exhaustive = true;
    for (seed, len) in LENGTHS.into_iter().enumerate() {
        let data = bytes(len, seed as u64 + 100);
        let frags = redundancy::encode(p, &data).unwrap();
        let sample = match (fast || matches!(p, Policy::Replication { .. }), len) {
            (true, 0..=4096) => None,
            (true, _) => Some(200),
            (false, 0..=65537) => Some(2),
            (false, _) => Some(1),
        };
        let patterns = loss_patterns(n, t, sample, &mut rng);
        exhaustive &= patterns.len() == (0..=t).map(|r| combinations(n, r).len()).sum::<usize>();
        for lost in patterns {
            let present = with_lost(&frags, &lost);
            let got =
                redundancy::decode(p, len, &present).unwrap_or_else(|e| panic!("{p} len {len} lost {lost:?}: {e}"));
            assert!(got == data, "{p} len {len} lost {lost:?}: wrong bytes");
            if lost.len() == t {
                let mut into = vec![0u8; len as usize];
                redundancy::decode_into(p, len, &present, &mut into).unwrap();
                assert!(into == data);
            }
            let rebuilt = redundancy::reconstruct(p, len, &present, &lost).unwrap();
            assert_eq!(rebuilt.len(), lost.len());
            for (r, &i) in rebuilt.iter().zip(&lost) {
                assert_eq!(r.index as usize, i);
                assert!(r == &frags[i], "{p} len {len} lost {lost:?}: fragment {i}");
            }
            checked += 1;
        }
        // One loss too many (refused before any work, so all of them).
        for lost in combinations(n, t + 1) {
            let present = with_lost(&frags, &lost);
            let want = CodecError::NotEnoughFragments { have: (n - t - 1) as u32, need: p.fragments_needed() };
            assert_eq!(redundancy::decode(p, len, &present), Err(want.clone()));
            assert_eq!(redundancy::reconstruct(p, len, &present, &lost).unwrap_err(), want);
            let usable: Vec<bool> = present.iter().map(Option::is_some).collect();
            assert_eq!(redundancy::read_set(p, &usable).unwrap_err(), want);
        }
    }
    eprintln!(
        "{p}: {checked} loss patterns decoded and repaired ({})",
        if exhaustive { "exhaustive" } else { "sampled at large lengths" }
    );
    if fast && p.fragment_count() <= 9 {
        assert!(exhaustive, "{p}: expected every pattern");
    }
}

macro_rules! loss_pattern_tests {
    ($($name:ident: $policy:expr,)*) => {$(
        #[test]
        fn $name() {
            check_loss_patterns($policy);
        }
    )*};
}

loss_pattern_tests! {
    loss_patterns_replication_1: rep(1),
    loss_patterns_replication_2: rep(2),
    loss_patterns_replication_3: rep(3),
    loss_patterns_erasure_2_1: ec(2, 1),
    loss_patterns_erasure_4_2: ec(4, 2),
    loss_patterns_erasure_3_2: ec(3, 2),
    loss_patterns_erasure_6_3: ec(6, 3),
    loss_patterns_erasure_10_4: ec(10, 4),
}

#[test]
fn all_two_loss_patterns_of_4_plus_2() {
    let p = ec(4, 2);
    let data = bytes(MIB, 7);
    let frags = redundancy::encode(p, &data).unwrap();
    let pairs = combinations(6, 2);
    assert_eq!(pairs.len(), 15);
    for lost in pairs {
        let present = with_lost(&frags, &lost);
        assert!(redundancy::decode(p, MIB, &present).unwrap() == data);
    }
}

/// With all data shards present nothing else is read: parity bytes are
/// ignored. With some missing, exactly K fragments are used, preferring data
/// shards, then the first parity shards.
#[test]
fn reads_no_more_than_needed() {
    let p = ec(4, 2);
    let len = 100_000;
    let data = bytes(len, 3);
    let frags = redundancy::encode(p, &data).unwrap();
    let s = frags[0].len();
    let garbage = vec![0x5Au8; s];

    let mut present = with_lost(&frags, &[]);
    present[4] = Some(&garbage);
    present[5] = Some(&garbage);
    assert!(redundancy::decode(p, len, &present).unwrap() == data);

    // Data shard 1 lost: shards 0, 2, 3 and parity 4 suffice; parity 5 unused.
    let mut present = with_lost(&frags, &[1]);
    present[5] = Some(&garbage);
    assert!(redundancy::decode(p, len, &present).unwrap() == data);
    let rebuilt = redundancy::reconstruct(p, len, &present, &[1]).unwrap();
    assert!(rebuilt[0] == frags[1]);

    assert_eq!(redundancy::read_set(p, &[true; 6]).unwrap(), vec![0, 1, 2, 3]);
    assert_eq!(redundancy::read_set(p, &[true, false, true, false, true, true]).unwrap(), vec![0, 2, 4, 5]);
    assert_eq!(redundancy::read_set(rep(3), &[false, true, true]).unwrap(), vec![1]);
}

#[test]
fn reconstruct_details() {
    let p = ec(6, 3);
    let len = 65537;
    let data = bytes(len, 9);
    let frags = redundancy::encode(p, &data).unwrap();
    // Order follows `wanted`, duplicates allowed, present ones returned as given.
    let present = with_lost(&frags, &[0, 7]);
    let got = redundancy::reconstruct(p, len, &present, &[7, 3, 0, 7]).unwrap();
    let idx: Vec<u32> = got.iter().map(|f| f.index).collect();
    assert_eq!(idx, vec![7, 3, 0, 7]);
    for f in &got {
        assert!(f == &frags[f.index as usize]);
    }
    // Parity only, all data present: re-encode without decoding.
    let present = with_lost(&frags, &[6, 8]);
    let got = redundancy::reconstruct(p, len, &present, &[8, 6]).unwrap();
    assert!(got[0] == frags[8] && got[1] == frags[6]);
    // Nothing wanted.
    assert!(redundancy::reconstruct(p, len, &present, &[]).unwrap().is_empty());
    // Out of range.
    assert!(matches!(
        redundancy::reconstruct(p, len, &present, &[9]),
        Err(CodecError::FragmentIndex { index: 9, count: 9, .. })
    ));
    // Replication.
    let r = redundancy::encode(rep(3), &data).unwrap();
    let present = with_lost(&r, &[0, 2]);
    let got = redundancy::reconstruct(rep(3), len, &present, &[0, 2]).unwrap();
    assert!(got[0] == r[0] && got[1] == r[2]);
    assert!(got[0].shares_buffer_with(&got[1]));
}

#[test]
fn malformed_input_is_a_typed_error() {
    let p = ec(4, 2);
    let data = bytes(5000, 1);
    let frags = redundancy::encode(p, &data).unwrap();
    let present = with_lost(&frags, &[]);

    // Wrong number of slots.
    assert!(matches!(
        redundancy::decode(p, 5000, &present[..5]),
        Err(CodecError::FragmentCount { expected: 6, got: 5, .. })
    ));
    // Wrong shard length (a fragment cut short, or a block-padded read).
    let short = &frags[2].bytes()[..10];
    let mut bad = present.clone();
    bad[2] = Some(short);
    assert_eq!(
        redundancy::decode(p, 5000, &bad),
        Err(CodecError::FragmentLength { index: 2, got: 10, expected: frags[2].len() as u32 })
    );
    // An extent length that does not match the fragments.
    assert!(matches!(redundancy::decode(p, 50_000, &present), Err(CodecError::FragmentLength { .. })));
    assert!(matches!(
        redundancy::decode(rep(2), 10, &[Some(&data[..9]), None]),
        Err(CodecError::FragmentLength { .. })
    ));
    // Extent lengths out of range.
    assert!(matches!(redundancy::decode(p, 0, &present), Err(CodecError::ExtentLength { .. })));
    assert!(matches!(redundancy::decode(p, u32::MAX, &present), Err(CodecError::ExtentLength { .. })));
    assert!(matches!(redundancy::encode(p, &[]), Err(CodecError::ExtentLength { len: 0, .. })));
    assert!(matches!(redundancy::encode(rep(1), &vec![0u8; MIB as usize + 1]), Err(CodecError::ExtentLength { .. })));
    // Invalid policies (the fields are public, so anything can arrive).
    for bad in [rep(0), rep(17), ec(0, 2), ec(4, 0), ec(65, 1), ec(4, 33)] {
        assert!(matches!(redundancy::encode(bad, &data), Err(CodecError::InvalidPolicy { .. })));
        assert!(matches!(redundancy::decode(bad, 5000, &present), Err(CodecError::InvalidPolicy { .. })));
    }
    // Output buffers of the wrong size.
    let mut small = vec![0u8; 10];
    assert!(matches!(redundancy::decode_into(p, 5000, &present, &mut small), Err(CodecError::OutputLength { .. })));
    let mut bufs = vec![vec![0u8; frags[0].len()]; 6];
    bufs[3].push(0);
    let mut outs: Vec<&mut [u8]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
    assert!(matches!(redundancy::encode_into(p, &data, &mut outs), Err(CodecError::OutputLength { index: 3, .. })));
    assert!(matches!(redundancy::encode_into(p, &data, &mut outs[..5]), Err(CodecError::FragmentCount { .. })));
    // Nothing at all.
    assert_eq!(
        redundancy::decode(rep(2), 5000, &[None, None]),
        Err(CodecError::NotEnoughFragments { have: 0, need: 1 })
    );
    // Errors read as sentences.
    let e = redundancy::decode(p, 5000, &[None; 6]).unwrap_err();
    assert_eq!(e.to_string(), "not enough fragments: have 0, need 4");
}

/// The per-thread encoder/decoder is reset between configurations: results
/// never depend on what ran before, on this thread or another.
#[test]
fn cached_codec_state_does_not_leak() {
    let a = bytes(MIB, 1);
    let b = bytes(12345, 2);
    let first = redundancy::encode(ec(4, 2), &a).unwrap();
    let _ = redundancy::encode(ec(10, 4), &b).unwrap();
    let _ = redundancy::encode(ec(2, 1), &b[..3]).unwrap();
    assert_eq!(redundancy::encode(ec(4, 2), &a).unwrap(), first);

    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            std::thread::spawn(move || {
                for round in 0..6u64 {
                    let p = policies()[((t + round) % 8) as usize];
                    let len = [4096, 65537, 300_001][(round % 3) as usize];
                    let data = bytes(len, t * 100 + round);
                    let frags = redundancy::encode(p, &data).unwrap();
                    let t_max = p.tolerated_losses() as usize;
                    let lost: Vec<usize> = (0..t_max).collect();
                    let got = redundancy::decode(p, len, &with_lost(&frags, &lost)).unwrap();
                    assert!(got == data, "{p} {len}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

fn any_policy() -> impl Strategy<Value = Policy> {
    prop_oneof![(1u8..=5).prop_map(rep), (1u8..=12, 1u8..=5).prop_map(|(k, m)| ec(k, m)),]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn random_round_trip(
        policy in any_policy(),
        len in prop_oneof![1u32..=5000, 5000u32..=200_000, Just(MIB)],
        seed in any::<u64>(),
        loss_seed in any::<u64>(),
    ) {
        let data = bytes(len, seed);
        let frags = redundancy::encode(policy, &data).unwrap();
        let n = policy.fragment_count() as usize;
        let mut rng = StdRng::seed_from_u64(loss_seed);
        let losses = rng.gen_range(0..=policy.tolerated_losses() as usize);
        let mut lost: Vec<usize> = (0..n).collect();
        for i in 0..n {
            lost.swap(i, rng.gen_range(i..n));
        }
        lost.truncate(losses);
        let present = with_lost(&frags, &lost);
        let got = redundancy::decode(policy, len, &present).unwrap();
        prop_assert!(got == data);
        let rebuilt = redundancy::reconstruct(policy, len, &present, &lost).unwrap();
        for (r, &i) in rebuilt.iter().zip(&lost) {
            prop_assert!(r == &frags[i]);
        }
    }

    /// Arbitrary slot contents never make the codec panic.
    #[test]
    fn garbage_never_panics(
        policy in any_policy(),
        extent_len in prop_oneof![0u32..=300, Just(MIB), Just(MIB + 1), Just(u32::MAX)],
        slots in proptest::collection::vec(
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)), 0..20),
        wanted in proptest::collection::vec(0usize..24, 0..4),
    ) {
        let refs: Vec<Option<&[u8]>> = slots.iter().map(|s| s.as_deref()).collect();
        let _ = redundancy::decode(policy, extent_len, &refs);
        let _ = redundancy::reconstruct(policy, extent_len, &refs, &wanted);
        let usable: Vec<bool> = refs.iter().map(Option::is_some).collect();
        let _ = redundancy::read_set(policy, &usable);
    }
}

// ---------------------------------------------------------------------------
// Policy strings (user input: mkfs --policy, mount -o policy=, the xattr)

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// `replication:N` and `erasure:K+M` parse exactly when every count is
    /// within its limits (no zero, nothing beyond the maxima), print back to
    /// the same text, and nonsense is a typed error, never a weaker policy.
    #[test]
    fn policy_strings_parse_strictly(a in 0u32..300, b in 0u32..300, erasure in any::<bool>()) {
        use dfs_format::policy::{MAX_COPIES, MAX_DATA_SHARDS, MAX_PARITY_SHARDS};
        let text = if erasure { format!("erasure:{a}+{b}") } else { format!("replication:{a}") };
        let valid = if erasure {
            (1..=MAX_DATA_SHARDS as u32).contains(&a) && (1..=MAX_PARITY_SHARDS as u32).contains(&b)
        } else {
            (1..=MAX_COPIES as u32).contains(&a)
        };
        match text.parse::<Policy>() {
            Ok(p) => {
                prop_assert!(valid, "{text} accepted");
                prop_assert_eq!(p.to_string(), text.clone());
                let want = if erasure { ec(a as u8, b as u8) } else { rep(a as u8) };
                prop_assert_eq!(p, want);
                prop_assert!(p.validate().is_ok());
            }
            Err(e) => {
                prop_assert!(!valid, "{text} refused: {e}");
                prop_assert!(!e.to_string().is_empty());
            }
        }
    }

    /// Any text at all: an error or a valid policy, never a panic.
    #[test]
    fn policy_garbage_is_an_error(text in "\\PC{0,24}", prefix in prop_oneof![
        Just(""), Just("replication:"), Just("erasure:"), Just("erasure:4+"), Just("replication:-")
    ]) {
        let s = format!("{prefix}{text}");
        if let Ok(p) = s.parse::<Policy>() {
            prop_assert!(p.validate().is_ok(), "{s} parsed to an invalid {p}");
        }
    }
}

#[test]
fn policy_nonsense_is_refused() {
    for s in [
        "erasure:0+2",
        "erasure:4+0",
        "replication:0",
        "replication:",
        "erasure:4",
        "erasure:4+2+1",
        "replication:3x",
        " replication:3",
        "raid6",
        "",
        "erasure:65+2",
        "replication:17",
        "erasure:-1+2",
    ] {
        assert!(s.parse::<Policy>().is_err(), "{s:?} must be refused");
    }
}

// ---------------------------------------------------------------------------
// Placement

const GIB: u64 = 1 << 30;

fn member(index: u32, state: MemberState, free: u64, total: u64) -> MemberView {
    MemberView { index, state, free_bytes: free, total_bytes: total }
}

fn online(sizes: &[u64]) -> Vec<MemberView> {
    sizes.iter().enumerate().map(|(i, &s)| member(i as u32 * 3 + 1, MemberState::Online, s, s)).collect()
}

#[test]
fn placement_is_distinct_and_healthy_only() {
    let mut rng = StdRng::seed_from_u64(1);
    let states = [
        MemberState::Online,
        MemberState::Online,
        MemberState::Online,
        MemberState::Draining,
        MemberState::Failed,
        MemberState::Missing,
    ];
    for round in 0..2000 {
        let n = rng.gen_range(1..20u32);
        let frag = rng.gen_range(1..4u64) << 20;
        let members: Vec<MemberView> = (0..n)
            .map(|i| {
                let total = rng.gen_range(1..64u64) << 20;
                let free = rng.gen_range(0..=total);
                member(i + 100, states[rng.gen_range(0..states.len())], free, total)
            })
            .collect();
        let p = policies()[round % 8];
        let eligible = members.iter().filter(|m| m.can_take(frag)).count() as u32;
        match placement::place(p, &members, frag, &mut rng) {
            Ok(chosen) => {
                assert!(eligible >= p.fragment_count());
                assert_eq!(chosen.len(), p.fragment_count() as usize);
                let mut sorted = chosen.clone();
                sorted.sort_unstable();
                sorted.dedup();
                assert_eq!(sorted.len(), chosen.len(), "duplicate in {chosen:?}");
                for c in chosen {
                    let m = members.iter().find(|m| m.index == c).unwrap();
                    assert_eq!(m.state, MemberState::Online);
                    assert!(m.free_bytes >= frag);
                }
                assert!(placement::can_place(p, &members, frag));
            }
            Err(PlacementError::CannotSatisfy { policy, needed, eligible: e, .. }) => {
                assert_eq!(policy, p);
                assert_eq!(needed, p.fragment_count());
                assert_eq!(e, eligible);
                assert!(eligible < needed);
                assert!(!placement::can_place(p, &members, frag));
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
}

#[test]
fn placement_refuses_rather_than_weakens() {
    let mut rng = StdRng::seed_from_u64(2);
    let mut m = online(&[GIB; 6]);
    let p = ec(4, 2);
    assert_eq!(placement::place(p, &m, 1 << 20, &mut rng).unwrap().len(), 6);
    assert!(placement::can_satisfy(p, &m));

    m[5].state = MemberState::Draining;
    let err = placement::place(p, &m, 1 << 20, &mut rng).unwrap_err();
    assert_eq!(
        err,
        PlacementError::CannotSatisfy { policy: p, needed: 6, eligible: 5, online: 5, fragment_bytes: 1 << 20 }
    );
    assert!(err.to_string().contains("erasure:4+2 needs 6 distinct"));
    assert!(!placement::can_satisfy(p, &m));
    assert!(placement::can_satisfy(ec(3, 2), &m));

    // Online but full.
    m[5].state = MemberState::Online;
    m[0].free_bytes = (1 << 20) - 1;
    assert!(placement::can_satisfy(p, &m));
    assert!(!placement::can_place(p, &m, 1 << 20));
    assert!(matches!(
        placement::place(p, &m, 1 << 20, &mut rng),
        Err(PlacementError::CannotSatisfy { eligible: 5, online: 6, .. })
    ));
    // Exactly enough room is enough.
    m[0].free_bytes = 1 << 20;
    assert!(placement::place(p, &m, 1 << 20, &mut rng).is_ok());

    for s in [MemberState::Failed, MemberState::Missing] {
        m[2].state = s;
        assert!(placement::place(p, &m, 1 << 20, &mut rng).is_err());
        assert!(placement::place(ec(3, 2), &m, 1 << 20, &mut rng).unwrap().iter().all(|&i| i != m[2].index));
    }

    // No members, invalid policies, duplicate members.
    assert!(placement::place(rep(1), &[], 1, &mut rng).is_err());
    assert!(matches!(placement::place(ec(0, 1), &m, 1, &mut rng), Err(PlacementError::InvalidPolicy { .. })));
    let mut dup = online(&[GIB; 4]);
    dup[3].index = dup[1].index;
    assert_eq!(
        placement::place(rep(2), &dup, 1, &mut rng),
        Err(PlacementError::DuplicateMember { index: dup[1].index })
    );
}

#[test]
fn place_more_avoids_existing() {
    let mut rng = StdRng::seed_from_u64(3);
    let m = online(&[GIB, 2 * GIB, 3 * GIB, GIB, GIB, 5 * GIB, GIB]);
    let existing = [m[5].index, m[2].index, m[0].index];
    for _ in 0..500 {
        let more = placement::place_more(ec(4, 2), &m, 1 << 20, &existing, 2, &mut rng).unwrap();
        assert_eq!(more.len(), 2);
        assert_ne!(more[0], more[1]);
        assert!(more.iter().all(|i| !existing.contains(i)));
    }
    assert!(matches!(
        placement::place_more(ec(4, 2), &m, 1 << 20, &existing, 5, &mut rng),
        Err(PlacementError::CannotSatisfy { needed: 5, eligible: 4, .. })
    ));
}

/// Each member is chosen with probability n · free / Σ free, capped at 1.
#[test]
fn placement_probability_is_proportional_to_free_space() {
    let mut rng = StdRng::seed_from_u64(4);
    let trials = 40_000;
    let check = |free: &[u64], p: Policy, want: &[f64], rng: &mut StdRng| {
        let m = online(free);
        let mut hits = vec![0u32; m.len()];
        for _ in 0..trials {
            for idx in placement::place(p, &m, 1, rng).unwrap() {
                hits[m.iter().position(|x| x.index == idx).unwrap()] += 1;
            }
        }
        for (i, &h) in hits.iter().enumerate() {
            let got = f64::from(h) / f64::from(trials);
            assert!(
                (got - want[i]).abs() < 0.012,
                "{p} free {free:?}: member {i} chosen {got:.3}, want {:.3}",
                want[i]
            );
        }
    };
    check(&[GIB, 2 * GIB, 3 * GIB, 4 * GIB], rep(2), &[0.2, 0.4, 0.6, 0.8], &mut rng);
    check(&[GIB, GIB, GIB, 10 * GIB], rep(2), &[1. / 3., 1. / 3., 1. / 3., 1.], &mut rng);
    check(&[1, 1, 2, 4], rep(1), &[0.125, 0.125, 0.25, 0.5], &mut rng);
    check(&[GIB, GIB, 2 * GIB, 4 * GIB, 8 * GIB], ec(2, 1), &[0.25, 0.25, 0.5, 1.0, 1.0], &mut rng);
}

/// Fill members of very different sizes by repeated placement, taking the
/// chosen fragments' bytes off their free space, until placement refuses:
/// at every stage they are filled to the same fraction within a few percent,
/// and at the end every one is (nearly) full — no capacity is stranded.
/// Fragments are 64 KiB so that the 256 MiB member holds 4096 of them and
/// the sampling noise stays well under the tolerance.
#[test]
fn disks_of_any_size_fill_evenly() {
    const M: u64 = 1 << 20;
    const FRAG: u64 = 64 << 10;
    let cases: [(Policy, Vec<u64>); 3] = [
        (rep(3), vec![256 * M, 512 * M, GIB, 2 * GIB, 4 * GIB, 4 * GIB, 4 * GIB]),
        (ec(4, 2), vec![256 * M, 512 * M, GIB, 2 * GIB, 4 * GIB, 4 * GIB, 4 * GIB, 4 * GIB, 4 * GIB, 4 * GIB]),
        (rep(2), vec![256 * M, GIB, 3 * GIB, 4 * GIB, 100 * M]),
    ];
    let mut rng = StdRng::seed_from_u64(5);
    for (p, sizes) in cases {
        let mut m = online(&sizes);
        let total: u64 = sizes.iter().sum();
        let spread = |m: &[MemberView]| {
            let fr: Vec<f64> = m.iter().map(|x| (x.total_bytes - x.free_bytes) as f64 / x.total_bytes as f64).collect();
            let max = fr.iter().cloned().fold(f64::MIN, f64::max);
            let min = fr.iter().cloned().fold(f64::MAX, f64::min);
            (min, max)
        };
        let mut checkpoints = vec![0.1, 0.25, 0.5, 0.75, 0.9];
        let mut used = 0u64;
        loop {
            match placement::place(p, &m, FRAG, &mut rng) {
                Ok(chosen) => {
                    for idx in chosen {
                        let x = m.iter_mut().find(|x| x.index == idx).unwrap();
                        x.free_bytes -= FRAG;
                        used += FRAG;
                    }
                }
                Err(PlacementError::CannotSatisfy { .. }) => break,
                Err(e) => panic!("{e}"),
            }
            if checkpoints.first().is_some_and(|&c| used as f64 >= c * total as f64) {
                let c = checkpoints.remove(0);
                let (min, max) = spread(&m);
                assert!(max - min < 0.03, "{p} at {c}: used fractions from {min:.3} to {max:.3}");
            }
        }
        assert!(checkpoints.is_empty(), "{p}: stopped early");
        let (min, max) = spread(&m);
        assert!(max - min < 0.03 && min > 0.97, "{p} full: used fractions from {min:.3} to {max:.3}");
    }
}
