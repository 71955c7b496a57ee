//! `monarch bench linear`: a linear layer of any kind (or, with `--hidden`, the MLP block
//! of two such layers around a GELU), forward or forward+backward, optionally side by
//! side with the dense layer(s) of the same shape.

use super::{CliError, Placement, Timing};
use crate::cli::LinearFlags;
use clap::{Args, ValueEnum};
use monarch_autograd::{Gradients, Var, no_grad};
use monarch_nn::{Activation, LinearKind, LinearLayer, SeedableRng, StdRng, param_count};
use monarch_tensor::{DType, Device, Tensor};
use std::time::Instant;

/// Which passes to time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Pass {
    /// Forward only, nothing recorded.
    Fwd,
    /// Forward, then backward for the input and every parameter.
    Fwdbwd,
}

/// Arguments of `monarch bench linear`.
#[derive(Args, Debug)]
pub struct LinearArgs {
    /// Layer kind: dense, monarch, blockdiag, lowrank, butterfly, blocksparse or pixelfly.
    #[arg(long)]
    kind: String,
    /// Input features.
    #[arg(long = "in", default_value_t = 4096)]
    inp: usize,
    /// Output features.
    #[arg(long, default_value_t = 4096)]
    out: usize,
    /// Time the MLP block in → hidden → out instead of one layer: two layers of the kind
    /// with a tanh-GELU between (a transformer's MLP with `--in 768 --hidden 3072 --out 768`).
    #[arg(long)]
    hidden: Option<usize>,
    /// Rows of the input.
    #[arg(long, default_value_t = 2048)]
    batch: usize,
    #[command(flatten)]
    layer: LinearFlags,
    /// Passes to time.
    #[arg(long, value_enum, default_value_t = Pass::Fwdbwd)]
    pass: Pass,
    /// Also time the dense layer of the same shape, interleaved run by run, and report the ratio.
    #[arg(long)]
    vs_dense: bool,
    #[command(flatten)]
    on: Placement,
    /// Element type of the parameters, input and gradient (f32, or bf16 for the GPU's
    /// tensor cores; the CPU computes bf16 in f32).
    #[arg(long, default_value = "f32")]
    dtype: DType,
    #[command(flatten)]
    timing: Timing,
}

/// One timed layer, or the layers of an MLP block (GELU between consecutive ones), with
/// its input and output gradient.
struct Case {
    layers: Vec<Box<dyn LinearLayer>>,
    x: Tensor,
    dy: Tensor,
    device: Device,
}

impl Case {
    fn forward(&self, x: Var) -> Result<Var, CliError> {
        // A tanh-GELU after every layer but the last (fused where the layer can).
        let mut y = x;
        for (i, layer) in self.layers.iter().enumerate() {
            y = if i + 1 < self.layers.len() {
                layer.forward_act(&y, Activation::GeluTanh)?
            } else {
                layer.forward(&y)?
            };
        }
        Ok(y)
    }

    fn run(&self, pass: Pass) -> Result<(), CliError> {
        match pass {
            Pass::Fwd => {
                let _guard = no_grad();
                self.forward(Var::constant(self.x.clone()))?;
            }
            Pass::Fwdbwd => {
                let y = self.forward(Var::leaf(self.x.clone()))?;
                y.backward_with(self.dy.clone(), &mut Gradients::new())?;
            }
        }
        Ok(self.device.synchronize()?)
    }

    /// Floating-point operations of one run: 2 per multiply-add, three products per
    /// layer for forward+backward (output, input gradient, weight gradient).
    fn flops(&self, batch: usize, pass: Pass) -> f64 {
        let macs: usize = self.layers.iter().map(|l| l.macs_per_row()).sum();
        let fwd = 2.0 * (macs * batch) as f64;
        if pass == Pass::Fwd { fwd } else { 3.0 * fwd }
    }
}

impl LinearArgs {
    fn case(&self, kind: &LinearKind) -> Result<Case, CliError> {
        let widths = match self.hidden {
            Some(h) => vec![self.inp, h, self.out],
            None => vec![self.inp, self.out],
        };
        let (d, dt) = (self.on.device, self.dtype);
        let mut rng = StdRng::seed_from_u64(0);
        let mut layers = Vec::new();
        for w in widths.windows(2) {
            let layer = kind.build(w[0], w[1], true, &mut rng)?;
            monarch_nn::params_to_dtype(&layer.named_params(), dt)?;
            monarch_nn::to_device(&*layer, d)?;
            layers.push(layer);
        }
        let x = Tensor::randn([self.batch, self.inp], 0.0, 1.0, 1)?.to_dtype(dt)?.to_device(d)?;
        let dy = Tensor::randn([self.batch, self.out], 0.0, 1.0, 2)?.to_dtype(dt)?.to_device(d)?;
        Ok(Case { layers, x, dy, device: d })
    }

