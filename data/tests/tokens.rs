//! Token shards, data sets, the training loader and the validation pass.

use monarch_data::{
    IGNORE_INDEX, TokenDataset, TokenFile, TokenFormat, TokenLoader, TokenLoaderState, ValidationBatches, read_tokens,
    write_shard,
};
use std::collections::BTreeMap;
use std::path::Path;

/// Tokens 0, 1, 2, ... (mod 50000) from `start`: every window's position can be read off
/// its first token.
fn ramp(start: usize, n: usize) -> Vec<u16> {
    (start..start + n).map(|i| (i % 50000) as u16).collect()
}

fn rows(t: &monarch_tensor::Tensor) -> Vec<Vec<i64>> {
    let cols = t.dims()[1];
    t.to_vec::<i64>().unwrap().chunks(cols).map(<[i64]>::to_vec).collect()
}

#[test]
fn shard_round_trip_and_nanogpt_files() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = vec![0, 1, 50256, 65535, 7];
    let p = dir.path().join("a.bin");
    write_shard(&p, &tokens).unwrap();
    assert_eq!(read_tokens(&p).unwrap(), tokens);
    let f = TokenFile::open(&p).unwrap();
    assert_eq!((f.format(), f.len(), f.get(3), f.get(5)), (TokenFormat::LlmC, 5, Some(65535), None));
    assert_eq!(f.id_range(), Some((0, 65535)));
    // No temporary file is left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    let raw: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
    std::fs::write(dir.path().join("train.bin"), &raw).unwrap();
    let f = TokenFile::open(dir.path().join("train.bin")).unwrap();
    assert_eq!((f.format(), f.to_vec()), (TokenFormat::Headerless, tokens.clone()));
    std::fs::write(dir.path().join("val.bin"), b"").unwrap();
    assert!(TokenFile::open(dir.path().join("val.bin")).unwrap().is_empty());
    assert_eq!(TokenDataset::split(dir.path(), "train").unwrap().total_tokens(), 5);
}

#[test]
fn bad_shards_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = monarch_data::encode_shard(&ramp(0, 100)).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        TokenFile::open(&p).unwrap_err().to_string()
    };
    assert!(write("truncated.bin", &good[..good.len() - 10]).contains("truncated.bin: at byte 8: header says 100"));
    assert!(write("short_header.bin", &good[..500]).contains("at byte 500: truncated header"));
    let mut bad = good.clone();
    bad[..4].copy_from_slice(&20240521i32.to_le_bytes());
    assert!(write("magic.bin", &bad).contains("magic.bin: at byte 0: wrong magic 20240521"));
    let mut extra = good.clone();
    extra.extend([1, 2]);
    assert!(write("long.bin", &extra).contains("but 202 bytes follow"));
    assert!(write("empty.bin", b"").contains("empty.bin: at byte 0"));
    let missing = TokenFile::open(dir.path().join("missing.bin")).unwrap_err().to_string();
    assert!(missing.contains("missing.bin"), "{missing}");
    assert!(TokenDataset::open(dir.path().join("nothing_*.bin")).unwrap_err().to_string().contains("no file matches"));
    assert!(TokenDataset::open(dir.path()).is_err());
    assert!(TokenDataset::split(dir.path(), "test").is_err());
    assert!(TokenDataset::split(dir.path().join("nope"), "train").is_err());
}

fn three_shards(dir: &Path) -> TokenDataset {
    // 1001, 700 and 1300 tokens: with T = 100 they hold 10, 6 and 12 windows.
    let mut start = 0;
    for (i, n) in [1001, 700, 1300].into_iter().enumerate() {
        write_shard(&dir.join(format!("train_{i:06}.bin")), &ramp(start, n)).unwrap();
        start += n;
    }
    TokenDataset::open(dir.join("train_*.bin")).unwrap()
}

