//! The soak's short form (issue 18, deliverable 5; `scripts/soak-test` runs 30 minutes by hand):
//! 40 s of the synthetic source at full rate with the page's traffic. After a 15 s warm-up,
//! resident memory grows less than 5 MiB, descriptors do not grow, frames keep being scored and
//! the device neither panics nor dies.

use std::time::Duration;

use firm_e2e::binary;

#[test]
fn the_device_holds_memory_and_descriptors_at_full_rate() {
    let dir = tempfile::tempdir().unwrap();
    let bench = firm_e2e::soak::start(&binary("device-runtime", "device-runtime"), dir.path());
    let soak = firm_e2e::soak::run(
        bench.addr,
        bench.pid(),
        &bench.log,
        Duration::from_secs(40),
        Duration::from_secs(15),
        // Enough samples that one catching a page request in flight does not move a median.
        Duration::from_secs(2),
    );
    println!("{soak}");
    let failed = soak.verdict();
    assert!(failed.is_empty(), "{failed:?}\n{soak}");
    assert!(
        soak.last().events > 10,
        "the event stream got nothing:\n{soak}"
    );
    assert!(soak.last().in_journal > 0, "no alert journaled:\n{soak}");
}
