//! The toxics registry: which toxics each tcp listener has, by listener name, for config
//! listeners and Toxiproxy proxies alike. Changes are published as an immutable set behind an
//! `ArcSwap` plus a generation counter, so a connection checks for them with an atomic load
//! (no lock per chunk) and open connections pick them up at once. Toxics with an expiry are
//! removed by themselves when it passes.

use super::toxic::{Stream, Toxic, ToxicError};
use crate::metrics::{ListenerLabels, Metrics, Name, ToxicLabels};
use arc_swap::ArcSwap;
use futures_util::task::AtomicWaker;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::SystemTime;

/// The toxics of every tcp listener. Reached through [`crate::Proxy::toxics`].
///
/// A toxic is named uniquely per listener. Adding, updating or removing one reaches the
/// listener's open connections as well as new ones; each connection rolls each toxic's
/// toxicity once. A toxic with [`Toxic::expires`] stops acting at that time and is removed,
/// whether or not anyone removes it.
pub struct Toxics {
    listeners: RwLock<HashMap<String, Arc<ListenerToxics>>>,
    /// The names toxics may be added to: config tcp listeners and Toxiproxy proxies.
    known: RwLock<Known>,
    next_id: AtomicU64,
    metrics: Arc<Metrics>,
    /// For the tasks that remove expired toxics.
    this: Weak<Toxics>,
}

#[derive(Default)]
struct Known {
    config: HashSet<String>,
    proxies: HashSet<String>,
}

/// One listener's toxics and the connections watching them.
pub(crate) struct ListenerToxics {
    pub(crate) name: Name,
    set: ArcSwap<ToxicSet>,
    generation: AtomicU64,
    wakers: Mutex<Wakers>,
    /// Serialises edits, so each is made on the set the previous one left.
    edits: Mutex<()>,
}

/// The connections watching a listener's toxics. Closed connections leave dead entries,
/// swept when the list has doubled since the last sweep (and at every change).
#[derive(Default)]
struct Wakers {
    list: Vec<Weak<AtomicWaker>>,
    sweep_at: usize,
}

impl Wakers {
    fn sweep(&mut self) {
        self.list.retain(|waker| waker.strong_count() > 0);
        self.sweep_at = (self.list.len() * 2).max(64);
    }
}

/// The toxics in force on a listener, in the order they were added.
#[derive(Default)]
pub(crate) struct ToxicSet {
    pub(crate) toxics: Vec<Arc<ActiveToxic>>,
}

/// A toxic with the identity its per-connection state is kept under (kept by updates).
pub(crate) struct ActiveToxic {
    pub(crate) id: u64,
    pub(crate) toxic: Toxic,
}

impl ToxicSet {
    pub(crate) fn is_empty(&self) -> bool {
        self.toxics.is_empty()
    }

    pub(crate) fn on(&self, stream: Stream) -> impl Iterator<Item = &Arc<ActiveToxic>> {
        self.toxics.iter().filter(move |t| t.toxic.stream == stream)
    }
}

impl Toxics {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Arc<Toxics> {
        Arc::new_cyclic(|this| Toxics {
            listeners: Default::default(),
            known: Default::default(),
            next_id: AtomicU64::new(1),
            metrics,
            this: this.clone(),
        })
    }

    /// Adds `toxic` to the tcp listener (or Toxiproxy proxy) `listener`. Refused when the
    /// listener is unknown, the toxic invalid, or one of that name exists there.
    pub fn add(&self, listener: &str, toxic: Toxic) -> Result<Toxic, ToxicError> {
        toxic.validate()?;
        if toxic.expired_at(SystemTime::now()) {
            return Err(ToxicError::invalid("expires", "is in the past"));
        }
        if !self.is_known(listener) {
            return Err(ToxicError::UnknownListener(listener.to_owned()));
        }
        let entry = self.listener(listener);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        entry.edit(|toxics| {
            if toxics.iter().any(|t| t.toxic.name == toxic.name && !t.toxic.expired_at(SystemTime::now())) {
                return Err(ToxicError::Exists);
            }
            toxics.retain(|t| t.toxic.name != toxic.name);
            toxics.push(Arc::new(ActiveToxic { id, toxic: toxic.clone() }));
            Ok(())
        })?;
        tracing::info!(listener, toxic = %toxic.name, r#type = toxic.kind.type_name(), stream = %toxic.stream,
            toxicity = toxic.toxicity, attributes = %toxic.kind.attributes(), expires = ?toxic.expires.map(crate::http::rfc3339), "toxic added");
        self.after_edit(&entry, &toxic, id);
        Ok(toxic)
    }

