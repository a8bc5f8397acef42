//! Webhook alerts: one JSON POST per alert to the configured URL, delivered by a worker thread
//! from a bounded queue. The pipeline only enqueues: when the receiver is slow or down, the queue
//! fills and further alerts are dropped and counted (they are in the journal regardless), so the
//! line never waits for the network. Each alert is tried `attempts` times with exponential
//! backoff (100 ms doubling, at most 5 s); a 2xx answer counts as delivered. Drift warnings
//! ([`crate::drift`]) share the queue; their body has `"type": "drift"` (an alert's has no
//! `type`).
//!
//! With the journal attached ([`Webhook::with_journal`], as the appliance does) every body also
//! carries the journal's head as it stood when the body was made, right after the journal took
//! the alert: `"journal": {"seq": 42, "hash": "<64 hex>"}`. A receiver that keeps the highest
//! seq and its hash holds a copy of the chain's head off the device, which `device-runtime journal
//! verify` prints for comparison: deleting the journal's end (and its checkpoint) on the device
//! does not change what the receiver already has.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::time::Duration;

use firm_shared::drift::DriftWarning;
use tracing::warn;

use super::AlertSink;
use super::ledger::Ledger;
use crate::capture::Frame;
use crate::config::WebhookConfig;
use crate::drift::DriftRecord;
use crate::state::AlertEntry;

/// Delivery counters, shared with the status page.
#[derive(Debug, Default)]
pub struct WebhookStats {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
}

#[derive(Debug)]
pub struct Webhook {
    tx: SyncSender<Vec<u8>>,
    pub stats: Arc<WebhookStats>,
    /// Where the journal's head is read for each body.
    journal: Option<Arc<Ledger>>,
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((100u64 << attempt.min(6)).min(5000))
}

impl Webhook {
    /// Start the delivery thread.
    pub fn start(cfg: &WebhookConfig, site: &str) -> Self {
        let (tx, rx) = sync_channel::<Vec<u8>>(cfg.queue.max(1));
        let stats = Arc::new(WebhookStats::default());
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_millis(cfg.timeout_ms)))
            .build()
            .into();
        let (url, attempts, st) = (cfg.url.clone(), cfg.attempts.max(1), stats.clone());
        let site = site.to_string();
        std::thread::Builder::new()
            .name("webhook".into())
            .spawn(move || {
                for body in rx {
                    let mut ok = false;
                    for attempt in 0..attempts {
                        let r = agent
                            .post(&url)
                            .header("content-type", "application/json")
                            .header("x-firm-site", &site)
                            .send(&body[..]);
                        match r {
                            Ok(_) => {
                                ok = true;
                                break;
                            }
                            Err(e) => {
                                warn!("webhook {url}: attempt {} of {attempts}: {e}", attempt + 1);
                                if attempt + 1 < attempts {
                                    std::thread::sleep(backoff(attempt));
                                }
                            }
                        }
                    }
                    let c = if ok { &st.delivered } else { &st.failed };
                    c.fetch_add(1, Ordering::Relaxed);
                }
            })
            .expect("spawn the webhook thread");
        Self {
            tx,
            stats,
            journal: None,
        }
    }

    /// Put the journal's head into every body (see the module header).
    pub fn with_journal(mut self, ledger: Option<Arc<Ledger>>) -> Self {
        self.journal = ledger;
        self
    }

    /// `value` (a JSON object) with the journal's head added, as bytes.
    fn body(&self, value: impl serde::Serialize) -> Vec<u8> {
        let mut v = serde_json::to_value(value).expect("webhook body serialises");
        if let (Some(ledger), Some(obj)) = (&self.journal, v.as_object_mut()) {
            let head = ledger.head();
            obj.insert(
                "journal".into(),
                serde_json::json!({"seq": head.seq, "hash": head.hash}),
            );
        }
        serde_json::to_vec(&v).expect("webhook body serialises")
    }
}

impl AlertSink for Webhook {
    fn name(&self) -> &'static str {
        "webhook"
    }

    fn alert(&mut self, alert: &mut AlertEntry, _frame: &Frame) -> Result<(), String> {
        let body = self.body(&*alert);
        self.enqueue(body)
    }

    /// The drift record ([`DriftRecord`], `"type": "drift"`) through the same queue.
    fn drift(&mut self, warning: &DriftWarning, frame: &Frame) -> Result<(), String> {
        let body = self.body(DriftRecord::new(warning, frame.time));
        self.enqueue(body)
    }
}

impl Webhook {
    fn enqueue(&mut self, body: Vec<u8>) -> Result<(), String> {
        match self.tx.try_send(body) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                Err("queue full: the receiver is slow or down; alert not sent (it is in the journal)".into())
            }
            Err(TrySendError::Disconnected(_)) => Err("the delivery thread has stopped".into()),
        }
    }
}
