//! Running a bundle (DESIGN section 5): the [`Embedder`] trait every backend implements, the
//! backends ([`Backend`], [`embedder`]; the CPU one in [`cpu`]), and the [`Detector`] that turns
//! an image into a distance from normal, a verdict and the nearest good image, exactly as the
//! bundle's manifest prescribes. The trainer's evaluation, the exporter, the benchmark and the
//! device all score through this one [`Detector`]; running a model is not part of the file
//! format ([`crate::bundle`]).
//!
//! Per image: test transform (when not already applied) -> for each angle of the score's
//! ensemble: rotate, normalise, embed, score against that angle's bank -> mean over angles ->
//! distance `1 - score`. The nearest good image is the top cosine of the unrotated view.

pub mod cpu;
pub mod cuda;
mod detector;
pub mod reference;
pub mod synthetic;
#[cfg(feature = "wgpu")]
pub mod wgpu;

use serde::{Deserialize, Serialize};

use crate::bundle::{Bundle, BundleError};

pub use cpu::CpuEmbedder;
pub use detector::{Detector, Scored, StageTimes};
#[cfg(feature = "wgpu")]
pub use wgpu::WgpuEmbedder;

/// A backend that turns normalised model inputs into encoder features.
pub trait Embedder {
    /// Short name for reports (`cpu`, `reference`, ...).
    fn name(&self) -> &str;
    fn feature_dim(&self) -> usize;
    /// `inputs`: `n` normalised CHW images of the bundle's input size, concatenated; writes
    /// `n * feature_dim` raw features into `out`.
    fn embed_into(&mut self, inputs: &[f32], n: usize, out: &mut [f32]) -> Result<(), BundleError>;

    /// Bytes of activation memory held between frames, where the backend plans it at load.
    fn activation_bytes(&self) -> Option<usize> {
        None
    }

    /// What it runs on, for status pages: the CPU's kernel set and threads, a GPU adapter's name.
    fn device(&self) -> String {
        self.name().to_string()
    }

    /// Whether [`Self::embed_taps`] works on this backend (patch scoring needs it).
    fn has_taps(&self) -> bool {
        false
    }

    /// One image's features (`out`) and the feature maps of the graph tensors `taps[i].0`,
    /// each written HWC into `taps[i].1` (sized to the tensor): what patch scoring reads.
    fn embed_taps(
        &mut self,
        input: &[f32],
        out: &mut [f32],
        taps: &mut [(crate::model::graph::TensorId, Vec<f32>)],
    ) -> Result<(), BundleError> {
        let _ = (input, out, taps);
        Err(BundleError::runtime(format!(
            "the {} backend does not give feature maps (patch scoring runs on the cpu backend)",
            self.name()
        )))
    }

    /// [`Self::embed_into`] into a new vector.
    fn embed(&mut self, inputs: &[f32], n: usize) -> Result<Vec<f32>, BundleError> {
        let mut out = vec![0f32; n * self.feature_dim()];
        self.embed_into(inputs, n, &mut out)?;
        Ok(out)
    }
}

impl<E: Embedder + ?Sized> Embedder for &mut E {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn feature_dim(&self) -> usize {
        (**self).feature_dim()
    }
    fn embed_into(&mut self, inputs: &[f32], n: usize, out: &mut [f32]) -> Result<(), BundleError> {
        (**self).embed_into(inputs, n, out)
    }
    fn embed_taps(
        &mut self,
        input: &[f32],
        out: &mut [f32],
        taps: &mut [(crate::model::graph::TensorId, Vec<f32>)],
    ) -> Result<(), BundleError> {
        (**self).embed_taps(input, out, taps)
    }
    fn has_taps(&self) -> bool {
        (**self).has_taps()
    }
    fn activation_bytes(&self) -> Option<usize> {
        (**self).activation_bytes()
    }
    fn device(&self) -> String {
        (**self).device()
    }
}

impl<E: Embedder + ?Sized> Embedder for Box<E> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn feature_dim(&self) -> usize {
        (**self).feature_dim()
    }
    fn embed_into(&mut self, inputs: &[f32], n: usize, out: &mut [f32]) -> Result<(), BundleError> {
        (**self).embed_into(inputs, n, out)
    }
    fn embed_taps(
        &mut self,
        input: &[f32],
        out: &mut [f32],
        taps: &mut [(crate::model::graph::TensorId, Vec<f32>)],
    ) -> Result<(), BundleError> {
        (**self).embed_taps(input, out, taps)
    }
    fn has_taps(&self) -> bool {
        (**self).has_taps()
    }
    fn activation_bytes(&self) -> Option<usize> {
        (**self).activation_bytes()
    }
    fn device(&self) -> String {
        (**self).device()
    }
}

