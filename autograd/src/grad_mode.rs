//! Whether operations record on the tape (per thread).

use std::cell::Cell;

thread_local! {
    static ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Whether operations on this thread currently record backward rules.
pub fn is_grad_enabled() -> bool {
    ENABLED.with(|e| e.get())
}

/// Restores the previous recording state when dropped.
#[must_use = "recording resumes as soon as the guard is dropped"]
pub struct NoGradGuard {
    previous: bool,
}

/// Stops recording on this thread until the returned guard is dropped (for evaluation
/// and for updates that must not be differentiated).
pub fn no_grad() -> NoGradGuard {
    let previous = ENABLED.with(|e| e.replace(false));
    NoGradGuard { previous }
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        ENABLED.with(|e| e.set(self.previous));
    }
}
