//! Timing of the executor's non-GEMM kernels (im2col, quantize, depthwise, pooling) on the
//! shapes of ResNet-18 and EfficientNet at 224 px: per call, wall and on-CPU time (best of 5).
//!
//! ```text
//! cargo bench -p firm-shared --bench ops               # all four families
//! cargo bench -p firm-shared --bench ops -- depthwise  # one
//! ```

#![allow(clippy::needless_range_loop)]

use firm_shared::exec::kernels::depthwise::*;
use firm_shared::exec::kernels::im2col::*;
use firm_shared::exec::kernels::pool::*;
use firm_shared::exec::kernels::quantize::*;
use firm_shared::exec::kernels::{Clamp, Epilogue, Isa};

fn im2col() {
    use firm_shared::exec::kernels::testing::{show_time, time_per_call};
    let x = vec![3u8; 224 * 224 * 4];
    let mut out = vec![0u8; 112 * 112 * 160];
    for threads in [1, 2] {
        let t = time_per_call(20, || {
            im2col_u8(&x, 224, 224, 3, 4, 7, 2, 3, 128, &mut out, 160, threads)
        });
        println!(
            "im2col u8 stem 224x224x3 (cs 4) k7 s2 p3, ldk 160, {threads} thread(s): {}",
            show_time(t)
        );
    }
    let x = vec![1f32; 56 * 56 * 64];
    let mut out = vec![0f32; 56 * 56 * 576];
    for threads in [1, 2] {
        let t = time_per_call(20, || {
            im2col_f32(&x, 56, 56, 64, 64, 3, 1, 1, &mut out, 576, threads)
        });
        println!(
            "im2col f32 56x56x64 k3 s1 p1, {threads} thread(s): {}",
            show_time(t)
        );
    }
}

fn pool() {
    use firm_shared::exec::kernels::testing::{show_time, time_per_call};
    let (h, c) = (112, 64);
    let x = vec![1.0f32; h * h * c];
    let mut out = vec![0.0f32; 56 * 56 * c];
    for isa in Isa::supported() {
        let t = time_per_call(50, || max_pool_f32(isa, &x, h, h, c, 3, 2, 1, &mut out, 1));
        println!(
            "{isa}: max pool 3x3 s2 p1 of {h}x{h}x{c}, 1 thread: {}",
            show_time(t)
        );
    }
    let x = vec![1.0f32; 7 * 7 * 512];
    let mut out = vec![0.0f32; 512];
    for isa in Isa::supported() {
        let t = time_per_call(2000, || global_avg_pool_f32(isa, &x, 7, 7, 512, &mut out));
        println!("{isa}: global average pool of 7x7x512: {}", show_time(t));
    }
}

