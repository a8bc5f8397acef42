//! The alert list behind `/api/alerts` and the status page: every alert still in the journal, read
//! in pages, and which of them an operator has acknowledged.
//!
//! The ledger owns the [`Journal`]: the pipeline's [`JournalSink`](super::journal_sink) appends
//! alerts through it and the web API appends acknowledgements, so both share one hash chain and
//! `device-runtime journal verify` covers both. In memory it keeps one index entry per alert (its
//! journal seq, where its line is, acknowledged or not: 40 bytes), built by one [`journal::scan`]
//! at start, and reads a page back from the journal files by position, so a long list costs a
//! page load nothing up front. Measured on 2 AMD EPYC cores (debug profile, which is optimised):
//! 20,000 alerts (9.6 MB of journal) index in 0.14 s and a page of 20 reads in 0.2 ms; a full
//! journal at the device's default retention (16 files of 8 MiB, ~270,000 alerts) would take
//! ~2 s at start and ~11 MB.
//!
//! Acknowledgements are journal records of their own:
//!
//! ```text
//! {"type":"ack","alert":12}                 the alert whose journal seq is 12
//! {"type":"ack","up-to":57,"count":31}      every alert with journal seq <= 57 (31 were still open)
//! ```
//!
//! They are replayed in journal order at start, so the state survives restarts and power cuts (an
//! acknowledgement is fsynced before it is reported). `up-to` is clamped to the newest alert when it
//! is written and replayed only over the alerts before its own record, so it never covers an alert
//! that came later. An acknowledgement that changes nothing writes nothing. Alert records are the
//! alert as the API shows it ([`AlertEntry`]); records of other kinds are passed over. When
//! retention deletes the oldest journal files, their alerts leave the list and the counts.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::journal::{
    self, Entry, Head, Journal, JournalError, JournalOptions, Position, Seal, file_name,
};
use crate::state::AlertEntry;

/// What an operator acknowledges; numbers are journal seqs (an alert's `journal-seq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// One alert.
    Alert(u64),
    /// Every alert with a journal seq up to and including this one.
    UpTo(u64),
}

/// The outcome of an acknowledgement, as the API answers it and the event stream announces it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Acknowledged {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert: Option<u64>,
    /// As written: clamped to the newest alert.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub up_to: Option<u64>,
    /// Alerts newly acknowledged; 0 when they already were (then nothing is journaled).
    pub acknowledged: u64,
    /// Alerts in the journal still unacknowledged, after this one.
    pub unacknowledged: u64,
    /// Seq of the acknowledgement's own journal record.
    pub journal_seq: Option<u64>,
}

/// Why an acknowledgement was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AckError {
    #[error("journal seq {seq} is not an alert in the journal")]
    NotAnAlert { seq: u64 },
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// Sizes for the page header and `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Counts {
    pub in_journal: u64,
    pub unacknowledged: u64,
}

/// An alert of a page, with its acknowledgement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Listed {
    #[serde(flatten)]
    pub alert: AlertEntry,
    pub acknowledged: bool,
}

/// Alerts oldest first, and the cursor for the page before them.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub alerts: Vec<Listed>,
    /// `before` for the next (older) page; None when this page reaches the oldest alert.
    pub next_before: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    seq: u64,
    pos: Position,
    acked: bool,
}

#[derive(Debug, Default)]
struct Index {
    /// Ascending journal seq.
    slots: VecDeque<Slot>,
    /// `slots[..settled]` are all acknowledged: an `up-to` starts after them, so repeated
    /// acknowledgements of everything cost the new alerts only.
    settled: usize,
    unacked: u64,
}

impl Index {
    fn push(&mut self, seq: u64, pos: Position) {
        self.slots.push_back(Slot {
            seq,
            pos,
            acked: false,
        });
        self.unacked += 1;
    }

    fn find(&self, seq: u64) -> Option<usize> {
        let i = self.slots.partition_point(|s| s.seq < seq);
        (self.slots.get(i)?.seq == seq).then_some(i)
    }

    /// End (exclusive) of the alerts with seq <= `seq`.
    fn end_of(&self, seq: u64) -> usize {
        self.slots.partition_point(|s| s.seq <= seq)
    }

    fn open_up_to(&self, seq: u64) -> u64 {
        let end = self.end_of(seq);
        let from = self.settled.min(end);
        self.slots.range(from..end).filter(|s| !s.acked).count() as u64
    }

    fn ack_at(&mut self, i: usize) -> u64 {
        let s = &mut self.slots[i];
        if s.acked {
            return 0;
        }
        s.acked = true;
        self.unacked -= 1;
        self.settle();
        1
    }

