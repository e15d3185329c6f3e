//! Redundancy codec: turns one logical extent into the fragments of its
//! [`Policy`] and back. Pure: no IO, no clocks, no randomness.
//!
//! # Fragments
//!
//! - `replication:N` — N fragments, each the whole extent (`extent_len`
//!   bytes). [`encode`] hands out N views of one shared buffer, not N copies.
//! - `erasure:K+M` — K data shards (indexes `0..K`) followed by M parity
//!   shards (indexes `K..K+M`), all [`shard_len`] bytes. Data shard `i` holds
//!   extent bytes `i*shard_len ..`; the tail of the last non-empty data shard
//!   and any data shard wholly past the end of the extent are zero. Parity is
//!   Reed-Solomon over GF(2^16) from `reed-solomon-simd` 3 (recovery shard
//!   `j` is fragment `K+j`).
//!
//! # Shard length (an on-disk format decision)
//!
//! `shard_len = round_up(ceil(extent_len / K), 64)`: `reed-solomon-simd`
//! needs an even, non-zero length, and it works in 64-byte chunks (a length
//! that is not a multiple of 64 costs an extra pass over the last chunk).
//! The padding is at most 63 bytes per shard; fragments are padded to whole
//! blocks on disk anyway. The length is derived from `extent_len` (stored in
//! the fragment header and the extent table) and never stored alone, so
//! changing [`SHARD_ALIGN`] would change the format: don't.
//!
//! Examples: 1 MiB under 4+2 → 262 144-byte shards (no padding); 1 MiB under
//! 10+4 → 104 896 (1 MiB / 10 = 104 857.6); 1 byte under 4+2 → 64.
//!
//! # Reading
//!
//! [`decode`] returns exactly the extent's bytes from whichever fragments the
//! caller has. With every data shard present it only concatenates (no
//! Reed-Solomon work); otherwise it decodes from exactly K fragments: every
//! present data shard plus the first present parity shards. [`read_set`] says
//! which fragments to fetch so that no more than needed is read, and
//! [`reconstruct`] rebuilds chosen missing fragments (lazy repair, drain,
//! rebuild).
//!
//! The codec trusts fragment contents (the caller has verified each one's
//! BLAKE3) but not their shape: a wrong count, a wrong length or an
//! out-of-range index is a typed [`CodecError`], never a panic.
//!
//! # Speed
//!
//! Each thread keeps one Reed-Solomon encoder and one decoder and resets them
//! for the next (K, M, shard_len); a reset with the same configuration costs
//! nothing and keeps the working space (about (K rounded up to a multiple of
//! M's next power of two, plus M) × shard_len bytes, ≈ 1.5 MiB for 10+4 at
//! 1 MiB). `examples/bench_codec.rs` measures the throughput.

use dfs_format::{FormatError, Policy, MAX_EXTENT_LEN};
use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};
use std::cell::Cell;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// Erasure shard lengths are a multiple of this many bytes (see the module
/// documentation: part of the on-disk format).
pub const SHARD_ALIGN: u32 = 64;

/// Why the codec refused its input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The policy's numbers are outside the supported ranges.
    #[error("invalid policy {policy}: {source}")]
    InvalidPolicy {
        policy: Policy,
        #[source]
        source: FormatError,
    },
    /// An extent must hold 1..=`max` bytes.
    #[error("extent length {len} is outside 1..={max}")]
    ExtentLength { len: u64, max: u32 },
    /// The fragment slice must have one slot per fragment of the policy.
    #[error("{policy} has {expected} fragments but {got} were given")]
    FragmentCount { policy: Policy, expected: u32, got: usize },
    /// A present fragment has the wrong length for the policy and extent length.
    #[error("fragment {index} is {got} bytes, expected {expected}")]
    FragmentLength { index: u32, got: usize, expected: u32 },
    /// Fewer fragments are present than the policy needs to read the extent.
    #[error("not enough fragments: have {have}, need {need}")]
    NotEnoughFragments { have: u32, need: u32 },
    /// A fragment index beyond the policy's fragment count.
    #[error("fragment index {index} is out of range for {policy} ({count} fragments)")]
    FragmentIndex { policy: Policy, index: usize, count: u32 },
    /// An output buffer given to an `*_into` function has the wrong length.
    #[error("output buffer {index} is {got} bytes, expected {expected}")]
    OutputLength { index: usize, got: usize, expected: usize },
    /// The Reed-Solomon library refused (a bug here, not bad input).
    #[error("reed-solomon: {0}")]
    ReedSolomon(#[from] reed_solomon_simd::Error),
}

