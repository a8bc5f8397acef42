// kNN, second half: the K largest cosines and their rows in one workgroup. Every invocation keeps
// the top K of its strided share (ties: the lower row first), then invocation 0 merges the 64
// sorted lists. Outputs in descending order. K <= MAX_K and K <= ROWS (checked at load).

override ROWS: u32;
override K: u32;

const WG: u32 = 64u;
const MAX_K: u32 = 16u;

@group(0) @binding(0) var<storage, read> cv: array<f32>;
@group(0) @binding(1) var<storage, read_write> top_val: array<f32>;
@group(0) @binding(2) var<storage, read_write> top_idx: array<u32>;

var<workgroup> wv: array<f32, 1024>;
var<workgroup> wi: array<u32, 1024>;

// a ranks before b: larger value, or equal value and lower row.
fn better(va: f32, ia: u32, vb: f32, ib: u32) -> bool {
    return va > vb || (va == vb && ia < ib);
}

@compute @workgroup_size(64)
fn top_k(@builtin(local_invocation_index) t: u32) {
    var v: array<f32, 16>;
    var ix: array<u32, 16>;
    for (var j = 0u; j < MAX_K; j = j + 1u) {
        v[j] = -3.4028234e38;
        ix[j] = 0xffffffffu;
    }
    for (var r = t; r < ROWS; r = r + WG) {
        let c = cv[r];
        if (!better(c, r, v[K - 1u], ix[K - 1u])) {
            continue;
        }
        // Insert, keeping v[0..K] sorted.
        var j = K - 1u;
        loop {
            if (j == 0u || !better(c, r, v[j - 1u], ix[j - 1u])) {
                break;
            }
            v[j] = v[j - 1u];
            ix[j] = ix[j - 1u];
            j = j - 1u;
        }
        v[j] = c;
        ix[j] = r;
    }
    for (var j = 0u; j < K; j = j + 1u) {
        wv[t * MAX_K + j] = v[j];
        wi[t * MAX_K + j] = ix[j];
    }
    workgroupBarrier();
    if (t != 0u) {
        return;
    }
    // Merge: the head of each list is its best; take the best head K times.
    var head: array<u32, 64>;
    for (var s = 0u; s < WG; s = s + 1u) {
        head[s] = 0u;
    }
    for (var o = 0u; o < K; o = o + 1u) {
        var best = 0u;
        var bv = -3.4028234e38;
        var bi = 0xffffffffu;
        for (var s = 0u; s < WG; s = s + 1u) {
            if (head[s] < K) {
                let cvv = wv[s * MAX_K + head[s]];
                let civ = wi[s * MAX_K + head[s]];
                if (civ != 0xffffffffu && better(cvv, civ, bv, bi)) {
                    best = s;
                    bv = cvv;
                    bi = civ;
                }
            }
        }
        top_val[o] = bv;
        top_idx[o] = bi;
        head[best] = head[best] + 1u;
    }
}
