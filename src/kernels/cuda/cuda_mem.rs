//! Device-memory figures for a CUDA process: what this process holds on the GPU, CUDA context
//! included, as the driver accounts it — the number that must fit a 4 GB card.
//!
//! candle keeps no allocator statistics, so [`PeakSampler`] polls from a background thread:
//! the driver's management library (NVML, `libnvidia-ml.so.1`, opened at run time) for this
//! process's own usage, and `cuMemGetInfo` for the device-wide usage as a fallback and a
//! cross-check. Polling every few milliseconds catches the peak of a training step, whose
//! allocations live for tens of milliseconds at the shortest on the cards this targets.
//!
//! The part of that figure which moves between runs is what the stream-ordered allocator's pool
//! has mapped beyond its live tensors; [`pool_stats`] reads both from the driver (exact, no
//! sampling), and `WARSHA_LOG=warsha::pool=debug` logs them per training phase.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use candle_core::cuda::cudarc::driver::sys as cudarc_sys;
use candle_core::cuda::CudaDevice;

const MIB: f64 = 1024.0 * 1024.0;
/// NVML's "value not available" for a process's memory.
const NVML_VALUE_NOT_AVAILABLE: u64 = u64::MAX;

/// One process's entry as `nvmlDeviceGetComputeRunningProcesses_v3` fills it.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct NvmlProcessInfo {
    pid: c_uint,
    used_gpu_memory: u64,
    gpu_instance_id: c_uint,
    compute_instance_id: c_uint,
}

type NvmlInit = unsafe extern "C" fn() -> c_int;
type NvmlDeviceCount = unsafe extern "C" fn(*mut c_uint) -> c_int;
type NvmlHandleByIndex = unsafe extern "C" fn(c_uint, *mut *mut c_void) -> c_int;
type NvmlProcesses = unsafe extern "C" fn(*mut c_void, *mut c_uint, *mut NvmlProcessInfo) -> c_int;

/// The few NVML entry points needed, resolved from the driver's library.
struct Nvml {
    devices: Vec<*mut c_void>,
    processes: NvmlProcesses,
}

// SAFETY: NVML handles are plain identifiers, and NVML is thread-safe.
unsafe impl Send for Nvml {}

impl Nvml {
    fn open() -> Option<Self> {
        // SAFETY: dlopen/dlsym with NUL-terminated names; each symbol is cast to the signature
        // NVML documents for it, and only called after a successful nvmlInit.
        unsafe {
            let lib = libc::dlopen(c"libnvidia-ml.so.1".as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
            if lib.is_null() {
                return None;
            }
            let sym = |name: &CStr| {
                let p = libc::dlsym(lib, name.as_ptr() as *const c_char);
                (!p.is_null()).then_some(p)
            };
            let init: NvmlInit = std::mem::transmute(sym(c"nvmlInit_v2")?);
            let count: NvmlDeviceCount = std::mem::transmute(sym(c"nvmlDeviceGetCount_v2")?);
            let by_index: NvmlHandleByIndex = std::mem::transmute(sym(c"nvmlDeviceGetHandleByIndex_v2")?);
            let processes: NvmlProcesses =
                std::mem::transmute(sym(c"nvmlDeviceGetComputeRunningProcesses_v3")?);
            if init() != 0 {
                return None;
            }
            let mut n: c_uint = 0;
            if count(&mut n) != 0 {
                return None;
            }
            let mut devices = Vec::new();
            for i in 0..n {
                let mut h = std::ptr::null_mut();
                if by_index(i, &mut h) == 0 {
                    devices.push(h);
                }
            }
            Some(Self { devices, processes })
        }
    }

    /// Bytes the process `pid` holds over all devices; None when the driver does not say.
    fn process_bytes(&self, pid: u32) -> Option<u64> {
        let mut total = 0u64;
        let mut seen = false;
        for &dev in &self.devices {
            let mut buf = [NvmlProcessInfo::default(); 64];
            let mut n = buf.len() as c_uint;
            // SAFETY: `buf` holds `n` entries; NVML writes at most that many.
            let rc = unsafe { (self.processes)(dev, &mut n, buf.as_mut_ptr()) };
            if rc != 0 {
                continue;
            }
            for p in &buf[..(n as usize).min(buf.len())] {
                if p.pid == pid && p.used_gpu_memory != NVML_VALUE_NOT_AVAILABLE {
                    total += p.used_gpu_memory;
                    seen = true;
                }
            }
        }
        seen.then_some(total)
    }
}

/// Peak device memory over a stretch of work.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct DevicePeak {
    /// This process's own peak (NVML), CUDA context included; None without NVML.
    pub process_mib: Option<f64>,
    /// Peak of the device-wide used memory (`cuMemGetInfo`), every process on the card.
    pub device_used_mib: f64,
    /// Device-wide used memory when sampling started (this process's context included).
    pub device_used_at_start_mib: f64,
    pub device_total_mib: f64,
}

