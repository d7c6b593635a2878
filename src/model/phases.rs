//! Where a training step's time goes, phase by phase, for profiling on a device.
//!
//! Off unless debug logging is on for the target `warsha::phases` (`WARSHA_LOG=warsha::phases=debug`):
//! then every mark synchronizes the device, so the time since the previous mark is the work of
//! that phase rather than of whatever was queued before it. Synchronizing stalls the launch
//! pipeline, so a profiled step runs slower than a plain one; the shares are what count.
//! Marks accumulate per thread and are logged, summed by phase, at [`report`].

use std::cell::RefCell;
use std::time::Instant;

use candle_core::Device;

const TARGET: &str = "warsha::phases";
/// Per-phase high-water marks of the CUDA allocator's pool (no synchronization involved: the
/// pool counts allocations as they are enqueued, in stream order).
const POOL_TARGET: &str = "warsha::pool";

struct Clock {
    last: Instant,
    totals: Vec<(&'static str, f64, usize)>,
}

thread_local! {
    static CLOCK: RefCell<Option<Clock>> = const { RefCell::new(None) };
    /// Phase → (most bytes in live tensors, most bytes mapped) during that phase.
    static POOL: RefCell<Vec<(&'static str, u64, u64)>> = const { RefCell::new(Vec::new()) };
}

fn pool_enabled() -> bool {
    tracing::enabled!(target: POOL_TARGET, tracing::Level::DEBUG)
}

#[cfg(feature = "cuda")]
fn pool_mark(dev: &Device, phase: &'static str) {
    let Device::Cuda(d) = dev else { return };
    if !pool_enabled() {
        return;
    }
    let s = crate::kernels::cuda::cuda_mem::take_pool_highs(d);
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        match p.iter_mut().find(|e| e.0 == phase) {
            Some(e) => {
                e.1 = e.1.max(s.used_high);
                e.2 = e.2.max(s.reserved_high);
            }
            None => p.push((phase, s.used_high, s.reserved_high)),
        }
    });
}

#[cfg(not(feature = "cuda"))]
fn pool_mark(_dev: &Device, _phase: &'static str) {}

/// Logs the pool's per-phase high-water marks gathered since the last call, and clears them.
pub fn report_pool() {
    if !pool_enabled() {
        return;
    }
    let parts: Vec<String> = POOL.with(|p| {
        p.borrow_mut()
            .drain(..)
            .map(|(ph, u, r)| format!("{ph} {:.0}/{:.0}", u as f64 / 1048576.0, r as f64 / 1048576.0))
            .collect()
    });
    tracing::debug!(target: POOL_TARGET, "pool MiB used/reserved by phase: {}", parts.join(", "));
}

/// Whether phases are being timed.
pub fn enabled() -> bool {
    tracing::enabled!(target: TARGET, tracing::Level::DEBUG)
}

/// Starts (or restarts) timing on this thread.
pub fn start(dev: &Device) {
    pool_mark(dev, "between steps");
    if !enabled() {
        return;
    }
    let _ = dev.synchronize();
    CLOCK.with(|c| *c.borrow_mut() = Some(Clock { last: Instant::now(), totals: Vec::new() }));
}

/// Charges the time since the previous mark to `phase`.
pub fn mark(dev: &Device, phase: &'static str) {
    pool_mark(dev, phase);
    if !enabled() {
        return;
    }
    let _ = dev.synchronize();
    CLOCK.with(|c| {
        if let Some(clock) = c.borrow_mut().as_mut() {
            let now = Instant::now();
            let secs = (now - clock.last).as_secs_f64();
            clock.last = now;
            match clock.totals.iter_mut().find(|(p, _, _)| *p == phase) {
                Some(e) => {
                    e.1 += secs;
                    e.2 += 1;
                }
                None => clock.totals.push((phase, secs, 1)),
            }
        }
    });
}

/// Logs the totals since [`start`] and stops timing.
pub fn report() {
    if !enabled() {
        return;
    }
    if let Some(clock) = CLOCK.with(|c| c.borrow_mut().take()) {
        let total: f64 = clock.totals.iter().map(|e| e.1).sum();
        let parts: Vec<String> =
            clock.totals.iter().map(|(p, s, n)| format!("{p} {:.1} ms ({n}x)", s * 1e3)).collect();
        tracing::debug!(target: TARGET, total_ms = total * 1e3, "step phases: {}", parts.join(", "));
    }
}
