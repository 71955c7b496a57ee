//! The validation pass: the files of a split read as one stream, in order, so that every
//! token but the first is a target exactly once.

use crate::{Error, IGNORE_INDEX, Result, TokenBatch, TokenDataset};
use monarch_tensor::Tensor;

/// Batches that cover a data set's stream of N tokens exactly once: row r holds inputs
/// r·T..r·T + T and the targets one token later, so that the targets of the whole pass are
/// tokens 1..N, each once. The last batch may have fewer rows, and its last row is padded
/// with input 0 and target [`IGNORE_INDEX`].
pub struct ValidationBatches {
    data: TokenDataset,
    starts: Vec<usize>,
    batch_size: usize,
    seq_len: usize,
    next: usize,
    total: usize,
}

impl ValidationBatches {
    /// A pass over all of `data` with batches of at most `batch_size` rows of `seq_len`.
    pub fn new(data: TokenDataset, batch_size: usize, seq_len: usize) -> Result<Self> {
        if batch_size == 0 || seq_len == 0 {
            return Err(Error::Config(format!(
                "batch size and sequence length must be positive, not {batch_size} and {seq_len}"
            )));
        }
        let mut starts = Vec::with_capacity(data.files().len());
        let mut total = 0;
        for f in data.files() {
            starts.push(total);
            total += f.len();
        }
        Ok(Self { data, starts, batch_size, seq_len, next: 0, total })
    }

    /// Number of batches in the pass.
    pub fn num_batches(&self) -> usize {
        self.num_rows().div_ceil(self.batch_size)
    }

    fn num_rows(&self) -> usize {
        self.total.saturating_sub(1).div_ceil(self.seq_len)
    }

    /// Appends stream tokens `from..from + n` (within the stream) to `out`.
    fn read(&self, mut from: usize, mut n: usize, out: &mut Vec<i64>) {
        let mut f = self.starts.partition_point(|&s| s <= from) - 1;
        while n > 0 {
            let file = &self.data.files()[f];
            let local = from - self.starts[f];
            let take = n.min(file.len() - local);
            file.extend_i64(local, take, out);
            from += take;
            n -= take;
            f += 1;
        }
    }
}

impl Iterator for ValidationBatches {
    type Item = Result<TokenBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        let rows = self.num_rows();
        let first = self.next * self.batch_size;
        if first >= rows {
            return None;
        }
        self.next += 1;
        let t = self.seq_len;
        let b = self.batch_size.min(rows - first);
        let mut inputs = Vec::with_capacity(b * t);
        let mut targets = Vec::with_capacity(b * t);
        let mut num_targets = 0;
        for row in first..first + b {
            let start = row * t;
            let n = t.min(self.total - 1 - start);
            self.read(start, n, &mut inputs);
            self.read(start + 1, n, &mut targets);
            inputs.resize(inputs.len() + t - n, 0);
            targets.resize(targets.len() + t - n, IGNORE_INDEX);
            num_targets += n;
        }
        let batch = (|| {
            Ok(TokenBatch {
                inputs: Tensor::from_vec(inputs, [b, t])?,
                targets: Tensor::from_vec(targets, [b, t])?,
                num_targets,
            })
        })();
        Some(batch)
    }
}
