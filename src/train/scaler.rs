//! Dynamic loss scaling for f16 training (GPUs without bf16, e.g. compute 7.5).
//!
//! The loss is multiplied by `scale` before backward so that small gradients
//! survive f16; the optimizer sees gradients divided by it again. A step whose
//! gradients hold an inf/NaN is skipped and the scale halved; after
//! `growth_interval` clean steps in a row the scale doubles.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    /// Off (bf16/f32): `scale` stays 1 and nothing is ever skipped.
    pub enabled: bool,
    pub scale: f32,
    pub growth_interval: u32,
    pub good_steps: u32,
    /// Steps skipped for overflow over the whole run (reported).
    pub skipped: u64,
}

/// The smallest scale kept: below this, an overflow is a real divergence.
const MIN_SCALE: f32 = 1.0;
const MAX_SCALE: f32 = 16_777_216.0; // 2^24

impl LossScaler {
    pub fn disabled() -> Self {
        Self { enabled: false, scale: 1.0, growth_interval: 0, good_steps: 0, skipped: 0 }
    }

    /// Starts at 2^16 and doubles after 200 clean steps (a nightly round is a
    /// few hundred steps, so the usual 2000 would never grow).
    pub fn dynamic() -> Self {
        Self { enabled: true, scale: 65_536.0, growth_interval: 200, good_steps: 0, skipped: 0 }
    }

    /// The factor the loss is multiplied by in backward.
    pub fn scale(&self) -> f32 {
        if self.enabled {
            self.scale
        } else {
            1.0
        }
    }

    /// Record the outcome of a step; returns whether the update may be applied.
    pub fn update(&mut self, grads_finite: bool) -> bool {
        if !self.enabled {
            return grads_finite;
        }
        if grads_finite {
            self.good_steps += 1;
            if self.good_steps >= self.growth_interval {
                self.scale = (self.scale * 2.0).min(MAX_SCALE);
                self.good_steps = 0;
            }
            true
        } else {
            self.scale = (self.scale * 0.5).max(MIN_SCALE);
            self.good_steps = 0;
            self.skipped += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_halves_and_clean_steps_grow() {
        let mut s = LossScaler::dynamic();
        s.growth_interval = 3;
        assert!(!s.update(false));
        assert_eq!(s.scale, 32_768.0);
        assert_eq!(s.skipped, 1);
        assert!(s.update(true) && s.update(true));
        assert_eq!(s.scale, 32_768.0);
        assert!(s.update(true));
        assert_eq!(s.scale, 65_536.0);
        assert_eq!(s.good_steps, 0);
    }

    #[test]
    fn disabled_scaler_is_identity_but_still_refuses_non_finite() {
        let mut s = LossScaler::disabled();
        assert_eq!(s.scale(), 1.0);
        assert!(s.update(true));
        assert!(!s.update(false));
        assert_eq!(s.scale(), 1.0);
    }

    #[test]
    fn scale_never_drops_below_one() {
        let mut s = LossScaler::dynamic();
        for _ in 0..40 {
            s.update(false);
        }
        assert_eq!(s.scale, 1.0);
    }
}
