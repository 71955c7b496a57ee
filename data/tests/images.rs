//! Image sets on disk: folders, packed files, IDX, CIFAR-10, digits; format detection,
//! bad input, and the prefetching loader.

use monarch_data::image::{
    Cifar10, IdxImages, ImageFolder, ImageLoader, ImageLoaderConfig, ImageSet, PackedImages, Transform, open_image_set,
    open_image_split, pack_image_set,
};
use monarch_data::{Split, embedded};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

/// A `w`×`h` image whose pixels encode (x, y, class), saved as PNG (lossless) or JPEG.
fn save_image(path: &Path, w: u32, h: u32, class: u8) {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, class * 40]));
    img.save(path).unwrap();
}

/// root/{cat,dog}/ with 3 and 2 images of different sizes, plus a README that is ignored.
fn image_tree(root: &Path) {
    for (class, name, n) in [(0u8, "cat", 3), (1, "dog", 2)] {
        std::fs::create_dir_all(root.join(name)).unwrap();
        for i in 0..n {
            let ext = if i % 2 == 0 { "png" } else { "JPEG" };
            save_image(&root.join(name).join(format!("{i}.{ext}")), 20 + 4 * i, 16 + 2 * i, class);
        }
    }
    std::fs::write(root.join("cat/README.txt"), "not an image").unwrap();
}

fn config(batch: usize, transform: Transform) -> ImageLoaderConfig {
    ImageLoaderConfig { workers: 3, ..ImageLoaderConfig::new(batch, transform) }
}

fn collect(loader: ImageLoader) -> Vec<(Vec<f32>, Vec<i64>)> {
    loader.map(|b| b.unwrap()).map(|b| (b.images.to_vec::<f32>().unwrap(), b.labels.to_vec::<i64>().unwrap())).collect()
}

#[test]
fn folder_of_classes_loads_in_seeded_batches() {
    let dir = tempfile::tempdir().unwrap();
    image_tree(dir.path());
    let folder = ImageFolder::open(dir.path()).unwrap();
    assert_eq!((folder.len(), folder.num_classes(), folder.classes()), (5, 2, &["cat".to_string(), "dog".into()][..]));
    assert_eq!((0..5).map(|i| folder.label(i).unwrap()).collect::<Vec<_>>(), vec![0, 0, 0, 1, 1]);
    let img = folder.image(0).unwrap();
    assert_eq!((img.width, img.height, img.channels, &img.pixels[3..6]), (20, 16, 3, &[7u8, 0, 0][..]));
    assert!(folder.image(5).is_err());

    let set: Arc<dyn ImageSet> = Arc::new(folder);
    let loader = ImageLoader::new(set.clone(), config(2, Transform::train(8)), 0, 0).unwrap();
    assert_eq!(loader.remaining(), 3);
    let a = collect(loader);
    assert_eq!(a.iter().map(|b| b.1.len()).collect::<Vec<_>>(), vec![2, 2, 1]);
    assert_eq!(a[0].0.len(), 2 * 3 * 8 * 8);
    let mut labels: Vec<i64> = a.iter().flat_map(|b| b.1.clone()).collect();
    labels.sort();
    assert_eq!(labels, vec![0, 0, 0, 1, 1]);
    // Same seed and epoch: same batches, whatever the number of workers.
    let one_worker = ImageLoaderConfig { workers: 1, prefetch: 1, ..config(2, Transform::train(8)) };
    assert_eq!(collect(ImageLoader::new(set.clone(), one_worker, 0, 0).unwrap()), a);
    // Another epoch: another order or other crops.
    assert_ne!(collect(ImageLoader::new(set.clone(), config(2, Transform::train(8)), 1, 0).unwrap()), a);
    // Resuming at batch 1 gives the rest of the epoch.
    assert_eq!(collect(ImageLoader::new(set.clone(), config(2, Transform::train(8)), 0, 1).unwrap()), a[1..]);
    // Evaluation: in order, deterministic, drop_last honoured.
    let eval = ImageLoaderConfig { shuffle: false, drop_last: true, ..config(2, Transform::Eval { size: 6 }) };
    let e = collect(ImageLoader::new(set.clone(), eval, 0, 0).unwrap());
    assert_eq!(e.iter().map(|b| b.1.clone()).collect::<Vec<_>>(), vec![vec![0, 0], vec![0, 1]]);
    // Photos of different sizes cannot be batched as they are.
    assert!(ImageLoader::new(set, config(2, Transform::AsIs), 0, 0).is_err());
}

