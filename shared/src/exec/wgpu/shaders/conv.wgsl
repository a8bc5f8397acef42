// Dense convolution as an implicit GEMM (no im2col buffer): C[p, co] = sum_k A[p, k] * B[k, co],
// p = oy * OW + ox, k = (ky * KS + kx) * C_IN + c (the CPU kernels' K order), A read straight from
// the input tensor through its strides (CHW for the model input, NHWC for every other tensor).
// A workgroup computes a 16 x 16 tile of C; A and B go through workgroup memory 16 k at a time.
//
// Three entry points here: `conv_f32` (f32 weights) and two u8 x i8 kernels with the same i32
// sums, bit for bit: the input quantized to u8 with the tensor's scale and zero point on the fly,
// i8 weights packed four per u32, exact i32 sums of (q - zp) * w, then acc * (s_w * s_x) + bias as
// the CPU epilogue computes it.
// - `conv_u8i8` unpacks the weight bytes with shifts into an i32 tile, one multiply-add per k;
// - `conv_u8i8_dot4` packs four quantized activations per u32 too and sums with `dot4I8Packed`
//   (SPIR-V OpSDot where the device has it): 64 k per tile step, a quarter of the workgroup loads
//   per multiply-add.
// `conv_f16.wgsl` adds `conv_f16` to this file behind `enable f16;` (kernels.rs).
//
// Epilogue: bias, then residual (RES = 1: before the activation), activation (ACT 0 none, 1 ReLU,
// 2 ReLU6), residual (RES = 2: after it). Output NHWC [OH, OW, C_OUT].

override C_IN: u32;
override H: u32;
override W: u32;
override IN_SY: u32;
override IN_SX: u32;
override IN_SC: u32;
override C_OUT: u32;
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
// u8 activations: 1 / scale and the zero point (conv_u8i8 only).
override INV_SCALE: f32 = 1.0;
override ZP: f32 = 0.0;
// u32 words per output channel of packed i8 weights (ceil(K / 4)).
override K_WORDS: u32 = 1u;

const TILE: u32 = 16u;

@group(0) @binding(0) var<storage, read> x: array<f32>;
// f32 weights as bits ([C_OUT, K]) or i8 weights packed four per word ([C_OUT, K_WORDS]).
@group(0) @binding(1) var<storage, read> w: array<u32>;
// [bias; C_OUT] then, for conv_u8i8, [combined scale; C_OUT].
@group(0) @binding(2) var<storage, read> ep: array<f32>;
@group(0) @binding(3) var<storage, read> res: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

var<workgroup> af: array<array<f32, 16>, 16>;
var<workgroup> bf: array<array<f32, 16>, 16>;
var<workgroup> ai: array<array<i32, 16>, 16>;
var<workgroup> bi: array<array<i32, 16>, 16>;
// conv_u8i8_dot4: [pixel][word of four k] and [word][output channel].
var<workgroup> aq: array<array<u32, 16>, 16>;
var<workgroup> bq: array<array<u32, 16>, 16>;

fn k_len() -> u32 {
    return C_IN * KS * KS;
}

// Index into x of A[p, k], or -1 where the window falls into the zero padding.
fn a_index(p: u32, k: u32) -> i32 {
    let c = k % C_IN;
    let t = k / C_IN;
    let kx = t % KS;
    let ky = t / KS;
    let oy = p / OW;
    let ox = p % OW;
    let iy = i32(oy * STRIDE + ky) - i32(PAD);
    let ix = i32(ox * STRIDE + kx) - i32(PAD);
    if (iy < 0 || ix < 0 || iy >= i32(H) || ix >= i32(W)) {
        return -1;
    }
    return i32(u32(iy) * IN_SY + u32(ix) * IN_SX + c * IN_SC);
}

