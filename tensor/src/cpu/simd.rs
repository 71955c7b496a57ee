//! Run-time choice of instruction set for the vectorisable row kernels.

/// Defines `pub(crate) fn $name<T: $bound>(args) -> ret` running `$imp`, compiled a second
/// and third time for AVX-512 and for AVX2 + FMA and dispatched to the best the CPU has
/// (the portable build only assumes SSE2). `$imp` should be `#[inline(always)]` so that
/// its loops are compiled for each instruction set.
#[macro_export]
#[doc(hidden)]
macro_rules! simd_dispatch {
    ($(#[$doc:meta])* fn $name:ident<T: $bound:path> = $imp:ident ($($a:ident: $t:ty),* $(,)?) $(-> $ret:ty)?) => {
        $(#[$doc])*
        #[allow(clippy::too_many_arguments)]
        pub(crate) fn $name<T: $bound>($($a: $t),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn v4<T: $bound>($($a: $t),*) $(-> $ret)? {
                    $imp::<T>($($a),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn v3<T: $bound>($($a: $t),*) $(-> $ret)? {
                    $imp::<T>($($a),*)
                }
                if std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512vl")
                    && std::is_x86_feature_detected!("avx512dq")
                    && std::is_x86_feature_detected!("avx512bw")
                {
                    // SAFETY: the CPU has every feature `v4` is compiled for.
                    return unsafe { v4::<T>($($a),*) };
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has every feature `v3` is compiled for.
                    return unsafe { v3::<T>($($a),*) };
                }
            }
            $imp::<T>($($a),*)
        }
    };
}
