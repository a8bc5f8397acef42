// kNN, first half: the bank matrix product. Cosine of the L2-normalised query (l2norm.wgsl) with
// every row of a bank of L2-normalised rows, one invocation per row; top-k is topk.wgsl.

override DIM: u32;
override ROWS: u32;

@group(0) @binding(0) var<storage, read> bank: array<f32>;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read_write> sims: array<f32>;

@compute @workgroup_size(64)
fn cosines(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.x;
    if (r >= ROWS) {
        return;
    }
    var s = 0.0;
    for (var j = 0u; j < DIM; j = j + 1u) {
        s = s + bank[r * DIM + j] * q[j];
    }
    sims[r] = s;
}
