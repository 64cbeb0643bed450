//! The toxics' behaviour on a relayed connection, over in-memory streams with a paused clock:
//! every delay is exact and costs no real time; randomness comes from a fixed seed.

use super::toxic::{Stream, Toxic, ToxicKind};
use super::toxics::Toxics;
use super::{relay, Relayed};
use crate::chain::ConnectionChain;
use crate::metrics::Metrics;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A relayed connection: the test holds the client's end and the upstream's end.
struct Connection {
    client: DuplexStream,
    server: DuplexStream,
    toxics: Arc<Toxics>,
    relay: JoinHandle<Relayed>,
}

fn registry() -> Arc<Toxics> {
    let toxics = Toxics::new(Metrics::new());
    toxics.set_config_listeners(["db".to_owned()]);
    toxics
}

fn connect(toxics: &Arc<Toxics>) -> Connection {
    let (client, client_side) = tokio::io::duplex(64 * 1024);
    let (server, server_side) = tokio::io::duplex(64 * 1024);
    let (registry, listener) = (toxics.clone(), toxics.listener("db"));
    let relay = tokio::spawn(async move {
        let chain = ConnectionChain::default();
        relay(client_side, server_side, &registry, &listener, chain, 0, fastrand::Rng::with_seed(7)).await
    });
    Connection { client, server, toxics: toxics.clone(), relay }
}

fn toxic(kind: ToxicKind, stream: Stream) -> Toxic {
    Toxic::new(kind.type_name(), kind, stream)
}

fn latency(ms: u64) -> Toxic {
    toxic(ToxicKind::Latency { latency: ms, jitter: 0 }, Stream::Downstream)
}

/// Reads exactly `n` bytes; returns them and how long that took.
async fn read_n(from: &mut DuplexStream, n: usize) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut buf = vec![0; n];
    from.read_exact(&mut buf).await.expect("read");
    (buf, start.elapsed())
}

async fn read_to_end(from: &mut DuplexStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let _ = from.read_to_end(&mut buf).await;
    buf
}

#[tokio::test(start_paused = true)]
async fn without_toxics_bytes_pass_both_ways_untouched() {
    let mut c = connect(&registry());
    c.client.write_all(b"ping").await.unwrap();
    assert_eq!(read_n(&mut c.server, 4).await, (b"ping".to_vec(), Duration::ZERO));
    c.server.write_all(b"pong").await.unwrap();
    assert_eq!(read_n(&mut c.client, 4).await.0, b"pong");
    drop((c.client, c.server));
    let relayed = c.relay.await.unwrap();
    assert_eq!((relayed.received, relayed.sent, relayed.outcome), (4, 4, "closed"));
}

#[tokio::test(start_paused = true)]
async fn latency_holds_each_chunk_from_its_arrival_and_keeps_order() {
    let toxics = registry();
    toxics.add("db", latency(100)).unwrap();
    let mut c = connect(&toxics);
    c.client.write_all(b"up").await.unwrap();
    assert_eq!(read_n(&mut c.server, 2).await.1, Duration::ZERO, "upstream is not delayed");
    let start = Instant::now();
    c.server.write_all(b"one").await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    c.server.write_all(b"two").await.unwrap();
    assert_eq!(read_n(&mut c.client, 3).await.0, b"one");
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    assert_eq!(read_n(&mut c.client, 3).await.0, b"two");
    assert_eq!(start.elapsed(), Duration::from_millis(110), "delays overlap, they do not add up");
}

#[tokio::test(start_paused = true)]
async fn jitter_stays_within_its_bounds() {
    let mut rng = fastrand::Rng::with_seed(1);
    let delays: Vec<_> = (0..200).map(|_| super::link::latency_delay(100, 20, &mut rng)).collect();
    assert!(delays.iter().all(|d| (80..=120).contains(&d.as_millis())), "{delays:?}");
    assert!(delays.iter().any(|d| d.as_millis() < 95) && delays.iter().any(|d| d.as_millis() > 105));
    let small: Vec<_> = (0..200).map(|_| super::link::latency_delay(5, 20, &mut rng).as_millis()).collect();
    assert!(small.iter().all(|&d| d <= 25) && small.contains(&0), "clamped at zero, never below: {small:?}");
}

