//! The training binaries end to end on tiny configurations: a few steps of each, resume
//! reproducing an uninterrupted run, reverse sparsification mid-run, dense-to-Monarch
//! starts, `monarch generate`, and clear errors for bad input.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const GPT2: &str = r#"
[model]
vocab_size = 50257
block_size = 32
n_layer = 2
n_head = 2
n_embd = 32
attn_linear = { kind = "monarch", nblocks = 4 }
mlp_linear = { kind = "monarch", nblocks = 4 }

[train]
steps = 6
batch_size = 2
lr = 3e-3
warmup = 2
eval_every = 3
eval_batches = 2
log_every = 1
checkpoint_every = 3

[data]
path = "embedded:shakespeare"
seq_len = 16
"#;

const VIT: &str = r#"
heads = 2
mlp_dim = 32
attn_linear = { kind = "monarch", nblocks = 2 }
mlp_linear = { kind = "monarch", nblocks = 2 }

"#;

const MIXER: &str = r#"
token_mlp_dim = 8
channel_mlp_dim = 32
token_linear = { kind = "lowrank", rank = 4 }
channel_linear = { kind = "monarch", nblocks = 2 }

"#;

/// The start of both image models' `[model]` section: the embedded 8 × 8 digits.
const IMAGE_MODEL: &str = r#"
[model]
image_size = 8
patch_size = 2
channels = 1
num_classes = 10
dim = 16
depth = 1
"#;

/// The `[train]` and `[data]` sections of both image configurations.
const IMAGE_RUN: &str = r#"
[train]
steps = 4
batch_size = 32
eval_every = 2
eval_batches = 1
log_every = 1
checkpoint_every = 2

[data]
path = "embedded:digits"
"#;

fn bin(name: &str) -> PathBuf {
    match name {
        "train-gpt2" => env!("CARGO_BIN_EXE_train-gpt2").into(),
        "train-vit" => env!("CARGO_BIN_EXE_train-vit").into(),
        "train-mixer" => env!("CARGO_BIN_EXE_train-mixer").into(),
        _ => env!("CARGO_BIN_EXE_monarch").into(),
    }
}

fn run(name: &str, args: &[&str]) -> Output {
    Command::new(bin(name)).args(args).output().expect("binary runs")
}