#[test]
fn batches_are_windows_with_targets_shifted_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = three_shards(dir.path());
    assert_eq!(data.files().len(), 3);
    let mut loader = TokenLoader::new(data, 4, 100, 1, true).unwrap();
    for _ in 0..20 {
        let b = loader.next_batch().unwrap();
        assert_eq!((b.inputs.dims(), b.targets.dims(), b.num_targets), (&[4, 100][..], &[4, 100][..], 400));
        for (x, y) in rows(&b.inputs).iter().zip(rows(&b.targets)) {
            // A contiguous window of the ramp, and its targets one token later.
            for j in 0..100 {
                assert_eq!(y[j], (x[j] + 1) % 50000);
            }
        }
    }
}

/// (epoch, first input) of the next `n` rows.
fn row_starts(loader: &mut TokenLoader, n: usize) -> Vec<(u64, i64)> {
    let mut out = Vec::new();
    while out.len() < n {
        let epoch = loader.state().epoch;
        let b = loader.next_batch().unwrap();
        out.extend(rows(&b.inputs).iter().map(|r| (epoch, r[0])));
    }
    out
}

#[test]
fn an_epoch_visits_every_window_once_in_a_seeded_order() {
    let dir = tempfile::tempdir().unwrap();
    let data = three_shards(dir.path());
    // 28 windows per epoch; batches of 4 fill exactly seven batches.
    let mut a = TokenLoader::new(data.clone(), 4, 100, 7, true).unwrap();
    let first = row_starts(&mut a, 28);
    // The epoch is used up: the state already points into the next one.
    assert!(first.iter().all(|&(e, _)| e == 0));
    assert_eq!((a.state().epoch, a.state().window), (1, 0));
    let mut per_file: BTreeMap<usize, Vec<i64>> = BTreeMap::new();
    for &(_, s) in &first {
        let file = if s < 1001 {
            0
        } else if s < 1701 {
            1
        } else {
            2
        };
        per_file.entry(file).or_default().push(s);
    }
    let counts: Vec<usize> = per_file.values().map(Vec::len).collect();
    assert_eq!(counts, vec![10, 6, 12]);
    for starts in per_file.values_mut() {
        starts.sort();
        // T apart within a file: each window once, none overlapping.
        assert!(starts.windows(2).all(|w| w[1] - w[0] == 100), "{starts:?}");
    }
    // Same seed, same order; another seed, another order; unshuffled: in file order.
    let mut again = TokenLoader::new(data.clone(), 4, 100, 7, true).unwrap();
    assert_eq!(row_starts(&mut again, 28), first);
    let mut other = TokenLoader::new(data.clone(), 4, 100, 8, true).unwrap();
    assert_ne!(row_starts(&mut other, 28), first);
    let mut plain = TokenLoader::new(data, 4, 100, 7, false).unwrap();
    let starts: Vec<i64> = row_starts(&mut plain, 28).into_iter().map(|(_, s)| s).collect();
    let want: Vec<i64> =
        (0..10).map(|w| w * 100).chain((0..6).map(|w| 1001 + w * 100)).chain((0..12).map(|w| 1701 + w * 100)).collect();
    assert_eq!(starts, want);
    // The next epoch is shuffled anew.
    let next = row_starts(&mut a, 28);
    assert!(next.iter().all(|&(e, _)| e == 1));
    assert_ne!(next.iter().map(|x| x.1).collect::<Vec<_>>(), first.iter().map(|x| x.1).collect::<Vec<_>>());
}

