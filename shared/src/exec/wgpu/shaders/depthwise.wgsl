// Depthwise convolution (groups = C), f32, one invocation per output value: x = channel,
// y = output pixel. Weights in PyTorch's [C, 1, KS, KS] layout, summed in (ky, kx) order.
// Epilogue as conv.wgsl: bias, residual before (RES = 1), activation, residual after (RES = 2).

override C: u32;
override H: u32;
override W: u32;
override IN_SY: u32;
override IN_SX: u32;
override IN_SC: u32;
override OH: u32;
override OW: u32;
override KS: u32;
override STRIDE: u32;
override PAD: u32;
override ACT: u32 = 0u;
override RES: u32 = 0u;
override RES_SY: u32 = 0u;
override RES_SX: u32 = 0u;
override RES_SC: u32 = 0u;

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read> res: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(16, 16)
fn depthwise(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    let p = gid.y;
    if (c >= C || p >= OH * OW) {
        return;
    }
    let oy = p / OW;
    let ox = p % OW;
    var acc = 0.0;
    for (var ky = 0u; ky < KS; ky = ky + 1u) {
        let iy = i32(oy * STRIDE + ky) - i32(PAD);
        if (iy < 0 || iy >= i32(H)) {
            continue;
        }
        for (var kx = 0u; kx < KS; kx = kx + 1u) {
            let ix = i32(ox * STRIDE + kx) - i32(PAD);
            if (ix < 0 || ix >= i32(W)) {
                continue;
            }
            let xv = x[u32(iy) * IN_SY + u32(ix) * IN_SX + c * IN_SC];
            acc = acc + xv * w[(c * KS + ky) * KS + kx];
        }
    }
    var v = acc + bias[c];
    var r = 0.0;
    if (RES != 0u) {
        r = res[oy * RES_SY + ox * RES_SX + c * RES_SC];
    }
    if (RES == 1u) {
        v = v + r;
    }
    if (ACT == 1u) {
        v = max(v, 0.0);
    } else if (ACT == 2u) {
        v = min(max(v, 0.0), 6.0);
    }
    if (RES == 2u) {
        v = v + r;
    }
    y[p * C + c] = v;
}
