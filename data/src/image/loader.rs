//! The prefetching image loader: worker threads decode and transform whole batches ahead
//! of the consumer, each into its own bounded queue, so that decoding overlaps training
//! and memory stays bounded. Batch order and content depend only on the seed, the epoch
//! and the batch index, never on thread timing.

use super::{ImageSet, Normalization, Transform};
use crate::{Error, Result};
use monarch_tensor::Tensor;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

/// Most worker threads a loader starts.
const MAX_THREADS: usize = 1024;
/// Most batches a worker may hold ready (each queue is allocated up front).
const MAX_PREFETCH: usize = 1024;

/// A batch of images with their labels.
#[derive(Debug)]
pub struct ImageBatch {
    /// `F32` of shape (B, C, H, W), normalised.
    pub images: Tensor,
    /// `I64` of shape (B).
    pub labels: Tensor,
}

/// Settings of an [`ImageLoader`].
#[derive(Clone, Debug)]
pub struct ImageLoaderConfig {
    /// Images per batch (the last batch of an epoch may hold fewer).
    pub batch_size: usize,
    /// Per-image transform.
    pub transform: Transform,
    /// Normalisation; `None`: [`Normalization::default_for`] the set's channels.
    pub normalization: Option<Normalization>,
    /// Seed of the epoch's order and of the augmentations.
    pub seed: u64,
    /// Visit the images in a seeded random order (otherwise in index order).
    pub shuffle: bool,
    /// Decoding threads.
    pub workers: usize,
    /// Batches each worker may hold ready.
    pub prefetch: usize,
    /// Leave out images that fail to decode (counted by [`ImageLoader::skipped`]) instead
    /// of returning the error.
    pub skip_corrupt: bool,
    /// Leave out the last batch of the epoch when it is not full.
    pub drop_last: bool,
}

impl ImageLoaderConfig {
    /// Defaults: shuffled, seed 0, 2 workers, 2 batches prefetched each, errors not skipped.
    pub fn new(batch_size: usize, transform: Transform) -> Self {
        Self {
            batch_size,
            transform,
            normalization: None,
            seed: 0,
            shuffle: true,
            workers: 2,
            prefetch: 2,
            skip_corrupt: false,
            drop_last: false,
        }
    }
}

/// One epoch of batches over an [`ImageSet`], prepared by worker threads. Iterate it;
/// dropping it stops the workers.
pub struct ImageLoader {
    receivers: Vec<Receiver<Result<ImageBatch>>>,
    workers: Vec<JoinHandle<()>>,
    next: usize,
    remaining: usize,
    skipped: Arc<AtomicUsize>,
}

/// What every worker shares.
struct Job {
    set: Arc<dyn ImageSet>,
    cfg: ImageLoaderConfig,
    norm: Normalization,
    order: Vec<usize>,
    epoch: u64,
    out_hw: (usize, usize),
    skipped: Arc<AtomicUsize>,
}

