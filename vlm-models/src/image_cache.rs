//! The image-encoding cache: vision-tower outputs kept on the device, so that a second
//! call about the same photo (`describe`, then `ask`) skips preprocessing and the vision
//! tower, and a batch holding one photo twice encodes it once.
//!
//! An entry is keyed by the decoded pixels' BLAKE3 ([`Image::content_hash`]) and the size
//! the processor resizes them to; everything else that changes an encoding (weights,
//! dtype, device, normalisation) is fixed for a loaded model, and every model has its own
//! cache. Bounded in bytes; the least recently used entries go first.

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::Tensor;
use lru::LruCache;
use vlm_contract::{CacheStats, Image, Result};

/// What identifies one image's encoding within one model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ImageKey {
    pixels: [u8; 32],
    /// `[height, width]` the processor resizes to (the pixel budget's effect).
    resized: [usize; 2],
}

impl ImageKey {
    /// The key of `image` resized to `resized` (`[height, width]`).
    pub fn new(image: &Image, resized: [usize; 2]) -> Self {
        Self {
            pixels: image.content_hash(),
            resized,
        }
    }
}

/// One image's vision-tower output: the family's tensors (e.g. Qwen3-VL's embeddings and
/// DeepStack features), each with the image's tokens on dimension 0.
pub type Features = Vec<Tensor>;

struct Entry {
    features: Features,
    bytes: u64,
}

struct State {
    entries: LruCache<ImageKey, Entry>,
    bytes: u64,
    hits: u64,
    misses: u64,
}

/// A thread-safe LRU of image encodings, bounded in bytes.
pub struct ImageCache {
    capacity: u64,
    state: Mutex<State>,
}

