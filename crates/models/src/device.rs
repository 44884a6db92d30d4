//! Choosing where models run: `cpu`, `cuda` or `cuda:N`.

use crate::{ModelError, Result};
use candle_core::Device;

/// Parses a device name (`cpu`, `cuda`, `cuda:N`) and opens the device. A CUDA name in a build
/// without the `cuda` feature is refused with a message saying how to get one.
pub fn parse_device(name: &str) -> Result<Device> {
    let name = name.trim();
    let ordinal = match name {
        "cpu" => return Ok(Device::Cpu),
        "cuda" | "gpu" => 0,
        _ => match name.strip_prefix("cuda:") {
            Some(n) => n.parse::<usize>().map_err(|_| {
                ModelError::Invalid(format!("device '{name}': expected cuda:N with N a number"))
            })?,
            None => {
                return Err(ModelError::Invalid(format!(
                    "unknown device '{name}' (expected cpu, cuda or cuda:N)"
                )))
            }
        },
    };
    if !candle_core::utils::cuda_is_available() {
        return Err(ModelError::Invalid(format!(
            "device '{name}': this build of ralm has no CUDA support; build it with \
             scripts/build-cuda.sh (cargo feature `cuda`)"
        )));
    }
    Device::new_cuda(ordinal).map_err(|e| ModelError::Invalid(format!("device '{name}': {e}")))
}

/// Makes this thread's float arithmetic flush subnormal results and inputs to zero (x86 FTZ and
/// DAZ), and every thread it starts afterwards inherit that. Call it first thing in `main`.
///
/// Training gradients weighted by tiny retrieval posteriors fall into the subnormal range, where
/// each multiply-add takes a slow microcode path: a REALM pre-training update ran 25 times
/// slower with them (its matrix products at 3 GFLOP/s on one core instead of 50+). Subnormals
/// are below 1.2e-38, far beneath anything a gradient step can feel.
pub fn flush_denormals() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: setting MXCSR's FTZ (bit 15) and DAZ (bit 6) only changes rounding of subnormals.
    #[allow(deprecated)]
    unsafe {
        use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
        _mm_setcsr(_mm_getcsr() | 0x8040);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_refuses_bad_ones() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        let err = parse_device("tpu").unwrap_err().to_string();
        assert!(err.contains("unknown device 'tpu'"), "{err}");
        let err = parse_device("cuda:x").unwrap_err().to_string();
        assert!(err.contains("cuda:N"), "{err}");
        if !candle_core::utils::cuda_is_available() {
            let err = parse_device("cuda:0").unwrap_err().to_string();
            assert!(err.contains("scripts/build-cuda.sh"), "{err}");
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn subnormals_flush_to_zero_in_this_thread_and_its_children() {
        let run = || {
            let tiny = std::hint::black_box(1e-20f32);
            tiny * tiny // 1e-40: subnormal
        };
        std::thread::spawn(move || {
            assert!(run() > 0.0, "subnormal before");
            flush_denormals();
            assert_eq!(run(), 0.0);
            let child = std::thread::spawn(run).join().unwrap();
            assert_eq!(child, 0.0, "a thread started afterwards inherits it");
        })
        .join()
        .unwrap();
    }
}