impl DevicePeak {
    /// The figure to report: the process's own peak where the driver gives it, else the
    /// device-wide peak (an upper bound for this process).
    pub fn best_mib(&self) -> f64 {
        self.process_mib.unwrap_or(self.device_used_mib)
    }
}

/// Polls device memory from a background thread until [`PeakSampler::finish`].
pub struct PeakSampler {
    stop: Arc<AtomicBool>,
    process_peak: Arc<AtomicU64>,
    device_peak: Arc<AtomicU64>,
    start_used: u64,
    total: u64,
    thread: Option<JoinHandle<bool>>,
}

impl PeakSampler {
    /// Starts sampling every `interval` for the device `dev`.
    pub fn start(dev: &CudaDevice, interval: Duration) -> candle_core::Result<Self> {
        let ctx = dev.cuda_stream().context().clone();
        let (free, total) =
            ctx.mem_get_info().map_err(|e| candle_core::Error::Msg(format!("cuMemGetInfo: {e}")))?;
        let start_used = (total - free) as u64;
        let stop = Arc::new(AtomicBool::new(false));
        let process_peak = Arc::new(AtomicU64::new(0));
        let device_peak = Arc::new(AtomicU64::new(start_used));
        let (s, pp, dp) = (stop.clone(), process_peak.clone(), device_peak.clone());
        let pid = std::process::id();
        let thread = std::thread::Builder::new()
            .name("device-memory".into())
            .spawn(move || {
                let nvml = Nvml::open();
                let mut last = false;
                loop {
                    if let Some(b) = nvml.as_ref().and_then(|n| n.process_bytes(pid)) {
                        pp.fetch_max(b, Ordering::Relaxed);
                    }
                    if let Ok((free, total)) = ctx.mem_get_info() {
                        dp.fetch_max((total - free) as u64, Ordering::Relaxed);
                    }
                    if last {
                        break;
                    }
                    std::thread::sleep(interval);
                    last = s.load(Ordering::Relaxed);
                }
                nvml.is_some()
            })
            .map_err(|e| candle_core::Error::Msg(format!("device-memory sampler: {e}")))?;
        Ok(Self { stop, process_peak, device_peak, start_used, total: total as u64, thread: Some(thread) })
    }

    /// Stops sampling (after one last sample) and returns the peaks.
    pub fn finish(mut self) -> DevicePeak {
        self.stop.store(true, Ordering::Relaxed);
        let had_nvml = self.thread.take().map(|t| t.join().unwrap_or(false)).unwrap_or(false);
        let process = self.process_peak.load(Ordering::Relaxed);
        DevicePeak {
            process_mib: (had_nvml && process > 0).then(|| process as f64 / MIB),
            device_used_mib: self.device_peak.load(Ordering::Relaxed) as f64 / MIB,
            device_used_at_start_mib: self.start_used as f64 / MIB,
            device_total_mib: self.total as f64 / MIB,
        }
    }
}