    /// Replaces the toxic named `toxic.name` on `listener` with `toxic`, in its place in the
    /// chain. Connections keep their toxicity roll and state (bytes counted by `limit_data`)
    /// unless the type or stream changed.
    pub fn update(&self, listener: &str, toxic: Toxic) -> Result<Toxic, ToxicError> {
        toxic.validate()?;
        let entry = self.existing(listener).ok_or(ToxicError::NotFound)?;
        let mut kept_id = 0;
        entry.edit(|toxics| {
            let now = SystemTime::now();
            let slot = toxics
                .iter_mut()
                .find(|t| t.toxic.name == toxic.name && !t.toxic.expired_at(now))
                .ok_or(ToxicError::NotFound)?;
            let same = slot.toxic.kind.type_name() == toxic.kind.type_name() && slot.toxic.stream == toxic.stream;
            kept_id = if same { slot.id } else { self.next_id.fetch_add(1, Ordering::Relaxed) };
            *slot = Arc::new(ActiveToxic { id: kept_id, toxic: toxic.clone() });
            Ok(())
        })?;
        tracing::info!(listener, toxic = %toxic.name, r#type = toxic.kind.type_name(), stream = %toxic.stream,
            toxicity = toxic.toxicity, attributes = %toxic.kind.attributes(), expires = ?toxic.expires.map(crate::http::rfc3339), "toxic updated");
        self.after_edit(&entry, &toxic, kept_id);
        Ok(toxic)
    }

