//! GPT-2 tokenisation and `tokenize_corpus`: known ids, thread independence, splits,
//! shards, WikiText articles and bad input.

use monarch_data::{
    END_OF_TEXT, Gpt2Tokenizer, Split, TokenizeOptions, embedded, read_tokens, tokenize_corpus, wikitext_articles,
};
use std::path::Path;

fn opts(out: &Path, shard_tokens: usize, val_fraction: Option<f64>) -> TokenizeOptions {
    TokenizeOptions { out_dir: out.to_path_buf(), shard_tokens, val_fraction }
}

/// The tokens of all shards of a split, in order.
fn split_tokens(report: &monarch_data::TokenizeReport, split: Split) -> Vec<u32> {
    let Some(s) = report.splits.iter().find(|s| s.split == split) else { return Vec::new() };
    s.shards.iter().flat_map(|p| read_tokens(p).unwrap()).map(u32::from).collect()
}

/// Expected ids: each document encoded on its own, behind `<|endoftext|>`.
fn reference(docs: &[&str]) -> Vec<u32> {
    let t = Gpt2Tokenizer::new();
    docs.iter().flat_map(|d| std::iter::once(END_OF_TEXT).chain(t.encode(d))).collect()
}

#[test]
fn one_thread_and_many_give_the_same_ids() {
    let text = embedded::shakespeare();
    let t = Gpt2Tokenizer::new();
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap().install(|| t.encode_parallel(text));
    let four = rayon::ThreadPoolBuilder::new().num_threads(4).build().unwrap().install(|| t.encode_parallel(text));
    assert_eq!(one, four);
    // And both equal one sequential pass over the whole text.
    assert_eq!(one, t.encode(text));
    assert!((250_000..400_000).contains(&one.len()), "{}", one.len());
    assert_eq!(t.decode(&one).unwrap(), text);
}

#[test]
fn corpus_files_become_documents_in_shards() {
    let dir = tempfile::tempdir().unwrap();
    let docs = ["First document.\n\nIt has two paragraphs.", "Second, in a folder.", "Third one"];
    std::fs::write(dir.path().join("a.txt"), docs[0]).unwrap();
    std::fs::create_dir_all(dir.path().join("folder/sub")).unwrap();
    std::fs::write(dir.path().join("folder/b.txt"), docs[1]).unwrap();
    std::fs::write(dir.path().join("folder/sub/c.txt"), docs[2]).unwrap();
    std::fs::write(dir.path().join("folder/.hidden"), "skipped").unwrap();
    let out = dir.path().join("out");
    let inputs = [dir.path().join("a.txt"), dir.path().join("folder")];
    let report = tokenize_corpus(&inputs, &opts(&out, 5, Some(0.0))).unwrap();
    let want = reference(&docs);
    assert_eq!((report.files, report.documents), (3, 3));
    assert_eq!(split_tokens(&report, Split::Train), want);
    let train = &report.splits[0];
    assert_eq!(train.shards.len(), want.len().div_ceil(5));
    assert_eq!(train.shards[0], out.join("train_000000.bin"));
    assert_eq!(report.splits.len(), 1, "no validation split with fraction 0");
    // The same run on one thread writes the same ids.
    let out1 = dir.path().join("out1");
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let report1 = pool.install(|| tokenize_corpus(&inputs, &opts(&out1, 5, Some(0.0)))).unwrap();
    assert_eq!(split_tokens(&report1, Split::Train), want);
}

#[test]
fn the_validation_split_is_the_tail_of_the_text() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (&embedded::SHAKESPEARE_WORKS[1].1[..40_000], &embedded::SHAKESPEARE_WORKS[2].1[..60_000]);
    std::fs::write(dir.path().join("1.txt"), a).unwrap();
    std::fs::write(dir.path().join("2.txt"), b).unwrap();
    let report = tokenize_corpus(&[dir.path().to_path_buf()], &opts(&dir.path().join("out"), 1000, None)).unwrap();
    let (train, val) = (split_tokens(&report, Split::Train), split_tokens(&report, Split::Val));
    // Cut within the second file near 90% of the bytes, without changing any id.
    let all: Vec<u32> = train.iter().chain(&val).copied().collect();
    assert_eq!(all, reference(&[a, b]));
    let frac = val.len() as f64 / all.len() as f64;
    assert!((0.08..0.12).contains(&frac), "{frac}");
    assert_ne!(val[0], END_OF_TEXT);
}

#[test]
fn wikitext_files_split_into_articles_and_their_own_splits() {
    let text = " \n = Valkyria = \n \n Text of one .\n \n = = Gameplay = = \n More .\n = Tower Building = \n Other .\n";
    let arts = wikitext_articles(text);
    assert_eq!(arts.len(), 2);
    assert!(arts[0].starts_with(" \n = Valkyria"));
    assert!(arts[1].starts_with(" = Tower Building"));
    assert_eq!(arts.concat(), text);

    let dir = tempfile::tempdir().unwrap();
    let wt = dir.path().join("wikitext-103-raw");
    std::fs::create_dir(&wt).unwrap();
    std::fs::write(wt.join("wiki.train.raw"), text).unwrap();
    std::fs::write(wt.join("wiki.valid.raw"), " = Valid = \n V .\n").unwrap();
    std::fs::write(wt.join("wiki.test.raw"), " = Test = \n T .\n = Two = \n x\n").unwrap();
    let report = tokenize_corpus(&[wt], &opts(&dir.path().join("out"), 1 << 20, None)).unwrap();
    assert_eq!(report.documents, 5);
    assert_eq!(split_tokens(&report, Split::Train), reference(&arts));
    assert_eq!(split_tokens(&report, Split::Val), reference(&[" = Valid = \n V .\n"]));
    assert_eq!(split_tokens(&report, Split::Test), reference(&[" = Test = \n T .\n", " = Two = \n x\n"]));
}

#[test]
fn bad_inputs_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let err = |inputs: &[&Path], o: &TokenizeOptions| tokenize_corpus(inputs, o).unwrap_err().to_string();
    let missing = dir.path().join("missing.txt");
    assert!(err(&[&missing], &opts(&out, 10, None)).contains("missing.txt"));
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert!(err(&[&empty], &opts(&out, 10, None)).contains("folder holds no file"));
    let latin1 = dir.path().join("latin1.txt");
    std::fs::write(&latin1, b"caf\xe9 au lait").unwrap();
    assert!(err(&[&latin1], &opts(&out, 10, None)).contains("latin1.txt: at byte 3: not UTF-8"));
    let ok = dir.path().join("ok.txt");
    std::fs::write(&ok, "fine").unwrap();
    assert!(err(&[&ok], &opts(&out, 0, None)).contains("shard size"));
    assert!(err(&[&ok], &opts(&out, 10, Some(1.0))).contains("validation fraction"));
    assert!(err(&[], &opts(&out, 10, None)).contains("no input"));
    tokenize_corpus(&[&ok], &opts(&out, 10, Some(0.0))).unwrap();
    assert!(err(&[&ok], &opts(&out, 10, Some(0.0))).contains("already holds token shards"));
}