#[tokio::test(start_paused = true)]
async fn a_toxic_added_later_reaches_an_open_connection_and_its_removal_releases_what_it_holds() {
    let toxics = registry();
    let mut c = connect(&toxics);
    c.server.write_all(b"fast").await.unwrap();
    assert_eq!(read_n(&mut c.client, 4).await.1, Duration::ZERO);
    toxics.add("db", latency(1000)).unwrap();
    c.server.write_all(b"slow").await.unwrap();
    assert_eq!(read_n(&mut c.client, 4).await.1, Duration::from_millis(1000));
    c.server.write_all(b"held").await.unwrap();
    let removal = tokio::spawn({
        let toxics = c.toxics.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            toxics.remove("db", "latency").unwrap();
        }
    });
    assert_eq!(read_n(&mut c.client, 4).await, (b"held".to_vec(), Duration::from_millis(300)));
    removal.await.unwrap();
    c.server.write_all(b"free").await.unwrap();
    assert_eq!(read_n(&mut c.client, 4).await.1, Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn toxicity_zero_spares_the_connection() {
    let toxics = registry();
    let mut spared = latency(1000);
    spared.toxicity = 0.0;
    toxics.add("db", spared).unwrap();
    let mut c = connect(&toxics);
    c.server.write_all(b"pong").await.unwrap();
    assert_eq!(read_n(&mut c.client, 4).await.1, Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn bandwidth_limits_the_rate() {
    let toxics = registry();
    toxics.add("db", toxic(ToxicKind::Bandwidth { rate: 1 }, Stream::Upstream)).unwrap();
    let mut c = connect(&toxics);
    c.client.write_all(&[7u8; 250]).await.unwrap();
    // 1 KB/s: 100 bytes per 100 ms.
    let (_, took) = read_n(&mut c.server, 100).await;
    assert_eq!(took, Duration::from_millis(100));
    let (_, took) = read_n(&mut c.server, 150).await;
    assert_eq!(took, Duration::from_millis(150));
}

#[tokio::test(start_paused = true)]
async fn slow_close_holds_the_end_of_stream() {
    let toxics = registry();
    toxics.add("db", toxic(ToxicKind::SlowClose { delay: 500 }, Stream::Downstream)).unwrap();
    let mut c = connect(&toxics);
    c.server.write_all(b"bye").await.unwrap();
    c.server.shutdown().await.unwrap();
    assert_eq!(read_n(&mut c.client, 3).await, (b"bye".to_vec(), Duration::ZERO));
    let start = Instant::now();
    assert!(read_to_end(&mut c.client).await.is_empty());
    assert_eq!(start.elapsed(), Duration::from_millis(500));
}

#[tokio::test(start_paused = true)]
async fn timeout_drops_data_and_closes_after_the_silence() {
    let toxics = registry();
    toxics.add("db", toxic(ToxicKind::Timeout { timeout: 200 }, Stream::Upstream)).unwrap();
    let mut c = connect(&toxics);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_millis(150)).await;
    c.client.write_all(b"lost").await.unwrap();
    assert!(read_to_end(&mut c.server).await.is_empty(), "the data never reaches the upstream");
    assert_eq!(start.elapsed(), Duration::from_millis(350), "each chunk restarts the clock");
    assert_eq!(c.relay.await.unwrap().outcome, "closed by timeout toxic");
}

#[tokio::test(start_paused = true)]
async fn removing_a_timeout_closes_the_connections_it_held() {
    let toxics = registry();
    toxics.add("db", toxic(ToxicKind::Timeout { timeout: 0 }, Stream::Downstream)).unwrap();
    let mut c = connect(&toxics);
    c.server.write_all(b"lost").await.unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!c.relay.is_finished(), "timeout 0 holds the connection open");
    toxics.remove("db", "timeout").unwrap();
    assert!(read_to_end(&mut c.client).await.is_empty());
    assert_eq!(c.relay.await.unwrap().outcome, "closed by timeout toxic");
}

#[tokio::test(start_paused = true)]
async fn reset_peer_resets_after_its_timeout_once_data_comes() {
    let toxics = registry();
    toxics.add("db", toxic(ToxicKind::ResetPeer { timeout: 50 }, Stream::Upstream)).unwrap();
    let mut c = connect(&toxics);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!c.relay.is_finished(), "nothing happens before data comes");
    let start = Instant::now();
    c.client.write_all(b"hello").await.unwrap();
    assert!(read_to_end(&mut c.server).await.is_empty());
    assert_eq!(start.elapsed(), Duration::from_millis(50));
    assert_eq!(c.relay.await.unwrap().outcome, "reset by reset_peer toxic");
}

#[tokio::test(start_paused = true)]
async fn slicer_cuts_chunks_into_pieces_apart_in_time() {
    let mut rng = fastrand::Rng::with_seed(3);
    for len in [1, 10, 15, 16, 100, 1000] {
        let cuts = super::link::slice(len, 10, 5, &mut rng);
        assert_eq!((cuts[0], *cuts.last().unwrap()), (0, len));
        assert!(cuts.windows(2).all(|w| w[1] > w[0] && w[1] - w[0] <= 15), "{len}: {cuts:?}");
    }
    let toxics = registry();
    let slicer = ToxicKind::Slicer { average_size: 10, size_variation: 0, delay: 1000 };
    toxics.add("db", toxic(slicer, Stream::Downstream)).unwrap();
    let mut c = connect(&toxics);
    c.server.write_all(&[1u8; 40]).await.unwrap();
    let start = Instant::now();
    let mut sizes = Vec::new();
    let mut buf = [0u8; 64];
    while sizes.iter().sum::<usize>() < 40 {
        sizes.push(c.client.read(&mut buf).await.unwrap());
    }
    assert_eq!(sizes, [10, 10, 10, 10]);
    assert_eq!(start.elapsed(), Duration::from_millis(3));
}

#[tokio::test(start_paused = true)]
async fn limit_data_closes_after_so_many_bytes() {
    let toxics = registry();
    toxics.add("db", toxic(ToxicKind::LimitData { bytes: 10 }, Stream::Downstream)).unwrap();
    let mut c = connect(&toxics);
    c.server.write_all(b"0123456").await.unwrap();
    assert_eq!(read_n(&mut c.client, 7).await.0, b"0123456");
    c.server.write_all(b"789abcdef").await.unwrap();
    assert_eq!(read_to_end(&mut c.client).await, b"789");
    assert_eq!(c.relay.await.unwrap().outcome, "closed by limit_data toxic");
}

#[tokio::test(start_paused = true)]
async fn an_expired_toxic_stops_acting() {
    let toxics = registry();
    let mut short = latency(5000);
    short.expires = Some(SystemTime::now() + Duration::from_secs(1));
    toxics.add("db", short).unwrap();
    let mut c = connect(&toxics);
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.server.write_all(b"pong").await.unwrap();
    assert_eq!(read_n(&mut c.client, 4).await.1, Duration::ZERO);
    assert!(toxics.list("db").is_empty());
}
