//! Choosing an endpoint for a request: round robin, least request (power of two choices on
//! requests in flight), random, and a consistent-hash ring.

use super::Endpoint;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use weft_config::LbPolicy;

/// Points on the ring per endpoint: enough for an even spread with a handful of endpoints.
const RING_POINTS_PER_ENDPOINT: usize = 160;

pub enum Balancer {
    RoundRobin(AtomicUsize),
    LeastRequest,
    Random,
    RingHash(Ring),
}

impl Balancer {
    pub fn new(policy: LbPolicy, endpoints: &[Arc<Endpoint>]) -> Balancer {
        match policy {
            // Start each proxy at a random place so a fleet does not hit the first endpoint together.
            LbPolicy::RoundRobin => Balancer::RoundRobin(AtomicUsize::new(fastrand::usize(..))),
            LbPolicy::LeastRequest => Balancer::LeastRequest,
            LbPolicy::Random => Balancer::Random,
            LbPolicy::RingHash => Balancer::RingHash(Ring::new(endpoints)),
        }
    }

    /// The index of the chosen endpoint; `hash` is the request's key for `RingHash`.
    /// `endpoints` is never empty (validation requires at least one).
    pub fn pick(&self, endpoints: &[Arc<Endpoint>], hash: u64) -> usize {
        let n = endpoints.len();
        if n <= 1 {
            return 0;
        }
        match self {
            Balancer::RoundRobin(next) => next.fetch_add(1, Ordering::Relaxed) % n,
            Balancer::Random => fastrand::usize(..n),
            Balancer::LeastRequest => {
                let a = fastrand::usize(..n);
                let b = (a + 1 + fastrand::usize(..n - 1)) % n;
                if endpoints[b].in_flight() < endpoints[a].in_flight() {
                    b
                } else {
                    a
                }
            }
            Balancer::RingHash(ring) => ring.lookup(hash),
        }
    }
}

/// A consistent-hash ring. Points are placed by hashing the endpoint as written in the config, so
/// adding or removing one endpoint moves only the keys that land on its points.
pub struct Ring {
    points: Vec<(u64, usize)>,
}

impl Ring {
    fn new(endpoints: &[Arc<Endpoint>]) -> Ring {
        let mut points = Vec::with_capacity(endpoints.len() * RING_POINTS_PER_ENDPOINT);
        for (index, endpoint) in endpoints.iter().enumerate() {
            for point in 0..RING_POINTS_PER_ENDPOINT {
                points.push((hash_bytes(format!("{}#{point}", endpoint.name).as_bytes()), index));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    /// The first endpoint at or after `hash` on the ring that `usable` accepts: the keys of an
    /// endpoint that is out spread over the others, and every other key stays where it was.
    pub fn lookup_where(&self, hash: u64, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let at = self.points.partition_point(|(point, _)| *point < hash);
        let n = self.points.len();
        (0..n).map(|k| self.points[(at + k) % n].1).find(|&index| usable(index))
    }

    fn lookup(&self, hash: u64) -> usize {
        let at = self.points.partition_point(|(point, _)| *point < hash);
        self.points.get(at).or(self.points.first()).map_or(0, |(_, index)| *index)
    }
}

/// FNV-1a with a final avalanche (splitmix64): stable across builds and platforms, unlike std's
/// hasher, which matters because every proxy must map a key to the same endpoint.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

/// A client's address as a ring_hash key (requests without their configured header, tcp).
pub fn hash_ip(ip: std::net::IpAddr) -> u64 {
    match ip {
        std::net::IpAddr::V4(ip) => hash_bytes(&ip.octets()),
        std::net::IpAddr::V6(ip) => hash_bytes(&ip.octets()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn endpoints(names: &[&str]) -> Vec<Arc<Endpoint>> {
        names.iter().map(|n| Arc::new(Endpoint::for_test(n))).collect()
    }

    #[test]
    fn round_robin_visits_every_endpoint_in_turn() {
        let eps = endpoints(&["a:1", "b:1", "c:1"]);
        let balancer = Balancer::new(LbPolicy::RoundRobin, &eps);
        let picks: Vec<usize> = (0..6).map(|_| balancer.pick(&eps, 0)).collect();
        assert_eq!(picks[0..3].iter().collect::<std::collections::HashSet<_>>().len(), 3);
        assert_eq!(picks[0..3], picks[3..6]);
    }

    #[test]
    fn least_request_avoids_the_busy_endpoint() {
        let eps = endpoints(&["a:1", "b:1"]);
        let _busy: Vec<_> = (0..5).map(|_| eps[0].start_request()).collect();
        let balancer = Balancer::new(LbPolicy::LeastRequest, &eps);
        for _ in 0..50 {
            assert_eq!(balancer.pick(&eps, 0), 1);
        }
    }

    #[test]
    fn ring_hash_is_sticky_and_moves_few_keys_when_an_endpoint_goes() {
        let four = endpoints(&["a:1", "b:1", "c:1", "d:1"]);
        let three = endpoints(&["a:1", "b:1", "c:1"]);
        let (ring4, ring3) = (Balancer::new(LbPolicy::RingHash, &four), Balancer::new(LbPolicy::RingHash, &three));
        let mut moved = 0;
        let mut spread = HashMap::new();
        for key in 0..2000u32 {
            let hash = hash_bytes(&key.to_le_bytes());
            let before = &four[ring4.pick(&four, hash)].name;
            assert_eq!(before, &four[ring4.pick(&four, hash)].name, "same key, same endpoint");
            *spread.entry(before.clone()).or_insert(0) += 1;
            let after = &three[ring3.pick(&three, hash)].name;
            if before != after {
                moved += 1;
                assert_eq!(before, "d:1", "only keys of the removed endpoint move");
            }
        }
        assert!(moved > 0);
        assert!(moved <= 2000 / 4 + 2000 / 10, "about a quarter of the keys may move, {moved} did");
        assert!(spread.values().all(|&n| n > 250), "uneven spread: {spread:?}");
    }

    #[test]
    fn ring_hash_spreads_the_keys_of_an_endpoint_that_is_out_and_keeps_the_rest() {
        let eps = endpoints(&["a:1", "b:1", "c:1", "d:1"]);
        let Balancer::RingHash(ring) = Balancer::new(LbPolicy::RingHash, &eps) else { unreachable!() };
        let mut took_over = std::collections::HashSet::new();
        for key in 0..2000u32 {
            let hash = hash_bytes(&key.to_le_bytes());
            let before = ring.lookup(hash);
            let after = ring.lookup_where(hash, |i| i != 3).unwrap();
            if before == 3 {
                took_over.insert(after);
            } else {
                assert_eq!(before, after, "a key of an endpoint still in stays put");
            }
        }
        assert!(took_over.len() > 1, "the keys of the endpoint that is out go to more than one other");
        assert_eq!(ring.lookup_where(0, |_| false), None);
    }
}