type Result<T> = std::result::Result<T, CodecError>;

/// One fragment produced by [`encode`] or [`reconstruct`]: its index in the
/// extent (replica number, or shard number with parity after data) and its
/// payload bytes. Cloning is cheap; fragments of one call may share one
/// buffer (all replicas of `replication:N` do).
#[derive(Clone)]
pub struct Fragment {
    /// Fragment index, `0..policy.fragment_count()`.
    pub index: u32,
    buf: Arc<Vec<u8>>,
    start: usize,
    len: usize,
}

impl Fragment {
    fn whole(index: u32, buf: Arc<Vec<u8>>) -> Fragment {
        let len = buf.len();
        Fragment { index, buf, start: 0, len }
    }

    /// The payload bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    /// True when both fragments are views of the same allocation.
    pub fn shares_buffer_with(&self, other: &Fragment) -> bool {
        Arc::ptr_eq(&self.buf, &other.buf)
    }

    /// The payload as an owned vector (copies unless this fragment is the
    /// sole owner of a buffer holding exactly its bytes).
    pub fn into_vec(self) -> Vec<u8> {
        if self.start == 0 && self.len == self.buf.len() {
            match Arc::try_unwrap(self.buf) {
                Ok(v) => v,
                Err(shared) => shared.to_vec(),
            }
        } else {
            self.bytes().to_vec()
        }
    }
}

impl Deref for Fragment {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.bytes()
    }
}

impl AsRef<[u8]> for Fragment {
    fn as_ref(&self) -> &[u8] {
        self.bytes()
    }
}

impl PartialEq for Fragment {
    fn eq(&self, other: &Fragment) -> bool {
        self.index == other.index && self.bytes() == other.bytes()
    }
}
impl Eq for Fragment {}

impl fmt::Debug for Fragment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fragment").field("index", &self.index).field("len", &self.len).finish()
    }
}

/// Payload length of each fragment of an extent of `extent_len` bytes:
/// `extent_len` for replication, the erasure shard length otherwise (see the
/// module documentation). Pure arithmetic that never panics; for an invalid
/// policy or length the answer is meaningless — [`fragment_payload_len`]
/// checks both.
pub fn shard_len(policy: Policy, extent_len: u32) -> u32 {
    match policy {
        Policy::Replication { .. } => extent_len,
        Policy::Erasure { data, .. } => {
            let per = u64::from(extent_len.max(1)).div_ceil(u64::from(data.max(1)));
            let aligned = per.next_multiple_of(u64::from(SHARD_ALIGN));
            u32::try_from(aligned).unwrap_or(u32::MAX - (SHARD_ALIGN - 1))
        }
    }
}

/// Checked [`shard_len`]: the `payload_len` of every fragment of an extent
/// of `extent_len` bytes under `policy`.
pub fn fragment_payload_len(policy: Policy, extent_len: u32) -> Result<u32> {
    check_policy(policy)?;
    check_extent_len(u64::from(extent_len))?;
    Ok(shard_len(policy, extent_len))
}

/// Payload bytes of all fragments of an extent together (headers and block
/// padding not included).
pub fn stored_len(policy: Policy, extent_len: u32) -> Result<u64> {
    Ok(u64::from(fragment_payload_len(policy, extent_len)?) * u64::from(policy.fragment_count()))
}

fn check_policy(policy: Policy) -> Result<()> {
    policy.validate().map_err(|source| CodecError::InvalidPolicy { policy, source })
}

