//! The wgpu backend (feature `wgpu`): the bundle's graph on our WGSL kernels
//! ([`crate::exec::wgpu`]), planned once at load, checked against the CPU backend by the tests and
//! by the bundle's self-test on this backend.

use std::collections::BTreeMap;

use super::Embedder;
use crate::bundle::{Bundle, BundleError, EncoderWeights};
use crate::exec::wgpu::{AdapterPolicy, Gpu, WgpuExecutor, WgpuOptions, pick_adapter};
use crate::model::graph::{Graph, TensorId};
use crate::quant::ActivationQuant;

/// The folded encoder on a wgpu adapter.
#[derive(Debug)]
pub struct WgpuEmbedder {
    exec: WgpuExecutor,
}

impl WgpuEmbedder {
    /// `bundle` on the best real GPU ([`AdapterPolicy::RealGpu`]: never a CPU-type adapter).
    pub fn new(bundle: &Bundle) -> Result<Self, BundleError> {
        Self::with_policy(bundle, AdapterPolicy::RealGpu)
    }

    /// `bundle` on the adapter `policy` picks.
    pub fn with_policy(bundle: &Bundle, policy: AdapterPolicy) -> Result<Self, BundleError> {
        Self::with_options(bundle, policy, WgpuOptions::default())
    }

    /// `bundle` on the adapter `policy` picks, with the convolution kernels `options` choose.
    pub fn with_options(
        bundle: &Bundle,
        policy: AdapterPolicy,
        options: WgpuOptions,
    ) -> Result<Self, BundleError> {
        let gpu = pick_adapter(policy).map_err(BundleError::runtime)?;
        let m = &bundle.manifest.model;
        Self::from_weights_with(
            gpu,
            &m.graph,
            &bundle.encoder,
            &bundle.manifest.activation_quant(),
            m.input_size,
            options,
        )
    }

    /// From the folded weights and activation quantization alone, on an opened adapter.
    pub fn from_weights(
        gpu: Gpu,
        graph: &Graph,
        weights: &EncoderWeights,
        activations: &BTreeMap<TensorId, ActivationQuant>,
        input_size: u32,
    ) -> Result<Self, BundleError> {
        Self::from_weights_with(
            gpu,
            graph,
            weights,
            activations,
            input_size,
            WgpuOptions::default(),
        )
    }

    /// As [`Self::from_weights`], with the convolution kernels `options` choose.
    pub fn from_weights_with(
        gpu: Gpu,
        graph: &Graph,
        weights: &EncoderWeights,
        activations: &BTreeMap<TensorId, ActivationQuant>,
        input_size: u32,
        options: WgpuOptions,
    ) -> Result<Self, BundleError> {
        let exec = WgpuExecutor::with_options(
            gpu,
            graph,
            weights,
            activations,
            input_size as usize,
            options,
        )
        .map_err(BundleError::runtime)?;
        Ok(Self { exec })
    }

    /// The adapter's name, for status pages.
    pub fn adapter_name(&self) -> &str {
        self.exec.adapter_name()
    }

    pub fn executor(&self) -> &WgpuExecutor {
        &self.exec
    }
}

impl Embedder for WgpuEmbedder {
    fn name(&self) -> &str {
        "wgpu"
    }

    fn feature_dim(&self) -> usize {
        self.exec.feature_dim()
    }

    fn activation_bytes(&self) -> Option<usize> {
        Some(self.exec.activation_bytes())
    }

    fn device(&self) -> String {
        self.adapter_name().to_string()
    }

    fn embed_into(&mut self, inputs: &[f32], n: usize, out: &mut [f32]) -> Result<(), BundleError> {
        let s = self.exec.input_size();
        let (per, dim) = (self.exec.input_channels() * s * s, self.exec.feature_dim());
        if inputs.len() != n * per || out.len() != n * dim {
            return Err(BundleError::runtime(format!(
                "{} input values and {} outputs for {n} images of 3x{s}x{s}",
                inputs.len(),
                out.len()
            )));
        }
        for (x, y) in inputs.chunks_exact(per).zip(out.chunks_exact_mut(dim)) {
            self.exec.run(x, y).map_err(BundleError::runtime)?;
        }
        Ok(())
    }
}