impl ImageLoader {
    /// Starts epoch `epoch` at batch `first_batch` (0 for a fresh epoch; a saved batch
    /// index to resume).
    pub fn new(set: Arc<dyn ImageSet>, cfg: ImageLoaderConfig, epoch: u64, first_batch: usize) -> Result<Self> {
        if cfg.batch_size == 0
            || !(1..=MAX_THREADS).contains(&cfg.workers)
            || !(1..=MAX_PREFETCH).contains(&cfg.prefetch)
        {
            return Err(Error::Config(format!(
                "batch size must be positive, workers in 1..={MAX_THREADS} and prefetch depth in 1..={MAX_PREFETCH}, \
                 not {}, {} and {}",
                cfg.batch_size, cfg.workers, cfg.prefetch
            )));
        }
        let out_hw = cfg.transform.output_size(set.image_size())?;
        let norm = cfg.normalization.clone().unwrap_or_else(|| Normalization::default_for(set.channels()));
        if norm.mean.len() != set.channels() {
            return Err(Error::Config(format!(
                "normalisation for {} channels, but the images have {}",
                norm.mean.len(),
                set.channels()
            )));
        }
        let n = set.len();
        let batches = if cfg.drop_last { n / cfg.batch_size } else { n.div_ceil(cfg.batch_size) };
        if first_batch > batches {
            return Err(Error::Config(format!("batch {first_batch} is past the epoch's {batches} batches")));
        }
        let mut order: Vec<usize> = (0..n).collect();
        if cfg.shuffle {
            order.shuffle(&mut sample_rng(cfg.seed, epoch, u64::MAX));
        }
        let skipped = Arc::new(AtomicUsize::new(0));
        let job = Arc::new(Job { set, cfg: cfg.clone(), norm, order, epoch, out_hw, skipped: skipped.clone() });
        let mut receivers = Vec::with_capacity(cfg.workers);
        let mut workers = Vec::with_capacity(cfg.workers);
        let stride = cfg.workers.min(batches - first_batch).max(1);
        for w in 0..stride {
            let (tx, rx) = sync_channel(cfg.prefetch);
            let job = job.clone();
            let batch_ids = (first_batch + w..batches).step_by(stride);
            workers.push(std::thread::spawn(move || worker(&job, batch_ids, &tx)));
            receivers.push(rx);
        }
        Ok(Self { receivers, workers, next: 0, remaining: batches - first_batch, skipped })
    }

    /// Images left out so far because they failed to decode (with `skip_corrupt`).
    pub fn skipped(&self) -> usize {
        self.skipped.load(Ordering::Relaxed)
    }

    /// Batches still to come in this epoch.
    pub fn remaining(&self) -> usize {
        self.remaining
    }
}

fn sample_rng(seed: u64, epoch: u64, stream: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&epoch.to_le_bytes());
    key[16..24].copy_from_slice(&stream.to_le_bytes());
    key[24] = 1; // keeps these streams apart from the token loader's
    ChaCha8Rng::from_seed(key)
}

fn worker(job: &Job, batch_ids: impl Iterator<Item = usize>, tx: &SyncSender<Result<ImageBatch>>) {
    for b in batch_ids {
        if tx.send(make_batch(job, b)).is_err() {
            return; // the loader was dropped
        }
    }
}

fn make_batch(job: &Job, b: usize) -> Result<ImageBatch> {
    let bs = job.cfg.batch_size;
    let ids = &job.order[b * bs..((b + 1) * bs).min(job.order.len())];
    let (h, w) = job.out_hw;
    let c = job.set.channels();
    let per = c * h * w;
    let mut pixels = vec![0f32; ids.len() * per];
    let mut labels = Vec::with_capacity(ids.len());
    for &i in ids {
        let row = labels.len();
        let result = job.set.image(i).and_then(|img| {
            let mut rng = sample_rng(job.cfg.seed, job.epoch, i as u64);
            job.cfg.transform.apply(&img, &job.norm, &mut rng, &mut pixels[row * per..(row + 1) * per])
        });
        match result {
            Ok(()) => labels.push(job.set.label(i)?),
            Err(Error::Image { .. } | Error::Io { .. } | Error::Format { .. }) if job.cfg.skip_corrupt => {
                job.skipped.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => return Err(e),
        }
    }
    let n = labels.len();
    pixels.truncate(n * per);
    Ok(ImageBatch { images: Tensor::from_vec(pixels, [n, c, h, w])?, labels: Tensor::from_vec(labels, [n])? })
}

impl Iterator for ImageLoader {
    type Item = Result<ImageBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.remaining > 0 {
            let rx = &self.receivers[self.next % self.receivers.len()];
            self.next += 1;
            self.remaining -= 1;
            match rx.recv() {
                Ok(Ok(batch)) if batch.labels.dims()[0] == 0 => continue, // every image skipped
                Ok(result) => return Some(result),
                Err(_) => return Some(Err(Error::Config("an image loader worker stopped unexpectedly".into()))),
            }
        }
        None
    }
}

impl Drop for ImageLoader {
    fn drop(&mut self) {
        self.receivers.clear();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
