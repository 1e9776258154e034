//! What a model's image-encoding cache did ([`crate::VisionLanguageModel::cache_stats`]).

/// Counters of a model's image-encoding cache since it was loaded.
///
/// A hit is an image whose vision-tower output was reused: found in the cache, or the
/// same photo twice in one batch (encoded once). A miss is an image the vision tower
/// encoded. With the cache off (`LoadOptions::image_cache_bytes == 0`, the default)
/// everything is zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Images whose encoding was reused.
    pub hits: u64,
    /// Images the vision tower encoded.
    pub misses: u64,
    /// Bytes of encodings held now (on the model's device).
    pub bytes: u64,
    /// Encodings held now.
    pub entries: u64,
    /// The most bytes the cache holds before it drops the least recently used entries.
    pub capacity_bytes: u64,
}
