//! Named tensors in the safetensors format (what PyTorch and Hugging Face read and
//! write), and atomic file writes.

use crate::{CpuStorage, DType, Error, Result, Tensor, WithDType, with_cpu_vec};
use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors, View};
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The contents of a safetensors file.
#[derive(Clone, Debug, Default)]
pub struct SafetensorsFile {
    /// The tensors, sorted by name.
    pub tensors: Vec<(String, Tensor)>,
    /// The free-form string metadata of the header (`__metadata__`).
    pub metadata: HashMap<String, String>,
}

impl SafetensorsFile {
    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder that is synced
/// and then renamed, so a reader never sees a half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    let name = path.file_name().ok_or_else(|| io(std::io::Error::other("path has no file name")))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp: PathBuf = path.with_file_name(tmp_name);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

struct Bytes {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Bytes {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn to_bytes(t: &Tensor) -> Result<Bytes> {
    let dtype = match t.dtype() {
        DType::U8 => Dtype::U8,
        DType::I64 => Dtype::I64,
        DType::BF16 => Dtype::BF16,
        DType::F16 => Dtype::F16,
        DType::F32 => Dtype::F32,
        DType::F64 => Dtype::F64,
    };
    let c = t.to_device(crate::Device::Cpu)?.contiguous()?;
    let mut data = Vec::with_capacity(c.elem_count() * c.dtype().size_in_bytes());
    let r = c.layout().contiguous_range().expect("contiguous");
    with_cpu_vec!(c.cpu("save_safetensors")?, v => v[r].iter().for_each(|x| x.write_le(&mut data)));
    Ok(Bytes { dtype, shape: t.dims().to_vec(), data })
}

/// Saves named tensors (any device, any dtype) with optional string metadata, atomically.
pub fn save_safetensors<'a>(
    path: impl AsRef<Path>,
    tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
    metadata: Option<&HashMap<String, String>>,
) -> Result<()> {
    let path = path.as_ref();
    let bytes: Vec<(&str, Bytes)> = tensors.into_iter().map(|(n, t)| Ok((n, to_bytes(t)?))).collect::<Result<_>>()?;
    let mut seen = std::collections::HashSet::new();
    if let Some((dup, _)) = bytes.iter().find(|(n, _)| !seen.insert(*n)) {
        crate::bail!("save_safetensors", "tensor name {dup:?} appears twice");
    }
    let views = bytes.iter().map(|(n, b)| (*n, b));
    let buf = safetensors::serialize(views, metadata.cloned())
        .map_err(|e| Error::SafeTensors { path: path.to_path_buf(), msg: e.to_string() })?;
    write_atomic(path, &buf)
}

fn decode<T: WithDType>(b: &[u8]) -> Vec<T> {
    b.chunks_exact(std::mem::size_of::<T>()).map(T::read_le).collect()
}

/// Widens little-endian integers of `N` bytes to `I64`.
fn widen<const N: usize>(b: &[u8], f: impl Fn([u8; N]) -> i64) -> CpuStorage {
    CpuStorage::I64(b.chunks_exact(N).map(|c| f(c.try_into().expect("exact chunk"))).collect())
}

/// Loads every tensor of a safetensors file onto the CPU. Integer types other than
/// `U8` and `I64` are widened to `I64`; `BOOL` becomes `U8`.
pub fn load_safetensors(path: impl AsRef<Path>) -> Result<SafetensorsFile> {
    load_safetensors_where(path, |_| true)
}

/// Loads the tensors whose names `keep` accepts (the others are never read from disk),
/// as [`load_safetensors`] does.
pub fn load_safetensors_where(path: impl AsRef<Path>, keep: impl Fn(&str) -> bool) -> Result<SafetensorsFile> {
    let path = path.as_ref();
    let bad = |msg: String| Error::SafeTensors { path: path.to_path_buf(), msg };
    if path.is_dir() {
        return Err(bad("a folder, not a safetensors file".into()));
    }
    let file = std::fs::File::open(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    // SAFETY: the map is read-only and dropped before returning; the data is copied out.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    let st = SafeTensors::deserialize(&map).map_err(|e| bad(e.to_string()))?;
    let (_, meta) = SafeTensors::read_metadata(&map).map_err(|e| bad(e.to_string()))?;
    let mut tensors = Vec::new();
    for (name, view) in st.tensors() {
        if !keep(&name) {
            continue;
        }
        let b = view.data();
        let storage = match view.dtype() {
            Dtype::U8 | Dtype::BOOL => CpuStorage::U8(b.to_vec()),
            Dtype::I64 => CpuStorage::I64(decode(b)),
            Dtype::BF16 => CpuStorage::BF16(decode::<bf16>(b)),
            Dtype::F16 => CpuStorage::F16(decode::<f16>(b)),
            Dtype::F32 => CpuStorage::F32(decode(b)),
            Dtype::F64 => CpuStorage::F64(decode(b)),
            Dtype::I32 => widen(b, |c| i32::from_le_bytes(c) as i64),
            Dtype::U32 => widen(b, |c| u32::from_le_bytes(c) as i64),
            Dtype::I16 => widen(b, |c| i16::from_le_bytes(c) as i64),
            Dtype::U16 => widen(b, |c| u16::from_le_bytes(c) as i64),
            Dtype::I8 => widen(b, |c| i8::from_le_bytes(c) as i64),
            other => return Err(bad(format!("tensor {name:?} has unsupported dtype {other:?}"))),
        };
        tensors.push((name, Tensor::from_cpu(storage, view.shape())));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(SafetensorsFile { tensors, metadata: meta.metadata().clone().unwrap_or_default() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_dtype_and_views() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let a = Tensor::from_vec((0..6).map(|x| x as f32 * 0.5).collect(), [2, 3]).unwrap();
        let at = a.t().unwrap();
        let ids = Tensor::from_vec(vec![1i64, -7], 2).unwrap();
        let h = a.to_dtype(DType::BF16).unwrap();
        let meta = HashMap::from([("step".to_string(), "12".to_string())]);
        save_safetensors(&path, [("a", &a), ("at", &at), ("ids", &ids), ("h", &h)], Some(&meta)).unwrap();
        let f = load_safetensors(&path).unwrap();
        assert_eq!(f.metadata["step"], "12");
        let names: Vec<&str> = f.tensors.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "at", "h", "ids"]);
        assert_eq!(f.get("at").unwrap().to_vec::<f32>().unwrap(), at.to_vec::<f32>().unwrap());
        assert_eq!(f.get("ids").unwrap().to_vec::<i64>().unwrap(), vec![1, -7]);
        assert_eq!(f.get("h").unwrap().dtype(), DType::BF16);
        let some = load_safetensors_where(&path, |n| n.starts_with('a')).unwrap();
        let names: Vec<&str> = some.tensors.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!((names, some.metadata["step"].as_str()), (vec!["a", "at"], "12"));
        assert!(dir.path().read_dir().unwrap().count() == 1, "no temporary file left behind");
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = load_safetensors(dir.path().join("nope")).unwrap_err();
        assert!(matches!(missing, Error::Io { .. }));
        let junk = dir.path().join("junk");
        std::fs::write(&junk, b"not a safetensors file at all").unwrap();
        let e = load_safetensors(&junk).unwrap_err();
        assert!(e.to_string().contains("not a valid safetensors file"), "{e}");
        let e = load_safetensors(dir.path()).unwrap_err();
        assert!(e.to_string().contains("a folder, not a safetensors file"), "{e}");
        let a = Tensor::zeros(2, DType::F32);
        assert!(save_safetensors(dir.path().join("d"), [("x", &a), ("x", &a)], None).is_err());
        assert!(save_safetensors(dir.path().join("no/such/dir/f"), [("x", &a)], None).is_err());
    }
}