fn check_extent_len(len: u64) -> Result<()> {
    if len == 0 || len > u64::from(MAX_EXTENT_LEN) {
        return Err(CodecError::ExtentLength { len, max: MAX_EXTENT_LEN });
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Encoding

/// Encode one extent (1..=1 MiB bytes) into its `policy.fragment_count()`
/// fragments, in index order. Replicas share one buffer; erasure shards are
/// views of one buffer of `(K+M) × shard_len` bytes.
pub fn encode(policy: Policy, data: &[u8]) -> Result<Vec<Fragment>> {
    check_policy(policy)?;
    check_extent_len(data.len() as u64)?;
    match policy {
        Policy::Replication { .. } => Ok(replicas(policy, Arc::new(data.to_vec()))),
        Policy::Erasure { .. } => encode_erasure_shared(policy, data),
    }
}

/// [`encode`] taking ownership of the extent: replicas then share the
/// caller's buffer without any copy.
pub fn encode_owned(policy: Policy, data: Vec<u8>) -> Result<Vec<Fragment>> {
    check_policy(policy)?;
    check_extent_len(data.len() as u64)?;
    match policy {
        Policy::Replication { .. } => Ok(replicas(policy, Arc::new(data))),
        Policy::Erasure { .. } => encode_erasure_shared(policy, &data),
    }
}

fn replicas(policy: Policy, buf: Arc<Vec<u8>>) -> Vec<Fragment> {
    (0..policy.fragment_count()).map(|i| Fragment::whole(i, Arc::clone(&buf))).collect()
}

fn encode_erasure_shared(policy: Policy, data: &[u8]) -> Result<Vec<Fragment>> {
    let Policy::Erasure { data: k, parity: m } = policy else {
        return Ok(Vec::new());
    };
    let (k, m) = (k as usize, m as usize);
    let s = shard_len(policy, data.len() as u32) as usize;
    // Built by appending, so each byte is written once (no zeroing pass).
    let mut buf = Vec::with_capacity((k + m) * s);
    for i in 0..k {
        buf.extend_from_slice(extent_part(data, i, s));
        buf.resize((i + 1) * s, 0);
    }
    let mut enc = take_encoder(k, m, s)?;
    let result: Result<()> = (|| {
        for shard in buf.chunks_exact(s) {
            enc.add_original_shard(shard)?;
        }
        let encoded = enc.encode()?;
        for r in encoded.recovery_iter() {
            buf.extend_from_slice(r);
        }
        Ok(())
    })();
    put_encoder(enc);
    result?;
    if buf.len() != (k + m) * s {
        return Err(reed_solomon_simd::Error::InvalidRecoveryShardIndex {
            recovery_count: m,
            index: (buf.len() / s).saturating_sub(k),
        }
        .into());
    }
    let buf = Arc::new(buf);
    Ok((0..k + m).map(|i| Fragment { index: i as u32, buf: Arc::clone(&buf), start: i * s, len: s }).collect())
}

/// Encode into caller-provided buffers (for instance the payload part of
/// aligned IO buffers): `out` has one buffer per fragment, each exactly
/// [`fragment_payload_len`] bytes.
pub fn encode_into(policy: Policy, data: &[u8], out: &mut [&mut [u8]]) -> Result<()> {
    check_policy(policy)?;
    check_extent_len(data.len() as u64)?;
    let count = policy.fragment_count() as usize;
    if out.len() != count {
        return Err(CodecError::FragmentCount { policy, expected: policy.fragment_count(), got: out.len() });
    }
    let s = shard_len(policy, data.len() as u32) as usize;
    if let Some((index, o)) = out.iter().enumerate().find(|(_, o)| o.len() != s) {
        return Err(CodecError::OutputLength { index, got: o.len(), expected: s });
    }
    match policy {
        Policy::Replication { .. } => {
            for o in out.iter_mut() {
                o.copy_from_slice(data);
            }
            Ok(())
        }
        Policy::Erasure { .. } => encode_shards(policy, data, out),
    }
}

/// Fill `out` (K+M buffers of shard_len, already checked) with data shards
/// and parity.
fn encode_shards(policy: Policy, data: &[u8], out: &mut [&mut [u8]]) -> Result<()> {
    let Policy::Erasure { data: k, .. } = policy else {
        return Ok(());
    };
    let k = k as usize;
    let s = shard_len(policy, data.len() as u32) as usize;
    for (i, shard) in out[..k].iter_mut().enumerate() {
        let chunk = extent_part(data, i, s);
        shard[..chunk.len()].copy_from_slice(chunk);
        shard[chunk.len()..].fill(0);
    }
    let (originals, parity) = out.split_at_mut(k);
    let originals: Vec<Option<&[u8]>> = originals.iter().map(|o| Some(&**o)).collect();
    reencode(policy, s, &originals, parity)
}

/// The bytes of the extent that data shard `i` holds (possibly empty).
fn extent_part(data: &[u8], i: usize, s: usize) -> &[u8] {
    let start = (i * s).min(data.len());
    let end = ((i + 1) * s).min(data.len());
    &data[start..end]
}

/// Compute the M parity shards of K whole data shards (all `Some`) into
/// `out` (M buffers of `s` bytes).
fn reencode(policy: Policy, s: usize, data_shards: &[Option<&[u8]>], out: &mut [&mut [u8]]) -> Result<()> {
    let Policy::Erasure { data: k, parity: m } = policy else {
        return Ok(());
    };
    let (k, m) = (k as usize, m as usize);
    let mut enc = take_encoder(k, m, s)?;
    let result = (|| {
        for (i, d) in data_shards.iter().enumerate() {
            let d = d.ok_or(reed_solomon_simd::Error::TooFewOriginalShards {
                original_count: k,
                original_received_count: i,
            })?;
            enc.add_original_shard(d)?;
        }
        let encoded = enc.encode()?;
        for (j, p) in out.iter_mut().enumerate() {
            let r = encoded
                .recovery(j)
                .ok_or(reed_solomon_simd::Error::InvalidRecoveryShardIndex { recovery_count: m, index: j })?;
            p.copy_from_slice(r);
        }
        Ok(())
    })();
    put_encoder(enc);
    result
}

// ---------------------------------------------------------------------------
// Per-thread Reed-Solomon state

thread_local! {
    static ENCODER: Cell<Option<ReedSolomonEncoder>> = const { Cell::new(None) };
    static DECODER: Cell<Option<ReedSolomonDecoder>> = const { Cell::new(None) };
}

/// This thread's encoder, reset for (k, m, s). Taken out of its slot while
/// in use, so no borrow can ever fail; a failed reset builds a fresh one.
fn take_encoder(k: usize, m: usize, s: usize) -> Result<ReedSolomonEncoder> {
    if let Some(mut e) = ENCODER.try_with(Cell::take).ok().flatten() {
        if e.reset(k, m, s).is_ok() {
            return Ok(e);
        }
    }
    Ok(ReedSolomonEncoder::new(k, m, s)?)
}

fn put_encoder(e: ReedSolomonEncoder) {
    let _ = ENCODER.try_with(|c| c.set(Some(e)));
}

fn take_decoder(k: usize, m: usize, s: usize) -> Result<ReedSolomonDecoder> {
    if let Some(mut d) = DECODER.try_with(Cell::take).ok().flatten() {
        if d.reset(k, m, s).is_ok() {
            return Ok(d);
        }
    }
    Ok(ReedSolomonDecoder::new(k, m, s)?)
}

fn put_decoder(d: ReedSolomonDecoder) {
    let _ = DECODER.try_with(|c| c.set(Some(d)));
}

// ---------------------------------------------------------------------------
// Decoding

/// Checks shared by the read side; returns the payload length.
fn check_fragments(policy: Policy, extent_len: u32, fragments: &[Option<&[u8]>]) -> Result<usize> {
    check_policy(policy)?;
    check_extent_len(u64::from(extent_len))?;
    if fragments.len() != policy.fragment_count() as usize {
        return Err(CodecError::FragmentCount { policy, expected: policy.fragment_count(), got: fragments.len() });
    }
    let s = shard_len(policy, extent_len);
    for (index, f) in fragments.iter().enumerate() {
        if let Some(f) = f {
            if f.len() != s as usize {
                return Err(CodecError::FragmentLength { index: index as u32, got: f.len(), expected: s });
            }
        }
    }
    Ok(s as usize)
}

/// Which fragments to read to get the extent back, given which ones are
/// usable (`usable[i]`: fragment `i` is on a healthy member). Replication:
/// the first usable replica (any other would do). Erasure: the usable data
/// shards, then the first usable parity shards, K in all — so that with
/// every data shard usable no decode is needed.
pub fn read_set(policy: Policy, usable: &[bool]) -> Result<Vec<usize>> {
    check_policy(policy)?;
    if usable.len() != policy.fragment_count() as usize {
        return Err(CodecError::FragmentCount { policy, expected: policy.fragment_count(), got: usable.len() });
    }
    let need = policy.fragments_needed() as usize;
    let picked: Vec<usize> = (0..usable.len()).filter(|&i| usable[i]).take(need).collect();
    if picked.len() < need {
        return Err(CodecError::NotEnoughFragments { have: picked.len() as u32, need: need as u32 });
    }
    Ok(picked)
}

/// Rebuild the extent's `extent_len` bytes from the fragments present
/// (`fragments[i]` is fragment `i`, or `None` if missing). Replication reads
/// one replica; erasure concatenates the data shards when all are present
/// and otherwise decodes from exactly K present fragments.
pub fn decode(policy: Policy, extent_len: u32, fragments: &[Option<&[u8]>]) -> Result<Vec<u8>> {
    check_fragments(policy, extent_len, fragments)?;
    let mut out = vec![0u8; extent_len as usize];
    decode_checked(policy, extent_len, fragments, &mut out)?;
    Ok(out)
}

/// [`decode`] into a caller-provided buffer of exactly `extent_len` bytes.
pub fn decode_into(policy: Policy, extent_len: u32, fragments: &[Option<&[u8]>], out: &mut [u8]) -> Result<()> {
    check_fragments(policy, extent_len, fragments)?;
    if out.len() != extent_len as usize {
        return Err(CodecError::OutputLength { index: 0, got: out.len(), expected: extent_len as usize });
    }
    decode_checked(policy, extent_len, fragments, out)
}

fn count_present(fragments: &[Option<&[u8]>]) -> u32 {
    fragments.iter().filter(|f| f.is_some()).count() as u32
}

fn decode_checked(policy: Policy, extent_len: u32, fragments: &[Option<&[u8]>], out: &mut [u8]) -> Result<()> {
    match policy {
        Policy::Replication { .. } => {
            let Some(src) = fragments.iter().flatten().next() else {
                return Err(CodecError::NotEnoughFragments { have: 0, need: 1 });
            };
            out.copy_from_slice(src);
            Ok(())
        }
        Policy::Erasure { data: k, .. } => {
            let k = k as usize;
            let s = shard_len(policy, extent_len) as usize;
            if fragments[..k].iter().all(Option::is_some) {
                // Fast path: no Reed-Solomon work.
                for (i, f) in fragments[..k].iter().flatten().enumerate() {
                    copy_part(out, f, i, s);
                }
                return Ok(());
            }
            with_restored(policy, s, fragments, |i, shard| {
                copy_part(out, shard, i, s);
            })
        }
    }
}

/// Copy the extent bytes data shard `i` holds from `shard` into `out`.
fn copy_part(out: &mut [u8], shard: &[u8], i: usize, s: usize) {
    let start = (i * s).min(out.len());
    let end = ((i + 1) * s).min(out.len());
    out[start..end].copy_from_slice(&shard[..end - start]);
}

/// Erasure only, with at least one data shard missing: decode from K present
/// fragments (every present data shard, then the first present parity
/// shards) and call `visit(i, shard)` for every data shard `i` in order,
/// present or restored.
fn with_restored(
    policy: Policy,
    s: usize,
    fragments: &[Option<&[u8]>],
    mut visit: impl FnMut(usize, &[u8]),
) -> Result<()> {
    let Policy::Erasure { data: k, parity: m } = policy else {
        return Ok(());
    };
    let (k, m) = (k as usize, m as usize);
    let have = count_present(fragments);
    if (have as usize) < k {
        return Err(CodecError::NotEnoughFragments { have, need: k as u32 });
    }
    let mut dec = take_decoder(k, m, s)?;
    let result = (|| {
        let mut given = 0;
        for (i, f) in fragments[..k].iter().enumerate() {
            if let Some(f) = f {
                dec.add_original_shard(i, f)?;
                given += 1;
            }
        }
        for (j, f) in fragments[k..].iter().enumerate() {
            if given == k {
                break;
            }
            if let Some(f) = f {
                dec.add_recovery_shard(j, f)?;
                given += 1;
            }
        }
        let restored = dec.decode()?;
        for (i, f) in fragments[..k].iter().enumerate() {
            let shard = match f {
                Some(f) => *f,
                None => restored
                    .restored_original(i)
                    .ok_or(reed_solomon_simd::Error::InvalidOriginalShardIndex { original_count: k, index: i })?,
            };
            visit(i, shard);
        }
        Ok(())
    })();
    put_decoder(dec);
    result
}

/// Rebuild the fragments listed in `wanted` (indexes, any order; the result
/// follows that order) from the fragments present. A wanted fragment that is
/// present is returned as given. Reads only what it needs: one replica, or K
/// shards (all present data shards first); parity is recomputed only when a
/// missing parity shard is wanted.
pub fn reconstruct(
    policy: Policy,
    extent_len: u32,
    fragments: &[Option<&[u8]>],
    wanted: &[usize],
) -> Result<Vec<Fragment>> {
    let s = check_fragments(policy, extent_len, fragments)?;
    let count = policy.fragment_count();
    if let Some(&index) = wanted.iter().find(|&&w| w >= count as usize) {
        return Err(CodecError::FragmentIndex { policy, index, count });
    }
    let copy_of = |w: usize| fragments[w].map(|f| Fragment::whole(w as u32, Arc::new(f.to_vec())));
    if let Some(done) = wanted.iter().map(|&w| copy_of(w)).collect::<Option<Vec<_>>>() {
        return Ok(done);
    }
    match policy {
        Policy::Replication { .. } => {
            let Some(src) = fragments.iter().flatten().next() else {
                return Err(CodecError::NotEnoughFragments { have: 0, need: 1 });
            };
            let buf = Arc::new(src.to_vec());
            Ok(wanted.iter().map(|&w| Fragment::whole(w as u32, Arc::clone(&buf))).collect())
        }
        Policy::Erasure { data: k, .. } => {
            let k = k as usize;
            let have = count_present(fragments);
            if (have as usize) < k {
                return Err(CodecError::NotEnoughFragments { have, need: k as u32 });
            }
            let need_parity = wanted.iter().any(|&w| w >= k && fragments[w].is_none());
            // Restore the missing data shards that are wanted, or all of
            // them when parity must be recomputed.
            let mut restored: Vec<Option<Vec<u8>>> = vec![None; k];
            if fragments[..k].iter().any(Option::is_none) {
                with_restored(policy, s, fragments, |i, shard| {
                    if fragments[i].is_none() && (need_parity || wanted.contains(&i)) {
                        restored[i] = Some(shard.to_vec());
                    }
                })?;
            }
            let restored: Vec<Option<Arc<Vec<u8>>>> = restored.into_iter().map(|r| r.map(Arc::new)).collect();
            let mut parity: Option<Arc<Vec<u8>>> = None;
            if need_parity {
                let data_shards: Vec<Option<&[u8]>> =
                    (0..k).map(|i| fragments[i].or(restored[i].as_ref().map(|r| r.as_slice()))).collect();
                let mut buf = vec![0u8; (count as usize - k) * s];
                {
                    let mut outs: Vec<&mut [u8]> = buf.chunks_mut(s).collect();
                    reencode(policy, s, &data_shards, &mut outs)?;
                }
                parity = Some(Arc::new(buf));
            }
            let mut result = Vec::with_capacity(wanted.len());
            for &w in wanted {
                let fragment = if let Some(f) = copy_of(w) {
                    Some(f)
                } else if w < k {
                    restored[w].as_ref().map(|r| Fragment::whole(w as u32, Arc::clone(r)))
                } else {
                    parity.as_ref().map(|p| Fragment {
                        index: w as u32,
                        buf: Arc::clone(p),
                        start: (w - k) * s,
                        len: s,
                    })
                };
                // Always Some by construction; refuse rather than panic.
                result.push(fragment.ok_or(CodecError::NotEnoughFragments { have, need: k as u32 })?);
            }
            Ok(result)
        }
    }
}
