//! The WGSL kernels (`shaders/*.wgsl`, one file per op family, embedded with `include_str!`) and
//! how they are specialised: one compute pipeline per op, built at load with the op's sizes,
//! strides, padding and epilogue as WGSL override constants, so the per-frame work is one
//! `dispatch_workgroups` per op with a bind group made at load too.
//!
//! `conv.wgsl` holds the f32 and both u8 x i8 convolutions (`conv_u8i8`, `conv_u8i8_dot4`);
//! [`CONV_F16`] is `enable f16;` + `conv.wgsl` + `conv_f16.wgsl`, compiled only on a device with
//! `SHADER_F16` (naga refuses `enable f16;` without it), so the f16 kernel shares the indexing
//! and the epilogue with the others rather than copying them.

use wgpu::util::DeviceExt;

use super::adapter::gpu_err;
use crate::error::Result;

/// The shader sources, by op family.
pub const CONV: &str = include_str!("shaders/conv.wgsl");
/// `conv_f16` and everything of [`CONV`], behind `enable f16;`.
pub const CONV_F16: &str = concat!(
    "enable f16;\n",
    include_str!("shaders/conv.wgsl"),
    include_str!("shaders/conv_f16.wgsl")
);
pub const DEPTHWISE: &str = include_str!("shaders/depthwise.wgsl");
pub const POOL: &str = include_str!("shaders/pool.wgsl");
pub const L2NORM: &str = include_str!("shaders/l2norm.wgsl");
pub const KNN: &str = include_str!("shaders/knn.wgsl");
pub const TOPK: &str = include_str!("shaders/topk.wgsl");

/// Side of the conv tiles and of the 2-D workgroups (`@workgroup_size(16, 16)`).
pub const TILE: u32 = 16;

/// One prepared dispatch: what a frame replays.
#[derive(Debug)]
pub(crate) struct Dispatch {
    pub label: String,
    pub pipeline: wgpu::ComputePipeline,
    pub bind: wgpu::BindGroup,
    pub groups: [u32; 3],
}

impl Dispatch {
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind, &[]);
        let [x, y, z] = self.groups;
        pass.dispatch_workgroups(x, y, z);
    }
}

/// Compiled shader modules, one per family, shared by every pipeline of a model.
#[derive(Debug)]
pub(crate) struct Modules {
    pub conv: wgpu::ShaderModule,
    /// Only where the plan uses f16 (the device then has `SHADER_F16`).
    pub conv_f16: Option<wgpu::ShaderModule>,
    pub depthwise: wgpu::ShaderModule,
    pub pool: wgpu::ShaderModule,
}

pub(crate) fn module(device: &wgpu::Device, label: &str, src: &str) -> wgpu::ShaderModule {
    device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(label),
        source: wgpu::ShaderSource::Wgsl(src.into()),
    })
}

impl Modules {
    pub fn new(device: &wgpu::Device, f16: bool) -> Self {
        Self {
            conv: module(device, "conv.wgsl", CONV),
            conv_f16: f16.then(|| module(device, "conv_f16.wgsl", CONV_F16)),
            depthwise: module(device, "depthwise.wgsl", DEPTHWISE),
            pool: module(device, "pool.wgsl", POOL),
        }
    }
}

/// A pipeline of `entry` in `module` specialised with `constants`, and a bind group with
/// `buffers[i]` at binding `i` (the layout comes from the shader).
pub(crate) fn dispatch(
    device: &wgpu::Device,
    label: String,
    module: &wgpu::ShaderModule,
    entry: &str,
    constants: &[(&str, f64)],
    buffers: &[&wgpu::Buffer],
    groups: [u32; 3],
) -> Dispatch {
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(&label),
        layout: None,
        module,
        entry_point: Some(entry),
        compilation_options: wgpu::PipelineCompilationOptions {
            constants,
            // Every workgroup variable is written before it is read.
            zero_initialize_workgroup_memory: false,
        },
        cache: None,
    });
    let layout = pipeline.get_bind_group_layout(0);
    let entries: Vec<_> = buffers
        .iter()
        .enumerate()
        .map(|(i, b)| wgpu::BindGroupEntry {
            binding: i as u32,
            resource: b.as_entire_binding(),
        })
        .collect();
    let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(&label),
        layout: &layout,
        entries: &entries,
    });
    Dispatch {
        label,
        pipeline,
        bind,
        groups,
    }
}

/// A storage buffer holding `bytes` (at least 4 bytes: bindings cannot be empty).
pub(crate) fn storage_init(device: &wgpu::Device, label: &str, bytes: &[u8]) -> wgpu::Buffer {
    let mut padded;
    let contents = if bytes.len() < 4 {
        padded = bytes.to_vec();
        padded.resize(4, 0);
        &padded[..]
    } else {
        bytes
    };
    device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some(label),
        contents,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC,
    })
}

/// A storage buffer of `len` f32 values (at least one).
pub(crate) fn storage(device: &wgpu::Device, label: &str, len: usize) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: 4 * len.max(1) as u64,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    })
}

/// A mappable buffer for reading `len` f32 values back.
pub(crate) fn staging(device: &wgpu::Device, label: &str, len: usize) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: 4 * len.max(1) as u64,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

/// Map `staging` (after the submission that filled it), copy its first `out.len()` f32 values
/// (or u32 values, through `f32::from_bits`) into `out`, unmap.
pub(crate) fn read_back(
    device: &wgpu::Device,
    staging: &wgpu::Buffer,
    out: &mut [f32],
) -> Result<()> {
    let bytes = 4 * out.len() as u64;
    let slice = staging.slice(..bytes.max(4));
    slice.map_async(wgpu::MapMode::Read, |_| {});
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| gpu_err("readback", e))?;
    {
        let view = slice
            .get_mapped_range()
            .map_err(|e| gpu_err("readback", e))?;
        for (o, b) in out.iter_mut().zip(view.chunks_exact(4)) {
            *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
    }
    staging.unmap();
    Ok(())
}

/// Run `f` (pipeline and bind group creation) under a validation error scope, so a kernel that
/// does not build is an error naming it rather than a panic of wgpu's default handler.
pub(crate) fn checked<T>(
    device: &wgpu::Device,
    what: &'static str,
    f: impl FnOnce() -> T,
) -> Result<T> {
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let v = f();
    match pollster::block_on(scope.pop()) {
        Some(e) => Err(gpu_err(what, e)),
        None => Ok(v),
    }
}
