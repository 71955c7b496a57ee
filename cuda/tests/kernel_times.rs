//! The per-kernel timer (`MONARCH_KERNEL_TIMES`) on a GPU. A test binary of its own,
//! since the variable is read when a device opens. Says SKIPPED without a CUDA driver.

use monarch_cuda::ops::dropout;
use monarch_cuda::{CudaDevice, DType, KERNEL_TIMES_ENV};

#[test]
fn the_timer_counts_each_launch_and_its_device_time() {
    // SAFETY: the only test of this binary; no other thread reads the environment.
    unsafe { std::env::set_var(KERNEL_TIMES_ENV, "1") };
    let dev = match CudaDevice::new(0) {
        Ok(d) => d,
        Err(e) => return eprintln!("SKIPPED: {e}"),
    };
    let n = 1 << 22;
    let x = dev.htod(&vec![1.0f32; n]).unwrap();
    let mut y = dev.alloc(DType::F32, n).unwrap();
    for seed in 0..3 {
        dropout::dropout(x.view(), 0.5, seed, 0, y.view_mut()).unwrap();
    }
    dev.synchronize().unwrap();
    let times = dev.kernel_times().unwrap().expect("the timer is on");
    let t = times.iter().find(|t| t.name == "dropout_f32").expect("dropout was timed");
    assert_eq!(t.launches, 3);
    // 3 x 32 MB read and written: more than a microsecond, less than a second.
    assert!(t.ms > 1e-3 && t.ms < 1e3, "{} ms", t.ms);
    dev.reset_kernel_times().unwrap();
    assert!(dev.kernel_times().unwrap().unwrap().is_empty());
}
