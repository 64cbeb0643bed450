//! One direction of a connection on the toxic path: chunks read from one side (stamped with
//! the time they arrived) pass through the listener's network filters, then through the toxics
//! of that direction in the order they were added, then are written to the other side. This is
//! where each toxic's behaviour lives, with Toxiproxy's semantics. The set of toxics is read
//! again at every step, so a toxic added, changed or removed reaches data already on its way.

use super::toxic::{Stream, ToxicKind};
use super::toxics::{ActiveToxic, Toxics, Watch};
use crate::chain::{ConnectionChain, Direction};
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// What a reader hands its link.
pub(crate) enum Read {
    Data(Bytes, Instant),
    End,
    Failed(io::Error),
}

/// Why a connection ends before both sides closed by themselves.
#[derive(Debug)]
pub(crate) enum Cut {
    /// A network filter closed it.
    Filter,
    /// A toxic closed it (FIN): `timeout`, `limit_data`.
    Toxic(&'static str),
    /// `reset_peer`: both sides get a TCP RST.
    Reset,
    Failed(io::Error),
}

/// Where the connection's network filters are, when it has any.
pub(crate) struct Filters<'a> {
    pub(crate) chain: &'a Mutex<ConnectionChain>,
    pub(crate) limit: usize,
}

/// A chunk on its way through the toxics.
struct Chunk {
    data: Bytes,
    /// When it arrived, moved on by latency toxics (so delays count from arrival, not from
    /// when the previous chunk left).
    at: Instant,
    /// The toxics it went through already, by id.
    applied: Vec<u64>,
    /// Held this long before going on (slicer pieces after the first).
    wait: Duration,
    /// The connection is closed once this chunk is written (`limit_data`).
    close_after: bool,
}

/// This connection's state for one toxic.
struct State {
    /// The toxicity roll, once per connection: the toxic acts while `roll < toxicity`.
    roll: f32,
    counted: bool,
    /// When this connection met the toxic, or last gave it data (`timeout`'s clock).
    last_data: Instant,
    /// Bytes passed (`limit_data`).
    sent: u64,
    /// A `timeout` toxic acts on this connection: removing it closes the connection.
    held: bool,
    /// When the link is free to send again (`bandwidth`).
    next_free: Instant,
}

/// One direction's toxic state.
pub(crate) struct Link {
    pub(crate) stream: Stream,
    pub(crate) watch: Watch,
    pub(crate) toxics: Arc<Toxics>,
    pub(crate) rng: fastrand::Rng,
    states: HashMap<u64, State>,
}

impl Link {
    pub(crate) fn new(stream: Stream, watch: Watch, toxics: Arc<Toxics>, rng: fastrand::Rng) -> Link {
        Link { stream, watch, toxics, rng, states: HashMap::new() }
    }

    /// Moves what `from` yields to `to` until the end has passed (Ok) or the connection must
    /// end (Err).
    pub(crate) async fn run<W: AsyncWrite + Unpin>(
        &mut self,
        from: &mut mpsc::Receiver<Read>,
        to: &mut W,
        filters: Option<&Filters<'_>>,
    ) -> Result<(), Cut> {
        let direction = match self.stream {
            Stream::Upstream => Direction::Request,
            Stream::Downstream => Direction::Response,
        };
        loop {
            let idle_deadline = self.meet()?;
            let read = tokio::select! {
                biased;
                _ = self.watch.changed() => continue,
                _ = sleep_until(idle_deadline) => return Err(Cut::Toxic("timeout")),
                read = from.recv() => read,
            };
            match read {
                Some(Read::Data(data, at)) => {
                    let data = filtered(filters, direction, data, false)?;
                    if !data.is_empty() {
                        self.pass(data, at, to).await?;
                    }
                }
                Some(Read::End) | None => {
                    let data = filtered(filters, direction, Bytes::new(), true)?;
                    if !data.is_empty() {
                        self.pass(data, Instant::now(), to).await?;
                    }
                    if let Some(filters) = filters {
                        lock(filters.chain).on_close(direction);
                    }
                    self.end().await?;
                    to.shutdown().await.map_err(Cut::Failed)?;
                    return Ok(());
                }
                Some(Read::Failed(error)) => return Err(Cut::Failed(error)),
            }
        }
    }