fn ok(name: &str, args: &[&str]) -> Output {
    let out = run(name, args);
    assert!(out.status.success(), "{name} {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn config(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

fn records(dir: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// `(step, loss)` of every training record.
fn losses(dir: &Path) -> Vec<(u64, f64)> {
    records(dir).iter().filter_map(|r| Some((r["step"].as_u64()?, r.get("loss")?.as_f64()?))).collect()
}

fn checkpoints(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("ckpt-"))
        .collect();
    v.sort();
    v
}

#[test]
fn each_binary_trains_logs_plots_and_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let (vit, mixer) = (format!("{IMAGE_MODEL}{VIT}{IMAGE_RUN}"), format!("{IMAGE_MODEL}{MIXER}{IMAGE_RUN}"));
    for (name, text) in [("train-gpt2", GPT2), ("train-vit", vit.as_str()), ("train-mixer", mixer.as_str())] {
        let out = tmp.path().join(name);
        let cfg = config(tmp.path(), &format!("{name}.toml"), text);
        ok(name, &["--config", &cfg, "--out-dir", out.to_str().unwrap(), "--quiet"]);
        let recs = records(&out);
        assert_eq!(recs[0]["event"], "start", "{name}");
        assert!(recs[0]["params"].as_u64().unwrap() > 0);
        let steps = losses(&out).len();
        assert!(steps >= 4, "{name}: {steps} loss records");
        let evals: Vec<&Value> = recs.iter().filter(|r| r.get("val_loss").is_some()).collect();
        assert!(evals.len() >= 2 && evals.last().unwrap()["full"] == true, "{name}");
        let metric = if name == "train-gpt2" { "perplexity" } else { "accuracy" };
        assert!(evals.iter().all(|e| e[metric].as_f64().unwrap().is_finite()), "{name}");
        assert!(recs.iter().any(|r| r.get("tokens_per_s").or(r.get("images_per_s")).is_some()));
        // Utilisation = items/s · FLOPs per item / the matmul rate of the start record.
        let unit = if name == "train-gpt2" { "token" } else { "image" };
        let flops = recs[0][format!("train_flops_per_{unit}")].as_f64().unwrap();
        let peak = recs[0]["matmul_gflops"].as_f64().unwrap() * 1e9;
        assert!(peak > 0.0 && recs[0]["matmul_dtype"] == "f32", "{name}");
        for r in recs.iter().filter(|r| r.get("loss").is_some()) {
            let rate = r[format!("{unit}s_per_s")].as_f64().unwrap();
            let mfu = r["mfu"].as_f64().unwrap();
            assert!(mfu > 0.0 && (mfu - rate * flops / peak).abs() <= 1e-9 * mfu, "{name}: {r}");
        }
        assert_eq!(&std::fs::read(out.join("loss.png")).unwrap()[1..4], b"PNG");
        assert!(!checkpoints(&out).is_empty(), "{name}");
    }
    // monarch generate samples from the GPT-2 run.
    let sampled = ok(
        "monarch",
        &[
            "generate",
            "--checkpoint",
            tmp.path().join("train-gpt2").to_str().unwrap(),
            "--prompt",
            "ROMEO:",
            "--max-new-tokens",
            "8",
        ],
    );
    let text = String::from_utf8(sampled.stdout).unwrap();
    assert!(text.starts_with("ROMEO:") && text.len() > "ROMEO:".len(), "{text:?}");
    let run_dir = tmp.path().join("train-gpt2");
    // A bf16 copy of the model; a dtype it cannot decode in is refused.
    let args = ["generate", "--checkpoint", run_dir.to_str().unwrap(), "--prompt", "ROMEO:"];
    let text =
        String::from_utf8(ok("monarch", &[&args[..], &["--dtype", "bf16", "--max-new-tokens", "4"]].concat()).stdout);
    assert!(text.unwrap().starts_with("ROMEO:"));
    let bad = run("monarch", &[&args[..], &["--dtype", "u8"]].concat());
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--dtype must be f32 or bf16"));
    // Three samples, decoded two and then one at a time.
    let many = ["generate", "--checkpoint", run_dir.to_str().unwrap(), "--prompt", "ROMEO:", "--max-new-tokens", "4"];
    let text =
        String::from_utf8(ok("monarch", &[&many[..], &["--samples", "3", "--batch", "2"]].concat()).stdout).unwrap();
    for i in 1..=3 {
        assert!(text.contains(&format!("--- sample {i} ---\nROMEO:")), "{text:?}");
    }
    assert!(!text.contains("--- sample 4 ---"), "{text:?}");
    let bad = run("monarch", &[&many[..], &["--batch", "0"]].concat());
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--batch must be at least 1"));
    // On a GPU, or on the CPU with a warning where there is none.
    let run = tmp.path().join("train-gpt2");
    let args = ["generate", "--checkpoint", run.to_str().unwrap(), "--prompt", "ROMEO:", "--device", "cuda"];
    let on_gpu = ok("monarch", &[&args[..], &["--max-new-tokens", "4"]].concat());
    assert!(String::from_utf8(on_gpu.stdout).unwrap().starts_with("ROMEO:"));
    if monarch_tensor::cuda_device(0).is_err() {
        assert!(String::from_utf8(on_gpu.stderr).unwrap().contains("generating on the CPU instead"));
    }
}

#[test]
fn resume_reproduces_the_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), "gpt2.toml", GPT2);
    let (whole, parts) = (tmp.path().join("whole"), tmp.path().join("parts"));
    ok("train-gpt2", &["--config", &cfg, "--out-dir", whole.to_str().unwrap(), "--quiet"]);
    ok("train-gpt2", &["--config", &cfg, "--out-dir", parts.to_str().unwrap(), "--quiet", "--stop-after", "3"]);
    assert_eq!(losses(&parts).len(), 3);
    // Flags that would change the run are refused with --resume.
    let bad = run("train-gpt2", &["--resume", "--out-dir", parts.to_str().unwrap(), "--lr", "1"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--resume continues the stored configuration"));
    ok("train-gpt2", &["--resume", "--out-dir", parts.to_str().unwrap(), "--quiet"]);
    let (a, b) = (losses(&whole), losses(&parts));
    assert_eq!(a.iter().map(|p| p.0).collect::<Vec<_>>(), (1..=6).collect::<Vec<_>>());
    assert_eq!(a, b, "resumed losses differ from the uninterrupted run's");
    let evals = |d: &Path| records(d).into_iter().filter_map(|r| r.get("val_loss")?.as_f64()).collect::<Vec<_>>();
    assert_eq!(evals(&whole), evals(&parts));
}

#[test]
fn densify_mid_run_switches_to_dense_layers_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), "gpt2.toml", GPT2);
    let out = tmp.path().join("run");
    let o = out.to_str().unwrap();
    ok("train-gpt2", &["--config", &cfg, "--out-dir", o, "--quiet", "--densify-at", "0.5", "--stop-after", "4"]);
    let recs = records(&out);
    let ev = recs.iter().find(|r| r["event"] == "densify").expect("a densify record");
    assert_eq!((ev["step"].as_u64(), ev["layers"].as_u64()), (Some(3), Some(8)));
    // The step-4 checkpoint holds dense weights where the Monarch factors were.
    let inspect = ok("monarch", &["inspect", out.join("ckpt-00000004.safetensors").to_str().unwrap()]);
    let listing = String::from_utf8(inspect.stdout).unwrap();
    assert!(listing.contains("h.0.mlp.c_fc.weight") && !listing.contains("h.0.mlp.c_fc.blkdiag1"), "{listing}");
    ok("train-gpt2", &["--resume", "--out-dir", o, "--quiet"]);
    assert_eq!(losses(&out).last().unwrap().0, 6);
    assert!(losses(&out).iter().all(|(_, l)| l.is_finite()));
}

