//! Learning-rate schedule: linear warm-up, then cosine decay to a floor.
//! A pure function of the step, so a resumed run needs only the step count.

use serde::{Deserialize, Serialize};

/// Warm-up + cosine schedule over `total_steps` optimizer steps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub peak_lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
    /// The last steps decay towards `peak_lr * min_ratio`, not to zero: the
    /// tail of a short nightly round still teaches something.
    pub min_ratio: f64,
}

impl Schedule {
    pub fn new(peak_lr: f64, warmup_steps: usize, total_steps: usize) -> Self {
        Self { peak_lr, warmup_steps, total_steps, min_ratio: 0.1 }
    }

    /// The learning rate of optimizer step `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        let warm = self.warmup_steps.min(self.total_steps.saturating_sub(1));
        if step < warm {
            return self.peak_lr * (step + 1) as f64 / (warm + 1) as f64;
        }
        let span = self.total_steps.saturating_sub(warm).max(1);
        let progress = ((step - warm) as f64 / span as f64).min(1.0);
        let floor = self.peak_lr * self.min_ratio;
        floor + (self.peak_lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_linearly_then_decays_monotonically_to_the_floor() {
        let s = Schedule::new(1e-3, 10, 100);
        assert!((s.lr(0) - 1e-3 / 11.0).abs() < 1e-12);
        assert!(s.lr(9) < s.lr(10));
        assert!((s.lr(10) - 1e-3).abs() < 1e-12);
        for k in 10..99 {
            assert!(s.lr(k + 1) <= s.lr(k) + 1e-15, "step {k}");
        }
        assert!(s.lr(99) >= 1e-4 && s.lr(99) < 1.1e-4);
        assert!((s.lr(500) - 1e-4).abs() < 1e-12);
    }

    #[test]
    fn tiny_rounds_stay_finite() {
        let s = Schedule::new(2e-4, 20, 1);
        assert!(s.lr(0).is_finite() && s.lr(0) > 0.0);
        let s = Schedule::new(2e-4, 0, 3);
        assert!((s.lr(0) - 2e-4).abs() < 1e-15);
    }
}