    /// Makes state for toxics this connection has not met; a `timeout` toxic that held this
    /// connection and is gone closes it (its data is lost), as Toxiproxy does. Returns when the
    /// earliest `timeout` toxic closes the connection for want of data.
    fn meet(&mut self) -> Result<Option<Instant>, Cut> {
        let set = self.watch.current();
        let wall = SystemTime::now();
        let mut deadline: Option<Instant> = None;
        let mut present = Vec::new();
        for active in set.on(self.stream) {
            present.push(active.id);
            if let ToxicKind::Timeout { timeout } = active.toxic.kind {
                if !active.toxic.expired_at(wall) && self.acts(active) {
                    let state = state_of(&mut self.states, &mut self.rng, active);
                    state.held = true;
                    if timeout > 0 {
                        let at = state.last_data + Duration::from_millis(timeout);
                        deadline = Some(deadline.map_or(at, |d| d.min(at)));
                    }
                }
            }
        }
        let mut held_by_gone_timeout = false;
        self.states.retain(|id, state| {
            let keep = present.contains(id);
            held_by_gone_timeout |= !keep && state.held;
            keep
        });
        if held_by_gone_timeout {
            return Err(Cut::Toxic("timeout"));
        }
        Ok(deadline)
    }

    fn state(&mut self, active: &ActiveToxic) -> &mut State {
        state_of(&mut self.states, &mut self.rng, active)
    }

    /// Whether `active` acts on this connection (counted the first time it does).
    fn acts(&mut self, active: &ActiveToxic) -> bool {
        let state = state_of(&mut self.states, &mut self.rng, active);
        let acts = state.roll < active.toxic.toxicity;
        if acts && !state.counted {
            state.counted = true;
            self.toxics.count_affected(self.watch.listener(), &active.toxic);
        }
        acts
    }

    /// The next toxic `chunk` has not been through, from the set in force now.
    fn next_toxic(&self, applied: &[u64]) -> Option<Arc<ActiveToxic>> {
        let now = SystemTime::now();
        self.watch.current().on(self.stream).find(|t| !applied.contains(&t.id) && !t.toxic.expired_at(now)).cloned()
    }

    async fn pass<W: AsyncWrite + Unpin>(&mut self, data: Bytes, at: Instant, to: &mut W) -> Result<(), Cut> {
        let mut queue =
            VecDeque::from([Chunk { data, at, applied: Vec::new(), wait: Duration::ZERO, close_after: false }]);
        'chunks: while let Some(mut chunk) = queue.pop_front() {
            if !chunk.wait.is_zero() {
                let until = Instant::now() + chunk.wait;
                self.hold(until, None).await;
            }
            while let Some(active) = self.next_toxic(&chunk.applied) {
                chunk.applied.push(active.id);
                if !self.acts(&active) {
                    continue;
                }
                match active.toxic.kind {
                    ToxicKind::Latency { latency, jitter } => {
                        let until = chunk.at + latency_delay(latency, jitter, &mut self.rng);
                        self.hold(until, Some(&active)).await;
                        chunk.at = chunk.at.max(until);
                    }
                    ToxicKind::Bandwidth { rate } if rate > 0 => {
                        // At most 100 ms worth of data at once, so a slow link still trickles.
                        let piece = (rate * 100) as usize;
                        if chunk.data.len() > piece {
                            let rest = chunk.data.split_off(piece);
                            let mut applied = chunk.applied.clone();
                            applied.pop();
                            queue.push_front(Chunk {
                                data: rest,
                                at: chunk.at,
                                applied,
                                wait: Duration::ZERO,
                                close_after: std::mem::take(&mut chunk.close_after),
                            });
                        }
                        let takes = Duration::from_micros(chunk.data.len() as u64 * 1000 / rate);
                        let state = self.state(&active);
                        let until = state.next_free.max(Instant::now()) + takes;
                        state.next_free = until;
                        self.hold(until, Some(&active)).await;
                    }
                    ToxicKind::Bandwidth { .. } | ToxicKind::SlowClose { .. } => {}
                    ToxicKind::Timeout { .. } => {
                        self.state(&active).last_data = Instant::now();
                        continue 'chunks;
                    }
                    ToxicKind::ResetPeer { timeout } => {
                        tokio::time::sleep(Duration::from_millis(timeout)).await;
                        return Err(Cut::Reset);
                    }
                    ToxicKind::Slicer { average_size, size_variation, delay } => {
                        let cuts =
                            slice(chunk.data.len(), average_size as usize, size_variation as usize, &mut self.rng);
                        let mut pieces = cuts.windows(2).map(|w| chunk.data.slice(w[0]..w[1]));
                        let first = pieces.next().unwrap_or_default();
                        let rest: Vec<Bytes> = pieces.collect();
                        let closes = std::mem::take(&mut chunk.close_after);
                        let count = rest.len();
                        for (i, piece) in rest.into_iter().enumerate().rev() {
                            queue.push_front(Chunk {
                                data: piece,
                                at: chunk.at,
                                applied: chunk.applied.clone(),
                                wait: Duration::from_micros(delay),
                                close_after: closes && i + 1 == count,
                            });
                        }
                        chunk.data = first;
                        chunk.close_after = closes && count == 0;
                    }
                    ToxicKind::LimitData { bytes } => {
                        let state = self.state(&active);
                        let remaining = bytes.saturating_sub(state.sent);
                        if (chunk.data.len() as u64) >= remaining {
                            chunk.data.truncate(remaining as usize);
                            chunk.close_after = true;
                            queue.clear();
                        }
                        state.sent += chunk.data.len() as u64;
                        if chunk.data.is_empty() {
                            return Err(Cut::Toxic("limit_data"));
                        }
                    }
                }
            }
            to.write_all(&chunk.data).await.map_err(Cut::Failed)?;
            to.flush().await.map_err(Cut::Failed)?;
            if chunk.close_after {
                return Err(Cut::Toxic("limit_data"));
            }
        }
        Ok(())
    }

    /// The end of stream through the toxics: `reset_peer` resets instead, `slow_close` holds it.
    async fn end(&mut self) -> Result<(), Cut> {
        let mut applied = Vec::new();
        while let Some(active) = self.next_toxic(&applied) {
            applied.push(active.id);
            if !self.acts(&active) {
                continue;
            }
            match active.toxic.kind {
                ToxicKind::ResetPeer { timeout } => {
                    tokio::time::sleep(Duration::from_millis(timeout)).await;
                    return Err(Cut::Reset);
                }
                ToxicKind::SlowClose { delay } => {
                    let until = Instant::now() + Duration::from_millis(delay);
                    self.hold(until, Some(&active)).await;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Waits until `until`; when `toxic` is given, stops early once it was removed or changed
    /// (what it held goes on at once, as in Toxiproxy).
    async fn hold(&mut self, until: Instant, toxic: Option<&Arc<ActiveToxic>>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return,
                _ = self.watch.changed() => {
                    let Some(toxic) = toxic else { continue };
                    let set = self.watch.current();
                    let still = set.toxics.iter().any(|t| Arc::ptr_eq(t, toxic));
                    if !still || toxic.toxic.expired_at(SystemTime::now()) {
                        return;
                    }
                }
            }
        }
    }
}

fn state_of<'a>(states: &'a mut HashMap<u64, State>, rng: &mut fastrand::Rng, active: &ActiveToxic) -> &'a mut State {
    states.entry(active.id).or_insert_with(|| {
        let now = Instant::now();
        State { roll: rng.f32(), counted: false, last_data: now, sent: 0, held: false, next_free: now }
    })
}

