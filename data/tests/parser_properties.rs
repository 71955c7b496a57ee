//! Property tests: random, truncated and mutated bytes never panic the parsers of token
//! shards, IDX, packed images, CIFAR-10 records and digits CSV; they either parse or
//! return an error.

use monarch_data::image::{Digits, IdxArray, IdxImages, ImageSet, parse_idx, parse_packed_header};
use monarch_data::{TokenFormat, encode_shard, parse_token_bytes};
use proptest::prelude::*;
use std::path::Path;

fn idx_file(dims: &[u32]) -> Vec<u8> {
    let mut b = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        b.extend(d.to_be_bytes());
    }
    b.extend((0..dims.iter().product::<u32>()).map(|i| i as u8));
    b
}

/// Applies up to a few byte edits and a truncation to `bytes`.
fn mutate(mut bytes: Vec<u8>, edits: &[(usize, u8)], keep: usize) -> Vec<u8> {
    for &(at, v) in edits {
        if !bytes.is_empty() {
            let i = at % bytes.len();
            bytes[i] = v;
        }
    }
    bytes.truncate(keep.min(bytes.len()));
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn token_shards_parse_or_fail(tokens in prop::collection::vec(any::<u16>(), 0..300),
                                  edits in prop::collection::vec((any::<usize>(), any::<u8>()), 0..4),
                                  keep in any::<usize>(), name in prop::sample::select(vec!["s.bin", "train.bin"])) {
        let good = encode_shard(&tokens).unwrap();
        let (format, range) = parse_token_bytes(Path::new(name), &good, None).unwrap();
        prop_assert_eq!((format, range.len()), (TokenFormat::LlmC, 2 * tokens.len()));
        let bytes = mutate(good, &edits, keep);
        if let Ok((_, range)) = parse_token_bytes(Path::new(name), &bytes, None) {
            prop_assert!(range.end <= bytes.len() && range.len() % 2 == 0);
        }
        let _ = parse_token_bytes(Path::new(name), &bytes, Some(TokenFormat::Headerless));
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
        let p = Path::new("random.bin");
        let _ = parse_token_bytes(p, &bytes, None);
        let _ = parse_idx(p, &bytes);
        let _ = parse_packed_header(p, &bytes);
        let _ = monarch_data::image::Cifar10::from_bytes(p, bytes.clone());
        let _ = Digits::from_bytes(p, bytes);
    }

    #[test]
    fn idx_files_parse_or_fail(dims in prop::collection::vec(0u32..6, 1..4),
                               edits in prop::collection::vec((any::<usize>(), any::<u8>()), 0..4),
                               keep in any::<usize>()) {
        let good = idx_file(&dims);
        let a = parse_idx(Path::new("g"), &good).unwrap();
        prop_assert_eq!(a.dims, dims.iter().map(|&d| d as usize).collect::<Vec<_>>());
        let bytes = mutate(good, &edits, keep);
        if let Ok(a) = parse_idx(Path::new("m"), &bytes) {
            prop_assert_eq!(a.data.len(), a.dims.iter().product::<usize>());
            // Any array accepted as N images serves them without panicking; images of no
            // pixels are refused (N could be 2^32 with no byte to back it).
            if a.dims.len() == 3 {
                let n = a.dims[0];
                let empty = a.dims[1] * a.dims[2] == 0;
                let labels = IdxArray { dims: vec![n], data: vec![0; n.min(1000)] };
                match IdxImages::from_arrays(Path::new("m"), a, Path::new("l"), labels) {
                    Ok(set) => {
                        prop_assert!(!empty && n <= 1000);
                        for i in 0..set.len().min(3) {
                            prop_assert!(set.image(i).is_ok());
                        }
                    }
                    Err(_) => prop_assert!(empty || n > 1000),
                }
            }
        }
    }

    #[test]
    fn packed_headers_parse_or_fail(edits in prop::collection::vec((0usize..64, any::<u8>()), 0..6), keep in any::<usize>()) {
        let mut good = vec![0u8; 64];
        good[..8].copy_from_slice(b"MNRCHIMG");
        for (at, v) in [(8, 1u32), (12, 1), (16, 2), (20, 2), (32, 1)] {
            good[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
        good[24] = 3;
        good.extend([7u8; 3 * 4 + 3 * 2]);
        prop_assert!(parse_packed_header(Path::new("g"), &good).is_ok());
        let bytes = mutate(good, &edits, keep);
        if let Ok(h) = parse_packed_header(Path::new("m"), &bytes) {
            prop_assert_eq!(bytes.len(), 64 + h.count * (h.height * h.width * h.channels + 2) + h.names_bytes);
        }
    }
}