fn depthwise() {
    use firm_shared::exec::kernels::testing::{show_time, time_per_call};
    // EfficientNet-B0's depthwise layers: (h, c, k, stride) of each input.
    let layers = [
        (112, 32, 3, 1),
        (112, 96, 3, 2),
        (56, 144, 3, 1),
        (56, 144, 5, 2),
        (28, 240, 5, 1),
        (28, 240, 3, 2),
        (14, 480, 3, 1),
        (14, 480, 3, 1),
        (14, 480, 5, 1),
        (14, 672, 5, 1),
        (14, 672, 5, 1),
        (14, 672, 5, 2),
        (7, 1152, 5, 1),
        (7, 1152, 5, 1),
        (7, 1152, 5, 1),
        (7, 1152, 3, 1),
    ];
    // Buffers start on 64-byte boundaries, as the executor's arena should: with channel
    // counts that are multiples of 16, every vector access is then aligned (misaligned
    // 64-byte loads each touch two cache lines).
    let buf = |n: usize, v: f32| {
        let b = vec![v; n + 16];
        let off = b.as_ptr().align_offset(64);
        (b, off, n)
    };
    let mut data: Vec<_> = layers
        .iter()
        .map(|&(h, c, k, s)| {
            let o = conv_out(h, k, s, k / 2);
            (
                buf(h * h * c, 0.5),
                buf(k * k * c, 0.25),
                buf(c, 0.0),
                buf(o * o * c, 0.0),
            )
        })
        .collect();
    let macs: usize = layers
        .iter()
        .map(|&(h, c, k, s)| conv_out(h, k, s, k / 2).pow(2) * c * k * k)
        .sum();
    // Per layer, best ISA, one thread.
    fn view((b, off, n): &(Vec<f32>, usize, usize)) -> &[f32] {
        &b[*off..*off + *n]
    }
    for (&(h, c, k, s), (x, wt, bias, out)) in layers.iter().zip(data.iter_mut()) {
        let (x, wt, bias) = (view(x), view(wt), view(bias));
        let out = &mut out.0[out.1..out.1 + out.2];
        let ep = Epilogue::new(bias, Clamp::RELU6);
        let t = time_per_call(20, || {
            depthwise_f32(Isa::best(), x, h, h, c, k, s, k / 2, wt, &ep, out, 1)
        });
        let macs = conv_out(h, k, s, k / 2).pow(2) * c * k * k;
        let gmac = macs as f64 / t.1.unwrap_or(t.0) / 1e9;
        println!(
            "{}: {h}x{h}x{c} k{k} s{s}: {} = {gmac:.1} GMAC/s",
            Isa::best(),
            show_time(t)
        );
    }
    for isa in Isa::supported() {
        for threads in [1, 2] {
            let t = time_per_call(10, || {
                for (&(h, c, k, s), (x, wt, bias, out)) in layers.iter().zip(data.iter_mut()) {
                    let (x, wt, bias) = (view(x), view(wt), view(bias));
                    let out = &mut out.0[out.1..out.1 + out.2];
                    let ep = Epilogue::new(bias, Clamp::RELU6);
                    depthwise_f32(isa, x, h, h, c, k, s, k / 2, wt, &ep, out, threads);
                }
            });
            // The caller's CPU time is only its share when the work is split.
            let secs = if threads == 1 {
                t.1.unwrap_or(t.0)
            } else {
                t.0
            };
            let gmac = macs as f64 / secs / 1e9;
            println!(
                "{isa}: the 16 depthwise layers of EfficientNet-B0 ({:.1} M MAC), {threads} thread(s): {} = {gmac:.1} GMAC/s",
                macs as f64 / 1e6,
                show_time(t)
            );
        }
    }
}

fn quantize() {
    use firm_shared::exec::kernels::testing::{show_time, time_per_call};
    let x: Vec<f32> = (0..56 * 56 * 256)
        .map(|i| (i % 1000) as f32 * 0.01 - 3.0)
        .collect();
    let mut out = vec![0u8; x.len()];
    for isa in Isa::supported() {
        let t = time_per_call(50, || quantize_u8(isa, &x, 37.0, 3, &mut out));
        println!("{isa}: quantize {} values: {}", x.len(), show_time(t));
    }
    let x = vec![0.25f32; 224 * 224 * 3];
    let mut out = vec![0u8; 224 * 224 * 4];
    for isa in Isa::supported() {
        let t = time_per_call(50, || quantize_u8_rows(isa, &x, 3, 37.0, 3, &mut out, 4));
        println!(
            "{isa}: quantize the 224x224x3 input into cs 4: {}",
            show_time(t)
        );
    }
    let x = vec![0.25f32; 3 * 224 * 224];
    let mut out = vec![0f32; 3 * 224 * 224];
    let t = time_per_call(50, || chw_to_hwc(&x, 3, 224, 224, &mut out));
    println!("chw_to_hwc 3x224x224: {}", show_time(t));
}

fn main() {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let all: [(&str, fn()); 4] = [
        ("im2col", im2col),
        ("quantize", quantize),
        ("depthwise", depthwise),
        ("pool", pool),
    ];
    for (name, f) in all {
        if filter.is_empty() || filter.iter().any(|x| x == name) {
            f();
        }
    }
}
