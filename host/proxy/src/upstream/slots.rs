//! The circuit breaker's connection limits. An HTTP/1.1 connection carries one request at a
//! time, so a cluster's `max_connections` is also how many of its requests can be on the wire at
//! once: past that a request waits for its turn (in order), at most `max_pending` of them wait,
//! and more are refused at once with 503 `overloaded`. [`ConnectionBudget`] keeps the count of
//! open connections itself, which the connectors of every endpoint of the cluster share.

use super::UpstreamError;
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Turns at sending a request on an HTTP/1.1 cluster: `max_connections` of them, and a bounded
/// line of requests waiting for one.
pub struct ConnectionSlots {
    turns: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_pending: usize,
    /// Requests waiting now (`weft_upstream_pending`).
    pending: Gauge,
    /// Requests refused because `max_pending` were waiting already.
    overflowed: Counter,
}

/// A request's turn on the wire; the next waiting request gets it when this is dropped.
pub type Turn = OwnedSemaphorePermit;

impl ConnectionSlots {
    pub fn new(max_connections: u32, max_pending: u32, pending: Gauge, overflowed: Counter) -> ConnectionSlots {
        ConnectionSlots {
            turns: Arc::new(Semaphore::new(max_connections as usize)),
            waiting: AtomicUsize::new(0),
            max_pending: max_pending as usize,
            pending,
            overflowed,
        }
    }

    /// A turn now, or after waiting in line at most `within`: [`UpstreamError::Overloaded`] when
    /// the line is full, [`UpstreamError::Timeout`] when the turn did not come in time.
    pub async fn take(&self, within: Duration) -> Result<Turn, UpstreamError> {
        // Turns go to waiting requests first (the semaphore is fair), so this never jumps the line.
        if let Ok(turn) = self.turns.clone().try_acquire_owned() {
            return Ok(turn);
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_pending {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            self.overflowed.inc();
            return Err(UpstreamError::Overloaded);
        }
        self.pending.inc();
        let turn = tokio::time::timeout(within, self.turns.clone().acquire_owned()).await;
        self.pending.dec();
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        match turn {
            Ok(Ok(turn)) => Ok(turn),
            // The semaphore is never closed; if it were, nothing could be sent.
            Ok(Err(_)) => Err(UpstreamError::Overloaded),
            Err(_) => Err(UpstreamError::Timeout),
        }
    }

    /// Requests waiting for a turn now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }
}

/// The open connections of one cluster, against its `max_connections`.
pub struct ConnectionBudget {
    /// Open connections (`weft_upstream_connections_active`).
    open: Gauge,
    max: i64,
    closed: Notify,
}

impl ConnectionBudget {
    pub fn new(open: Gauge, max_connections: u32) -> Arc<ConnectionBudget> {
        Arc::new(ConnectionBudget { open, max: i64::from(max_connections), closed: Notify::new() })
    }

    /// Counts a connection about to be opened, waiting until `deadline` for one to close when
    /// the cluster has `max_connections` open. The wait covers a finished request's connection
    /// that is closing (an answer with `Connection: close`, an abandoned body) while the next
    /// request already asks for one. It does not watch the pool: a connection that comes back
    /// idle meanwhile is not handed to this request (HTTP/1.1 connections normally come back
    /// before their request's turn passes on, so the next turn finds them idle).
    pub async fn open(&self, deadline: Instant) -> bool {
        loop {
            let closed = self.closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            // Counted before the connection is made, so that a burst cannot pass the limit.
            if self.open.inc() < self.max {
                return true;
            }
            self.open.dec();
            if tokio::time::timeout_at(deadline, closed).await.is_err() {
                return false;
            }
        }
    }

    /// A connection counted by [`ConnectionBudget::open`] closed (or was never made).
    pub fn close(&self) {
        self.open.dec();
        self.closed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(max_connections: u32, max_pending: u32) -> ConnectionSlots {
        ConnectionSlots::new(max_connections, max_pending, Gauge::default(), Counter::default())
    }

    #[tokio::test]
    async fn requests_past_the_connections_wait_in_order_and_past_max_pending_are_refused() {
        let slots = Arc::new(slots(1, 2));
        let first = slots.take(Duration::from_secs(5)).await.unwrap();
        let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel();
        for n in 0..2 {
            let (line, done_tx) = (slots.clone(), done_tx.clone());
            tokio::spawn(async move {
                let turn = line.take(Duration::from_secs(5)).await;
                done_tx.send((n, turn.is_ok())).unwrap();
            });
            // Each is in line before the next asks, so the order is known.
            while slots.waiting() <= n {
                tokio::task::yield_now().await;
            }
        }
        assert!(matches!(slots.take(Duration::from_secs(5)).await, Err(UpstreamError::Overloaded)), "the line is full");
        assert_eq!(slots.overflowed.get(), 1);
        drop(first);
        assert_eq!(done.recv().await, Some((0, true)), "the first in line goes first");
        assert_eq!(done.recv().await, Some((1, true)));
    }

    #[tokio::test]
    async fn a_turn_that_does_not_come_in_time_is_a_timeout() {
        let slots = slots(1, 10);
        let _held = slots.take(Duration::from_secs(1)).await.unwrap();
        assert!(matches!(slots.take(Duration::from_millis(100)).await, Err(UpstreamError::Timeout)));
        assert_eq!(slots.waiting(), 0, "a request that gave up is out of the line");
    }

    #[tokio::test]
    async fn a_connection_past_the_limit_waits_for_one_to_close() {
        let budget = ConnectionBudget::new(Gauge::default(), 1);
        assert!(budget.open(Instant::now()).await);
        let soon = Instant::now() + Duration::from_millis(50);
        assert!(!budget.open(soon).await, "none closed in time");
        let waiter = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.open(Instant::now() + Duration::from_secs(5)).await })
        };
        tokio::task::yield_now().await;
        budget.close();
        assert!(waiter.await.unwrap(), "the closed connection's place went to the waiting one");
        assert_eq!(budget.open.get(), 1);
    }
}
