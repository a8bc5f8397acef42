//! Choosing the adapter the wgpu executor runs on (Vulkan only: the `wgpu` feature builds no
//! other backend).
//!
//! [`AdapterPolicy::RealGpu`] is what a device uses: it never accepts a `DeviceType::Cpu` adapter
//! (Mesa's lavapipe / llvmpipe, SwiftShader), which is slower than the CPU executor on the same
//! cores; when only such an adapter exists the error says so. [`AdapterPolicy::Any`] also
//! accepts them, which is how the tests run the kernels on machines without a GPU. Among the
//! acceptable adapters a discrete GPU wins over an integrated, virtual, other, then CPU one.

use crate::error::{Error, Result};

/// Which adapters [`pick_adapter`] may choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdapterPolicy {
    /// Any adapter, CPU-type included (tests, comparisons on a machine without a GPU).
    Any,
    /// Never a `DeviceType::Cpu` adapter.
    #[default]
    RealGpu,
}

/// An opened adapter: the device and queue the executor and the kNN run on.
#[derive(Debug, Clone)]
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
}

impl Gpu {
    /// The adapter's name, for status pages (`llvmpipe (LLVM 15.0.6, 256 bits)`, ...).
    pub fn adapter_name(&self) -> &str {
        &self.info.name
    }
}

pub(crate) fn gpu_err(what: &'static str, e: impl std::fmt::Display) -> Error {
    Error::Gpu {
        what,
        reason: e.to_string(),
    }
}

fn instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = wgpu::Backends::VULKAN;
    wgpu::Instance::new(desc)
}

/// Every adapter the Vulkan backend lists, with its name, device type and backend.
pub fn list_adapters() -> Vec<wgpu::AdapterInfo> {
    pollster::block_on(instance().enumerate_adapters(wgpu::Backends::VULKAN))
        .iter()
        .map(|a| a.get_info())
        .collect()
}

fn rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

fn describe(infos: &[wgpu::AdapterInfo]) -> String {
    infos
        .iter()
        .map(|i| format!("{} ({:?}, {:?})", i.name, i.device_type, i.backend))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The best adapter `policy` accepts, opened with its own limits.
pub fn pick_adapter(policy: AdapterPolicy) -> Result<Gpu> {
    let adapters = pollster::block_on(instance().enumerate_adapters(wgpu::Backends::VULKAN));
    let infos: Vec<_> = adapters.iter().map(|a| a.get_info()).collect();
    tracing::debug!(adapters = %describe(&infos), ?policy, "wgpu adapters");
    let chosen = adapters
        .into_iter()
        .zip(&infos)
        .filter(|(_, i)| policy == AdapterPolicy::Any || i.device_type != wgpu::DeviceType::Cpu)
        .min_by_key(|(_, i)| rank(i.device_type));
    let Some((adapter, info)) = chosen else {
        let reason = if infos.is_empty() {
            "no Vulkan adapter is present (is a Vulkan driver installed?)".to_string()
        } else {
            format!(
                "only a CPU adapter ({}) is present; the real-gpu policy never picks \
                 DeviceType::Cpu",
                describe(&infos)
            )
        };
        return Err(Error::Gpu {
            what: "adapter",
            reason,
        });
    };
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("firm-inspect encoder"),
        required_features: wgpu::Features::empty(),
        required_limits: adapter.limits(),
        ..Default::default()
    }))
    .map_err(|e| gpu_err("device", format!("{}: {e}", info.name)))?;
    tracing::info!(adapter = %info.name, device_type = ?info.device_type, "wgpu adapter chosen");
    Ok(Gpu {
        device,
        queue,
        info: info.clone(),
    })
}
