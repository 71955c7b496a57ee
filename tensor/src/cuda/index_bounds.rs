//! What an upload saw of an `I64` buffer's values, kept beside the buffer so that index
//! ops (embedding lookups, gathers, cross-entropy targets) can bounds-check device
//! indices without reading them back, which would make the host wait for the GPU.

/// The extremes of an `I64` buffer's values when it was uploaded: the largest value
/// that is not negative and the smallest and largest negative ones. Any view of the
/// buffer holds a subset of its values, so what the bounds admit holds for views too.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct IndexBounds {
    max_nonneg: Option<i64>,
    negative: Option<(i64, i64)>,
}

impl IndexBounds {
    /// The bounds of `values`.
    pub(crate) fn of(values: &[i64]) -> IndexBounds {
        values.iter().fold(IndexBounds::default(), |b, &v| {
            if v >= 0 {
                IndexBounds { max_nonneg: Some(b.max_nonneg.map_or(v, |m| m.max(v))), ..b }
            } else {
                IndexBounds { negative: Some(b.negative.map_or((v, v), |(lo, hi)| (lo.min(v), hi.max(v)))), ..b }
            }
        })
    }

    /// Whether every value is certainly an index below `size` or equal to `ignore`.
    /// `false` only means the bounds cannot tell: the caller reads the values.
    pub(crate) fn admit(&self, size: usize, ignore: Option<i64>) -> bool {
        let size = i64::try_from(size).unwrap_or(i64::MAX);
        let indices = self.max_nonneg.is_none_or(|m| m < size);
        let ignored = match self.negative {
            None => true,
            Some((lo, hi)) => lo == hi && ignore == Some(lo),
        };
        indices && ignored
    }
}

#[cfg(test)]
mod tests {
    use super::IndexBounds;

    /// Whether every value is an index below `size` or `ignore`, read one by one.
    fn exact(values: &[i64], size: usize, ignore: Option<i64>) -> bool {
        values.iter().all(|&v| Some(v) == ignore || (0..size as i64).contains(&v))
    }

    #[test]
    fn bounds_admit_only_what_the_values_allow() {
        let cases: [&[i64]; 8] = [&[], &[0], &[3, 0, 2], &[4], &[-100, 2, -100], &[-100, -1, 0], &[-1], &[7, -100]];
        for values in cases {
            let b = IndexBounds::of(values);
            for size in 0..6 {
                for ignore in [None, Some(-100), Some(-1), Some(0), Some(7)] {
                    let admitted = b.admit(size, ignore);
                    // Sound: never admits values that break the bounds.
                    assert!(!admitted || exact(values, size, ignore), "{values:?} {size} {ignore:?}");
                    // Complete where it matters: all indices in range, at most one
                    // negative value and that one ignored.
                    let one_ignored_negative = values.iter().filter(|&&v| v < 0).all(|&v| Some(v) == ignore);
                    if values.iter().all(|&v| v < size as i64) && one_ignored_negative {
                        assert!(admitted, "{values:?} {size} {ignore:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn huge_sizes_and_extreme_values_do_not_overflow() {
        let b = IndexBounds::of(&[i64::MAX, i64::MIN]);
        assert!(!b.admit(usize::MAX, None));
        assert!(!b.admit(usize::MAX, Some(i64::MIN)));
        assert!(IndexBounds::of(&[i64::MAX - 1]).admit(usize::MAX, None));
    }
}