fn lock(chain: &Mutex<ConnectionChain>) -> std::sync::MutexGuard<'_, ConnectionChain> {
    chain.lock().unwrap_or_else(|e| e.into_inner())
}

fn filtered(filters: Option<&Filters<'_>>, direction: Direction, data: Bytes, end: bool) -> Result<Bytes, Cut> {
    match filters {
        None => Ok(data),
        Some(filters) => lock(filters.chain)
            .on_data(direction, &data, end, filters.limit)
            .map(|d| d.freeze())
            .map_err(|_| Cut::Filter),
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// `latency` ± `jitter` milliseconds (never below zero).
pub(crate) fn latency_delay(latency: u64, jitter: u64, rng: &mut fastrand::Rng) -> Duration {
    let ms = if jitter == 0 {
        latency
    } else {
        let j = jitter.min(i64::MAX as u64 / 2) as i64;
        (latency as i64).saturating_add(rng.i64(-j..j)).max(0) as u64
    };
    Duration::from_millis(ms)
}

/// Toxiproxy's slicer: the offsets `[0, a, b, …, len]` cutting `len` bytes into pieces of about
/// `average` ± `variation` bytes, halving recursively so no end tends to be small or large.
pub(crate) fn slice(len: usize, average: usize, variation: usize, rng: &mut fastrand::Rng) -> Vec<usize> {
    let mut cuts = vec![0];
    let mut stack = vec![(0usize, len)];
    while let Some((start, end)) = stack.pop() {
        let size = end - start;
        if size <= average + variation {
            cuts.push(end);
            continue;
        }
        let offset = if variation == 0 { 0 } else { rng.i64(-(variation as i64)..variation as i64) };
        // size > average + variation > 2 * variation, so the middle stays strictly inside.
        let mid = (start + size / 2).saturating_add_signed(offset as isize);
        stack.push((mid, end));
        stack.push((start, mid));
    }
    cuts
}
