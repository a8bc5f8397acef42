//! The journal as the first alert sink: every alert is appended (fsync) before any other sink or
//! the page hears of it; the record is the alert as the API shows it. Appends go through the
//! [`Ledger`], which also lists the alerts and takes acknowledgements from the web API.

use std::path::Path;
use std::sync::Arc;

use super::AlertSink;
use super::journal::{JournalError, JournalOptions, Seal};
use super::ledger::Ledger;
use firm_shared::drift::DriftWarning;

use crate::capture::Frame;
use crate::drift::DriftRecord;
use crate::state::AlertEntry;

#[derive(Debug)]
pub struct JournalSink {
    ledger: Arc<Ledger>,
}

impl JournalSink {
    pub fn open(dir: &Path, max_file_bytes: u64, max_files: usize) -> Result<Self, JournalError> {
        let ledger = Ledger::open(
            dir,
            JournalOptions {
                max_file_bytes,
                max_files,
            },
        )?;
        Ok(Self {
            ledger: Arc::new(ledger),
        })
    }

    /// [`JournalSink::open`] with the journal sealed by a checkpoint outside `dir` (the
    /// appliance: see [`Seal::in_state_dir`]).
    pub fn open_sealed(
        dir: &Path,
        seal: Seal,
        max_file_bytes: u64,
        max_files: usize,
    ) -> Result<Self, JournalError> {
        let ledger = Ledger::open_sealed(
            dir,
            JournalOptions {
                max_file_bytes,
                max_files,
            },
            seal,
        )?;
        Ok(Self {
            ledger: Arc::new(ledger),
        })
    }

    /// The last `n` alerts, oldest first (for the page after a restart).
    pub fn recent(&self, n: usize) -> Vec<AlertEntry> {
        self.ledger
            .page(None, n)
            .alerts
            .into_iter()
            .map(|l| l.alert)
            .collect()
    }

    /// The alert list and its acknowledgements, for the web API.
    pub fn ledger(&self) -> Arc<Ledger> {
        self.ledger.clone()
    }
}

impl AlertSink for JournalSink {
    fn name(&self) -> &'static str {
        "journal"
    }

    fn alert(&mut self, alert: &mut AlertEntry, _frame: &Frame) -> Result<(), String> {
        self.ledger
            .append_alert(alert)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// A `{"type": "drift", ...}` record ([`DriftRecord`]), fsynced like an alert.
    fn drift(&mut self, warning: &DriftWarning, frame: &Frame) -> Result<(), String> {
        let record = serde_json::to_value(DriftRecord::new(warning, frame.time))
            .expect("drift record serialises");
        self.ledger
            .append_record(record)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}
