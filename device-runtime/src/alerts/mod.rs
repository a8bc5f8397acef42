//! Where verdicts go: the durable hash-chained [`journal`], and (later) flagged-frame images,
//! webhook, GPIO reject line and server-sent events.

pub mod journal;
