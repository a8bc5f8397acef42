//! Choosing the adapter the wgpu executor runs on (Vulkan only: the `wgpu` feature builds no
//! other backend).
//!
//! [`AdapterPolicy::RealGpu`] is what a device uses: it never accepts a `DeviceType::Cpu` adapter
//! (Mesa's lavapipe / llvmpipe, SwiftShader), which is slower than the CPU executor on the same
//! cores; when only such an adapter exists the error says so. [`AdapterPolicy::Any`] also
//! accepts them, which is how the tests run the kernels on machines without a GPU. Among the
//! acceptable adapters a discrete GPU wins over an integrated, virtual, other, then CPU one.
//!
//! The device is opened with every optional feature the kernels can use that the adapter offers
//! (today `SHADER_F16`), and [`Capabilities`] records what it got, so that
//! [`super::WgpuOptions`] resolve once at load: f16 convolutions need `SHADER_F16` (on Vulkan:
//! `shaderFloat16` and 16-bit storage buffers); `dot4I8Packed` is always accepted by naga, which
//! emits `OpSDot` where the device has `shaderIntegerDotProduct` (Vulkan 1.3 or
//! `VK_KHR_shader_integer_dot_product`) and a byte-by-byte polyfill elsewhere. Mesa's lavapipe
//! 22.3 (Debian 12) offers both (Vulkan 1.3, so `OpSDot` is native there), so the tests run every
//! kernel on it; whether `OpSDot` maps to a hardware dot product is up to the driver, which is
//! why `device-runtime gpu-check` times both int8 kernels.

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

/// How `dot4I8Packed` runs on an adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dot4Support {
    /// SPIR-V `OpSDot` (the device has `shaderIntegerDotProduct`).
    Native,
    /// naga's polyfill (four byte extracts and multiply-adds): exact, not faster.
    Polyfilled,
    /// This wgpu's WGSL lacks `packed_4x8_integer_dot_product`.
    Unavailable,
}

/// What an opened device can run beyond core WGSL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// `SHADER_F16` is enabled on the device (so `enable f16;` shaders compile).
    pub shader_f16: bool,
    pub dot4: Dot4Support,
}

/// An opened adapter: the device and queue the executor and the kNN run on.
#[derive(Debug, Clone)]
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    /// Features the adapter offers (the device enables those in [`OPTIONAL_FEATURES`]).
    pub adapter_features: wgpu::Features,
    pub caps: Capabilities,
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

/// Optional features requested whenever the adapter offers them.
pub const OPTIONAL_FEATURES: wgpu::Features = wgpu::Features::SHADER_F16;

/// Whether naga's SPIR-V for `dot4I8Packed` on `adapter` is `OpSDot` or its polyfill: wgpu-hal
/// declares the `DotProduct*` capabilities exactly when the device has
/// `shaderIntegerDotProduct`, which Vulkan 1.3 requires and `VK_KHR_shader_integer_dot_product`
/// provides before it.
fn dot4_support(instance: &wgpu::Instance, adapter: &wgpu::Adapter) -> Dot4Support {
    if !instance
        .wgsl_language_features()
        .contains(wgpu::WgslLanguageFeatures::Packed4x8IntegerDotProduct)
    {
        return Dot4Support::Unavailable;
    }
    // SAFETY: the hal adapter is only read (its Vulkan properties and extension list) while the
    // guard is alive; nothing is created or destroyed through it.
    #[allow(unsafe_code)]
    let native = unsafe { adapter.as_hal::<wgpu::hal::api::Vulkan>() }.is_some_and(|hal| {
        let caps = hal.physical_device_capabilities();
        let api = caps.properties().api_version;
        // VK_MAKE_API_VERSION(0, 1, 3, 0)
        api >= (1 << 22) | (3 << 12)
            || caps.supports_extension(c"VK_KHR_shader_integer_dot_product")
    });
    if native {
        Dot4Support::Native
    } else {
        Dot4Support::Polyfilled
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
    let instance = instance();
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::VULKAN));
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
    let adapter_features = adapter.features();
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("firm-inspect encoder"),
        required_features: adapter_features & OPTIONAL_FEATURES,
        required_limits: adapter.limits(),
        ..Default::default()
    }))
    .map_err(|e| gpu_err("device", format!("{}: {e}", info.name)))?;
    let caps = Capabilities {
        shader_f16: device.features().contains(wgpu::Features::SHADER_F16),
        dot4: dot4_support(&instance, &adapter),
    };
    tracing::info!(
        adapter = %info.name,
        device_type = ?info.device_type,
        ?caps,
        "wgpu adapter chosen"
    );
    Ok(Gpu {
        device,
        queue,
        info: info.clone(),
        adapter_features,
        caps,
    })
}