    /// Removes the toxic `name` from `listener`; returns it.
    pub fn remove(&self, listener: &str, name: &str) -> Result<Toxic, ToxicError> {
        let entry = self.existing(listener).ok_or(ToxicError::NotFound)?;
        let mut removed = None;
        entry.edit(|toxics| {
            let now = SystemTime::now();
            let at = toxics.iter().position(|t| t.toxic.name == name).ok_or(ToxicError::NotFound)?;
            let toxic = toxics.remove(at);
            if toxic.toxic.expired_at(now) {
                return Err(ToxicError::NotFound);
            }
            removed = Some(toxic.toxic.clone());
            Ok(())
        })?;
        let removed = removed.ok_or(ToxicError::NotFound)?;
        tracing::info!(listener, toxic = %removed.name, r#type = removed.kind.type_name(), "toxic removed");
        self.count_active(&entry);
        Ok(removed)
    }

    /// Removes every toxic of `listener`; returns how many there were.
    pub fn clear(&self, listener: &str) -> usize {
        let Some(entry) = self.existing(listener) else { return 0 };
        let mut count = 0;
        let _ = entry.edit(|toxics| {
            count = toxics.len();
            toxics.clear();
            Ok(())
        });
        if count > 0 {
            tracing::info!(listener, count, "toxics removed");
        }
        self.count_active(&entry);
        count
    }

    /// The toxic `name` of `listener`, unless it expired.
    pub fn get(&self, listener: &str, name: &str) -> Option<Toxic> {
        self.list(listener).into_iter().find(|t| t.name == name)
    }

    /// The toxics of `listener` in Toxiproxy's order: upstream ones, then downstream ones,
    /// each in the order they were added. Expired toxics are not listed.
    pub fn list(&self, listener: &str) -> Vec<Toxic> {
        let Some(entry) = self.existing(listener) else { return Vec::new() };
        let set = entry.set.load();
        let now = SystemTime::now();
        [Stream::Upstream, Stream::Downstream]
            .into_iter()
            .flat_map(|stream| set.on(stream).filter(|t| !t.toxic.expired_at(now)).map(|t| t.toxic.clone()))
            .collect()
    }

    /// Every listener that has toxics, with how many.
    pub fn summary(&self) -> Vec<(String, usize)> {
        let listeners = self.listeners.read().unwrap_or_else(|e| e.into_inner());
        let mut summary: Vec<_> = listeners
            .iter()
            .map(|(name, entry)| (name.clone(), entry.set.load().toxics.len()))
            .filter(|(_, count)| *count > 0)
            .collect();
        summary.sort();
        summary
    }

    /// The config's tcp listeners, which toxics may be added to (set on every load).
    pub(crate) fn set_config_listeners(&self, names: impl IntoIterator<Item = String>) {
        self.known.write().unwrap_or_else(|e| e.into_inner()).config = names.into_iter().collect();
    }

    /// A Toxiproxy proxy came (`present`) or went.
    pub(crate) fn set_proxy_listener(&self, name: &str, present: bool) {
        let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
        if present {
            known.proxies.insert(name.to_owned());
        } else {
            known.proxies.remove(name);
        }
    }

    /// Whether a Toxiproxy proxy has this name.
    pub(crate) fn is_proxy_listener(&self, name: &str) -> bool {
        self.known.read().unwrap_or_else(|e| e.into_inner()).proxies.contains(name)
    }

    fn is_known(&self, listener: &str) -> bool {
        let known = self.known.read().unwrap_or_else(|e| e.into_inner());
        known.config.contains(listener) || known.proxies.contains(listener)
    }

    fn existing(&self, listener: &str) -> Option<Arc<ListenerToxics>> {
        self.listeners.read().unwrap_or_else(|e| e.into_inner()).get(listener).cloned()
    }

    /// The entry a connection of `listener` watches (made on first use).
    pub(crate) fn listener(&self, listener: &str) -> Arc<ListenerToxics> {
        if let Some(entry) = self.existing(listener) {
            return entry;
        }
        let mut listeners = self.listeners.write().unwrap_or_else(|e| e.into_inner());
        listeners
            .entry(listener.to_owned())
            .or_insert_with(|| {
                Arc::new(ListenerToxics {
                    name: Name::new(listener),
                    set: ArcSwap::from_pointee(ToxicSet::default()),
                    generation: AtomicU64::new(0),
                    wakers: Mutex::new(Wakers::default()),
                    edits: Mutex::new(()),
                })
            })
            .clone()
    }

    /// Counts a connection a toxic acts on (its toxicity roll said so).
    pub(crate) fn count_affected(&self, listener: &Name, toxic: &Toxic) {
        let labels = ToxicLabels { listener: listener.clone(), toxic: toxic.kind.type_name() };
        self.metrics.toxic_connections.get_or_create(&labels).inc();
    }

    fn after_edit(&self, entry: &Arc<ListenerToxics>, toxic: &Toxic, id: u64) {
        self.count_active(entry);
        let Some(expires) = toxic.expires else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (this, listener, name) = (self.this.clone(), entry.name.clone(), toxic.name.clone());
        runtime.spawn(async move {
            let wait = expires.duration_since(SystemTime::now()).unwrap_or_default();
            tokio::time::sleep(wait).await;
            if let Some(toxics) = this.upgrade() {
                toxics.expire(listener.as_str(), &name, id, expires);
            }
        });
    }

    /// Removes toxic `name` if it is still the one (`id`, `expires`) that was scheduled.
    fn expire(&self, listener: &str, name: &str, id: u64, expires: SystemTime) {
        let Some(entry) = self.existing(listener) else { return };
        let mut gone = false;
        let _ = entry.edit(|toxics| {
            let before = toxics.len();
            toxics.retain(|t| !(t.toxic.name == name && t.id == id && t.toxic.expires == Some(expires)));
            gone = toxics.len() < before;
            Ok(())
        });
        if gone {
            tracing::info!(listener, toxic = name, "toxic expired and was removed");
            self.count_active(&entry);
        }
    }

    fn count_active(&self, entry: &ListenerToxics) {
        let count = entry.set.load().toxics.len();
        self.metrics.toxics_active.get_or_create(&ListenerLabels { listener: entry.name.clone() }).set(count as i64);
    }
}

impl ListenerToxics {
    /// Applies `change` to a copy of the set, publishes it and wakes the connections.
    fn edit(
        &self,
        change: impl FnOnce(&mut Vec<Arc<ActiveToxic>>) -> Result<(), ToxicError>,
    ) -> Result<(), ToxicError> {
        let _serial = self.edits.lock().unwrap_or_else(|e| e.into_inner());
        let mut toxics = self.set.load().toxics.clone();
        change(&mut toxics)?;
        self.set.store(Arc::new(ToxicSet { toxics }));
        // Stored before the generation moves, so whoever sees the new generation sees the set.
        self.generation.fetch_add(1, Ordering::Release);
        let mut wakers = self.wakers.lock().unwrap_or_else(|e| e.into_inner());
        wakers.sweep();
        for waker in wakers.list.iter().filter_map(Weak::upgrade) {
            waker.wake();
        }
        Ok(())
    }

    /// A watch for one connection: the set in force and a wake-up when it changes.
    pub(crate) fn watch(self: &Arc<Self>) -> Watch {
        let waker = Arc::new(AtomicWaker::new());
        let mut wakers = self.wakers.lock().unwrap_or_else(|e| e.into_inner());
        if wakers.list.len() >= wakers.sweep_at {
            wakers.sweep();
        }
        wakers.list.push(Arc::downgrade(&waker));
        drop(wakers);
        let seen = self.generation.load(Ordering::Acquire);
        Watch { listener: self.clone(), waker, seen }
    }
}

/// One connection's view of its listener's toxics.
pub(crate) struct Watch {
    listener: Arc<ListenerToxics>,
    waker: Arc<AtomicWaker>,
    seen: u64,
}

impl Watch {
    /// The toxics in force now.
    pub(crate) fn current(&self) -> Arc<ToxicSet> {
        self.listener.set.load_full()
    }

