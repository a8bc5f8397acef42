//! The CPU backend: the bundle's graph on this project's kernels ([`crate::exec::cpu`]), int8
//! where the bundle quantizes activations, packed and planned once at load.

use std::collections::BTreeMap;

use super::Embedder;
use crate::bundle::{Bundle, BundleError, EncoderWeights};
use crate::exec::cpu::{CpuExecutor, ExecOptions};
use crate::model::graph::{Graph, TensorId};
use crate::quant::ActivationQuant;

/// The folded encoder on the CPU.
#[derive(Debug)]
pub struct CpuEmbedder {
    exec: CpuExecutor,
}

impl CpuEmbedder {
    pub fn new(bundle: &Bundle) -> Result<Self, BundleError> {
        let m = &bundle.manifest.model;
        Self::from_weights(
            &m.graph,
            &bundle.encoder,
            &bundle.manifest.activation_quant(),
            m.input_size,
        )
    }

    /// From the folded weights and activation quantization alone (the exporter, before the
    /// bundle exists), with the default options (the fastest ISA of this CPU, the current rayon
    /// pool's threads).
    pub fn from_weights(
        graph: &Graph,
        weights: &EncoderWeights,
        activations: &BTreeMap<TensorId, ActivationQuant>,
        input_size: u32,
    ) -> Result<Self, BundleError> {
        Self::with_options(
            graph,
            weights,
            activations,
            input_size,
            ExecOptions::default(),
        )
    }

    pub fn with_options(
        graph: &Graph,
        weights: &EncoderWeights,
        activations: &BTreeMap<TensorId, ActivationQuant>,
        input_size: u32,
        opts: ExecOptions,
    ) -> Result<Self, BundleError> {
        let exec = CpuExecutor::new(graph, weights, activations, input_size as usize, opts)
            .map_err(BundleError::runtime)?;
        Ok(Self { exec })
    }

    pub fn executor(&self) -> &CpuExecutor {
        &self.exec
    }
}

impl Embedder for CpuEmbedder {
    fn name(&self) -> &str {
        "cpu"
    }

    fn feature_dim(&self) -> usize {
        self.exec.feature_dim()
    }

    fn activation_bytes(&self) -> Option<usize> {
        Some(self.exec.activation_bytes())
    }

    fn device(&self) -> String {
        let o = self.exec.options();
        format!("cpu ({}, {} threads)", o.isa, o.threads)
    }

    fn embed_into(&mut self, inputs: &[f32], n: usize, out: &mut [f32]) -> Result<(), BundleError> {
        let s = self.exec.input_size();
        let (per, dim) = (3 * s * s, self.exec.feature_dim());
        if inputs.len() != n * per || out.len() != n * dim {
            return Err(BundleError::runtime(format!(
                "{} input values and {} outputs for {n} images of 3x{s}x{s}",
                inputs.len(),
                out.len()
            )));
        }
        for (x, y) in inputs.chunks_exact(per).zip(out.chunks_exact_mut(dim)) {
            self.exec.run(x, y);
        }
        Ok(())
    }

    fn has_taps(&self) -> bool {
        true
    }

    fn embed_taps(
        &mut self,
        input: &[f32],
        out: &mut [f32],
        taps: &mut [(TensorId, Vec<f32>)],
    ) -> Result<(), BundleError> {
        let s = self.exec.input_size();
        if input.len() != 3 * s * s || out.len() != self.exec.feature_dim() {
            return Err(BundleError::runtime(format!(
                "{} input values and {} outputs for one image of 3x{s}x{s}",
                input.len(),
                out.len()
            )));
        }
        for (t, buf) in taps.iter() {
            let want = self.exec.shape(*t).map(|sh| sh.len());
            if *t == 0 || want != Some(buf.len()) {
                return Err(BundleError::runtime(format!(
                    "tap tensor {t}: a buffer of {} values for {want:?}",
                    buf.len()
                )));
            }
        }
        self.exec.run_taps(input, out, taps);
        Ok(())
    }
}
