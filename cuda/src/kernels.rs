//! The kernel sources, embedded in the binary: one `.cu` file per op family in
//! `cuda/kernels/`, each compiled after the shared prelude `common.cuh`.

/// One op family's kernel source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KernelSource {
    /// The file stem (`unary`, `monarch`, ...), matching the CPU op's stem.
    pub stem: &'static str,
    /// The CUDA C++ text of `kernels/<stem>.cu`.
    pub text: &'static str,
}

/// The prelude every kernel source is compiled after: dtype helpers, warp reductions
/// and the tensor-core tile primitives. NVRTC sees no CUDA headers, so everything the
/// kernels use is defined here.
pub const PRELUDE: &str = include_str!("../kernels/common.cuh");

macro_rules! sources {
    ($($name:ident => $stem:literal),* $(,)?) => {
        $(
            #[doc = concat!("`kernels/", $stem, ".cu`")]
            pub const $name: KernelSource = KernelSource { stem: $stem, text: include_str!(concat!("../kernels/", $stem, ".cu")) };
        )*
        /// Every kernel source, for compiling and checking them all.
        pub const ALL: &[KernelSource] = &[$($name),*];
    };
}

sources! {
    UNARY => "unary",
    COPY => "copy",
    BINARY => "binary",
    REDUCE => "reduce",
    SOFTMAX => "softmax",
    CROSS_ENTROPY => "cross_entropy",
    LAYER_NORM => "layer_norm",
    EMBEDDING => "embedding",
    ADAMW => "adamw",
    SGD => "sgd",
    DROPOUT => "dropout",
    MONARCH => "monarch",
    BLOCK_SPARSE => "block_sparse",
    FLASH_ATTENTION => "flash_attention",
    BUTTERFLY => "butterfly",
}

impl KernelSource {
    /// The full translation unit NVRTC compiles: the prelude, then the source with its
    /// own line numbers restored for diagnostics.
    pub fn translation_unit(&self) -> String {
        format!("{PRELUDE}\n#line 1 \"{}.cu\"\n{}", self.stem, self.text)
    }

    /// The file name used in NVRTC diagnostics.
    pub fn file_name(&self) -> String {
        format!("{}.cu", self.stem)
    }

    /// Compiles this source for `arch` (e.g. `sm_90`) without touching the disk cache.
    pub fn compile(&self, arch: &str) -> crate::Result<crate::nvrtc::Compiled> {
        crate::nvrtc::compile(self.stem, &self.file_name(), &self.translation_unit(), arch)
    }
}
