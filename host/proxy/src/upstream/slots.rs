//! The circuit breaker's connection limits. An HTTP/1.1 connection carries one request at a
//! time, so a cluster's `max_connections` is also how many of its requests can be on the wire at
//! once: past that a request waits for its turn (in order), at most `max_pending` of them wait,
//! and more are refused at once with 503 `overloaded`. [`ConnectionBudget`] keeps the count of
//! open connections itself, which the connectors of every endpoint of the cluster share; when
//! it is full, the connection idle longest is closed to make room.

use super::UpstreamError;
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
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
    /// A connection closed, or came back idle while the cluster was full.
    room: Notify,
    /// The endpoints' pools, whose idle connections give way to a connection the cluster
    /// needs elsewhere.
    pools: Mutex<Vec<Weak<dyn IdleConnections>>>,
}

/// A pool of connections to one endpoint, as the budget sees it.
pub trait IdleConnections: Send + Sync {
    /// How long its longest-idle connection has idled; `None` when none is idle.
    fn longest_idle(&self) -> Option<Duration>;
    /// Closes its longest-idle connection; false when none was idle any more.
    fn close_longest_idle(&self) -> bool;
}

impl ConnectionBudget {
    pub fn new(open: Gauge, max_connections: u32) -> Arc<ConnectionBudget> {
        Arc::new(ConnectionBudget {
            open,
            max: i64::from(max_connections),
            room: Notify::new(),
            pools: Mutex::default(),
        })
    }

    /// Lets the budget close the pool's idle connections when another endpoint needs the room.
    pub fn share_idle(&self, pool: Weak<dyn IdleConnections>) {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools.retain(|pool| pool.strong_count() > 0);
        pools.push(pool);
    }

    /// Counts a connection about to be opened. When the cluster has `max_connections` open,
    /// the connection idle longest (to any endpoint: the caller's own had none idle when it
    /// asked, though one may have come back since) is closed for it; when none is idle, this waits until `deadline`
    /// for one to close or come back idle: a finished request's connection that is closing
    /// (an answer with `Connection: close`, an abandoned body) or still taking the request's
    /// body (the endpoint answered early) while the next request already asks for one.
    pub async fn open(&self, deadline: Instant) -> bool {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            // Counted before the connection is made, so that a burst cannot pass the limit.
            if self.open.inc() < self.max {
                return true;
            }
            self.open.dec();
            if self.close_longest_idle() {
                continue;
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                return false;
            }
        }
    }

    /// Closes the connection idle longest in the cluster; false when none is idle.
    fn close_longest_idle(&self) -> bool {
        // Pools are looked at outside the lock: closing a connection calls back into the budget.
        let pools: Vec<Arc<dyn IdleConnections>> =
            self.pools.lock().unwrap_or_else(|p| p.into_inner()).iter().filter_map(Weak::upgrade).collect();
        let mut idling: Vec<_> = pools.iter().filter_map(|pool| Some((pool.longest_idle()?, pool))).collect();
        idling.sort_unstable_by_key(|(idled, _)| std::cmp::Reverse(*idled));
        // A pool's last idle connection may have been taken since: then the next pool's goes.
        idling.into_iter().any(|(_, pool)| pool.close_longest_idle())
    }

    /// A connection counted by [`ConnectionBudget::open`] closed (or was never made).
    pub fn close(&self) {
        self.open.dec();
        self.room.notify_one();
    }

    /// A connection came back idle: a request waiting while the cluster has `max_connections`
    /// open may close it for its own.
    pub fn idled(&self) {
        if self.open.get() >= self.max {
            self.room.notify_one();
        }
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

    /// A pool holding idle connections that idled so long, each counted in the budget.
    struct FakePool {
        budget: Arc<ConnectionBudget>,
        idled: Mutex<Vec<Duration>>,
    }

    impl IdleConnections for FakePool {
        fn longest_idle(&self) -> Option<Duration> {
            self.idled.lock().unwrap().first().copied()
        }

        fn close_longest_idle(&self) -> bool {
            let mut idled = self.idled.lock().unwrap();
            let closed = !idled.is_empty();
            if closed {
                idled.remove(0);
            }
            drop(idled);
            if closed {
                self.budget.close();
            }
            closed
        }
    }

    #[tokio::test]
    async fn a_full_budget_closes_the_connection_idle_longest_in_the_cluster() {
        let budget = ConnectionBudget::new(Gauge::default(), 2);
        let pool = |idled: u64| {
            Arc::new(FakePool { budget: budget.clone(), idled: Mutex::new(vec![Duration::from_secs(idled)]) })
        };
        let (recent, long) = (pool(1), pool(30));
        let as_idle = |pool: &Arc<FakePool>| Arc::downgrade(pool) as Weak<FakePool> as Weak<dyn IdleConnections>;
        budget.share_idle(as_idle(&recent));
        budget.share_idle(as_idle(&long));
        for _ in 0..2 {
            assert!(budget.open(Instant::now()).await);
        }
        assert!(budget.open(Instant::now()).await, "an idle connection made room at once");
        assert_eq!(long.longest_idle(), None, "the one idle longest went");
        assert_eq!(recent.longest_idle(), Some(Duration::from_secs(1)));
        assert!(budget.open(Instant::now()).await, "then the other");
        assert!(!budget.open(Instant::now()).await, "none idle: the limit holds");
        assert_eq!(budget.open.get(), 2);
    }

    #[tokio::test]
    async fn a_request_waiting_for_room_takes_a_connection_that_comes_back_idle() {
        let budget = ConnectionBudget::new(Gauge::default(), 1);
        let pool = Arc::new(FakePool { budget: budget.clone(), idled: Mutex::new(Vec::new()) });
        budget.share_idle(Arc::downgrade(&pool) as Weak<FakePool> as Weak<dyn IdleConnections>);
        assert!(budget.open(Instant::now()).await, "the one connection, busy");
        let waiter = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.open(Instant::now() + Duration::from_secs(5)).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "no room while the connection is busy");
        pool.idled.lock().unwrap().push(Duration::ZERO);
        budget.idled();
        assert!(waiter.await.unwrap(), "the connection back idle was closed for the waiting one");
        assert_eq!(pool.longest_idle(), None);
        assert_eq!(budget.open.get(), 1);
    }
}