/// Rotate by `angle` quarter turns, normalise and embed images already through the test
/// transform: how every bank is built (exporter, evaluation, synthetic bundles) and how the
/// trainer's evaluation embeds its test views; [`Detector`] does the same per frame with its
/// buffers ([`crate::preprocess::FramePreprocessor`] gives bit-identical inputs).
pub fn embed_views<E: Embedder + ?Sized>(
    embedder: &mut E,
    norm: &crate::preprocess::Normalization,
    images: &[image::RgbImage],
    angle: u8,
) -> Result<Vec<f32>, BundleError> {
    use rayon::prelude::*;
    let inputs: Vec<f32> = images
        .par_iter()
        .map(|i| crate::preprocess::normalize_chw(&crate::preprocess::rotate(i, angle), norm))
        .collect::<Vec<_>>()
        .concat();
    embedder.embed(&inputs, images.len())
}

/// The patch features (`layout.patches() x layout.dim` per image, concatenated) of images
/// already through the test transform, unrotated: how every patch bank is built (exporter,
/// synthetic bundles) on the path the device runs.
pub fn patch_features<E: Embedder + ?Sized>(
    embedder: &mut E,
    layout: &crate::score::patch::PatchLayout,
    norm: &crate::preprocess::Normalization,
    images: &[image::RgbImage],
) -> Result<Vec<f32>, BundleError> {
    let per = layout.patches() * layout.dim;
    let mut out = vec![0f32; images.len() * per];
    let mut taps: Vec<(crate::model::graph::TensorId, Vec<f32>)> = layout
        .taps
        .iter()
        .map(|t| (t.tensor, vec![0f32; t.shape.len()]))
        .collect();
    let mut feats = vec![0f32; embedder.feature_dim()];
    let mut scratch = Vec::new();
    for (img, o) in images.iter().zip(out.chunks_exact_mut(per)) {
        let x = crate::preprocess::normalize_chw(img, norm);
        embedder.embed_taps(&x, &mut feats, &mut taps)?;
        let maps: Vec<&[f32]> = taps.iter().map(|(_, v)| v.as_slice()).collect();
        layout.features_into(&maps, &mut scratch, o);
    }
    Ok(out)
}

/// Where a bundle's encoder runs (the device config's `inference.backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// The CPU executor ([`cpu`]): int8 kernels where they are faster, both cores.
    #[default]
    Cpu,
    /// A GPU through wgpu (Vulkan, Metal, DX12): a build with the `wgpu` feature.
    Wgpu,
    /// An NVIDIA GPU through candle's CUDA device ([`cuda`]): a build with the `cuda` feature.
    Cuda,
    /// The first real GPU this build can drive (wgpu, then CUDA; never a CPU adapter such as
    /// lavapipe), else the CPU, with the reason logged.
    Auto,
}

impl Backend {
    pub const ALL: [Backend; 4] = [Backend::Cpu, Backend::Wgpu, Backend::Cuda, Backend::Auto];

    pub fn name(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Wgpu => "wgpu",
            Backend::Cuda => "cuda",
            Backend::Auto => "auto",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Backend {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        Backend::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| {
                crate::Error::invalid(
                    "backend",
                    format!(
                        "`{s}`; expected one of {}",
                        Backend::ALL.map(Backend::name).join(", ")
                    ),
                )
            })
    }
}

/// The bundle's encoder on `backend`: what the pipeline and the flash self-test both run.
pub fn embedder(
    bundle: &Bundle,
    backend: Backend,
) -> Result<Box<dyn Embedder + Send>, BundleError> {
    match backend {
        Backend::Cpu => Ok(Box::new(CpuEmbedder::new(bundle)?)),
        Backend::Wgpu => wgpu_embedder(bundle),
        Backend::Cuda => Ok(Box::new(cuda::CudaEmbedder::new(bundle, 0)?)),
        Backend::Auto => {
            let mut why = Vec::new();
            for gpu in [Backend::Wgpu, Backend::Cuda] {
                if !gpu_built(gpu) {
                    why.push(format!("{gpu}: not in this build"));
                    continue;
                }
                match embedder(bundle, gpu) {
                    Ok(e) => {
                        tracing::info!("backend auto: {} on {}", e.name(), e.device());
                        return Ok(e);
                    }
                    Err(e) => why.push(format!("{gpu}: {e}")),
                }
            }
            let e = CpuEmbedder::new(bundle)?;
            tracing::warn!(
                "backend auto: no GPU ({}); running on {}",
                why.join("; "),
                e.device()
            );
            Ok(Box::new(e))
        }
    }
}

/// Whether this build has the code for `gpu`.
fn gpu_built(gpu: Backend) -> bool {
    match gpu {
        Backend::Wgpu => cfg!(feature = "wgpu"),
        Backend::Cuda => cfg!(feature = "cuda"),
        Backend::Cpu | Backend::Auto => true,
    }
}

#[cfg(feature = "wgpu")]
fn wgpu_embedder(bundle: &Bundle) -> Result<Box<dyn Embedder + Send>, BundleError> {
    Ok(Box::new(WgpuEmbedder::new(bundle)?))
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_embedder(_bundle: &Bundle) -> Result<Box<dyn Embedder + Send>, BundleError> {
    Err(BundleError::runtime(
        "this build has no wgpu backend: build with `--features wgpu`",
    ))
}