#[test]
fn corrupt_images_are_named_or_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    image_tree(dir.path());
    std::fs::write(dir.path().join("dog/broken.jpg"), b"\xff\xd8\xff\xe0 this is not a JPEG").unwrap();
    std::fs::write(dir.path().join("cat/text.png"), b"hello").unwrap();
    let set: Arc<dyn ImageSet> = Arc::new(ImageFolder::open(dir.path()).unwrap());
    assert_eq!(set.len(), 7);
    let strict = ImageLoaderConfig { shuffle: false, ..config(4, Transform::Eval { size: 4 }) };
    let errors: Vec<String> = ImageLoader::new(set.clone(), strict.clone(), 0, 0)
        .unwrap()
        .filter_map(|b| b.err())
        .map(|e| e.to_string())
        .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].contains("text.png: cannot decode image"), "{errors:?}");
    assert!(errors[1].contains("broken.jpg: cannot decode image"), "{errors:?}");
    let lenient = ImageLoaderConfig { skip_corrupt: true, ..strict };
    let mut loader = ImageLoader::new(set, lenient, 0, 0).unwrap();
    let rows: usize = loader.by_ref().map(|b| b.unwrap().labels.dims()[0]).sum();
    assert_eq!((rows, loader.skipped()), (5, 2));
}

#[test]
fn missing_or_empty_folders_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    assert!(ImageFolder::open(dir.path().join("missing")).unwrap_err().to_string().contains("missing"));
    assert!(ImageFolder::open(dir.path()).unwrap_err().to_string().contains("no class subfolders"));
    std::fs::create_dir(dir.path().join("empty_class")).unwrap();
    let err = ImageFolder::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("empty_class: class folder holds no"), "{err}");
    assert!(open_image_set(dir.path().join("missing")).is_err());
}

#[test]
fn flat_folder_with_a_label_file() {
    let dir = tempfile::tempdir().unwrap();
    let val = dir.path().join("val");
    std::fs::create_dir(&val).unwrap();
    for (i, class) in [2u8, 0, 1].into_iter().enumerate() {
        save_image(&val.join(format!("ILSVRC2012_val_{i:08}.JPEG")), 10, 10, class);
    }
    let labels = dir.path().join("LOC_val_solution.csv");
    std::fs::write(
        &labels,
        "ImageId,PredictionString\nILSVRC2012_val_00000000,n03 1 2 3 4\nILSVRC2012_val_00000001,n01 5 6 7 8\n\
         ILSVRC2012_val_00000002,n02 0 0 1 1 n02 2 2 3 3\n",
    )
    .unwrap();
    let set = ImageFolder::open_flat(&val, &labels).unwrap();
    assert_eq!(set.classes(), &["n01", "n02", "n03"]);
    assert_eq!((0..3).map(|i| set.label(i).unwrap()).collect::<Vec<_>>(), vec![2, 0, 1]);
    std::fs::write(&labels, "ILSVRC2012_val_00000000.JPEG n03\n").unwrap();
    let err = ImageFolder::open_flat(&val, &labels).unwrap_err().to_string();
    assert!(err.contains("has no label for image") && err.contains("00000001"), "{err}");
}

