//! Choosing a backend: every name parses, a backend this build lacks says how to get it, and
//! `auto` falls back to the CPU when there is no GPU it can drive.

use firm_shared::detect::synthetic::{SyntheticSpec, random_bundle};
use firm_shared::detect::{Backend, Detector, embedder};
use firm_shared::model::{EncoderConfig, Stem};

fn bundle() -> firm_shared::bundle::Bundle {
    random_bundle(&SyntheticSpec {
        encoder: EncoderConfig::new(Stem::Imagenet, 0.125),
        size: 32,
        score: "cos_1".parse().unwrap(),
        int8_activations: true,
        bank: 8,
        seed: 1,
    })
    .unwrap()
}

#[test]
fn every_backend_name_parses_and_unknown_ones_list_them() {
    for b in Backend::ALL {
        assert_eq!(b.name().parse::<Backend>().unwrap(), b);
        let json = serde_json::to_string(&b).unwrap();
        assert_eq!(json, format!("\"{}\"", b.name()));
    }
    let e = "vulkan".parse::<Backend>().unwrap_err().to_string();
    assert!(e.contains("cpu, wgpu, cuda, auto"), "{e}");
}

#[test]
fn missing_backends_say_how_to_build_them_and_auto_falls_back_to_the_cpu() {
    let b = bundle();
    if !cfg!(feature = "cuda") {
        let e = embedder(&b, Backend::Cuda)
            .err()
            .expect("no CUDA in this build")
            .to_string();
        assert!(e.contains("--features cuda"), "{e}");
    }
    #[cfg(not(feature = "wgpu"))]
    {
        let e = embedder(&b, Backend::Wgpu)
            .err()
            .expect("no wgpu in this build")
            .to_string();
        assert!(e.contains("--features wgpu"), "{e}");
    }
    // A real GPU adapter, if wgpu sees one (lavapipe and llvmpipe do not count).
    #[cfg(feature = "wgpu")]
    let real_gpu = firm_shared::exec::wgpu::adapter::list_adapters()
        .iter()
        .any(|a| a.device_type != wgpu::DeviceType::Cpu);
    #[cfg(not(feature = "wgpu"))]
    let real_gpu = false;
    #[cfg(feature = "wgpu")]
    if !real_gpu {
        // The backend refuses a software adapter, saying which one it saw.
        let e = embedder(&b, Backend::Wgpu)
            .err()
            .expect("no real GPU adapter")
            .to_string();
        assert!(e.contains("CPU adapter") || e.contains("no adapter"), "{e}");
    }
    // No GPU here (or none this build drives): auto is the CPU executor, and it self-tests.
    if !cfg!(feature = "cuda") && !real_gpu {
        let e = embedder(&b, Backend::Auto).unwrap();
        assert_eq!(e.name(), "cpu");
        assert!(e.device().starts_with("cpu ("), "{}", e.device());
        let r = Detector::on(&b, Backend::Auto)
            .unwrap()
            .self_test(&b)
            .unwrap();
        assert!(r.passed, "{r:?}");
    }
}
