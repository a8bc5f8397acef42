//! The journal as the first alert sink: every alert is appended (fsync) before any other sink or
//! the page hears of it; the record is the alert as the API shows it.

use std::path::Path;

use super::AlertSink;
use super::journal::{self, Journal, JournalOptions};
use crate::capture::Frame;
use crate::state::AlertEntry;

#[derive(Debug)]
pub struct JournalSink {
    journal: Journal,
}

impl JournalSink {
    pub fn open(dir: &Path, max_file_bytes: u64, max_files: usize) -> Result<Self, String> {
        let journal = Journal::open(
            dir,
            JournalOptions {
                max_file_bytes,
                max_files,
            },
        )
        .map_err(|e| e.to_string())?;
        Ok(Self { journal })
    }

    /// The last `n` alerts, oldest first (for the page after a restart). Records that are not
    /// alerts of this format are skipped.
    pub fn recent(&self, n: usize) -> Vec<AlertEntry> {
        journal::read_recent(self.journal.dir(), n)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|e| {
                let mut a: AlertEntry = serde_json::from_value(e.record).ok()?;
                a.journal_seq = Some(e.seq);
                Some(a)
            })
            .collect()
    }
}

impl AlertSink for JournalSink {
    fn name(&self) -> &'static str {
        "journal"
    }

    fn alert(&mut self, alert: &mut AlertEntry, _frame: &Frame) -> Result<(), String> {
        let record = serde_json::to_value(&*alert).expect("alert serialises");
        let done = self.journal.append(record).map_err(|e| e.to_string())?;
        alert.journal_seq = Some(done.seq);
        Ok(())
    }
}