#[test]
fn packed_files_round_trip_and_detect() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("train");
    image_tree(&tree);
    let folder = ImageFolder::open(&tree).unwrap();
    let out = dir.path().join("train.mimg");
    let report = pack_image_set(&folder, &out, 12, false).unwrap();
    assert_eq!((report.images, report.skipped), (5, 0));
    let packed = PackedImages::open(&out).unwrap();
    assert_eq!((packed.len(), packed.image_size(), packed.class_names()), (5, Some((12, 12)), folder.class_names()));
    for i in 0..5 {
        assert_eq!(packed.label(i).unwrap(), folder.label(i).unwrap());
    }
    // The first image is a 20x16 PNG: its central 16x16 square starts at x = 2. Resized to
    // 12x12, the blue channel (the class) stays constant and red still grows along x.
    let img = packed.image(0).unwrap();
    assert!(img.pixels.chunks(3).all(|p| p[2] == 0));
    assert!(img.pixels[3 * 11] > img.pixels[0]);
    // Packing an image set that is already square at the same size keeps pixels exactly.
    let digits = embedded::digits().unwrap();
    let dpath = dir.path().join("digits.mimg");
    pack_image_set(&digits, &dpath, 8, false).unwrap();
    let dpacked = open_image_set(&dpath).unwrap();
    assert_eq!((dpacked.format(), dpacked.len()), ("packed images", 1797));
    assert_eq!(dpacked.image(1796).unwrap(), digits.image(1796).unwrap());
    assert_eq!(open_image_split(dir.path(), Split::Train).unwrap().format(), "image folder");
    // Truncation and a wrong magic are errors naming the file, and no partial file remains.
    let bytes = std::fs::read(&dpath).unwrap();
    std::fs::write(&dpath, &bytes[..bytes.len() - 1]).unwrap();
    assert!(PackedImages::open(&dpath).err().unwrap().to_string().contains("digits.mimg: at byte 24"));
    let mut bad = bytes.clone();
    bad[0] = b'X';
    std::fs::write(&dpath, &bad).unwrap();
    assert!(PackedImages::open(&dpath).is_err());
    std::fs::write(tree.join("cat/zz.png"), b"junk").unwrap();
    let err = pack_image_set(&ImageFolder::open(&tree).unwrap(), &out, 12, false).unwrap_err().to_string();
    assert!(err.contains("zz.png"), "{err}");
    assert_eq!(PackedImages::open(&out).unwrap().len(), 5, "a failed pack leaves the old file");
    let report = pack_image_set(&ImageFolder::open(&tree).unwrap(), &out, 12, true).unwrap();
    assert_eq!((report.images, report.skipped), (5, 1));
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(names.iter().all(|n| !n.to_string_lossy().contains(".tmp")), "{names:?}");
}

fn gz(path: &Path, bytes: &[u8]) {
    let mut e = flate2::write::GzEncoder::new(std::fs::File::create(path).unwrap(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap();
}

fn idx(dims: &[u32], values: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        b.extend(d.to_be_bytes());
    }
    b.extend(values);
    b
}

#[test]
fn idx_and_cifar_files_open_and_detect() {
    let dir = tempfile::tempdir().unwrap();
    let pixels: Vec<u8> = (0..3 * 4 * 5).map(|i| i as u8).collect();
    gz(&dir.path().join("train-images-idx3-ubyte.gz"), &idx(&[3, 4, 5], &pixels));
    gz(&dir.path().join("train-labels-idx1-ubyte.gz"), &idx(&[3], &[4, 0, 9]));
    std::fs::write(dir.path().join("t10k-images.idx3-ubyte"), idx(&[1, 4, 5], &pixels[..20])).unwrap();
    std::fs::write(dir.path().join("t10k-labels.idx1-ubyte"), idx(&[1], &[2])).unwrap();
    let train = open_image_set(dir.path().join("train-images-idx3-ubyte.gz")).unwrap();
    assert_eq!(
        (train.format(), train.len(), train.image_size(), train.num_classes()),
        ("IDX (MNIST)", 3, Some((4, 5)), 10)
    );
    assert_eq!(train.image(2).unwrap().pixels, pixels[40..]);
    assert_eq!(train.label(2).unwrap(), 9);
    let test = open_image_split(dir.path(), Split::Val).unwrap();
    assert_eq!((test.len(), test.label(0).unwrap()), (1, 2));
    assert_eq!(open_image_split(dir.path(), Split::Train).unwrap().len(), 3);
    // A label file that disagrees, a missing label file, a truncated image file.
    std::fs::write(dir.path().join("t10k-labels.idx1-ubyte"), idx(&[2], &[2, 3])).unwrap();
    let err = IdxImages::open(dir.path().join("t10k-images.idx3-ubyte")).unwrap_err().to_string();
    assert!(err.contains("t10k-labels.idx1-ubyte") && err.contains("labels for 1 images"), "{err}");
    std::fs::write(dir.path().join("x-images.idx3-ubyte"), idx(&[1, 4, 5], &pixels[..20])).unwrap();
    assert!(
        IdxImages::open(dir.path().join("x-images.idx3-ubyte"))
            .unwrap_err()
            .to_string()
            .contains("x-labels.idx1-ubyte")
    );
    gz(&dir.path().join("train-images-idx3-ubyte.gz"), &idx(&[3, 4, 5], &pixels[..59]));
    let err = open_image_set(dir.path().join("train-images-idx3-ubyte.gz")).err().unwrap().to_string();
    assert!(err.contains("train-images-idx3-ubyte.gz: at byte 16"), "{err}");
    std::fs::write(dir.path().join("bad-images-idx3-ubyte.gz"), b"\x1f\x8b\x08\x00garbage").unwrap();
    assert!(open_image_set(dir.path().join("bad-images-idx3-ubyte.gz")).err().unwrap().to_string().contains("gzip"));

    let cifar = dir.path().join("cifar-10-batches-bin");
    std::fs::create_dir(&cifar).unwrap();
    let record = |label: u8| std::iter::once(label).chain((0..3072).map(|i| (i % 251) as u8)).collect::<Vec<u8>>();
    std::fs::write(cifar.join("data_batch_1.bin"), [record(3), record(5)].concat()).unwrap();
    std::fs::write(cifar.join("data_batch_2.bin"), record(9)).unwrap();
    std::fs::write(cifar.join("test_batch.bin"), record(1)).unwrap();
    let train = open_image_set(&cifar).unwrap();
    assert_eq!((train.format(), train.len(), train.label(2).unwrap()), ("CIFAR-10 binary", 3, 9));
    assert_eq!(open_image_split(&cifar, Split::Test).unwrap().label(0).unwrap(), 1);
    assert_eq!(open_image_set(cifar.join("test_batch.bin")).unwrap().len(), 1);
    assert!(Cifar10::open(&[]).is_err());
    std::fs::write(cifar.join("data_batch_3.bin"), &record(2)[..100]).unwrap();
    assert!(open_image_set(&cifar).err().unwrap().to_string().contains("data_batch_3.bin: at byte 0"));
}

#[test]
fn unknown_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("notes.md");
    std::fs::write(&p, "hello").unwrap();
    let err = open_image_set(&p).err().unwrap().to_string();
    assert!(err.contains("notes.md: unknown image set format"), "{err}");
    std::fs::create_dir(dir.path().join("train")).unwrap();
    assert!(open_image_set(dir.path()).err().unwrap().to_string().contains("give ROOT/train"));
    assert!(open_image_split(dir.path().join("train"), Split::Val).is_err());
}

