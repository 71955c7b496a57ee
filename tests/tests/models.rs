//! The papers' models: parameter names and shapes follow Hugging Face / timm, a Hugging
//! Face-named GPT-2 checkpoint loads, densification and projection keep the function,
//! attention and layer kinds are chosen by configuration, and the loss at initialisation
//! is that of a uniform guess.

use monarch_autograd::Var;
use monarch_nn::models::{Gpt2, Gpt2Config, ImageClassifier, Mixer, MixerConfig, Vit, VitConfig, hf_gpt2};
use monarch_nn::swap::{self, SwapLinears};
use monarch_nn::{AttentionImpl, Ctx, LinearKind, Module, SparseLayout, param_count};
use monarch_tensor::{DType, Tensor, save_safetensors};
use std::collections::HashMap;

fn tiny_gpt2(kind: LinearKind) -> Gpt2Config {
    Gpt2Config {
        vocab_size: 97,
        block_size: 16,
        n_layer: 2,
        n_head: 2,
        n_embd: 16,
        attn_linear: kind.clone(),
        mlp_linear: kind,
        ..Gpt2Config::small()
    }
}

fn ids(b: usize, t: usize, vocab: usize, seed: u64) -> Tensor {
    let v: Vec<i64> = (0..b * t).map(|i| ((i as u64 * 2654435761 + seed * 97) % vocab as u64) as i64).collect();
    Tensor::from_vec(v, [b, t]).unwrap()
}