    /// Runs the benchmark and prints the result.
    pub fn run(self) -> Result<(), CliError> {
        let kind = LinearKind::from_options(&self.kind, &self.layer.options())?;
        self.on.apply();
        let case = self.case(&kind)?;
        let dense = if self.vs_dense { Some(self.case(&LinearKind::Dense)?) } else { None };
        let cases: Vec<&Case> = std::iter::once(&case).chain(dense.as_ref()).collect();
        let times = interleaved_times(&self.timing, &cases, self.pass)?;
        let medians: Vec<f64> = times.iter().map(|ts| median(ts.clone())).collect();
        let (ms, flops) = (medians[0], case.flops(self.batch, self.pass));
        let mut j = serde_json::json!({
            "bench": "linear",
            "kind": kind,
            "in": self.inp,
            "out": self.out,
            "hidden": self.hidden,
            "batch": self.batch,
            "pass": format!("{:?}", self.pass).to_lowercase(),
            "median_ms": ms,
            "flops": flops,
            "gflops": flops / ms / 1e6,
            "params": case.layers.iter().map(|l| param_count(&**l)).sum::<usize>(),
            "threads": rayon::current_num_threads(),
            "device": self.on.device.to_string(),
            "dtype": self.dtype.as_str(),
            "tf32": self.on.tf32,
        });
        if let Some(d) = &dense {
            j["dense_median_ms"] = medians[1].into();
            j["dense_flops"] = d.flops(self.batch, self.pass).into();
            j["speedup_vs_dense"] = (medians[1] / ms).into();
            // Each round times the layer and then dense back to back, so the ratio within
            // a round cancels slow drifts of a shared machine that the medians still see.
            let paired = median(times[1].iter().zip(&times[0]).map(|(d, c)| d / c).collect());
            j["speedup_paired_median"] = paired.into();
        }
        if self.timing.json {
            println!("{j}");
        } else {
            let vs =
                dense.map(|_| format!(", dense {:.3} ms ({:.2}x)", medians[1], medians[1] / ms)).unwrap_or_default();
            let shape = match self.hidden {
                Some(h) => format!("MLP {}→{h}→{}", self.inp, self.out),
                None => format!("{}x{}", self.out, self.inp),
            };
            println!(
                "linear {} {shape} batch {} {:?}: median {ms:.3} ms, {:.1} GFLOP/s, {} params{vs}",
                self.kind,
                self.batch,
                self.pass,
                flops / ms / 1e6,
                j["params"]
            );
        }
        super::print_kernel_times(self.on.device)
    }
}

/// Times every case `runs` times, round by round (so that machine noise hits all alike),
/// after `warmup` untimed runs of each; returns each case's times in ms.
fn interleaved_times(t: &Timing, cases: &[&Case], pass: Pass) -> Result<Vec<Vec<f64>>, CliError> {
    if t.runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    for c in cases {
        for _ in 0..t.warmup {
            c.run(pass)?;
        }
    }
    let mut times = vec![Vec::with_capacity(t.runs); cases.len()];
    for _ in 0..t.runs {
        for (c, ts) in cases.iter().zip(&mut times) {
            let start = Instant::now();
            c.run(pass)?;
            ts.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(times)
}

/// The median of `v` (not empty).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<crate::cli::Cli, clap::Error> {
        crate::cli::Cli::try_parse_from(["monarch", "bench", "linear"].iter().chain(args))
    }

    #[test]
    fn the_mlp_block_runs_both_layers_and_counts_their_flops() {
        let mut rng = StdRng::seed_from_u64(0);
        let layers = vec![
            LinearKind::Dense.build(8, 16, true, &mut rng).unwrap(),
            LinearKind::Dense.build(16, 4, true, &mut rng).unwrap(),
        ];
        let x = Tensor::randn([2, 8], 0.0, 1.0, 1).unwrap();
        let case = Case { layers, x, dy: Tensor::ones([2, 4], DType::F32), device: Device::Cpu };
        assert_eq!(case.flops(2, Pass::Fwdbwd), 3.0 * 2.0 * 2.0 * (8 * 16 + 16 * 4) as f64);
        assert_eq!(case.forward(Var::constant(case.x.clone())).unwrap().dims(), [2, 4]);
        case.run(Pass::Fwdbwd).unwrap();
        let cli = parse(&["--kind", "monarch", "--in", "8", "--hidden", "16", "--out", "4", "--batch", "2"]);
        cli.unwrap().run().unwrap();
    }

    #[test]
    fn every_kind_runs_on_a_small_shape() {
        for kind in LinearKind::NAMES {
            let cli = parse(&[
                "--kind",
                kind,
                "--in",
                "64",
                "--out",
                "32",
                "--batch",
                "4",
                "--rank",
                "2",
                "--block",
                "16",
                "--butterfly-size",
                "2",
                "--n-factors",
                "1",
                "--runs",
                "1",
                "--warmup",
                "0",
                "--json",
                "--vs-dense",
            ])
            .unwrap();
            cli.run().unwrap();
        }
    }

    #[test]
    fn bad_flags_are_errors() {
        assert!(parse(&["--kind", "monarch", "--pass", "both"]).is_err());
        assert!(parse(&["--kind", "lowrank", "--rank", "x"]).is_err());
        let small = ["--in", "8", "--out", "8", "--batch", "2", "--runs", "1"];
        let run = |extra: &[&str]| parse(&[extra, &small[..]].concat()).unwrap().run();
        assert!(run(&["--kind", "sparse"]).is_err());
        assert!(run(&["--kind", "lowrank"]).is_err());
        assert!(run(&["--kind", "monarch", "--nblocks", "0"]).is_err());
        assert!(run(&["--kind", "blocksparse"]).is_err());
    }
}
