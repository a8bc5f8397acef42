//! [`GpuKnn`]: the kNN score on the GPU. A bank of L2-normalised rows is uploaded once; per
//! query: upload the raw feature, normalise it (`l2norm.wgsl`), the bank matrix product
//! (`knn.wgsl`), the top k (`topk.wgsl`), one readback of `k` cosines and rows. The mean of the
//! top k is summed on the host in descending order, as [`crate::score::knn::mean_top_k`] does,
//! so `cos_k` agrees with [`crate::score::Bank::score`] up to the cosines' rounding.

use super::adapter::Gpu;
use super::kernels::{self, Dispatch, checked};
use crate::error::{Error, Result};
use crate::score::Bank;

/// The largest `k` the top-k kernel keeps (`MAX_K` in `topk.wgsl`).
pub const MAX_K: usize = 16;

/// The `k` nearest rows of one query.
#[derive(Debug, Clone, PartialEq)]
pub struct KnnResult {
    /// Mean of the top-k cosines (`cos_k`, higher = more normal).
    pub score: f32,
    /// `1 - score`.
    pub distance: f32,
    /// The nearest row.
    pub nearest: usize,
}

/// A bank on the GPU, ready for queries.
#[derive(Debug)]
pub struct GpuKnn {
    gpu: Gpu,
    dim: usize,
    k: usize,
    query: wgpu::Buffer,
    top_val: wgpu::Buffer,
    top_idx: wgpu::Buffer,
    staging: wgpu::Buffer,
    dispatches: [Dispatch; 3],
    /// Read-back values: k cosines then k row indices (as bits).
    back: Vec<f32>,
}

impl GpuKnn {
    /// Upload `bank` for queries of the mean of the top `k` cosines (`k` clamped to the bank's
    /// length, as [`crate::score::knn::mean_top_k`] clamps it).
    pub fn new(gpu: Gpu, bank: &Bank<f32>, k: usize) -> Result<Self> {
        if k == 0 || k > MAX_K {
            return Err(Error::invalid(
                "k",
                format!("{k}; the GPU kNN keeps 1..={MAX_K}"),
            ));
        }
        let (rows, dim) = (bank.len(), bank.dim());
        let k = k.min(rows);
        let device = gpu.device.clone();
        let built = checked(&device, "kNN kernel build", || {
            let bank_buf =
                kernels::storage_init(&device, "bank", bytemuck::cast_slice(bank.rows()));
            let query = kernels::storage(&device, "query", dim);
            let normed = kernels::storage(&device, "query normalised", dim);
            let sims = kernels::storage(&device, "cosines", rows);
            let top_val = kernels::storage(&device, "top-k cosines", k);
            let top_idx = kernels::storage(&device, "top-k rows", k);
            let l2 = kernels::module(&device, "l2norm.wgsl", kernels::L2NORM);
            let knn = kernels::module(&device, "knn.wgsl", kernels::KNN);
            let topk = kernels::module(&device, "topk.wgsl", kernels::TOPK);
            let norm = kernels::dispatch(
                &device,
                "l2 normalise".into(),
                &l2,
                "l2_normalize",
                &[("DIM", dim as f64)],
                &[&query, &normed],
                [1, 1, 1],
            );
            let cos = kernels::dispatch(
                &device,
                "bank cosines".into(),
                &knn,
                "cosines",
                &[("DIM", dim as f64), ("ROWS", rows as f64)],
                &[&bank_buf, &normed, &sims],
                [rows.div_ceil(64) as u32, 1, 1],
            );
            let top = kernels::dispatch(
                &device,
                "top k".into(),
                &topk,
                "top_k",
                &[("ROWS", rows as f64), ("K", k as f64)],
                &[&sims, &top_val, &top_idx],
                [1, 1, 1],
            );
            (query, top_val, top_idx, [norm, cos, top])
        })?;
        let (query, top_val, top_idx, dispatches) = built;
        let staging = kernels::staging(&device, "top-k readback", 2 * k);
        Ok(Self {
            gpu,
            dim,
            k,
            query,
            top_val,
            top_idx,
            staging,
            dispatches,
            back: vec![0f32; 2 * k],
        })
    }

    pub fn k(&self) -> usize {
        self.k
    }

    /// Score one raw (unnormalised) feature.
    pub fn query(&mut self, raw: &[f32]) -> Result<KnnResult> {
        if raw.len() != self.dim {
            return Err(Error::invalid(
                "test feature",
                format!(
                    "has {} values; the bank has dimension {}",
                    raw.len(),
                    self.dim
                ),
            ));
        }
        let Gpu { device, queue, .. } = &self.gpu;
        queue.write_buffer(&self.query, 0, bytemuck::cast_slice(raw));
        let mut enc = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("kNN query"),
        });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("kNN"),
                timestamp_writes: None,
            });
            for d in &self.dispatches {
                d.record(&mut pass);
            }
        }
        let kb = 4 * self.k as u64;
        enc.copy_buffer_to_buffer(&self.top_val, 0, &self.staging, 0, kb);
        enc.copy_buffer_to_buffer(&self.top_idx, 0, &self.staging, kb, kb);
        queue.submit([enc.finish()]);
        kernels::read_back(device, &self.staging, &mut self.back)?;
        let (vals, idx) = self.back.split_at(self.k);
        // Descending order, as the CPU sums them.
        let score = vals.iter().copied().sum::<f32>() / self.k as f32;
        Ok(KnnResult {
            score,
            distance: 1.0 - score,
            nearest: idx[0].to_bits() as usize,
        })
    }
}
