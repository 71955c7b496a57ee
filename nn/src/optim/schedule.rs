//! Learning-rate schedules.

/// Linear warmup from 0 to `peak` over `warmup` steps, then cosine decay to `min` at
/// `total` steps (and `min` after).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WarmupCosine {
    /// Peak learning rate.
    pub peak: f64,
    /// Final learning rate.
    pub min: f64,
    /// Warmup steps.
    pub warmup: u64,
    /// Total steps.
    pub total: u64,
}

impl WarmupCosine {
    /// The learning rate at `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup {
            return self.peak * (step + 1) as f64 / self.warmup as f64;
        }
        if step >= self.total || self.total <= self.warmup {
            return self.min;
        }
        let progress = (step - self.warmup) as f64 / (self.total - self.warmup) as f64;
        self.min + 0.5 * (self.peak - self.min) * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_then_decays() {
        let s = WarmupCosine { peak: 1.0, min: 0.1, warmup: 10, total: 110 };
        assert_eq!(s.lr(0), 0.1);
        assert_eq!(s.lr(9), 1.0);
        assert!((s.lr(10) - 1.0).abs() < 1e-12);
        assert!((s.lr(60) - 0.55).abs() < 1e-12);
        assert_eq!(s.lr(110), 0.1);
        assert!(s.lr(30) > s.lr(31));
    }
}