    fn ack_up_to(&mut self, seq: u64) -> u64 {
        let end = self.end_of(seq);
        let from = self.settled.min(end);
        let mut n = 0;
        for s in self.slots.range_mut(from..end).filter(|s| !s.acked) {
            s.acked = true;
            n += 1;
        }
        self.unacked -= n;
        self.settle();
        n
    }

    fn settle(&mut self) {
        while self.slots.get(self.settled).is_some_and(|s| s.acked) {
            self.settled += 1;
        }
    }

    /// Replay an acknowledgement record found at journal seq `at`.
    fn replay(&mut self, record: &Value, at: u64) {
        if let Some(seq) = record.get("alert").and_then(Value::as_u64) {
            if let Some(i) = self.find(seq) {
                self.ack_at(i);
            }
        } else if let Some(seq) = record.get("up-to").and_then(Value::as_u64) {
            self.ack_up_to(seq.min(at.saturating_sub(1)));
        }
    }

    /// Drop the alerts whose journal file retention has deleted (oldest first).
    fn prune(&mut self, dir: &Path) {
        while let Some(file) = self.slots.front().map(|s| s.pos.file) {
            if dir.join(file_name(file)).exists() {
                break;
            }
            while let Some(s) = self.slots.front().filter(|s| s.pos.file == file).copied() {
                self.slots.pop_front();
                if !s.acked {
                    self.unacked -= 1;
                }
                self.settled = self.settled.saturating_sub(1);
            }
        }
    }

    fn counts(&self) -> Counts {
        Counts {
            in_journal: self.slots.len() as u64,
            unacknowledged: self.unacked,
        }
    }
}

fn is_ack(record: &Value) -> bool {
    record.get("type").and_then(Value::as_str) == Some("ack")
}

/// The alert in a journal entry, if it is one.
fn alert_of(entry: &Entry) -> Option<AlertEntry> {
    let mut a = AlertEntry::deserialize(&entry.record).ok()?;
    a.journal_seq = Some(entry.seq);
    Some(a)
}

/// The journal and the index of its alerts (see the module header).
#[derive(Debug)]
pub struct Ledger {
    dir: PathBuf,
    /// Taken before `index` by every writer, so the index follows the journal's order.
    journal: Mutex<Journal>,
    index: RwLock<Index>,
}

impl Ledger {
    /// Open (or create) the journal in `dir` (recovering a torn last line, as [`Journal::open`])
    /// and index its alerts and acknowledgements.
    pub fn open(dir: &Path, opts: JournalOptions) -> Result<Self, JournalError> {
        Self::index(dir, Journal::open(dir, opts)?)
    }

    /// [`Ledger::open`] on a journal sealed with a checkpoint ([`Journal::open_sealed`]).
    pub fn open_sealed(dir: &Path, opts: JournalOptions, seal: Seal) -> Result<Self, JournalError> {
        Self::index(dir, Journal::open_sealed(dir, opts, seal)?)
    }

