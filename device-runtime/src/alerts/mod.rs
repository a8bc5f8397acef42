//! Where alerts go (a flagged frame's verdict), in this order: the durable hash-chained
//! [`journal`], the saved frame ([`flagged`]), then the outward sinks (webhook, GPIO reject line).
//! Server-sent events to the status page are published by the pipeline itself. The [`ledger`]
//! lists the journal's alerts for the page and journals their acknowledgements.

pub mod flagged;
pub mod gpio;
pub mod journal;
pub mod journal_sink;
pub mod ledger;
pub mod webhook;

use firm_shared::drift::DriftWarning;

use crate::capture::Frame;
use crate::state::AlertEntry;

/// One destination of alerts. `alert` may fill in what it produced (the journal's sequence
/// number, the saved image's name). Errors are logged and counted by the pipeline; a sink never
/// stops it, and a sink that talks to the network must not block it (queue and return).
pub trait AlertSink: Send {
    fn name(&self) -> &'static str;
    fn alert(&mut self, alert: &mut AlertEntry, frame: &Frame) -> Result<(), String>;
    /// A drift warning raised or cleared by `frame` ([`crate::drift`]); sinks that do not
    /// report drift (saved frames, the reject line) ignore it.
    fn drift(&mut self, _warning: &DriftWarning, _frame: &Frame) -> Result<(), String> {
        Ok(())
    }
}