    pub(crate) fn listener(&self) -> &Name {
        &self.listener.name
    }

    /// Ready once the set changed since the last time this said so (or since the watch began).
    /// An atomic load and a waker registration: no lock.
    pub(crate) fn poll_changed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.waker.register(cx.waker());
        let now = self.listener.generation.load(Ordering::Acquire);
        if now != self.seen {
            self.seen = now;
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    pub(crate) async fn changed(&mut self) {
        std::future::poll_fn(|cx| self.poll_changed(cx)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp::toxic::ToxicKind;
    use std::time::Duration;

    fn registry() -> Arc<Toxics> {
        let toxics = Toxics::new(Metrics::new());
        toxics.set_config_listeners(["db".to_owned()]);
        toxics
    }

    fn latency(name: &str, stream: Stream) -> Toxic {
        Toxic::new(name, ToxicKind::Latency { latency: 10, jitter: 0 }, stream)
    }

    #[test]
    fn names_are_unique_per_listener_and_listed_in_toxiproxy_order() {
        let toxics = registry();
        toxics.add("db", latency("a", Stream::Downstream)).unwrap();
        toxics.add("db", latency("b", Stream::Upstream)).unwrap();
        assert_eq!(toxics.add("db", latency("a", Stream::Upstream)), Err(ToxicError::Exists));
        assert_eq!(toxics.add("nope", latency("a", Stream::Upstream)), Err(ToxicError::UnknownListener("nope".into())));
        let names: Vec<_> = toxics.list("db").into_iter().map(|t| t.name).collect();
        assert_eq!(names, ["b", "a"]);
        assert_eq!(toxics.remove("db", "a").unwrap().name, "a");
        assert_eq!(toxics.remove("db", "a"), Err(ToxicError::NotFound));
        assert_eq!(toxics.update("db", latency("zz", Stream::Upstream)), Err(ToxicError::NotFound));
        assert_eq!(toxics.clear("db"), 1);
        assert!(toxics.list("db").is_empty());
    }

    #[test]
    fn updates_keep_identity_unless_type_or_stream_change() {
        let toxics = registry();
        toxics.add("db", latency("a", Stream::Downstream)).unwrap();
        let id = |t: &Toxics| t.listener("db").set.load().toxics[0].id;
        let before = id(&toxics);
        toxics
            .update("db", Toxic::new("a", ToxicKind::Latency { latency: 99, jitter: 1 }, Stream::Downstream))
            .unwrap();
        assert_eq!(id(&toxics), before);
        toxics.update("db", Toxic::new("a", ToxicKind::LimitData { bytes: 1 }, Stream::Downstream)).unwrap();
        assert_ne!(id(&toxics), before);
    }

    #[test]
    fn a_watch_sees_each_change_without_a_lock() {
        let toxics = registry();
        let mut watch = toxics.listener("db").watch();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(watch.poll_changed(&mut cx).is_pending());
        toxics.add("db", latency("a", Stream::Downstream)).unwrap();
        assert!(watch.poll_changed(&mut cx).is_ready());
        assert!(watch.poll_changed(&mut cx).is_pending());
        assert_eq!(watch.current().toxics.len(), 1);
    }

    #[test]
    fn closed_connections_do_not_pile_up_in_the_watch_list() {
        let toxics = registry();
        let entry = toxics.listener("db");
        let kept: Vec<_> = (0..10).map(|_| entry.watch()).collect();
        for _ in 0..10_000 {
            drop(entry.watch());
        }
        let listed = entry.wakers.lock().unwrap().list.len();
        assert!(listed < 200, "{listed} entries for {} open watches", kept.len());
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_toxic_stops_and_is_removed_by_itself() {
        let toxics = registry();
        let mut toxic = latency("a", Stream::Downstream);
        toxic.expires = Some(SystemTime::now() + Duration::from_secs(30));
        toxics.add("db", toxic.clone()).unwrap();
        let mut watch = toxics.listener("db").watch();
        assert_eq!(toxics.list("db").len(), 1);
        tokio::time::timeout(Duration::from_secs(60), watch.changed()).await.expect("removed at its expiry");
        assert!(watch.current().is_empty());
        toxic.expires = Some(SystemTime::now() - Duration::from_secs(1));
        assert!(matches!(toxics.add("db", toxic), Err(ToxicError::Invalid { field, .. }) if field == "expires"));
    }
}