impl ImageCache {
    /// A cache of at most `capacity_bytes`; `None` for 0 (the cache is off).
    pub fn new(capacity_bytes: u64) -> Option<Self> {
        (capacity_bytes > 0).then(|| Self {
            capacity: capacity_bytes,
            state: Mutex::new(State {
                entries: LruCache::unbounded(),
                bytes: 0,
                hits: 0,
                misses: 0,
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent counters (every update is a
        // single assignment), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The encoding of `key`, counted as a hit, or `None`.
    pub fn get(&self, key: &ImageKey) -> Option<Features> {
        let mut state = self.state();
        let features = state.entries.get(key).map(|e| e.features.clone())?;
        state.hits += 1;
        Some(features)
    }

    /// Keeps `features` (tensors that own their storage: see [`owned`]) under `key`,
    /// dropping the least recently used entries beyond the capacity. An encoding larger
    /// than the whole cache is not kept.
    pub fn insert(&self, key: ImageKey, features: Features) {
        let bytes: u64 = features
            .iter()
            .map(|t| (t.elem_count() * t.dtype().size_in_bytes()) as u64)
            .sum();
        if bytes > self.capacity {
            return;
        }
        let mut state = self.state();
        if let Some(old) = state.entries.put(key, Entry { features, bytes }) {
            state.bytes -= old.bytes;
        }
        state.bytes += bytes;
        while state.bytes > self.capacity {
            match state.entries.pop_lru() {
                Some((_, old)) => state.bytes -= old.bytes,
                None => break,
            }
        }
    }

    /// Counts `hits` images reused within a batch and `misses` images encoded.
    pub fn record(&self, hits: usize, misses: usize) {
        let mut state = self.state();
        state.hits += hits as u64;
        state.misses += misses as u64;
    }

    /// The counters.
    pub fn stats(&self) -> CacheStats {
        let state = self.state();
        let mut stats = CacheStats::default();
        stats.hits = state.hits;
        stats.misses = state.misses;
        stats.bytes = state.bytes;
        stats.entries = state.entries.len() as u64;
        stats.capacity_bytes = self.capacity;
        stats
    }
}

/// The counters of an optional cache (zero when it is off).
pub fn stats(cache: Option<&ImageCache>) -> CacheStats {
    cache.map(ImageCache::stats).unwrap_or_default()
}

/// A copy of `t` with storage of its own: a view into a batch's output would keep the
/// whole batch's tensor alive, and the cache would hold more bytes than it counts.
pub fn owned(t: &Tensor) -> candle_core::Result<Tensor> {
    t.copy()
}

/// Where each image of a batch gets its encoding.
#[derive(Debug)]
pub enum Source {
    /// From the cache (looked up when the request was prepared).
    Cached(Features),
    /// The `i`-th image the vision tower encodes in this batch.
    Encoded(usize),
}

/// Which of a batch's images the vision tower must run on: each distinct photo once.
#[derive(Debug)]
pub struct Plan {
    /// Indices (into the batch's images) of the images to encode, in order.
    pub encode: Vec<usize>,
    /// Per image, where its encoding comes from.
    pub sources: Vec<Source>,
    /// Per image, whether it reused an encoding (cache or an earlier copy in the batch).
    pub reused: Vec<bool>,
}

impl Plan {
    /// Plans a batch whose images are `(cached encoding, key)` pairs in order; images
    /// without a key (cache off) are always encoded.
    pub fn new<'a>(
        images: impl IntoIterator<Item = (Option<&'a Features>, Option<ImageKey>)>,
    ) -> Self {
        let mut plan = Plan {
            encode: vec![],
            sources: vec![],
            reused: vec![],
        };
        let mut first: HashMap<ImageKey, usize> = HashMap::new();
        for (i, (cached, key)) in images.into_iter().enumerate() {
            let (source, reused) = match (cached, key) {
                (Some(f), _) => (Source::Cached(f.clone()), true),
                (None, Some(k)) => match first.get(&k) {
                    Some(&j) => (Source::Encoded(j), true),
                    None => {
                        first.insert(k, plan.encode.len());
                        plan.encode.push(i);
                        (Source::Encoded(plan.encode.len() - 1), false)
                    }
                },
                (None, None) => {
                    plan.encode.push(i);
                    (Source::Encoded(plan.encode.len() - 1), false)
                }
            };
            plan.sources.push(source);
            plan.reused.push(reused);
        }
        plan
    }

    /// Whether every image is encoded, once and in order: the batch's encoding can be
    /// used as the vision tower returns it.
    pub fn encodes_all_in_order(&self) -> bool {
        self.encode.len() == self.sources.len()
    }

    /// Per request, how many of its images reused an encoding, for requests holding
    /// `images_per_request` images each, in batch order.
    pub fn reuses_per_request(
        &self,
        images_per_request: impl IntoIterator<Item = usize>,
    ) -> Vec<usize> {
        let mut reused = self.reused.iter();
        images_per_request
            .into_iter()
            .map(|n| reused.by_ref().take(n).filter(|&&r| r).count())
            .collect()
    }

    /// Images that reused an encoding, but only those found in this batch (cache hits were
    /// counted at lookup).
    pub fn batch_reuses(&self) -> usize {
        self.sources
            .iter()
            .zip(&self.reused)
            .filter(|(s, &r)| r && matches!(s, Source::Encoded(_)))
            .count()
    }

    /// Each image's encoding in batch order, from the cache or from `encoded` (one entry
    /// per image of [`Self::encode`]); each of the encoded ones is also offered to `cache`
    /// under `keys[i]`.
    pub fn assemble(
        self,
        encoded: Vec<Features>,
        keys: &[Option<ImageKey>],
        cache: Option<&ImageCache>,
    ) -> Result<Vec<Features>> {
        if let Some(cache) = cache {
            cache.record(self.batch_reuses(), self.encode.len());
            for (&i, features) in self.encode.iter().zip(&encoded) {
                if let Some(key) = keys.get(i).copied().flatten() {
                    let kept = features
                        .iter()
                        .map(owned)
                        .collect::<candle_core::Result<_>>()?;
                    cache.insert(key, kept);
                }
            }
        }
        Ok(self
            .sources
            .into_iter()
            .map(|s| match s {
                Source::Cached(f) => f,
                Source::Encoded(j) => encoded[j].clone(),
            })
            .collect())
    }
}

/// A batch's `[images, tokens, width]` encoding as one [`Features`] per image.
pub fn per_image(batch: &Tensor) -> Result<Vec<Features>> {
    (0..batch.dim(0)?)
        .map(|i| Ok(vec![batch.get(i)?]))
        .collect()
}

/// Joins per-image encodings into one tensor per feature (image tokens on dimension 0):
/// the layout the vision tower gives for a batch.
pub fn concat(per_image: &[Features]) -> Result<Features> {
    let n = per_image.first().map_or(0, Vec::len);
    (0..n)
        .map(|k| {
            let parts: Vec<&Tensor> = per_image.iter().map(|f| &f[k]).collect();
            Ok(Tensor::cat(&parts, 0)?)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn features(rows: usize, value: f32) -> Features {
        vec![Tensor::full(value, (rows, 4), &Device::Cpu).unwrap()]
    }

    fn key(n: u8) -> ImageKey {
        let image = Image::from_rgb(1, 1, vec![n, 0, 0]).unwrap();
        ImageKey::new(&image, [28, 28])
    }

    #[test]
    fn least_recently_used_goes_first_within_the_byte_bound() {
        // Each entry: 2 rows × 4 f32 = 32 bytes; room for three.
        let cache = ImageCache::new(100).unwrap();
        for n in 0..3 {
            cache.insert(key(n), features(2, n as f32));
        }
        assert!(cache.get(&key(0)).is_some()); // 0 is now the most recent
        cache.insert(key(3), features(2, 3.0));
        assert!(
            cache.get(&key(1)).is_none(),
            "1 was the least recently used"
        );
        assert!(cache.get(&key(0)).is_some());
        let s = cache.stats();
        assert_eq!((s.entries, s.bytes, s.capacity_bytes), (3, 96, 100));
        assert_eq!(s.hits, 2);
        // Larger than the whole cache: not kept, nothing evicted.
        cache.insert(key(9), features(8, 9.0));
        assert_eq!(cache.stats().entries, 3);
        assert!(ImageCache::new(0).is_none());
    }

    #[test]
    fn same_key_for_the_same_pixels_and_size_only() {
        let a = Image::from_rgb(2, 1, vec![1, 2, 3, 4, 5, 6]).unwrap();
        let b = Image::from_rgb(2, 1, vec![1, 2, 3, 4, 5, 6]).unwrap();
        assert_eq!(ImageKey::new(&a, [28, 56]), ImageKey::new(&b, [28, 56]));
        assert_ne!(ImageKey::new(&a, [28, 56]), ImageKey::new(&a, [56, 56]));
    }

    #[test]
    fn a_plan_encodes_each_distinct_photo_once() {
        let cached = features(1, 7.0);
        let k = [Some(key(1)), Some(key(2)), Some(key(1)), Some(key(3)), None];
        let plan = Plan::new([
            (None, k[0]),
            (None, k[1]),
            (None, k[2]),
            (Some(&cached), k[3]),
            (None, k[4]),
        ]);
        assert_eq!(plan.encode, vec![0, 1, 4]);
        assert_eq!(plan.reused, vec![false, false, true, true, false]);
        assert_eq!(plan.batch_reuses(), 1);
        assert_eq!(plan.reuses_per_request([2, 0, 3]), vec![0, 0, 2]);
        assert!(!plan.encodes_all_in_order());
        let cache = ImageCache::new(1 << 20).unwrap();
        let encoded = vec![features(1, 1.0), features(2, 2.0), features(1, 4.0)];
        let out = plan.assemble(encoded, &k, Some(&cache)).unwrap();
        let firsts: Vec<f32> = out
            .iter()
            .map(|f| {
                f[0].to_dtype(DType::F32)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()[0]
            })
            .collect();
        assert_eq!(firsts, vec![1.0, 2.0, 1.0, 7.0, 4.0]);
        // Keyed encodings were kept; the unkeyed one was not.
        let s = cache.stats();
        assert_eq!((s.entries, s.misses, s.hits), (2, 3, 1));
        let joined = concat(&out).unwrap();
        assert_eq!(joined[0].dims(), &[6, 4]);
    }
}
