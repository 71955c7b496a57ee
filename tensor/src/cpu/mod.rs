//! CPU execution helpers shared by the kernels: strided walks and parallel maps.

pub(crate) mod map;
mod simd;
pub(crate) mod walk;

/// Below this many elements a kernel runs on the calling thread: spreading work over
/// rayon costs more than it saves.
pub(crate) const PAR_MIN: usize = 1 << 15;

/// Number of items per rayon task so that each task has about `PAR_MIN` elements of
/// work when one item is `work_per_item` elements.
pub(crate) fn items_per_task(work_per_item: usize) -> usize {
    (PAR_MIN / work_per_item.max(1)).max(1)
}