fn epilogue(v0: f32, p: u32, co: u32) {
    var v = v0;
    var r = 0.0;
    if (RES != 0u) {
        r = res[(p / OW) * RES_SY + (p % OW) * RES_SX + co * RES_SC];
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
    y[p * C_OUT + co] = v;
}

@compute @workgroup_size(16, 16)
fn conv_f32(@builtin(local_invocation_id) l: vec3<u32>, @builtin(workgroup_id) g: vec3<u32>) {
    let m = OH * OW;
    let kl = k_len();
    let co = g.x * TILE + l.x;
    let p = g.y * TILE + l.y;
    var acc = 0.0;
    for (var k0 = 0u; k0 < kl; k0 = k0 + TILE) {
        // A tile: row l.y (pixel), column l.x (k).
        let ka = k0 + l.x;
        var a = 0.0;
        if (p < m && ka < kl) {
            let i = a_index(p, ka);
            if (i >= 0) {
                a = x[i];
            }
        }
        af[l.y][l.x] = a;
        // B tile: row l.y (k), column l.x (output channel).
        let kb = k0 + l.y;
        var b = 0.0;
        if (co < C_OUT && kb < kl) {
            b = bitcast<f32>(w[co * kl + kb]);
        }
        bf[l.y][l.x] = b;
        workgroupBarrier();
        for (var kk = 0u; kk < TILE; kk = kk + 1u) {
            acc = acc + af[l.y][kk] * bf[kk][l.x];
        }
        workgroupBarrier();
    }
    if (p < m && co < C_OUT) {
        epilogue(acc + ep[co], p, co);
    }
}

@compute @workgroup_size(16, 16)
fn conv_u8i8(@builtin(local_invocation_id) l: vec3<u32>, @builtin(workgroup_id) g: vec3<u32>) {
    let m = OH * OW;
    let kl = k_len();
    let co = g.x * TILE + l.x;
    let p = g.y * TILE + l.y;
    var acc = 0i;
    for (var k0 = 0u; k0 < kl; k0 = k0 + TILE) {
        let ka = k0 + l.x;
        var a = 0i;
        if (p < m && ka < kl) {
            let i = a_index(p, ka);
            // Padding is the zero point, so it contributes (zp - zp) = 0.
            if (i >= 0) {
                // round() is round-half-to-even, as the CPU quantizer.
                let q = clamp(round(x[i] * INV_SCALE) + ZP, 0.0, 255.0);
                a = i32(q) - i32(ZP);
            }
        }
        ai[l.y][l.x] = a;
        let kb = k0 + l.y;
        var b = 0i;
        if (co < C_OUT && kb < kl) {
            let word = w[co * K_WORDS + kb / 4u];
            b = extractBits(bitcast<i32>(word), 8u * (kb % 4u), 8u);
        }
        bi[l.y][l.x] = b;
        workgroupBarrier();
        for (var kk = 0u; kk < TILE; kk = kk + 1u) {
            acc = acc + ai[l.y][kk] * bi[kk][l.x];
        }
        workgroupBarrier();
    }
    if (p < m && co < C_OUT) {
        epilogue(f32(acc) * ep[C_OUT + co] + ep[co], p, co);
    }
}

// conv_u8i8_dot4 only: (128 - zp) * sum_k w[co, k], per output channel.
@group(0) @binding(5) var<storage, read> corr: array<i32>;

// The byte (q - 128) of A[p, k] as dot4I8Packed reads it (an i8 in two's complement). The sum
// over k of (q - 128) * w plus corr[co] = (128 - zp) * sum w is sum (q - zp) * w, the shift
// kernel's sum exactly (integers: no rounding, and |(q - 128) * w|, |(128 - zp) * w| <= 2^14
// keep every partial sum inside i32 for K < 2^16; ResNet-18's largest K is 4608). Padding is
// q = zp: it adds (zp - 128) * w here and (128 - zp) * w through corr, so nothing, as on the CPU.
// Bytes past K (the last word of a row) stay 0 and meet zero weight bytes.
fn a_byte(p: u32, k: u32) -> u32 {
    let i = a_index(p, k);
    var q = ZP;
    if (i >= 0) {
        q = clamp(round(x[i] * INV_SCALE) + ZP, 0.0, 255.0);
    }
    return u32(i32(q) - 128) & 0xffu;
}

@compute @workgroup_size(16, 16)
fn conv_u8i8_dot4(
    @builtin(local_invocation_id) l: vec3<u32>,
    @builtin(workgroup_id) g: vec3<u32>,
) {
    let m = OH * OW;
    let kl = k_len();
    let co = g.x * TILE + l.x;
    let p = g.y * TILE + l.y;
    var acc = 0i;
    for (var w0 = 0u; w0 < K_WORDS; w0 = w0 + TILE) {
        // A tile: row l.y (pixel), word l.x (k = 4 * word .. + 3).
        let wa = w0 + l.x;
        var a = 0u;
        if (p < m && wa < K_WORDS) {
            for (var j = 0u; j < 4u; j = j + 1u) {
                let k = 4u * wa + j;
                if (k < kl) {
                    a = a | (a_byte(p, k) << (8u * j));
                }
            }
        }
        aq[l.y][l.x] = a;
        // B tile: word l.y, output channel l.x, as packed at load.
        let wb = w0 + l.y;
        var b = 0u;
        if (co < C_OUT && wb < K_WORDS) {
            b = w[co * K_WORDS + wb];
        }
        bq[l.y][l.x] = b;
        workgroupBarrier();
        for (var kk = 0u; kk < TILE; kk = kk + 1u) {
            acc = acc + dot4I8Packed(aq[l.y][kk], bq[kk][l.x]);
        }
        workgroupBarrier();
    }
    if (p < m && co < C_OUT) {
        epilogue(f32(acc + corr[co]) * ep[C_OUT + co] + ep[co], p, co);
    }
}
