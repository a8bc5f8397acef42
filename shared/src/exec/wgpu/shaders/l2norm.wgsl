// L2 normalisation of one vector, x / max(||x||, 1e-12) (PyTorch's F.normalize), in a single
// workgroup: strided partial sums of squares, a tree reduction, then every invocation scales its
// share.

override DIM: u32;

const WG: u32 = 256u;

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;

var<workgroup> part: array<f32, 256>;

@compute @workgroup_size(256)
fn l2_normalize(@builtin(local_invocation_index) i: u32) {
    var s = 0.0;
    for (var j = i; j < DIM; j = j + WG) {
        s = s + x[j] * x[j];
    }
    part[i] = s;
    workgroupBarrier();
    for (var hw = WG / 2u; hw > 0u; hw = hw / 2u) {
        if (i < hw) {
            part[i] = part[i] + part[i + hw];
        }
        workgroupBarrier();
    }
    let n = max(sqrt(part[0]), 1e-12);
    for (var j = i; j < DIM; j = j + WG) {
        y[j] = x[j] / n;
    }
}
