//! `peak-rss PROGRAM [ARGS...]`: run PROGRAM and print its peak resident memory, as one JSON
//! line on stdout: `{"peak-rss-bytes": N, "status": C}` (C: its exit code, -1 when a signal
//! ended it). PROGRAM's stdout goes to stderr; its stderr is inherited. Exits with PROGRAM's
//! code. The flash-memory measurement runs `device-runtime flash` under it.
//!
//! Why a program of its own: the peak comes from `wait4` (`ru_maxrss`), which Linux takes as the
//! most of the process's own peak and the peak of the memory it ran in before `exec`. A child
//! that a big process starts (std spawns with vfork: the child runs in the parent's memory
//! until it execs) inherits that process's peak; started from this small, fresh one, the
//! figure is the child's own.

use std::os::fd::AsFd;
use std::process::{Command, ExitCode, Stdio};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(program) = args.next() else {
        eprintln!("usage: peak-rss PROGRAM [ARGS...]");
        return ExitCode::from(2);
    };
    let stdout = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .expect("stderr");
    let child = match Command::new(&program)
        .args(args)
        .stdout(Stdio::from(stdout))
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("peak-rss: cannot start {}: {e}", program.to_string_lossy());
            return ExitCode::from(127);
        }
    };
    let (code, peak) = wait_with_peak(child.id());
    println!("{{\"peak-rss-bytes\": {peak}, \"status\": {code}}}");
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Wait for the child `pid`: its exit code (-1 when a signal ended it) and its peak resident
/// memory in bytes.
fn wait_with_peak(pid: u32) -> (i32, u64) {
    let mut status = 0;
    // The workspace denies unsafe code; `wait4` has no safe form in our dependencies. SAFETY:
    // it writes only into the two locals it is given, which outlive the call.
    #[allow(unsafe_code)]
    let (r, usage) = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        let r = libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage);
        (r, usage)
    };
    assert_eq!(
        r,
        pid as libc::pid_t,
        "wait4: {}",
        std::io::Error::last_os_error()
    );
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    // Linux gives ru_maxrss in KiB.
    (code, usage.ru_maxrss as u64 * 1024)
}
