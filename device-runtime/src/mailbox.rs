//! A bounded hand-over between the capture thread and the inference thread where the newest
//! item wins: when inference is behind, the oldest waiting frame is dropped (and counted), so the
//! verdict always concerns a recent part and capture never blocks. Fixed capacity `N`
//! (`heapless::Deque`), no allocation per hand-over.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use heapless::Deque;

#[derive(Debug)]
struct Inner<T, const N: usize> {
    queue: Deque<T, N>,
    closed: bool,
    dropped: u64,
}

#[derive(Debug)]
pub struct Mailbox<T, const N: usize> {
    inner: Mutex<Inner<T, N>>,
    ready: Condvar,
}

impl<T, const N: usize> Default for Mailbox<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T, const N: usize> Mailbox<T, N> {
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Inner {
                queue: Deque::new(),
                closed: false,
                dropped: 0,
            }),
            ready: Condvar::new(),
        }
    }

    /// Hand over `item`; when full, the oldest waiting item is dropped. Returns whether one was.
    pub fn push(&self, item: T) -> bool {
        let mut g = self.inner.lock().expect("mailbox lock");
        let mut dropped = false;
        if g.queue.is_full() {
            g.queue.pop_front();
            g.dropped += 1;
            dropped = true;
        }
        // Cannot fail: there is room now.
        let _ = g.queue.push_back(item);
        drop(g);
        self.ready.notify_one();
        dropped
    }

    /// The oldest waiting item; waits up to `timeout`. `None` on timeout, or when closed and
    /// empty (see [`Self::is_finished`]).
    pub fn pop(&self, timeout: Duration) -> Option<T> {
        let g = self.inner.lock().expect("mailbox lock");
        let (mut g, _) = self
            .ready
            .wait_timeout_while(g, timeout, |i| i.queue.is_empty() && !i.closed)
            .expect("mailbox lock");
        g.queue.pop_front()
    }

    /// No more items will come (the source ended, or its thread died). Never panics: it runs in
    /// [`CloseOnDrop`] while a panic unwinds, where a second panic would abort the process.
    pub fn close(&self) {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .closed = true;
        self.ready.notify_all();
    }

    /// Closed and drained.
    pub fn is_finished(&self) -> bool {
        let g = self.inner.lock().expect("mailbox lock");
        g.closed && g.queue.is_empty()
    }

    pub fn dropped(&self) -> u64 {
        self.inner.lock().expect("mailbox lock").dropped
    }
}

/// Closes its mailbox when dropped. The producer's thread holds one for as long as it runs, so
/// the consumer learns that no more items will come however that thread ends: a finished
/// source, or a panic in it (which would otherwise leave the consumer polling forever).
#[derive(Debug)]
pub struct CloseOnDrop<T, const N: usize>(pub Arc<Mailbox<T, N>>);

impl<T, const N: usize> Drop for CloseOnDrop<T, N> {
    fn drop(&mut self) {
        self.0.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_wins_and_drops_are_counted() {
        let m: Mailbox<u32, 2> = Mailbox::new();
        assert!(!m.push(1));
        assert!(!m.push(2));
        assert!(m.push(3), "full: the oldest goes");
        assert_eq!(m.dropped(), 1);
        assert_eq!(m.pop(Duration::ZERO), Some(2));
        assert_eq!(m.pop(Duration::ZERO), Some(3));
        assert_eq!(m.pop(Duration::from_millis(5)), None);
        m.close();
        assert!(m.is_finished());
    }

    #[test]
    fn a_waiting_consumer_wakes_on_push_and_on_close() {
        let m = std::sync::Arc::new(Mailbox::<u32, 1>::new());
        let c = m.clone();
        let t = std::thread::spawn(move || c.pop(Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(20));
        m.push(7);
        assert_eq!(t.join().unwrap(), Some(7));
        let c = m.clone();
        let t = std::thread::spawn(move || c.pop(Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(20));
        m.close();
        assert_eq!(t.join().unwrap(), None);
    }

    #[test]
    fn a_producer_that_panics_still_closes_the_mailbox() {
        let m = Arc::new(Mailbox::<u32, 2>::new());
        let producer = {
            let m = m.clone();
            std::thread::spawn(move || {
                let _closed = CloseOnDrop(m.clone());
                m.push(1);
                panic!("a driver bug");
            })
        };
        assert!(producer.join().is_err());
        assert_eq!(m.pop(Duration::from_secs(10)), Some(1));
        // Closed: the consumer is told at once instead of waiting for items forever.
        let t = std::time::Instant::now();
        assert_eq!(m.pop(Duration::from_secs(10)), None);
        assert!(t.elapsed() < Duration::from_secs(1));
        assert!(m.is_finished());
    }
}
