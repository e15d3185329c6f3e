//! Placement: which members receive the fragments of a new extent. Pure: the
//! caller passes a snapshot of the members and a random number generator.
//!
//! # Rules
//!
//! - Every fragment of an extent goes to a distinct member.
//! - Only [`MemberState::Online`] members with room (`free_bytes >=
//!   fragment_bytes`) are eligible; draining, failed and missing members
//!   never receive a fragment.
//! - A policy the eligible members can't satisfy is refused with
//!   [`PlacementError::CannotSatisfy`]; it is never weakened.
//! - Members are chosen at random, weighted by free space, so that disks of
//!   any size fill in proportion to their free space and reach full together.
//!
//! # Sampling
//!
//! Choosing n distinct members "weighted by free space" is done so that each
//! member's probability of being chosen is exactly proportional to its free
//! space: P(i) = n · free_i / Σ free (randomized systematic sampling with
//! probability proportional to size, Madow 1949). A member whose share would
//! exceed 1 (it holds more than 1/n of all free space) is chosen every time
//! and the rest share the remaining picks in proportion. The simpler "draw
//! one by weight, remove it, repeat" under-picks large members (their
//! probability is capped by the draws they miss), so small disks would fill
//! first.
//!
//! Algorithm: shuffle the eligible members, lay intervals of length P(i)
//! end to end on [0, n) (fixed point, 2^-32 units, exact integer sums), draw
//! u in [0, 1) and take the members whose intervals hold u, u+1, …, u+n-1.
//! Each interval is at most 1 long, so no member is taken twice. The result
//! is in that shuffled order, so which member gets which fragment index
//! (data or parity shard) is random too.

use dfs_format::{FormatError, Policy};
use rand::seq::SliceRandom;
use rand::Rng;

/// Health of a member, as placement sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemberState {
    /// Healthy: may receive new fragments.
    Online,
    /// Being removed: readable, receives nothing new.
    Draining,
    /// Failed (by command or IO errors): receives nothing.
    Failed,
    /// Known to the pool but absent: receives nothing.
    Missing,
}

/// One member as placement sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberView {
    /// Member index in the pool.
    pub index: u32,
    pub state: MemberState,
    /// Bytes of the data region still free.
    pub free_bytes: u64,
    /// Bytes of the data region in all.
    pub total_bytes: u64,
}

impl MemberView {
    /// Whether this member may receive a fragment of `fragment_bytes` bytes.
    pub fn can_take(&self, fragment_bytes: u64) -> bool {
        self.state == MemberState::Online && self.free_bytes >= fragment_bytes
    }
}

/// Why no placement was chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlacementError {
    /// Too few distinct online members with enough free space. `online`
    /// counts online members whatever their free space, so `online >=
    /// needed` means "out of space" rather than "too few healthy disks".
    #[error(
        "{policy} needs {needed} distinct online members with at least {fragment_bytes} \
         bytes free; {eligible} qualify ({online} online)"
    )]
    CannotSatisfy { policy: Policy, needed: u32, eligible: u32, online: u32, fragment_bytes: u64 },
    /// The policy's numbers are outside the supported ranges.
    #[error("invalid policy {policy}: {source}")]
    InvalidPolicy {
        policy: Policy,
        #[source]
        source: FormatError,
    },
    /// The member list names one member twice (a caller bug).
    #[error("member {index} appears more than once in the member list")]
    DuplicateMember { index: u32 },
}

type Result<T> = std::result::Result<T, PlacementError>;

/// Choose `policy.fragment_count()` distinct eligible members for the
/// fragments of one extent, each fragment taking `fragment_bytes` on its
/// member (payload plus header and block padding, as the caller accounts
/// it). Element `i` of the result is the member index for fragment `i`.
pub fn place(policy: Policy, members: &[MemberView], fragment_bytes: u64, rng: &mut impl Rng) -> Result<Vec<u32>> {
    place_more(policy, members, fragment_bytes, &[], policy.fragment_count(), rng)
}

/// Choose `count` more members for fragments of an extent that already has
/// fragments on the members in `existing` (rebuild of a lost fragment,
/// drain, policy change): the new members are distinct from each other and
/// from `existing`, under the same rules as [`place`].
pub fn place_more(
    policy: Policy,
    members: &[MemberView],
    fragment_bytes: u64,
    existing: &[u32],
    count: u32,
    rng: &mut impl Rng,
) -> Result<Vec<u32>> {
    policy.validate().map_err(|source| PlacementError::InvalidPolicy { policy, source })?;
    check_distinct(members)?;
    let online =
        members.iter().filter(|m| m.state == MemberState::Online && !existing.contains(&m.index)).count() as u32;
    let mut candidates: Vec<(u32, u64)> = members
        .iter()
        .filter(|m| m.can_take(fragment_bytes) && !existing.contains(&m.index))
        .map(|m| (m.index, m.free_bytes.max(1)))
        .collect();
    if (candidates.len() as u64) < u64::from(count) {
        return Err(PlacementError::CannotSatisfy {
            policy,
            needed: count,
            eligible: candidates.len() as u32,
            online,
            fragment_bytes,
        });
    }
    if count == 0 {
        return Ok(Vec::new());
    }
    Ok(sample(&mut candidates, count as usize, rng))
}

