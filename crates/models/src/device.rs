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
}
