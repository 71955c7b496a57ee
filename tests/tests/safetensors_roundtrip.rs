//! Saving then loading through safetensors gives identical tensors, for a module and
//! for raw tensors of every dtype and non-contiguous views.

use monarch_nn::{Linear, Module, SeedableRng, StdRng, load_params, save_params};
use monarch_tensor::{DType, Tensor, load_safetensors, save_safetensors};

#[test]
fn module_parameters_round_trip_bit_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("linear.safetensors");
    let mut rng = StdRng::seed_from_u64(1);
    let a = Linear::new(7, 5, true, &mut rng).unwrap();
    save_params(&a, &path, None).unwrap();
    let b = Linear::new(7, 5, true, &mut rng).unwrap();
    load_params(&b, &path, false).unwrap();
    for ((na, pa), (nb, pb)) in a.named_params().iter().zip(b.named_params().iter()) {
        assert_eq!(na, nb);
        assert_eq!(pa.value().to_vec::<f32>().unwrap(), pb.value().to_vec::<f32>().unwrap());
    }
}

#[test]
fn tensors_of_every_dtype_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("all.safetensors");
    let base = Tensor::randn([3, 4], 0.0, 1.0, 2).unwrap();
    let view = base.t().unwrap().narrow(0, 1, 2).unwrap();
    let tensors: Vec<(String, Tensor)> = [DType::F32, DType::F64, DType::BF16, DType::F16, DType::I64, DType::U8]
        .iter()
        .map(|&dt| (dt.to_string(), view.affine(10.0, 20.0).unwrap().to_dtype(dt).unwrap()))
        .collect();
    save_safetensors(&path, tensors.iter().map(|(n, t)| (n.as_str(), t)), None).unwrap();
    let loaded = load_safetensors(&path).unwrap();
    for (name, t) in &tensors {
        let l = loaded.get(name).unwrap();
        assert_eq!((l.dtype(), l.dims()), (t.dtype(), t.dims()));
        assert_eq!(l.to_vec_f64().unwrap(), t.to_vec_f64().unwrap(), "{name}");
    }
}
