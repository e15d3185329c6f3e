//! Pools on memory members for engine tests: format `n` [`MemDevice`]s and
//! open them without the pool lock (memory members have no lock file to
//! share). Owns nothing but that setup; it never touches a real device.

use dfs_format::Policy;
use dynamicfs::device::{Device, MemDevice};
use dynamicfs::engine::{EngineError, Pool, PoolOptions};
use std::sync::Arc;

/// `n` zeroed memory members of `size` bytes (labelled `mem0`, `mem1`, … so
/// errors name them), formatted as one pool with `policy`.
pub fn mem_members(n: usize, size: u64, policy: Policy) -> Vec<Arc<MemDevice>> {
    let devs: Vec<Arc<MemDevice>> =
        (0..n).map(|i| Arc::new(MemDevice::named(&format!("mem{i}"), size, 4096))).collect();
    let refs: Vec<&dyn Device> = devs.iter().map(|d| d.as_ref() as &dyn Device).collect();
    dynamicfs::mkfs::format_devices(&refs, "test", policy).expect("mkfs");
    devs
}

/// Open the pool on `devs` (any device type: memory, faulty, …).
pub fn try_open_pool<D: Device + 'static>(devs: &[Arc<D>]) -> Result<Pool, EngineError> {
    let ds: Vec<Arc<dyn Device>> = devs.iter().map(|d| d.clone() as Arc<dyn Device>).collect();
    Pool::open(ds, PoolOptions { no_lock: true, ..Default::default() })
}

/// [`try_open_pool`], panicking with the engine's error.
pub fn open_pool<D: Device + 'static>(devs: &[Arc<D>]) -> Pool {
    try_open_pool(devs).unwrap_or_else(|e| panic!("open: {e}"))
}
