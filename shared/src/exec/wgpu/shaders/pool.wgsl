// Pooling. `max_pool`: square window, padding never wins (PyTorch), one invocation per output
// value (x = channel, y = pixel). `global_avg_pool`: the mean over all pixels, one invocation per
// channel, summed in pixel order. Input through its strides, output NHWC.

override C: u32;
override H: u32;
override W: u32;
override IN_SY: u32;
override IN_SX: u32;
override IN_SC: u32;
override OH: u32 = 1u;
override OW: u32 = 1u;
override KS: u32 = 1u;
override STRIDE: u32 = 1u;
override PAD: u32 = 0u;

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(16, 16)
fn max_pool(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    let p = gid.y;
    if (c >= C || p >= OH * OW) {
        return;
    }
    let oy = p / OW;
    let ox = p % OW;
    var m = -3.4028234e38;
    var seen = false;
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
            let v = x[u32(iy) * IN_SY + u32(ix) * IN_SX + c * IN_SC];
            if (!seen || v > m) {
                m = v;
                seen = true;
            }
        }
    }
    y[p * C + c] = m;
}

@compute @workgroup_size(64)
fn global_avg_pool(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if (c >= C) {
        return;
    }
    var s = 0.0;
    for (var iy = 0u; iy < H; iy = iy + 1u) {
        for (var ix = 0u; ix < W; ix = ix + 1u) {
            s = s + x[iy * IN_SY + ix * IN_SX + c * IN_SC];
        }
    }
    y[c] = s / f32(H * W);
}
