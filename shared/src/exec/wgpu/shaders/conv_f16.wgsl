// `conv_f16`: the f32 convolution of conv.wgsl with f16 weights and f16 workgroup tiles, summed in
// f32. Not a module of its own: kernels.rs compiles `enable f16;` + conv.wgsl + this file, and only
// on a device with SHADER_F16, so it shares a_index() and the epilogue with the other kernels.
//
// Weights: [K_WORDS][C_OUT] quads of four consecutive k as vec4<f16> (two u32 words each; K padded
// to a multiple of 4 with zeros), k-major so that a row of the workgroup reads consecutive words.
// Activations stay f32 between ops and are rounded to f16 as the tile is filled (64 k per step).
// Each thread adds one vec4<f16> dot product (four f16 products and three f16 sums) to an f32
// accumulator per 4 k: the rounding is that of f16 storage (2^-11 relative per operand) plus a
// few f16 roundings of four-term partial sums, never of the running sum over K.
//
// Range: operands and four-term partial sums must stay below f16's 65504. Activations of a
// folded-BN encoder on normalised images are tens at most; executor.rs keeps a layer whose
// weights do not fit f16 on conv_f32.

var<workgroup> ah: array<array<vec4<f16>, 16>, 16>;
var<workgroup> bh: array<array<vec4<f16>, 16>, 16>;

@compute @workgroup_size(16, 16)
fn conv_f16(@builtin(local_invocation_id) l: vec3<u32>, @builtin(workgroup_id) g: vec3<u32>) {
    let m = OH * OW;
    let kl = k_len();
    let co = g.x * TILE + l.x;
    let p = g.y * TILE + l.y;
    var acc = 0.0;
    for (var q0 = 0u; q0 < K_WORDS; q0 = q0 + TILE) {
        // A tile: row l.y (pixel), quad l.x (k = 4 * quad .. + 3).
        let qa = q0 + l.x;
        var a = vec4<f16>(0.0h);
        if (p < m && qa < K_WORDS) {
            for (var j = 0u; j < 4u; j = j + 1u) {
                let k = 4u * qa + j;
                if (k < kl) {
                    let i = a_index(p, k);
                    if (i >= 0) {
                        a[j] = f16(x[i]);
                    }
                }
            }
        }
        ah[l.y][l.x] = a;
        // B tile: quad l.y, output channel l.x.
        let qb = q0 + l.y;
        var b = vec4<f16>(0.0h);
        if (co < C_OUT && qb < K_WORDS) {
            let i = 2u * (qb * C_OUT + co);
            // Exact either way (f16 -> f32 -> f16); naga 30 has no bitcast from vec2<u32> to
            // vec4<f16>, and this runs once per 16 dot products.
            b = vec4<f16>(vec4<f32>(unpack2x16float(w[i]), unpack2x16float(w[i + 1u])));
        }
        bh[l.y][l.x] = b;
        workgroupBarrier();
        for (var kk = 0u; kk < TILE; kk = kk + 1u) {
            acc = acc + f32(dot(ah[l.y][kk], bh[kk][l.x]));
        }
        workgroupBarrier();
    }
    if (p < m && co < C_OUT) {
        epilogue(acc + ep[co], p, co);
    }
}