#[test]
fn dense_checkpoint_projects_onto_monarch() {
    let tmp = tempfile::tempdir().unwrap();
    let dense = GPT2.replace(r#"{ kind = "monarch", nblocks = 4 }"#, r#"{ kind = "dense" }"#);
    let cfg = config(tmp.path(), "dense.toml", &dense);
    let d = tmp.path().join("dense");
    ok(
        "train-gpt2",
        &["--config", &cfg, "--out-dir", d.to_str().unwrap(), "--quiet", "--max-steps", "2", "--eval-every", "0"],
    );
    let ckpt = d.join("ckpt-00000002.safetensors");
    let m = tmp.path().join("monarch");
    ok(
        "train-gpt2",
        &[
            "--config",
            &cfg,
            "--out-dir",
            m.to_str().unwrap(),
            "--quiet",
            "--max-steps",
            "2",
            "--init-from",
            ckpt.to_str().unwrap(),
            "--project-to",
            "monarch",
        ],
    );
    let start = &records(&m)[0];
    assert_eq!((start["attn_linear"].as_str(), start["mlp_linear"].as_str()), (Some("monarch"), Some("monarch")));
    let m2 = tmp.path().join("m2");
    let bad = run("train-gpt2", &["--config", &cfg, "--out-dir", m2.to_str().unwrap(), "--init-from", cfg.as_str()]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--init-from"), "{}", String::from_utf8_lossy(&bad.stderr));
}

#[test]
fn bad_input_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let o = tmp.path().join("x");
    let o = o.to_str().unwrap();
    let cases: [(&str, Vec<&str>, &str); 6] = [
        ("train-gpt2", vec!["--config", "no-such-config"], "not a built-in configuration"),
        ("train-gpt2", vec!["--out-dir", o, "--data", "/no/such/dir"], "/no/such/dir"),
        ("train-gpt2", vec!["--out-dir", o, "--resume"], "no checkpoint"),
        ("train-gpt2", vec!["--out-dir", o, "--linear", "sparse"], "unknown linear kind"),
        ("train-vit", vec!["--out-dir", o, "--token-linear", "dense"], "does not apply"),
        ("train-mixer", vec!["--out-dir", o, "--attention", "flash"], "no attention"),
    ];
    for (name, args, want) in cases {
        let out = run(name, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name} {args:?}: {err}");
        assert!(err.contains(want), "{name} {args:?}: {err}");
    }
    let bad_toml = config(tmp.path(), "bad.toml", "[model]\nn_layer = 2\nwidth = 3\n");
    let out = run("train-gpt2", &["--config", &bad_toml, "--out-dir", o]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `width`"));
    // Unknown flags are refused by the argument parser.
    assert!(!run("train-gpt2", &["--no-such-flag"]).status.success());
    // A fresh run does not write over an earlier run's checkpoints.
    let run_dir = tmp.path().join("run");
    let cfg = config(tmp.path(), "gpt2.toml", GPT2);
    let r = run_dir.to_str().unwrap();
    ok("train-gpt2", &["--config", &cfg, "--out-dir", r, "--quiet", "--stop-after", "1"]);
    let again = run("train-gpt2", &["--config", &cfg, "--out-dir", r, "--quiet"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("continue it with --resume"));
    let list = ok("train-gpt2", &["--list-configs"]);
    assert!(String::from_utf8(list.stdout).unwrap().contains("gpt2-small"));
}

#[test]
fn a_gpu_run_trains_there_or_on_the_cpu_with_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), "gpt2.toml", GPT2);
    let out = tmp.path().join("run");
    let o = ok("train-gpt2", &["--config", &cfg, "--out-dir", out.to_str().unwrap(), "--quiet", "--device", "cuda"]);
    let start = &records(&out)[0];
    let warned = String::from_utf8_lossy(&o.stderr).contains("training on the CPU instead");
    // Either a GPU was there and the run used it, or the run says it fell back.
    assert_eq!(start["device"], if warned { "cpu" } else { "cuda:0" });
    assert!(losses(&out).len() >= 4);
    assert!(!run("train-gpt2", &["--config", &cfg, "--device", "tpu"]).status.success());
}

