//! The device chosen with `--device` (cpu, cuda, cuda:N), shared by every command.

use candle_core::Device;
use std::sync::OnceLock;

/// The opened device and, when `--device` was given, its name.
static SELECTED: OnceLock<(Device, Option<String>)> = OnceLock::new();

/// Opens the device named on the command line (the CPU when none); called once, before any
/// command runs.
pub fn select(name: Option<&str>) -> anyhow::Result<()> {
    let device = ralm_models::parse_device(name.unwrap_or("cpu"))?;
    // `select` runs once per process, so the cell is always empty here.
    let _ = SELECTED.set((device, name.map(str::to_string)));
    Ok(())
}

/// The device models run on (the CPU unless `--device` said otherwise).
pub fn current() -> Device {
    SELECTED.get().map_or(Device::Cpu, |(d, _)| d.clone())
}

/// The `--device` argument, when one was given (it then overrides config files).
pub fn given_name() -> Option<String> {
    SELECTED.get().and_then(|(_, n)| n.clone())
}