/// Whether enough distinct online members exist for `policy` at all (space
/// not considered; [`can_place`] also checks room for a fragment).
pub fn can_satisfy(policy: Policy, members: &[MemberView]) -> bool {
    policy.validate().is_ok()
        && check_distinct(members).is_ok()
        && members.iter().filter(|m| m.state == MemberState::Online).count() as u64
            >= u64::from(policy.fragment_count())
}

/// Whether [`place`] would succeed for fragments of `fragment_bytes`.
pub fn can_place(policy: Policy, members: &[MemberView], fragment_bytes: u64) -> bool {
    policy.validate().is_ok()
        && check_distinct(members).is_ok()
        && members.iter().filter(|m| m.can_take(fragment_bytes)).count() as u64 >= u64::from(policy.fragment_count())
}

fn check_distinct(members: &[MemberView]) -> Result<()> {
    let mut idx: Vec<u32> = members.iter().map(|m| m.index).collect();
    idx.sort_unstable();
    match idx.windows(2).find(|w| w[0] == w[1]) {
        Some(w) => Err(PlacementError::DuplicateMember { index: w[0] }),
        None => Ok(()),
    }
}

/// Fixed-point unit of inclusion probability.
const UNIT: u128 = 1 << 32;

/// Inclusion probabilities (in `UNIT`s) proportional to weight, capped at
/// one `UNIT`, summing to exactly `n * UNIT`. Weights are ≥ 1 and
/// `weights.len() >= n`.
fn inclusion(weights: &[u64], n: usize) -> Vec<u128> {
    let mut pi = vec![0u128; weights.len()];
    let mut capped = vec![false; weights.len()];
    let mut n_rem = n as u128;
    let mut w_rem: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    // Cap every member whose share would reach 1, until none does. The order
    // does not matter: capping one never stops a heavier one from needing it.
    loop {
        let mut changed = false;
        for (i, &w) in weights.iter().enumerate() {
            if !capped[i] && n_rem > 0 && n_rem * u128::from(w) >= w_rem {
                capped[i] = true;
                pi[i] = UNIT;
                n_rem -= 1;
                w_rem -= u128::from(w);
                changed = true;
            }
        }
        if !changed || n_rem == 0 {
            break;
        }
    }
    if n_rem == 0 || w_rem == 0 {
        return pi;
    }
    let mut assigned = 0u128;
    for (i, &w) in weights.iter().enumerate() {
        if !capped[i] {
            // < UNIT, since n_rem * w < w_rem.
            pi[i] = n_rem * UNIT * u128::from(w) / w_rem;
            assigned += pi[i];
        }
    }
    // Floors lose less than one unit each: hand the deficit out one unit at
    // a time to uncapped members (each stays ≤ UNIT).
    let mut deficit = (n_rem * UNIT).saturating_sub(assigned);
    for (i, p) in pi.iter_mut().enumerate() {
        if deficit == 0 {
            break;
        }
        if !capped[i] && *p < UNIT {
            *p += 1;
            deficit -= 1;
        }
    }
    pi
}

/// Pick `n` distinct members of `candidates` (index, weight ≥ 1), each with
/// probability proportional to its weight (see the module documentation).
fn sample(candidates: &mut [(u32, u64)], n: usize, rng: &mut impl Rng) -> Vec<u32> {
    candidates.shuffle(rng);
    let weights: Vec<u64> = candidates.iter().map(|c| c.1).collect();
    let pi = inclusion(&weights, n);
    let u: u128 = rng.gen_range(0..UNIT);
    let mut chosen = Vec::with_capacity(n);
    let mut taken = vec![false; candidates.len()];
    let mut start = 0u128;
    for (i, &p) in pi.iter().enumerate() {
        let end = start + p;
        // The next point u + j (j = picks so far) is ≥ start here: each
        // interval is at most one unit long.
        let target = u + chosen.len() as u128 * UNIT;
        if chosen.len() < n && target < end {
            chosen.push(candidates[i].0);
            taken[i] = true;
        }
        start = end;
    }
    // Exact arithmetic makes this unreachable; fill up rather than return
    // fewer members than asked.
    for (i, c) in candidates.iter().enumerate() {
        if chosen.len() >= n {
            break;
        }
        if !taken[i] {
            chosen.push(c.0);
        }
    }
    chosen
}