#[test]
fn a_run_on_the_emulated_gpu_gives_the_cpu_runs_losses() {
    // The CUDA emulator runs every kernel and launcher of a GPU step on the CPU (slowly),
    // so three steps of the tiny model and the step-3 evaluation are enough.
    emulated_gpu_run_tracks_the_cpu_run("f32", 1e-4);
}

/// Three steps and the step-3 evaluation of the tiny GPT-2 at `precision`, on the CPU and
/// on the emulated GPU: the losses agree within `tol` relative.
fn emulated_gpu_run_tracks_the_cpu_run(precision: &str, tol: f64) {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), "gpt2.toml", GPT2);
    let train = |device: &str| {
        let out = tmp.path().join(device);
        let args = ["--config", &cfg, "--out-dir", out.to_str().unwrap(), "--quiet", "--stop-after", "3"];
        let o = Command::new(bin("train-gpt2"))
            .args(args)
            .args(["--device", device, "--precision", precision])
            .env("MONARCH_CUDA_EMULATOR", "1")
            .output()
            .expect("binary runs");
        assert!(o.status.success(), "{device}: {}", String::from_utf8_lossy(&o.stderr));
        out
    };
    let (cpu, gpu) = (train("cpu"), train("cuda"));
    assert_eq!(records(&gpu)[0]["device"], "cuda:0");
    assert_eq!(records(&gpu)[0]["matmul_dtype"], precision, "the run's products are {precision}");
    let (want, got) = (losses(&cpu), losses(&gpu));
    assert_eq!(want.len(), 3);
    assert_eq!(got.len(), 3);
    let worst = want.iter().zip(&got).map(|((_, w), (_, g))| (w - g).abs() / w.abs()).fold(0.0, f64::max);
    eprintln!("{precision}: largest relative loss difference {worst:.1e}");
    for ((s, w), (t, g)) in want.iter().zip(&got) {
        assert_eq!(s, t);
        assert!((w - g).abs() <= tol * w.abs(), "{precision} step {s}: cpu {w}, emulated gpu {g}");
    }
    let val = |dir: &Path| records(dir).iter().find_map(|r| r.get("val_loss")?.as_f64()).unwrap();
    assert!((val(&cpu) - val(&gpu)).abs() <= tol * val(&cpu), "{} vs {}", val(&cpu), val(&gpu));
}

/// The mixed-precision path a GPU run takes (bf16 products and logits, bf16 gradient
/// reductions, the fused head's bf16 products summed into f32, f32 master weights) on
/// the emulated GPU against the same run on the CPU. They round in different places
/// (the device keeps bf16 logits and sums bf16 products in f32): measured 1.1e-5 relative
/// at most (2026-12-02), bounded at 1e-3, a quarter of bf16's 2⁻⁸.
#[test]
fn a_bf16_run_on_the_emulated_gpu_tracks_the_cpu_bf16_run() {
    emulated_gpu_run_tracks_the_cpu_run("bf16", 1e-3);
}

#[test]
fn bf16_mixed_precision_tracks_the_f32_run() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), "gpt2.toml", GPT2);
    let run_with = |p: &str| {
        let out = tmp.path().join(p);
        ok(
            "train-gpt2",
            &["--config", &cfg, "--out-dir", out.to_str().unwrap(), "--quiet", "--precision", p, "--max-steps", "3"],
        );
        losses(&out)
    };
    let (full, mixed) = (run_with("f32"), run_with("bf16"));
    assert_eq!(full.len(), mixed.len());
    for ((_, a), (_, b)) in full.iter().zip(&mixed) {
        // Same data and initialisation; only the products' rounding differs.
        assert!((a - b).abs() < 0.05 * a.abs(), "f32 loss {a} vs bf16 {b}");
    }
    assert_ne!(full, mixed, "bf16 products must change the rounding");
}
