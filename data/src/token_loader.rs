//! The training token loader: (B, T) input batches with their targets shifted by one,
//! drawn from memory-mapped token files in a seeded, resumable order.
//!
//! An epoch visits the files in a shuffled order; in each file it cuts windows of T + 1
//! tokens, T apart (consecutive windows share one token: the last target of one is the
//! first input of the next), starting at a random offset within the file's slack, and
//! visits them in a shuffled order. Everything random is drawn from ChaCha8 keyed by
//! (seed, epoch, file), so the order is the same on every run and machine, and a
//! [`TokenLoaderState`] restores the position exactly.

use crate::{Error, Result, TokenDataset};
use monarch_tensor::Tensor;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// One batch of token windows.
#[derive(Debug)]
pub struct TokenBatch {
    /// Input ids, `I64` of shape (B, T).
    pub inputs: Tensor,
    /// Target ids, `I64` of shape (B, T): each row is its input row shifted left by one
    /// token. Padding positions (validation's last row only) hold [`IGNORE_INDEX`].
    pub targets: Tensor,
    /// Targets that are not [`IGNORE_INDEX`].
    pub num_targets: usize,
}

/// The target id of padding positions, to be left out of the loss.
pub const IGNORE_INDEX: i64 = -1;

/// Where a [`TokenLoader`] stands: serialisable, so that a checkpoint can store it and a
/// resumed run continues with exactly the batches that would have come next.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenLoaderState {
    /// Seed of every random choice.
    pub seed: u64,
    /// Rows per batch.
    pub batch_size: usize,
    /// Tokens per row.
    pub seq_len: usize,
    /// Whether files and windows are shuffled (otherwise: in order, from offset 0).
    pub shuffle: bool,
    /// Epochs completed.
    pub epoch: u64,
    /// Position in this epoch's file order.
    pub file: usize,
    /// Position in the current file's window order.
    pub window: usize,
    /// Tokens per file of the data set: resuming on different data is refused.
    pub file_lengths: Vec<u64>,
}

/// The windows of one file in one epoch.
struct FilePlan {
    file: usize,
    offset: usize,
    order: Vec<u32>,
}

/// Seeded, resumable loader of training batches.
pub struct TokenLoader {
    data: TokenDataset,
    state: TokenLoaderState,
    file_order: Vec<usize>,
    plan: FilePlan,
}

impl std::fmt::Debug for TokenLoader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenLoader").field("files", &self.data.files().len()).field("state", &self.state).finish()
    }
}

impl TokenLoader {
    /// A loader at the start of epoch 0. `shuffle = false` reads files and windows in order.
    pub fn new(data: TokenDataset, batch_size: usize, seq_len: usize, seed: u64, shuffle: bool) -> Result<Self> {
        let file_lengths = data.file_lengths();
        let state = TokenLoaderState { seed, batch_size, seq_len, shuffle, epoch: 0, file: 0, window: 0, file_lengths };
        Self::resume(data, state)
    }

    /// A loader at a saved position. Fails if the data set's files have other lengths than
    /// when the state was saved, or the state is out of range.
    pub fn resume(data: TokenDataset, state: TokenLoaderState) -> Result<Self> {
        let (b, t) = (state.batch_size, state.seq_len);
        if b == 0 || t == 0 {
            return Err(Error::Config(format!("batch size and sequence length must be positive, not {b} and {t}")));
        }
        if let Some(f) = data.files().iter().find(|f| f.len() / t > u32::MAX as usize) {
            return Err(Error::invalid(f.path(), format!("more than 2^32 windows of {t} tokens: split the file")));
        }
        if data.file_lengths() != state.file_lengths {
            return Err(Error::Config(format!(
                "the loader state was saved for {} files of {} tokens, but the data has {} files of {} tokens",
                state.file_lengths.len(),
                state.file_lengths.iter().sum::<u64>(),
                data.files().len(),
                data.total_tokens()
            )));
        }
        if !data.files().iter().any(|f| f.len() > t) {
            return Err(Error::Config(format!(
                "no token file holds a window of seq_len + 1 = {} tokens (largest: {})",
                t + 1,
                data.files().iter().map(|f| f.len()).max().unwrap_or(0)
            )));
        }
        if state.file >= data.files().len() {
            return Err(Error::Config(format!("loader state: file {} of {}", state.file, data.files().len())));
        }
        let file_order = file_order(&state, data.files().len());
        let plan = file_plan(&data, &state, file_order[state.file]);
        if state.window > plan.order.len() {
            return Err(Error::Config(format!("loader state: window {} of {}", state.window, plan.order.len())));
        }
        Ok(Self { data, state, file_order, plan })
    }

    /// The position to save in a checkpoint.
    pub fn state(&self) -> &TokenLoaderState {
        &self.state
    }

    /// The data set read.
    pub fn data(&self) -> &TokenDataset {
        &self.data
    }

    /// The next (B, T) batch; epochs roll over without end.
    pub fn next_batch(&mut self) -> Result<TokenBatch> {
        let (b, t) = (self.state.batch_size, self.state.seq_len);
        let mut inputs = Vec::with_capacity(b * t);
        let mut targets = Vec::with_capacity(b * t);
        for _ in 0..b {
            self.skip_finished_files();
            let start = self.plan.offset + self.plan.order[self.state.window] as usize * t;
            let file = &self.data.files()[self.plan.file];
            file.extend_i64(start, t, &mut inputs);
            file.extend_i64(start + 1, t, &mut targets);
            self.state.window += 1;
        }
        // The state always names the next window, so a saved epoch is the next batch's.
        self.skip_finished_files();
        Ok(TokenBatch {
            inputs: Tensor::from_vec(inputs, [b, t])?,
            targets: Tensor::from_vec(targets, [b, t])?,
            num_targets: b * t,
        })
    }

    /// Moves past files (and epochs) whose windows are all used; some file has windows.
    fn skip_finished_files(&mut self) {
        while self.state.window == self.plan.order.len() {
            self.advance_file();
        }
    }

    fn advance_file(&mut self) {
        self.state.window = 0;
        self.state.file += 1;
        if self.state.file == self.file_order.len() {
            self.state.file = 0;
            self.state.epoch += 1;
            self.file_order = file_order(&self.state, self.data.files().len());
        }
        self.plan = file_plan(&self.data, &self.state, self.file_order[self.state.file]);
    }
}

/// A generator keyed by (seed, epoch, stream): the same numbers on every platform and
/// for every version of this crate.
fn rng(seed: u64, epoch: u64, stream: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&epoch.to_le_bytes());
    key[16..24].copy_from_slice(&stream.to_le_bytes());
    ChaCha8Rng::from_seed(key)
}

fn file_order(state: &TokenLoaderState, n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if state.shuffle {
        order.shuffle(&mut rng(state.seed, state.epoch, u64::MAX));
    }
    order
}

fn file_plan(data: &TokenDataset, state: &TokenLoaderState, file: usize) -> FilePlan {
    let t = state.seq_len;
    let n = data.files()[file].len();
    if n <= t {
        return FilePlan { file, offset: 0, order: Vec::new() };
    }
    let windows = (n - 1) / t;
    let slack = (n - 1) % t;
    let mut order: Vec<u32> = (0..windows as u32).collect();
    let mut offset = 0;
    if state.shuffle {
        let mut r = rng(state.seed, state.epoch, file as u64);
        offset = r.random_range(0..=slack);
        order.shuffle(&mut r);
    }
    FilePlan { file, offset, order }
}
