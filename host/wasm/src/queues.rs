//! Shared queues (`proxy_register/resolve/enqueue/dequeue_shared_queue`): named FIFO queues of
//! byte strings, one set for every filter in the process. A queue is named by the vm id (the
//! registering filter's name) and its own name. The instance that registered it is told
//! (`proxy_on_queue_ready`) when data arrives, on its filter's event thread.

use std::collections::VecDeque;
use std::sync::mpsc::Sender;
use std::sync::Mutex;

/// At most this many items wait in one queue; beyond, the oldest is dropped (a consumer that
/// stopped must not let producers eat the proxy's memory).
const MAX_QUEUED: usize = 10_000;

/// Something a filter's instance must do outside a request.
pub enum FilterEvent {
    QueueReady {
        slot: usize,
        generation: u64,
        queue: u32,
    },
    /// The instance changed its tick period: the event thread looks again now, so that a first
    /// tick is not late by its idle wait.
    TicksChanged,
}

/// Where an instance's events go: its filter's event thread.
#[derive(Clone)]
pub struct InstanceEvents {
    pub events: Option<Sender<FilterEvent>>,
    pub slot: usize,
    pub generation: u64,
}

impl InstanceEvents {
    pub fn ticks_changed(&self) {
        if let Some(events) = &self.events {
            let _ = events.send(FilterEvent::TicksChanged);
        }
    }

    fn notify(&self, queue: u32) {
        if let Some(events) = &self.events {
            let _ = events.send(FilterEvent::QueueReady { slot: self.slot, generation: self.generation, queue });
        }
    }
}

struct Queue {
    vm_id: String,
    name: String,
    items: VecDeque<Vec<u8>>,
    owner: InstanceEvents,
}

#[derive(Default)]
pub struct SharedQueues {
    /// Queue id = index + 1.
    queues: Mutex<Vec<Queue>>,
}

impl SharedQueues {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Queue>> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The queue's id; registering it again (another instance, a reload) makes the caller its owner.
    pub fn register(&self, vm_id: &str, name: &str, owner: InstanceEvents) -> u32 {
        let mut queues = self.lock();
        if let Some(index) = queues.iter().position(|q| q.vm_id == vm_id && q.name == name) {
            queues[index].owner = owner;
            return index as u32 + 1;
        }
        queues.push(Queue { vm_id: vm_id.into(), name: name.into(), items: VecDeque::new(), owner });
        queues.len() as u32
    }

    pub fn resolve(&self, vm_id: &str, name: &str) -> Option<u32> {
        self.lock().iter().position(|q| q.vm_id == vm_id && q.name == name).map(|i| i as u32 + 1)
    }

    /// Adds `data` and tells the owner; false when there is no such queue.
    pub fn enqueue(&self, id: u32, data: Vec<u8>) -> bool {
        let mut queues = self.lock();
        let Some(queue) = (id as usize).checked_sub(1).and_then(|i| queues.get_mut(i)) else { return false };
        if queue.items.len() >= MAX_QUEUED {
            queue.items.pop_front();
            tracing::warn!(queue = %queue.name, "shared queue full; its oldest item was dropped");
        }
        queue.items.push_back(data);
        queue.owner.notify(id);
        true
    }

    /// The oldest item (`Some(None)`: the queue is empty); `None` when there is no such queue.
    pub fn dequeue(&self, id: u32) -> Option<Option<Vec<u8>>> {
        let mut queues = self.lock();
        let queue = (id as usize).checked_sub(1).and_then(|i| queues.get_mut(i))?;
        Some(queue.items.pop_front())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_hears_of_each_item_in_order() {
        let (events, heard) = std::sync::mpsc::channel();
        let queues = SharedQueues::default();
        let owner = InstanceEvents { events: Some(events), slot: 1, generation: 3 };
        let id = queues.register("stats", "jobs", owner.clone());
        assert_eq!(queues.register("stats", "jobs", owner), id, "same name, same queue");
        assert_eq!(queues.resolve("stats", "jobs"), Some(id));
        assert_eq!(queues.resolve("other", "jobs"), None);
        assert!(queues.enqueue(id, b"a".to_vec()));
        assert!(queues.enqueue(id, b"b".to_vec()));
        assert!(!queues.enqueue(id + 1, b"c".to_vec()), "no such queue");
        let Ok(FilterEvent::QueueReady { slot, generation, queue }) = heard.try_recv() else {
            panic!("no queue event")
        };
        assert_eq!((slot, generation, queue), (1, 3, id));
        assert_eq!(queues.dequeue(id), Some(Some(b"a".to_vec())));
        assert_eq!(queues.dequeue(id), Some(Some(b"b".to_vec())));
        assert_eq!(queues.dequeue(id), Some(None), "empty");
        assert_eq!(queues.dequeue(99), None);
    }
}