fn values(v: &Var) -> Vec<f32> {
    v.value().to_vec_f32().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn gpt2_small_has_hugging_face_names_and_124m_parameters() {
    let cfg = Gpt2Config::small();
    let m = Gpt2::new(&Gpt2Config { n_layer: 1, ..cfg.clone() }, 0).unwrap();
    let names: Vec<String> = m.named_params().into_iter().map(|(n, _)| n).collect();
    let want = [
        "wte.weight",
        "wpe.weight",
        "h.0.ln_1.weight",
        "h.0.ln_1.bias",
        "h.0.attn.c_attn.weight",
        "h.0.attn.c_attn.bias",
        "h.0.attn.c_proj.weight",
        "h.0.attn.c_proj.bias",
        "h.0.ln_2.weight",
        "h.0.ln_2.bias",
        "h.0.mlp.c_fc.weight",
        "h.0.mlp.c_fc.bias",
        "h.0.mlp.c_proj.weight",
        "h.0.mlp.c_proj.bias",
        "ln_f.weight",
        "ln_f.bias",
    ];
    assert_eq!(names, want);
    // 124,439,808 for the 12-layer model: embeddings + 12 × 7,087,872 + the final norm.
    let one_block = param_count(&m) - (50257 + 1024) * 768 - 2 * 768;
    assert_eq!(one_block, 7_087_872);
    assert_eq!((50257 + 1024) * 768 + 12 * one_block + 2 * 768, 124_439_808);
}

#[test]
fn gpt2_loss_at_initialisation_is_near_log_vocab() {
    let cfg = tiny_gpt2(LinearKind::Monarch { nblocks: 4 });
    let m = Gpt2::new(&cfg, 1).unwrap();
    let x = ids(4, 16, 97, 0);
    let loss = m.loss(&x, &ids(4, 16, 97, 1), -1, &Ctx::eval()).unwrap().value().to_scalar_f64().unwrap();
    assert!((loss - (97f64).ln()).abs() < 0.3, "loss {loss} vs ln 97 = {}", (97f64).ln());
    assert!(m.forward(&ids(1, 17, 97, 0), &Ctx::eval()).is_err(), "longer than the block size");
    assert!(Gpt2::new(&Gpt2Config { n_head: 3, ..cfg }, 0).is_err());
}

#[test]
fn hugging_face_checkpoint_loads_into_the_dense_gpt2() {
    let cfg = tiny_gpt2(LinearKind::Dense);
    let src = Gpt2::new(&cfg, 3).unwrap();
    // Write it as Hugging Face's GPT2LMHeadModel does: `transformer.` prefix, Conv1D
    // weights (in, out), mask buffers and the tied head.
    let mut hf: Vec<(String, Tensor)> = Vec::new();
    for (name, p) in src.named_params() {
        let conv1d =
            name.ends_with("c_attn.weight") || name.ends_with("c_proj.weight") || name.ends_with("c_fc.weight");
        let t = if conv1d { p.value().t().unwrap().contiguous().unwrap() } else { p.value() };
        hf.push((format!("transformer.{name}"), t));
    }
    for i in 0..cfg.n_layer {
        hf.push((format!("transformer.h.{i}.attn.bias"), Tensor::ones([1, 1, 16, 16], DType::F32)));
    }
    hf.push(("lm_head.weight".into(), src.wte.weight.value()));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    save_safetensors(&path, hf.iter().map(|(n, t)| (n.as_str(), t)), None).unwrap();
    let loaded = hf_gpt2::load(&path, cfg.n_head).unwrap();
    assert_eq!((loaded.cfg.n_layer, loaded.cfg.n_embd, loaded.cfg.vocab_size), (2, 16, 97));
    let x = ids(2, 16, 97, 5);
    let (a, b) = (src.forward(&x, &Ctx::eval()).unwrap(), loaded.forward(&x, &Ctx::eval()).unwrap());
    assert_eq!(values(&a), values(&b));
    // A missing tensor or a wrongly shaped one is a clear error.
    let partial: Vec<_> = hf.iter().filter(|(n, _)| !n.ends_with("h.1.mlp.c_fc.bias")).cloned().collect();
    save_safetensors(&path, partial.iter().map(|(n, t)| (n.as_str(), t)), None).unwrap();
    let e = hf_gpt2::load(&path, cfg.n_head).unwrap_err().to_string();
    assert!(e.contains("lacks h.1.mlp.c_fc.bias"), "{e}");
    let map: HashMap<String, Tensor> = hf.into_iter().collect();
    assert!(hf_gpt2::from_tensors(&Gpt2Config { n_embd: 32, ..cfg }, map).is_err());
}

#[test]
fn densify_keeps_every_model_s_function() {
    let x = ids(2, 16, 97, 2);
    let mut g = Gpt2::new(&tiny_gpt2(LinearKind::Monarch { nblocks: 4 }), 4).unwrap();
    let before = values(&g.forward(&x, &Ctx::eval()).unwrap());
    assert_eq!(swap::densify(&mut g).unwrap(), 8);
    assert!(g.linears_mut().iter().all(|(_, l)| l.kind() == LinearKind::Dense));
    assert!(max_diff(&before, &values(&g.forward(&x, &Ctx::eval()).unwrap())) < 1e-4);

    let images = Var::constant(Tensor::randn([3, 1, 8, 8], 0.0, 1.0, 9).unwrap());
    let vit_cfg = VitConfig {
        image_size: 8,
        patch_size: 2,
        channels: 1,
        num_classes: 10,
        dim: 16,
        depth: 2,
        heads: 2,
        mlp_dim: 32,
        attn_linear: LinearKind::LowRank { rank: monarch_nn::Rank::Fixed(4) },
        mlp_linear: LinearKind::Monarch { nblocks: 2 },
        ..VitConfig::small()
    };
    let mut v = Vit::new(&vit_cfg, 5).unwrap();
    let before = values(&v.forward(&images, &Ctx::eval()).unwrap());
    assert_eq!(swap::densify(&mut v).unwrap(), 8);
    assert!(max_diff(&before, &values(&v.forward(&images, &Ctx::eval()).unwrap())) < 1e-4);

    let mixer_cfg = MixerConfig {
        image_size: 8,
        patch_size: 2,
        channels: 1,
        num_classes: 10,
        dim: 16,
        depth: 2,
        token_mlp_dim: 8,
        channel_mlp_dim: 32,
        token_linear: LinearKind::BlockDiag { nblocks: 2 },
        channel_linear: LinearKind::Monarch { nblocks: 4 },
        ..MixerConfig::small()
    };
    let mut m = Mixer::new(&mixer_cfg, 6).unwrap();
    let before = values(&m.forward(&images, &Ctx::eval()).unwrap());
    assert_eq!(swap::densify(&mut m).unwrap(), 8);
    assert!(max_diff(&before, &values(&m.forward(&images, &Ctx::eval()).unwrap())) < 1e-4);
}

#[test]
fn projecting_a_densified_monarch_model_recovers_its_function() {
    // A Monarch model densified is an exact Monarch matrix: projecting back is exact.
    let x = ids(2, 16, 97, 3);
    let mut g = Gpt2::new(&tiny_gpt2(LinearKind::Monarch { nblocks: 4 }), 7).unwrap();
    let want = values(&g.forward(&x, &Ctx::eval()).unwrap());
    swap::densify(&mut g).unwrap();
    let monarch = LinearKind::Monarch { nblocks: 4 };
    let done = swap::project(&mut g, &|n: &str| n.contains(".mlp."), &monarch).unwrap();
    assert_eq!(done, ["h.0.mlp.c_fc", "h.0.mlp.c_proj", "h.1.mlp.c_fc", "h.1.mlp.c_proj"]);
    swap::project(&mut g, &|n: &str| n.contains(".attn."), &monarch).unwrap();
    assert!(g.linears_mut().iter().all(|(_, l)| l.kind() == monarch));
    assert!(max_diff(&want, &values(&g.forward(&x, &Ctx::eval()).unwrap())) < 1e-4);
    let e = swap::project(&mut g, &|_: &str| true, &LinearKind::Butterfly).unwrap_err().to_string();
    assert!(e.contains("layer h.0.attn.c_attn"), "{e}");
}

#[test]
fn attention_implementations_are_chosen_by_configuration() {
    let x = ids(1, 16, 97, 4);
    let dense = tiny_gpt2(LinearKind::Dense);
    let reference = values(
        &Gpt2::new(&Gpt2Config { attention: AttentionImpl::Naive, ..dense.clone() }, 8)
            .unwrap()
            .forward(&x, &Ctx::eval())
            .unwrap(),
    );
    // Flash and a block-sparse layout that covers the causal triangle equal the reference.
    let full = AttentionImpl::BlockSparse { block: 4, layout: SparseLayout::Local { window: 4 } };
    for attention in [AttentionImpl::Flash, full] {
        let m = Gpt2::new(&Gpt2Config { attention, ..dense.clone() }, 8).unwrap();
        assert!(max_diff(&reference, &values(&m.forward(&x, &Ctx::eval()).unwrap())) < 1e-4);
    }
    // A narrow window differs (it sees less), but runs forward and backward.
    let local = AttentionImpl::BlockSparse { block: 4, layout: SparseLayout::Local { window: 0 } };
    let m = Gpt2::new(&Gpt2Config { attention: local, ..dense.clone() }, 8).unwrap();
    assert!(max_diff(&reference, &values(&m.forward(&x, &Ctx::eval()).unwrap())) > 1e-3);
    let sb = AttentionImpl::Scatterbrain { features: 8, block: 4, window: 1, seed: 0 };
    let m = Gpt2::new(&Gpt2Config { attention: sb, ..dense }, 8).unwrap();
    let loss = m.loss(&x, &ids(1, 16, 97, 5), -1, &Ctx::train(1)).unwrap();
    assert_eq!(loss.backward().unwrap().len(), param_count_tensors(&m));
    // The ViT takes the same setting (bidirectional).
    let images = Var::constant(Tensor::randn([2, 1, 8, 8], 0.0, 1.0, 3).unwrap());
    let vit = |attention| {
        let cfg = VitConfig {
            image_size: 8,
            patch_size: 2,
            channels: 1,
            num_classes: 3,
            dim: 8,
            depth: 1,
            heads: 2,
            mlp_dim: 8,
            attention,
            ..VitConfig::small()
        };
        values(&Vit::new(&cfg, 1).unwrap().forward(&images, &Ctx::eval()).unwrap())
    };
    assert!(max_diff(&vit(AttentionImpl::Naive), &vit(AttentionImpl::Flash)) < 1e-5);
}

fn param_count_tensors(m: &dyn Module) -> usize {
    m.named_params().len()
}

#[test]
fn image_models_check_their_inputs_and_count_flops() {
    let cfg = MixerConfig {
        image_size: 8,
        patch_size: 2,
        channels: 1,
        num_classes: 10,
        dim: 16,
        depth: 1,
        token_mlp_dim: 8,
        channel_mlp_dim: 32,
        ..MixerConfig::small()
    };
    let m = Mixer::new(&cfg, 0).unwrap();
    assert!(m.forward(&Var::constant(Tensor::zeros([2, 3, 8, 8], DType::F32)), &Ctx::eval()).is_err());
    assert!(m.forward(&Var::constant(Tensor::zeros([8, 8], DType::F32)), &Ctx::eval()).is_err());
    // Dense Mixer FLOPs from first principles: per block 2·16·(2·16·8) token MACs, 16·(2·16·32) channel MACs.
    let macs = 16 * (16 * 8 * 2) + 16 * (16 * 32 * 2) + 4 * 16 * 16 + 16 * 10;
    assert_eq!(m.train_flops_per_image(), 6.0 * macs as f64);
    assert!(Mixer::new(&MixerConfig { patch_size: 3, ..cfg.clone() }, 0).is_err());
    // A negative or non-finite layer-norm eps is refused by every model (it had trained
    // to a NaN loss).
    for eps in [-1.0, f64::NAN] {
        let e = Mixer::new(&MixerConfig { layer_norm_eps: eps, ..cfg.clone() }, 0).unwrap_err().to_string();
        assert!(e.contains("layer_norm_eps"), "{e}");
        let e = VitConfig { layer_norm_eps: eps, ..VitConfig::small() }.validate().unwrap_err().to_string();
        assert!(e.contains("layer_norm_eps"), "{e}");
        let e = Gpt2Config { layer_norm_eps: eps, ..Gpt2Config::small() }.validate().unwrap_err().to_string();
        assert!(e.contains("layer_norm_eps"), "{e}");
    }
    let names: Vec<String> = m.named_params().into_iter().map(|(n, _)| n).collect();
    assert!(
        names.contains(&"stem.proj.weight".to_string())
            && names.contains(&"blocks.0.mlp_tokens.fc1.weight".to_string())
    );
}

/// Decoding with the key/value cache (a prefill of 5, then one token at a time, batch 2)
/// gives the hidden states of recomputing the whole prefix, for dense and Monarch layers,
/// also after truncating the cache and decoding another token there; a cache refuses positions past `block_size`, another batch size, and attention kinds
/// whose masks depend on position.
#[test]
fn cached_decoding_matches_recomputing_the_prefix() {
    for kind in [LinearKind::Dense, LinearKind::Monarch { nblocks: 4 }] {
        let g = Gpt2::new(&tiny_gpt2(kind.clone()), 1).unwrap();
        let all = ids(2, 16, 97, 3);
        let mut cache = Default::default();
        let mut rows = vec![g.hidden_cached(&all.narrow(1, 0, 5).unwrap(), &mut cache).unwrap()];
        for t in 5..16 {
            rows.push(g.hidden_cached(&all.narrow(1, t, 1).unwrap().contiguous().unwrap(), &mut cache).unwrap());
        }
        assert_eq!(cache.len(), 16);
        let refs: Vec<&Var> = rows.iter().collect();
        let cached = Var::cat(&refs, 1).unwrap().value().to_vec_f64().unwrap();
        let full = g.hidden(&all, &Ctx::eval()).unwrap().value().to_vec_f64().unwrap();
        for (i, (a, b)) in cached.iter().zip(&full).enumerate() {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{kind:?} [{i}]: {a} vs {b}");
        }
        assert!(g.hidden_cached(&ids(2, 1, 97, 4), &mut cache).is_err(), "past block_size");
        // Truncated to 9 positions, the cache decodes another 10th token as if the first 9
        // had been all there was.
        cache.truncate(9);
        assert_eq!(cache.len(), 9);
        let other = ids(2, 1, 97, 8);
        let got = g.hidden_cached(&other, &mut cache).unwrap().value().to_vec_f64().unwrap();
        let redo = Tensor::cat(&[&all.narrow(1, 0, 9).unwrap(), &other], 1).unwrap();
        let want = g.hidden(&redo, &Ctx::eval()).unwrap().narrow(1, 9, 1).unwrap().value().to_vec_f64().unwrap();
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{kind:?} after truncate [{i}]: {a} vs {b}");
        }
        assert_eq!(cache.len(), 10);
        let mut short = Default::default();
        g.hidden_cached(&ids(2, 3, 97, 5), &mut short).unwrap();
        assert!(g.hidden_cached(&ids(1, 1, 97, 6), &mut short).is_err(), "another batch size");
    }
    let sparse = Gpt2Config {
        attention: AttentionImpl::BlockSparse { block: 4, layout: SparseLayout::Local { window: 1 } },
        ..tiny_gpt2(LinearKind::Dense)
    };
    let g = Gpt2::new(&sparse, 1).unwrap();
    assert!(!g.can_cache() && g.hidden_cached(&ids(1, 2, 97, 7), &mut Default::default()).is_err());
}
