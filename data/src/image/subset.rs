//! A subset of an image set by index, and a seeded train/validation hold-out for sets
//! that come as one piece (the embedded digits, a single image folder).

use super::{ImageSet, RawImage, check_index};
use crate::{Error, Result};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use std::path::Path;
use std::sync::Arc;

/// The images of `inner` at `indices`, in that order.
#[derive(Clone)]
pub struct Subset {
    inner: Arc<dyn ImageSet>,
    indices: Vec<usize>,
}

impl Subset {
    /// The images of `inner` at `indices`; every index must exist.
    pub fn new(inner: Arc<dyn ImageSet>, indices: Vec<usize>) -> Result<Self> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= inner.len()) {
            return Err(Error::Config(format!(
                "{}: subset index {bad} out of range for {} images",
                inner.path().display(),
                inner.len()
            )));
        }
        Ok(Self { inner, indices })
    }

    /// Splits `set` into (train, validation) with a `val_fraction` of the images (at least
    /// one each) drawn at random from `seed`; the same seed gives the same split.
    pub fn holdout(set: Arc<dyn ImageSet>, val_fraction: f64, seed: u64) -> Result<(Subset, Subset)> {
        let n = set.len();
        if !(val_fraction > 0.0 && val_fraction < 1.0) || n < 2 {
            return Err(Error::Config(format!(
                "{}: cannot hold out a fraction {val_fraction} of {n} images (need 0 < fraction < 1, 2+ images)",
                set.path().display()
            )));
        }
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        let n_val = ((n as f64 * val_fraction).round() as usize).clamp(1, n - 1);
        let mut val = order.split_off(n - n_val);
        order.sort_unstable();
        val.sort_unstable();
        Ok((Subset::new(set.clone(), order)?, Subset::new(set, val)?))
    }
}

impl ImageSet for Subset {
    fn path(&self) -> &Path {
        self.inner.path()
    }
    fn format(&self) -> &'static str {
        self.inner.format()
    }
    fn len(&self) -> usize {
        self.indices.len()
    }
    fn num_classes(&self) -> usize {
        self.inner.num_classes()
    }
    fn channels(&self) -> usize {
        self.inner.channels()
    }
    fn image_size(&self) -> Option<(usize, usize)> {
        self.inner.image_size()
    }
    fn class_names(&self) -> Vec<String> {
        self.inner.class_names()
    }
    fn label(&self, i: usize) -> Result<i64> {
        check_index(self, i)?;
        self.inner.label(self.indices[i])
    }
    fn image(&self, i: usize) -> Result<RawImage> {
        check_index(self, i)?;
        self.inner.image(self.indices[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holdout_is_a_seeded_partition() {
        let digits: Arc<dyn ImageSet> = Arc::new(crate::embedded::digits().unwrap());
        let (train, val) = Subset::holdout(digits.clone(), 0.1, 7).unwrap();
        assert_eq!((train.len(), val.len()), (1617, 180));
        let mut all: Vec<usize> = train.indices.iter().chain(&val.indices).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..1797).collect::<Vec<_>>());
        let (_, again) = Subset::holdout(digits.clone(), 0.1, 7).unwrap();
        assert_eq!(again.indices, val.indices);
        let (_, other) = Subset::holdout(digits.clone(), 0.1, 8).unwrap();
        assert_ne!(other.indices, val.indices);
        assert_eq!(val.label(0).unwrap(), digits.label(val.indices[0]).unwrap());
        assert_eq!(val.image(3).unwrap(), digits.image(val.indices[3]).unwrap());
        assert!(val.image(180).is_err());
        assert!(Subset::holdout(digits.clone(), 1.0, 0).is_err());
        assert!(Subset::new(digits, vec![1797]).is_err());
    }
}
