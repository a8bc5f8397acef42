//! The journal as the first alert sink: every alert is appended (fsync) before any other sink or
//! the page hears of it; the record is the alert as the API shows it. Appends go through the
//! [`Ledger`], which also lists the alerts and takes acknowledgements from the web API.
//!
//! A full state filesystem loses the record, never the frame: the failed append is cut back
//! (the chain stays valid, see [`super::journal`]), the failure goes to [`StateFs`] (one error
//! for the device, not one per frame), and the next append that fits clears it. A journal opened
//! with a deferred seal (a first start that could not create the device secret) shows its
//! checkpoint as degraded in [`StateFs`] until an append creates the secret.

use std::path::Path;
use std::sync::Arc;

use super::AlertSink;
use super::journal::{JournalError, JournalOptions, Seal};
use super::ledger::Ledger;
use firm_shared::drift::DriftWarning;

use crate::capture::Frame;
use crate::drift::DriftRecord;
use crate::state::{AlertEntry, StateFs};

#[derive(Debug)]
pub struct JournalSink {
    ledger: Arc<Ledger>,
    /// Where a full filesystem is reported (none: every failure is an ordinary sink error).
    state_fs: Option<Arc<StateFs>>,
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
            state_fs: None,
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
            state_fs: None,
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

    /// Report appends lost to a full filesystem to `state_fs` (the appliance's state).
    pub fn with_state_fs(mut self, state_fs: Arc<StateFs>) -> Self {
        self.state_fs = Some(state_fs);
        self
    }

    /// An append's outcome for the pipeline; a full filesystem goes to [`StateFs`].
    fn reported(&self, r: Result<u64, JournalError>) -> Result<(), String> {
        let fs = self.state_fs.as_deref();
        match r {
            Ok(_) => {
                if let Some(fs) = fs {
                    fs.wrote(SINK);
                    if fs.journal_checkpoint_pending() && self.ledger.is_sealed() {
                        fs.journal_checkpoint_resumed();
                    }
                }
                Ok(())
            }
            Err(e) => match fs {
                Some(fs) if StateFs::caused_by_full(&e) => {
                    fs.write_failed(SINK, &e.to_string());
                    Err(StateFs::FULL.into())
                }
                _ => Err(e.to_string()),
            },
        }
    }
}

const SINK: &str = "journal";

impl AlertSink for JournalSink {
    fn name(&self) -> &'static str {
        SINK
    }

    fn alert(&mut self, alert: &mut AlertEntry, _frame: &Frame) -> Result<(), String> {
        self.reported(self.ledger.append_alert(alert))
    }

    /// A `{"type": "drift", ...}` record ([`DriftRecord`]), fsynced like an alert.
    fn drift(&mut self, warning: &DriftWarning, frame: &Frame) -> Result<(), String> {
        let record = serde_json::to_value(DriftRecord::new(warning, frame.time))
            .expect("drift record serialises");
        self.reported(self.ledger.append_record(record))
    }
}
