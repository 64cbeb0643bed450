//! The toxic path of a tcp connection (and the path of connections with network filters): per
//! direction a reader that stamps each chunk with the time it arrived and queues it, and a
//! [`Link`] that takes it through filters and toxics to the other side. A link that must end
//! the connection (a toxic, a filter) ends both directions; `reset_peer` closes both sockets
//! with a TCP RST.

use super::link::{Cut, Filters, Link, Read};
use super::Socket;
use bytes::{Bytes, BytesMut};
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How much is read at a time.
const CHUNK: usize = 16 * 1024;
/// Chunks a direction may have queued before its reader waits (latency holds them here).
const QUEUE: usize = 256;

/// Where a direction stands when the toxic path takes over from the fast path.
#[derive(Default)]
pub(crate) struct Seed {
    /// Read and not yet written.
    pub(crate) unwritten: Bytes,
    /// The source ended already.
    pub(crate) ended: bool,
    /// The end was passed on already: nothing more to do this way.
    pub(crate) done: bool,
}

/// Bytes read from the client (`received`) and from the upstream (`sent` on to the client).
#[derive(Default)]
pub(crate) struct Counts {
    pub(crate) received: AtomicU64,
    pub(crate) sent: AtomicU64,
}

/// Runs both directions until each has passed its end, or one cuts the connection.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn pump<D: Socket, U: Socket>(
    client: D,
    upstream: U,
    mut up: Link,
    mut down: Link,
    seeds: [Seed; 2],
    filters: Option<Filters<'_>>,
    counts: &Counts,
) -> Result<(), Cut> {
    let (mut client_r, mut client_w) = tokio::io::split(client);
    let (mut upstream_r, mut upstream_w) = tokio::io::split(upstream);
    let [up_seed, down_seed] = seeds;
    let result = {
        let (up_tx, mut up_rx) = seeded(&up_seed);
        let (down_tx, mut down_rx) = seeded(&down_seed);
        let readers = async {
            tokio::join!(
                read(!up_seed.ended, &mut client_r, up_tx, &counts.received),
                read(!down_seed.ended, &mut upstream_r, down_tx, &counts.sent),
            );
            std::future::pending::<()>().await
        };
        let filters = filters.as_ref();
        let upward = async {
            if up_seed.done {
                return Ok(());
            }
            up.run(&mut up_rx, &mut upstream_w, filters).await
        };
        let downward = async {
            if down_seed.done {
                return Ok(());
            }
            down.run(&mut down_rx, &mut client_w, filters).await
        };
        tokio::select! {
            result = async { tokio::try_join!(upward, downward).map(|_| ()) } => result,
            _ = readers => Ok(()),
        }
    };
    // The halves were made from these very streams just above.
    let client = client_r.unsplit(client_w);
    let upstream = upstream_r.unsplit(upstream_w);
    if matches!(result, Err(Cut::Reset)) {
        // Closing with a zero linger sends RST instead of FIN, to both sides.
        client.set_reset();
        upstream.set_reset();
    }
    result
}

/// A direction's queue, holding what the fast path read but did not write, and its end.
fn seeded(seed: &Seed) -> (mpsc::Sender<Read>, mpsc::Receiver<Read>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    // A fresh channel has room for these two.
    if !seed.unwritten.is_empty() {
        let _ = tx.try_send(Read::Data(seed.unwritten.clone(), Instant::now()));
    }
    if seed.ended {
        let _ = tx.try_send(Read::End);
    }
    (tx, rx)
}

async fn read<R: AsyncRead + Unpin>(active: bool, from: &mut R, to: mpsc::Sender<Read>, count: &AtomicU64) {
    if !active {
        return;
    }
    let mut buf = BytesMut::with_capacity(CHUNK);
    loop {
        buf.reserve(CHUNK);
        let message = match from.read_buf(&mut buf).await {
            Ok(0) => Read::End,
            Ok(n) => {
                count.fetch_add(n as u64, Ordering::Relaxed);
                Read::Data(buf.split().freeze(), Instant::now())
            }
            Err(error) => Read::Failed(error),
        };
        let last = !matches!(message, Read::Data(..));
        if to.send(message).await.is_err() || last {
            return;
        }
    }
}