impl Drop for PeakSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Free and total bytes of the device, as `cuMemGetInfo` reports them.
#[cfg_attr(not(test), allow(dead_code))]
pub fn mem_info(dev: &CudaDevice) -> candle_core::Result<(usize, usize)> {
    dev.cuda_stream()
        .context()
        .mem_get_info()
        .map_err(|e| candle_core::Error::Msg(format!("cuMemGetInfo: {e}")))
}

/// What the stream-ordered allocator's pool holds, in bytes: `used` is what live tensors
/// take, `reserved` what the pool has mapped (the part of the process figure that moves).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct PoolStats {
    pub used: u64,
    pub reserved: u64,
    pub used_high: u64,
    pub reserved_high: u64,
}

fn pool_of(dev: &CudaDevice) -> candle_core::Result<cudarc_sys::CUmemoryPool> {
    let ctx = dev.cuda_stream().context().clone();
    // SAFETY: the device handle comes from a live context.
    unsafe { candle_core::cuda::cudarc::driver::result::device::get_mem_pool(ctx.cu_device()) }
        .map_err(|e| candle_core::Error::Msg(format!("cuDeviceGetMemPool: {e}")))
}

fn pool_attr(pool: cudarc_sys::CUmemoryPool, attr: cudarc_sys::CUmemPool_attribute) -> u64 {
    let mut v: u64 = 0;
    // SAFETY: these attributes are 64-bit values (cuuint64_t), written into `v`.
    let rc = unsafe {
        candle_core::cuda::cudarc::driver::result::mem_pool::get_attribute(
            pool,
            attr,
            &mut v as *mut u64 as *mut c_void,
        )
    };
    if rc.is_ok() {
        v
    } else {
        0
    }
}

/// The pool's current and high-water figures (zeros where the driver does not say).
pub fn pool_stats(dev: &CudaDevice) -> PoolStats {
    use cudarc_sys::CUmemPool_attribute as A;
    let Ok(pool) = pool_of(dev) else { return PoolStats::default() };
    PoolStats {
        used: pool_attr(pool, A::CU_MEMPOOL_ATTR_USED_MEM_CURRENT),
        reserved: pool_attr(pool, A::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT),
        used_high: pool_attr(pool, A::CU_MEMPOOL_ATTR_USED_MEM_HIGH),
        reserved_high: pool_attr(pool, A::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH),
    }
}

/// Restarts both high-water marks from the current figures.
pub fn reset_pool_highs(dev: &CudaDevice) {
    use cudarc_sys::CUmemPool_attribute as A;
    let Ok(pool) = pool_of(dev) else { return };
    for attr in [A::CU_MEMPOOL_ATTR_USED_MEM_HIGH, A::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH] {
        let mut zero: u64 = 0;
        // SAFETY: setting a high-water mark takes a 64-bit zero, which resets it.
        let _ = unsafe {
            candle_core::cuda::cudarc::driver::result::mem_pool::set_attribute(
                pool,
                attr,
                &mut zero as *mut u64 as *mut c_void,
            )
        };
    }
}

static USED_HIGH: AtomicU64 = AtomicU64::new(0);
static RESERVED_HIGH: AtomicU64 = AtomicU64::new(0);

/// Reads the pool's high-water marks into the process-wide maxima, then restarts them, so the
/// next read covers only what came after (per-phase attribution); returns what was read.
pub fn take_pool_highs(dev: &CudaDevice) -> PoolStats {
    let s = pool_stats(dev);
    USED_HIGH.fetch_max(s.used_high, Ordering::Relaxed);
    RESERVED_HIGH.fetch_max(s.reserved_high, Ordering::Relaxed);
    reset_pool_highs(dev);
    s
}

/// The pool's high-water marks over the whole process, including any taken per phase.
pub fn pool_highs(dev: &CudaDevice) -> PoolStats {
    let s = pool_stats(dev);
    PoolStats {
        used_high: s.used_high.max(USED_HIGH.load(Ordering::Relaxed)),
        reserved_high: s.reserved_high.max(RESERVED_HIGH.load(Ordering::Relaxed)),
        ..s
    }
}
