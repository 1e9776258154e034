//! A request's KV caches and captured decode graph, kept for the next request of the same
//! shape on the same thread.
//!
//! A graph holds the addresses of everything a step touches, the KV caches included, so
//! each request used to run one eager step and capture its own graph: on an H100 (run 44)
//! those two steps took ~4 and ~4.5 ms of host time on Qwen3-VL-2B int4/int4, whose
//! replayed step takes 1.37 ms, about 6 ms a photo. When a request ends, its caches and
//! step (buffers and graph) become a kit; the next prompt of the same batch size, cache
//! capacity and dtype on that thread, with no padded sequence, fills those caches and
//! replays the graph from its first step.
//!
//! Kits stay on their thread: the graph holds that thread's quantized-projection scratch
//! (kernels/quant_matvec.rs) and its work queues on that thread's stream. A thread keeps
//! one kit: taking caches of another shape drops its kit first, so memory is never held
//! twice for one thread. A decoder keeps at most [`MAX_KITS`], the newest: a server that
//! runs each request on whichever pool thread is free holds no more than that between
//! requests, whatever threads come and go.

use std::sync::{Arc, Mutex};
use std::thread::ThreadId;

use candle_core::DType;

use super::decode_step::FusedStep;
use super::kv_cache::LayerKvCache;
use crate::kernels::DevicePicks;

/// Which requests a kit serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct KitKey {
    pub thread: ThreadId,
    pub batch: usize,
    pub capacity: usize,
    pub dtype: DType,
}

/// A finished request's caches and step, for the next request of its key.
pub(super) struct Kit {
    pub key: KitKey,
    pub caches: Vec<LayerKvCache>,
    pub step: FusedStep,
    /// The page-locked slots of its greedy picks made ahead, if it ran ahead.
    pub picks: Option<DevicePicks>,
}

/// Most kits one decoder keeps (the newest).
const MAX_KITS: usize = 2;

/// One decoder's kits, at most one per thread, oldest first.
#[derive(Default)]
pub(crate) struct StepKits {
    kits: Mutex<Vec<Kit>>,
}

impl StepKits {
    /// This thread's kit of `key`, if it has one; its kit of another key is dropped.
    pub(super) fn take(&self, key: KitKey) -> Option<Kit> {
        let mut kits = self.kits.lock().unwrap_or_else(|e| e.into_inner());
        let at = kits.iter().position(|k| k.key.thread == key.thread)?;
        let kit = kits.remove(at);
        drop(kits);
        (kit.key == key).then_some(kit)
    }

    /// Keeps `kit` for the next request of its key on its thread.
    pub(super) fn put(&self, kit: Kit) {
        let mut kits = self.kits.lock().unwrap_or_else(|e| e.into_inner());
        kits.retain(|k| k.key.thread != kit.key.thread);
        kits.push(kit);
        let over = kits.len().saturating_sub(MAX_KITS);
        // Dropped outside the lock: freeing a kit waits for nothing, but takes a while.
        let dropped: Vec<Kit> = kits.drain(..over).collect();
        drop(kits);
        drop(dropped);
    }
}

/// Where a request's state sends its kit when it ends.
pub(super) struct KitHome {
    pub kits: Arc<StepKits>,
    pub key: KitKey,
}

/// The KV caches a prompt fills ([`super::Decoder::prompt_caches`]), new or a kit's, with
/// the kit's step and picks for the decode steps after it.
pub struct PromptCaches {
    pub(super) layers: Vec<LayerKvCache>,
    pub(super) step: Option<FusedStep>,
    pub(super) picks: Option<DevicePicks>,
    pub(super) home: Option<KitHome>,
}

impl PromptCaches {
    /// New caches that go to no kit.
    pub(super) fn fresh(layers: Vec<LayerKvCache>) -> Self {
        Self {
            layers,
            step: None,
            picks: None,
            home: None,
        }
    }
}

impl std::ops::Deref for PromptCaches {
    type Target = [LayerKvCache];
    fn deref(&self) -> &[LayerKvCache] {
        &self.layers
    }
}

impl std::ops::DerefMut for PromptCaches {
    fn deref_mut(&mut self) -> &mut [LayerKvCache] {
        &mut self.layers
    }
}