#[test]
fn a_saved_state_resumes_at_the_same_batch() {
    let dir = tempfile::tempdir().unwrap();
    let data = three_shards(dir.path());
    let mut straight = TokenLoader::new(data.clone(), 3, 100, 42, true).unwrap();
    let mut resumed = TokenLoader::new(data.clone(), 3, 100, 42, true).unwrap();
    // Stop mid-file and mid-epoch, go through JSON as a checkpoint would.
    for _ in 0..13 {
        straight.next_batch().unwrap();
        resumed.next_batch().unwrap();
    }
    let json = serde_json::to_string(resumed.state()).unwrap();
    drop(resumed);
    let state: TokenLoaderState = serde_json::from_str(&json).unwrap();
    let mut resumed = TokenLoader::resume(data.clone(), state.clone()).unwrap();
    for _ in 0..30 {
        let (x, y) = (straight.next_batch().unwrap(), resumed.next_batch().unwrap());
        assert_eq!(x.inputs.to_vec::<i64>().unwrap(), y.inputs.to_vec::<i64>().unwrap());
        assert_eq!(x.targets.to_vec::<i64>().unwrap(), y.targets.to_vec::<i64>().unwrap());
    }
    // Other data, or a state out of range, is refused.
    let other = TokenDataset::from_files(data.files()[..2].to_vec()).unwrap();
    assert!(TokenLoader::resume(other, state.clone()).unwrap_err().to_string().contains("saved for 3 files"));
    let bad = TokenLoaderState { window: 1000, ..state.clone() };
    assert!(TokenLoader::resume(data.clone(), bad).is_err());
    let bad = TokenLoaderState { file: 3, ..state };
    assert!(TokenLoader::resume(data, bad).is_err());
}

#[test]
fn loader_arguments_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let data = three_shards(dir.path());
    assert!(TokenLoader::new(data.clone(), 0, 10, 0, true).is_err());
    assert!(TokenLoader::new(data.clone(), 1, 0, 0, true).is_err());
    let err = TokenLoader::new(data, 1, 1300, 0, true).err().unwrap().to_string();
    assert!(err.contains("seq_len + 1 = 1301"), "{err}");
    assert!(ValidationBatches::new(three_shards(dir.path()), 0, 5).is_err());
}

#[test]
fn validation_covers_every_target_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = three_shards(dir.path());
    let stream: Vec<i64> = data.files().iter().flat_map(|f| f.to_vec()).map(i64::from).collect();
    for (b, t) in [(4, 100), (3, 64), (1, 1), (5, 3000), (2, 2999)] {
        let pass = ValidationBatches::new(data.clone(), b, t).unwrap();
        let batches = pass.num_batches();
        let (mut inputs, mut targets, mut counted, mut seen) = (Vec::new(), Vec::new(), 0, 0);
        for batch in pass {
            let batch = batch.unwrap();
            assert!(batch.inputs.dims()[0] <= b && batch.inputs.dims()[1] == t);
            counted += batch.num_targets;
            let ys = batch.targets.to_vec::<i64>().unwrap();
            for (x, y) in batch.inputs.to_vec::<i64>().unwrap().into_iter().zip(ys) {
                if y != IGNORE_INDEX {
                    inputs.push(x);
                    targets.push(y);
                }
            }
            seen += 1;
        }
        assert_eq!(seen, batches);
        assert_eq!(counted, stream.len() - 1);
        assert_eq!(targets, stream[1..], "b={b} t={t}");
        assert_eq!(inputs, stream[..stream.len() - 1]);
    }
}

#[test]
fn tokens_in_memory_load_like_files() {
    let f = TokenFile::from_tokens("mem", &ramp(0, 50));
    let mut loader = TokenLoader::new(TokenDataset::from_files(vec![f]).unwrap(), 2, 7, 0, false).unwrap();
    let b = loader.next_batch().unwrap();
    assert_eq!(rows(&b.inputs), vec![(0..7).collect::<Vec<i64>>(), (7..14).collect()]);
    assert!(TokenDataset::from_files(vec![]).is_err());
}

#[test]
fn the_shuffled_order_is_pinned_across_builds() {
    // A checkpoint written by one build must resume identically in the next: the order
    // comes from ChaCha8 keyed by (seed, epoch, file) and rand's Fisher-Yates shuffle,
    // both value-stable. These starts were recorded when the loader was written; if this
    // test fails, saved loader states no longer resume where they stopped.
    let dir = tempfile::tempdir().unwrap();
    let mut loader = TokenLoader::new(three_shards(dir.path()), 4, 100, 7, true).unwrap();
    let starts: Vec<i64> = row_starts(&mut loader, 8).into_iter().map(|(_, s)| s).collect();
    // File 2 (tokens 1701..3001) comes first, cut at offset 54 into windows 100 apart.
    assert_eq!(starts, [2555, 2055, 1855, 2155, 2855, 2355, 1955, 1755]);
}
