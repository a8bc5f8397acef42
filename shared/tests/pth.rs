//! `--init` reads PyTorch checkpoints (issue 19): a `.pth` as `torch.save` writes it (a zip
//! holding `archive/data.pkl`, a protocol-2 pickle of `{name: _rebuild_tensor_v2(storage, offset,
//! size, stride, requires_grad, OrderedDict())}`, and one raw little-endian file per storage
//! under `archive/data/`), written here byte by byte, loads into the encoder exactly as the same
//! weights in safetensors do; a state dict nested under `state_dict` (training checkpoints) loads
//! too; a checkpoint without the encoder's tensors is refused by name.

use std::io::Write;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use firm_shared::model::params::{self, Part};
use firm_shared::model::{EncoderConfig, FirmModel, ModelConfig, Stem};

fn unicode(out: &mut Vec<u8>, s: &str) {
    out.push(b'X');
    out.extend((s.len() as u32).to_le_bytes());
    out.extend(s.as_bytes());
}

fn int(out: &mut Vec<u8>, v: usize) {
    out.push(b'J');
    out.extend((v as i32).to_le_bytes());
}

fn global(out: &mut Vec<u8>, module: &str, name: &str) {
    out.push(b'c');
    out.extend(format!("{module}\n{name}\n").as_bytes());
}

/// The pickle of a state dict of `tensors` (storages named "0", "1", ...), nested under
/// `wrap` when given.
fn pickle(tensors: &[(String, Tensor)], wrap: Option<&str>) -> Vec<u8> {
    let mut p = vec![0x80, 2];
    if let Some(key) = wrap {
        p.push(b'}');
        unicode(&mut p, key);
    }
    p.push(b'}');
    p.push(b'(');
    for (i, (name, t)) in tensors.iter().enumerate() {
        unicode(&mut p, name);
        global(&mut p, "torch._utils", "_rebuild_tensor_v2");
        p.push(b'(');
        // The storage: persistent_load(('storage', FloatStorage, key, 'cpu', numel)).
        p.push(b'(');
        unicode(&mut p, "storage");
        global(&mut p, "torch", "FloatStorage");
        unicode(&mut p, &i.to_string());
        unicode(&mut p, "cpu");
        int(&mut p, t.elem_count());
        p.push(b't');
        p.push(b'Q');
        int(&mut p, 0);
        let dims = t.dims();
        p.push(b'(');
        dims.iter().for_each(|&d| int(&mut p, d));
        p.push(b't');
        // Row-major strides.
        p.push(b'(');
        for k in 0..dims.len() {
            int(&mut p, dims[k + 1..].iter().product());
        }
        p.push(b't');
        p.push(0x89);
        global(&mut p, "collections", "OrderedDict");
        p.push(b')');
        p.push(b'R');
        p.push(b't');
        p.push(b'R');
    }
    p.push(b'u');
    if wrap.is_some() {
        p.push(b's');
    }
    p.push(b'.');
    p
}

fn write_pth(path: &Path, tensors: &[(String, Tensor)], wrap: Option<&str>) {
    let f = std::fs::File::create(path).unwrap();
    let mut z = zip::ZipWriter::new(f);
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("archive/data.pkl", opts).unwrap();
    z.write_all(&pickle(tensors, wrap)).unwrap();
    for (i, (_, t)) in tensors.iter().enumerate() {
        z.start_file(format!("archive/data/{i}"), opts).unwrap();
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        for x in v {
            z.write_all(&x.to_le_bytes()).unwrap();
        }
    }
    z.start_file("archive/version", opts).unwrap();
    z.write_all(b"3\n").unwrap();
    z.finish().unwrap();
}

fn model(seed: u64) -> VarMap {
    let vm = VarMap::new();
    let cfg = ModelConfig {
        encoder: EncoderConfig::new(Stem::Imagenet, 0.125),
        ..ModelConfig::default()
    };
    FirmModel::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    params::init_params(&vm, seed).unwrap();
    params::randomize_batchnorm(&vm, seed + 1).unwrap();
    vm
}

fn encoder(vm: &VarMap) -> Vec<(String, Vec<f32>)> {
    params::sorted_vars(vm)
        .into_iter()
        .filter(|(n, _)| !n.starts_with("head."))
        .map(|(n, v)| (n, v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()))
        .collect()
}

#[test]
fn a_pth_checkpoint_loads_like_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let source = model(3);
    let tensors: Vec<(String, Tensor)> = params::sorted_vars(&source)
        .into_iter()
        .filter(|(n, _)| !n.starts_with("head."))
        .map(|(n, v)| (n, v.as_tensor().clone()))
        .collect();
    assert!(tensors.len() > 20);
    let want = encoder(&source);

    let st = dir.path().join("w.safetensors");
    params::save(&source, &st, Part::Encoder).unwrap();
    let from_st = model(9);
    params::load(&from_st, &st, Part::Encoder).unwrap();
    assert_eq!(encoder(&from_st), want);

    for (file, wrap) in [("w.pth", None), ("ckpt.pt", Some("state_dict"))] {
        let pth = dir.path().join(file);
        write_pth(&pth, &tensors, wrap);
        let m = model(9);
        assert_ne!(encoder(&m), want);
        params::load(&m, &pth, Part::Encoder).unwrap();
        assert_eq!(encoder(&m), want, "{file}");
    }

    // A checkpoint missing one of the encoder's tensors is refused, naming it.
    let pth = dir.path().join("short.pth");
    write_pth(&pth, &tensors[1..], None);
    let e = params::load(&model(9), &pth, Part::Encoder)
        .unwrap_err()
        .to_string();
    assert!(e.contains(&tensors[0].0) && e.contains("short.pth"), "{e}");
}
