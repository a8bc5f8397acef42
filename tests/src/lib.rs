//! firm-e2e: end-to-end tests across the two programs (host-trainer -> bundle -> device-runtime).
//! The helpers here locate the workspace's binaries, building them when a test runs before they
//! exist (for example `cargo test -p firm-e2e` alone).

pub mod flash_memory;
pub mod load;
pub mod soak;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Workspace root (the folder holding the virtual Cargo.toml).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

/// Path of a workspace binary in the same profile as this test, built if missing.
pub fn binary(package: &str, name: &str) -> PathBuf {
    // The test executable lives in target/<profile>/deps/.
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps layout");
    let path = profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace_root())
            .args(["build", "-p", package, "--bin", name]);
        if profile_dir.file_name().is_some_and(|p| p == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("running cargo build");
        assert!(status.success(), "cargo build -p {package} failed");
    }
    path
}

/// `bytes` in a temporary file, removed when the returned path is dropped: `Slots::flash` takes
/// a bundle file.
pub fn bundle_file(bytes: &[u8]) -> tempfile::TempPath {
    let mut f = tempfile::NamedTempFile::new().expect("a temporary file");
    std::io::Write::write_all(&mut f, bytes).expect("writing the bundle file");
    f.into_temp_path()
}

/// The stdout of a command that must have succeeded; on failure, panics with its status, stdout
/// and stderr.
/// A loopback address with a port that was free a moment ago, for a device to listen on.
pub fn free_loopback_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// Panics, naming them, when options of `cmd` or its subcommands have no `--help` text; also
/// runs clap's own consistency checks on the command.
pub fn assert_every_option_is_explained(cmd: clap::Command) {
    cmd.clone().debug_assert();
    let missing = undocumented_args(&cmd);
    assert!(missing.is_empty(), "options without help: {missing:#?}");
}

/// `command subcommand option` for every visible option and argument, in the command or any of
/// its subcommands, that `--help` leaves unexplained. The programs' own tests call it on their
/// clap command, so a new flag cannot ship without help.
pub fn undocumented_args(cmd: &clap::Command) -> Vec<String> {
    fn walk(cmd: &clap::Command, parent: &str, out: &mut Vec<String>) {
        let path = if parent.is_empty() {
            cmd.get_name().to_string()
        } else {
            format!("{parent} {}", cmd.get_name())
        };
        out.extend(
            cmd.get_arguments()
                .filter(|a| !a.is_hide_set())
                .filter(|a| a.get_help().is_none() && a.get_long_help().is_none())
                .map(|a| format!("{path} {}", a.get_id())),
        );
        for sub in cmd.get_subcommands() {
            walk(sub, &path, out);
        }
    }
    let mut out = Vec::new();
    walk(cmd, "", &mut out);
    out
}
