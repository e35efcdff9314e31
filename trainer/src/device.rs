//! Choosing where to train: a real GPU through wgpu when there is one, else the CPU (flex).
//! Software Vulkan drivers (lavapipe, llvmpipe, SwiftShader) count as no GPU: they are far slower
//! than the CPU backend for training.

use burn::tensor::Device;
use clap::ValueEnum;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceChoice {
    /// A hardware GPU if one is found, else the CPU.
    Auto,
    /// The GPU through wgpu (fails if the build has no wgpu support).
    Wgpu,
    /// The CPU backend (flex).
    Cpu,
}

/// The device and a line saying what it is.
pub fn select(choice: DeviceChoice) -> Result<(Device, String), String> {
    match choice {
        DeviceChoice::Cpu => Ok((Device::flex(), "CPU (burn flex)".into())),
        DeviceChoice::Wgpu => wgpu_device(),
        DeviceChoice::Auto => match hardware_gpu() {
            Some(name) => wgpu_device().map(|(d, _)| (d, format!("GPU via wgpu: {name}"))),
            None => Ok((Device::flex(), "CPU (burn flex); no hardware GPU found".into())),
        },
    }
}

#[cfg(feature = "wgpu")]
fn wgpu_device() -> Result<(Device, String), String> {
    let name = hardware_gpu().unwrap_or_else(|| "software or unknown adapter".into());
    Ok((Device::wgpu(burn::tensor::DeviceKind::DefaultDevice), format!("GPU via wgpu: {name}")))
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_device() -> Result<(Device, String), String> {
    Err("this trainer was built without the `wgpu` feature; rebuild with default features or use --device cpu".into())
}

/// The name of the first hardware (non-CPU) adapter wgpu can see.
#[cfg(feature = "wgpu")]
pub fn hardware_gpu() -> Option<String> {
    use burn::tensor::wgpu::wgpu;
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    adapters
        .iter()
        .map(|a| a.get_info())
        .find(|info| {
            let software = ["llvmpipe", "lavapipe", "swiftshader", "softpipe"]
                .iter()
                .any(|s| info.name.to_ascii_lowercase().contains(s));
            info.device_type != wgpu::DeviceType::Cpu && !software
        })
        .map(|info| format!("{} ({:?})", info.name, info.backend))
}

#[cfg(not(feature = "wgpu"))]
pub fn hardware_gpu() -> Option<String> {
    None
}