    fn index(dir: &Path, journal: Journal) -> Result<Self, JournalError> {
        let t = Instant::now();
        let mut index = Index::default();
        let skipped = journal::scan(dir, |pos, entry| {
            if is_ack(&entry.record) {
                index.replay(&entry.record, entry.seq);
            } else if AlertEntry::deserialize(&entry.record).is_ok() {
                index.push(entry.seq, pos);
            }
        })?;
        if skipped > 0 {
            tracing::warn!(
                dir = %dir.display(),
                skipped,
                "journal lines that do not check out were left out of the alert list (run `device-runtime journal verify`)"
            );
        }
        let c = index.counts();
        tracing::info!(
            alerts = c.in_journal,
            unacknowledged = c.unacknowledged,
            ms = t.elapsed().as_secs_f64() * 1e3,
            "alert list indexed from the journal"
        );
        Ok(Self {
            dir: dir.to_path_buf(),
            journal: Mutex::new(journal),
            index: RwLock::new(index),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The journal's head (seq and hash of its last record), for the webhook and `/metrics`.
    pub fn head(&self) -> Head {
        self.journal.lock().expect("journal lock").head()
    }

    /// Whether appends are checkpointed ([`Journal::is_sealed`]).
    pub fn is_sealed(&self) -> bool {
        self.journal.lock().expect("journal lock").is_sealed()
    }

    /// Journal `alert` (fsynced when this returns) and list it; fills in its `journal_seq`.
    pub fn append_alert(&self, alert: &mut AlertEntry) -> Result<u64, JournalError> {
        let record = serde_json::to_value(&*alert).expect("alert serialises");
        let mut journal = self.journal.lock().expect("journal lock");
        let done = journal.append(record)?;
        alert.journal_seq = Some(done.seq);
        let mut index = self.index.write().expect("ledger lock");
        index.push(done.seq, done.position);
        if done.position.offset == 0 {
            // A new file: retention may have deleted the oldest.
            index.prune(&self.dir);
        }
        Ok(done.seq)
    }

    /// Journal a record of another kind (fsynced when this returns), such as the drift
    /// sentinel's `{"type": "drift", ...}`: it shares the hash chain and is not listed. Its
    /// `type` must be set and not `ack`, so no reader takes it for an alert or an
    /// acknowledgement.
    pub fn append_record(&self, record: Value) -> Result<u64, JournalError> {
        assert!(
            record.get("type").and_then(Value::as_str).is_some() && !is_ack(&record),
            "a journal record of another kind needs a `type` other than `ack`"
        );
        let mut journal = self.journal.lock().expect("journal lock");
        let done = journal.append(record)?;
        if done.position.offset == 0 {
            self.index.write().expect("ledger lock").prune(&self.dir);
        }
        Ok(done.seq)
    }

    /// Acknowledge one alert or all up to a journal seq: journaled (fsynced) before the list
    /// changes, so a failed write changes nothing.
    pub fn acknowledge(&self, ack: Ack) -> Result<Acknowledged, AckError> {
        let mut journal = self.journal.lock().expect("journal lock");
        let (record, open) = {
            let index = self.index.read().expect("ledger lock");
            match ack {
                Ack::Alert(seq) => {
                    let i = index.find(seq).ok_or(AckError::NotAnAlert { seq })?;
                    let open = u64::from(!index.slots[i].acked);
                    (json!({"type": "ack", "alert": seq}), open)
                }
                Ack::UpTo(seq) => {
                    let newest = index.slots.back().map_or(0, |s| s.seq);
                    let seq = seq.min(newest);
                    let open = index.open_up_to(seq);
                    (json!({"type": "ack", "up-to": seq, "count": open}), open)
                }
            }
        };
        let (alert, up_to) = match ack {
            Ack::Alert(seq) => (Some(seq), None),
            Ack::UpTo(_) => (None, record.get("up-to").and_then(Value::as_u64)),
        };
        if open == 0 {
            return Ok(Acknowledged {
                alert,
                up_to,
                acknowledged: 0,
                unacknowledged: self.counts().unacknowledged,
                journal_seq: None,
            });
        }
        let done = journal.append(record)?;
        let mut index = self.index.write().expect("ledger lock");
        let acknowledged = match (alert, up_to) {
            (Some(seq), _) => index.find(seq).map_or(0, |i| index.ack_at(i)),
            (None, Some(seq)) => index.ack_up_to(seq),
            (None, None) => 0,
        };
        if done.position.offset == 0 {
            index.prune(&self.dir);
        }
        Ok(Acknowledged {
            alert,
            up_to,
            acknowledged,
            unacknowledged: index.unacked,
            journal_seq: Some(done.seq),
        })
    }

    pub fn counts(&self) -> Counts {
        self.index.read().expect("ledger lock").counts()
    }

    /// Whether the alert with this journal seq is acknowledged (None: not an alert listed here).
    pub fn is_acknowledged(&self, seq: u64) -> Option<bool> {
        let index = self.index.read().expect("ledger lock");
        index.find(seq).map(|i| index.slots[i].acked)
    }

    /// The `limit` newest alerts with journal seq below `before` (all when None), oldest first,
    /// read back from the journal. An alert whose line no longer checks out, or whose file
    /// retention deleted meanwhile, is left out (and logged).
    pub fn page(&self, before: Option<u64>, limit: usize) -> Page {
        let (slots, next_before) = {
            let index = self.index.read().expect("ledger lock");
            let end = before.map_or(index.slots.len(), |b| {
                index.slots.partition_point(|s| s.seq < b)
            });
            let start = end.saturating_sub(limit);
            let slots: Vec<Slot> = index.slots.range(start..end).copied().collect();
            (slots, (start > 0).then(|| index.slots[start].seq))
        };
        let alerts = slots
            .iter()
            .filter_map(|s| {
                let read = journal::read_at(&self.dir, &s.pos);
                match read.as_ref().ok().filter(|e| e.seq == s.seq).and_then(alert_of) {
                    Some(alert) => Some(Listed {
                        alert,
                        acknowledged: s.acked,
                    }),
                    None => {
                        tracing::warn!(seq = s.seq, error = ?read.err(), "an alert could not be read back from the journal");
                        None
                    }
                }
            })
            .collect();
        Page {
            alerts,
            next_before,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Verdict;

    fn alert(frame: u64) -> AlertEntry {
        AlertEntry {
            verdict: Verdict {
                seq: frame,
                time: "2026-12-01T12:00:00.000Z".into(),
                source: format!("f{frame}.png"),
                distance: 0.9,
                threshold: 0.5,
                defect: true,
                nearest: 0,
                nearest_source: "good/0.png".into(),
                latency_ms: 1.0,
                heat: None,
                marked_good: None,
            },
            journal_seq: None,
            image: None,
            heat_image: None,
            overlay: None,
        }
    }

    fn seqs(p: &Page) -> Vec<u64> {
        p.alerts
            .iter()
            .map(|l| l.alert.journal_seq.unwrap())
            .collect()
    }

    #[test]
    fn pages_acks_and_replay() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path(), JournalOptions::default()).unwrap();
        for i in 0..10 {
            assert_eq!(ledger.append_alert(&mut alert(i)).unwrap(), i + 1);
        }
        let p = ledger.page(None, 4);
        assert_eq!(seqs(&p), [7, 8, 9, 10]);
        assert_eq!(p.next_before, Some(7));
        let p = ledger.page(Some(3), 4);
        assert_eq!((seqs(&p), p.next_before), (vec![1, 2], None));

        let a = ledger.acknowledge(Ack::Alert(5)).unwrap();
        assert_eq!(
            (a.acknowledged, a.unacknowledged, a.journal_seq),
            (1, 9, Some(11))
        );
        // Again: nothing changes, nothing is written.
        let a = ledger.acknowledge(Ack::Alert(5)).unwrap();
        assert_eq!((a.acknowledged, a.journal_seq), (0, None));
        assert!(matches!(
            ledger.acknowledge(Ack::Alert(11)),
            Err(AckError::NotAnAlert { seq: 11 })
        ));
        let a = ledger.acknowledge(Ack::UpTo(6)).unwrap();
        assert_eq!((a.acknowledged, a.unacknowledged), (5, 4));
        // Past the newest alert: clamped, so later alerts are not covered.
        let a = ledger.acknowledge(Ack::UpTo(1000)).unwrap();
        assert_eq!(
            (a.up_to, a.acknowledged, a.unacknowledged),
            (Some(10), 4, 0)
        );
        ledger.append_alert(&mut alert(10)).unwrap();
        assert_eq!(ledger.counts().unacknowledged, 1);
        let before = ledger.counts();
        drop(ledger);

        let again = Ledger::open(dir.path(), JournalOptions::default()).unwrap();
        assert_eq!(again.counts(), before);
        assert_eq!(again.is_acknowledged(5), Some(true));
        assert_eq!(again.is_acknowledged(14), Some(false));
        let r = journal::verify(dir.path()).unwrap();
        assert_eq!(r.records, 14);
    }

    #[test]
    fn records_of_other_kinds_share_the_chain_and_are_not_listed() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path(), JournalOptions::default()).unwrap();
        ledger.append_alert(&mut alert(0)).unwrap();
        let drift = json!({"type": "drift", "kind": "focus", "active": true, "frame": 3});
        assert_eq!(ledger.append_record(drift).unwrap(), 2);
        ledger.append_alert(&mut alert(4)).unwrap();
        let p = ledger.page(None, 10);
        assert_eq!(seqs(&p), [1, 3]);
        assert_eq!(ledger.counts().in_journal, 2);
        drop(ledger);
        let again = Ledger::open(dir.path(), JournalOptions::default()).unwrap();
        assert_eq!(
            again.counts().in_journal,
            2,
            "not indexed after a restart either"
        );
        assert_eq!(journal::verify(dir.path()).unwrap().records, 3);
    }

    #[test]
    fn a_line_changed_after_indexing_is_not_listed() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path(), JournalOptions::default()).unwrap();
        for i in 0..3 {
            ledger.append_alert(&mut alert(i)).unwrap();
        }
        let path = dir.path().join(file_name(1));
        let text = std::fs::read_to_string(&path).unwrap();
        // Same length, so the other lines stay where the index has them.
        std::fs::write(&path, text.replacen("f1.png", "f9.png", 1)).unwrap();
        let p = ledger.page(None, 10);
        assert_eq!(seqs(&p), [1, 3], "the forged alert 2 is left out");
        assert_eq!(p.alerts[1].alert.verdict.source, "f2.png");
    }

    #[test]
    fn retention_takes_alerts_and_their_counts_along() {
        let dir = tempfile::tempdir().unwrap();
        // About two alert lines per file, four files kept.
        let opts = JournalOptions {
            max_file_bytes: 800,
            max_files: 4,
        };
        let ledger = Ledger::open(dir.path(), opts).unwrap();
        for i in 0..40 {
            ledger.append_alert(&mut alert(i)).unwrap();
        }
        let c = ledger.counts();
        assert!(c.in_journal < 12, "{c:?}");
        assert_eq!(c.in_journal, c.unacknowledged);
        let p = ledger.page(None, 100);
        assert_eq!(p.alerts.len() as u64, c.in_journal);
        assert_eq!(*seqs(&p).last().unwrap(), 40);
        drop(ledger);
        assert_eq!(
            Ledger::open(dir.path(), opts).unwrap().counts(),
            c,
            "the same after a restart"
        );
    }
}
