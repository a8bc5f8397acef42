//! Process settings that make candle fast on small CPUs, applied by both binaries at start-up.
//!
//! Measured on the 2-core dev machine (`cargo bench --bench resnet18`, ResNet-18 train step at
//! 64 px, batch 32): 1675 ms as built, 755 ms with `CANDLE_NUM_THREADS=1`, 647 ms with that and
//! `MIMALLOC_PURGE_DELAY=-1`. candle's element-wise thread pool spin-waits on its worker, which
//! on two cores competes with rayon (GEMM, convolutions, the batch loader); and an allocator that
//! hands freed pages back to the kernel pays a page fault per page for every new tensor.
//!
//! Both settings are read from the environment when the libraries initialise, before `main` can
//! change anything safely, so [`tune`] re-executes the program once with them set (same process
//! id, same arguments). Values the user set are kept; `FIRM_NO_TUNE=1` disables it.

use std::os::unix::process::CommandExt;

const SETTINGS: [(&str, &str); 2] = [("CANDLE_NUM_THREADS", "1"), ("MIMALLOC_PURGE_DELAY", "-1")];
const MARKER: &str = "FIRM_TUNED";

/// Re-execute the current program with the tuned environment unless it is already set. Returns
/// only when no re-execution was needed (or it failed, which is harmless: the program then runs
/// with the default settings).
pub fn tune() {
    if std::env::var_os(MARKER).is_some() || std::env::var_os("FIRM_NO_TUNE").is_some() {
        return;
    }
    let missing: Vec<(&str, &str)> = SETTINGS
        .iter()
        .copied()
        .filter(|(k, _)| std::env::var_os(k).is_none())
        .collect();
    if missing.is_empty() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_else(|| exe.clone().into_os_string());
    let err = std::process::Command::new(&exe)
        .arg0(argv0)
        .args(args)
        .envs(missing)
        .env(MARKER, "1")
        .exec();
    tracing::debug!("re-executing with tuned settings failed ({err}); continuing without");
}