#[test]
fn embedded_digits_are_the_uci_set() {
    let set = open_image_set("embedded:digits").unwrap();
    assert_eq!((set.len(), set.num_classes(), set.channels(), set.image_size()), (1797, 10, 1, Some((8, 8))));
    let mut counts = [0; 10];
    for i in 0..set.len() {
        counts[set.label(i).unwrap() as usize] += 1;
    }
    // The UCI test set's class counts, as documented by scikit-learn's load_digits.
    assert_eq!(counts, [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]);
    // The first image is a zero: 0 0 5 13 9 1 0 0 on its top row (values 0-16, scaled to 0-255).
    let top: Vec<u8> = set.image(0).unwrap().pixels[..8].to_vec();
    assert_eq!(top, [0, 0, 80, 207, 143, 16, 0, 0]);
    let loader = ImageLoader::new(Arc::from(set), config(500, Transform::AsIs), 0, 0).unwrap();
    let batches = collect(loader);
    assert_eq!(batches.iter().map(|b| b.1.len()).sum::<usize>(), 1797);
    // Normalised to [-1, 1] with mean 0.5, deviation 0.5.
    assert!(batches.iter().flat_map(|b| &b.0).all(|v| (-1.0..=1.0).contains(v)));
}

#[test]
fn loader_settings_are_checked() {
    let set: Arc<dyn ImageSet> = Arc::new(embedded::digits().unwrap());
    let base = config(8, Transform::AsIs);
    for bad in [
        ImageLoaderConfig { batch_size: 0, ..base.clone() },
        ImageLoaderConfig { workers: 0, ..base.clone() },
        ImageLoaderConfig { prefetch: usize::MAX, ..base.clone() },
        ImageLoaderConfig { normalization: Some(monarch_data::image::Normalization::imagenet()), ..base.clone() },
    ] {
        assert!(ImageLoader::new(set.clone(), bad, 0, 0).is_err());
    }
    assert!(ImageLoader::new(set, base, 0, 1000).err().unwrap().to_string().contains("past the epoch's 225 batches"));
}
