//! Checks against the real data sets of `../shared/data` (MNIST, Fashion-MNIST, JPEG
//! photographs). A checkout without that folder skips them with a message.

use monarch_data::image::{ImageSet, Normalization, Transform, decode_file, open_image_set};
use rand::SeedableRng;
use std::path::PathBuf;

/// `../shared/data` beside the repository, or `MONARCH_SHARED_DATA`, when present.
fn shared() -> Option<PathBuf> {
    let dir = std::env::var_os("MONARCH_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("skipped: no shared data folder at {}", dir.display());
        None
    }
}

fn class_counts(set: &dyn ImageSet) -> Vec<usize> {
    let mut counts = vec![0; set.num_classes()];
    for i in 0..set.len() {
        counts[set.label(i).unwrap() as usize] += 1;
    }
    counts
}

#[test]
fn mnist_and_fashion_mnist_test_sets() {
    let Some(dir) = shared() else { return };
    let mnist = open_image_set(dir.join("images/mnist/t10k-images.idx3-ubyte.gz")).unwrap();
    assert_eq!((mnist.len(), mnist.image_size()), (10000, Some((28, 28))));
    // MNIST's published test-set class sizes.
    assert_eq!(class_counts(mnist.as_ref()), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]);
    let fashion = open_image_set(dir.join("images/fashion-mnist/t10k-images-idx3-ubyte.gz")).unwrap();
    assert_eq!(class_counts(fashion.as_ref()), [1000; 10]);
}

#[test]
fn jpeg_photographs_decode_and_augment() {
    let Some(dir) = shared() else { return };
    let img = decode_file(&dir.join("images/jpeg/china.jpg")).unwrap();
    assert_eq!((img.width, img.height, img.channels), (640, 427, 3));
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mut out = vec![0f32; 3 * 224 * 224];
    Transform::train(224).apply(&img, &Normalization::imagenet(), &mut rng, &mut out).unwrap();
    // A photograph normalised with ImageNet statistics: values within [-2.2, 2.7], not constant.
    let (lo, hi) = out.iter().fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    assert!(lo >= -2.2 && hi <= 2.7 && hi - lo > 1.0, "{lo} {hi}");
}
