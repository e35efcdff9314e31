//! Choosing where to train: a real GPU through wgpu when there is one, else the CPU (flex).
//! Software Vulkan drivers (lavapipe, llvmpipe, SwiftShader) count as no GPU: they are far slower
//! than the CPU backend for training.

use anyhow::Result;
use burn::tensor::Device;
use clap::ValueEnum;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceChoice {
    /// burn's wgpu backend on a hardware GPU (Vulkan, Metal, DX12); falls back to the CPU, and
    /// says so, when there is none.
    Wgpu,
    /// burn's fastest CPU backend (flex).
    Cpu,
}

/// The device and a line saying what it is.
pub fn select(choice: DeviceChoice) -> Result<(Device, String)> {
    let cpu = || Device::flex();
    match choice {
        DeviceChoice::Cpu => Ok((cpu(), "CPU (burn flex)".into())),
        DeviceChoice::Wgpu => match hardware_gpu() {
            Some(name) => Ok((gpu_device(), format!("GPU via wgpu: {name}"))),
            None if cfg!(feature = "wgpu") => Ok((
                cpu(),
                "CPU (burn flex): wgpu found no hardware GPU (a software Vulkan driver such as lavapipe is far too slow to train on); pass --backend cpu to skip this check".into(),
            )),
            None => Ok((cpu(), "CPU (burn flex): this build has no wgpu support".into())),
        },
    }
}

#[cfg(feature = "wgpu")]
fn gpu_device() -> Device {
    Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)
}

#[cfg(not(feature = "wgpu"))]
fn gpu_device() -> Device {
    Device::flex()
}

/// The name of the first hardware (non-CPU) adapter wgpu can see.
#[cfg(feature = "wgpu")]
pub fn hardware_gpu() -> Option<String> {
    use burn::tensor::wgpu::wgpu;
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
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
