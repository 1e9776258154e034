//! Damaging valid files for the property tests and the hostile-file tests: mutations
//! (bit flips, truncations, extreme header values, insertions) and model folders that
//! mirror a fixture with one file replaced.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;

/// How a valid file is damaged.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Flip one bit at `at % len`.
    FlipBit { at: usize, bit: u8 },
    /// Keep the first `len % (file length + 1)` bytes.
    Truncate(usize),
    /// Overwrite 8 (little-endian) or 4 (big-endian) bytes at `at % len` with an extreme
    /// value: the shape of a header's length and size fields.
    Extreme { at: usize, value: u64, wide: bool },
    /// Overwrite a byte.
    Byte { at: usize, value: u8 },
    /// Insert bytes.
    Insert { at: usize, bytes: Vec<u8> },
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    let extreme = prop_oneof![
        Just(0u64),
        Just(u64::MAX),
        Just(1 << 63),
        Just(u64::from(u32::MAX)),
        Just(1 << 31),
        Just(1 << 16),
        any::<u64>(),
    ];
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), extreme, any::<bool>()).prop_map(|(at, value, wide)| Mutation::Extreme {
            at,
            value,
            wide
        }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, value)| Mutation::Byte { at, value }),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
    ]
}

/// One to three mutations.
pub fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(), 1..4)
}

pub fn apply(mut data: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        if data.is_empty() {
            break;
        }
        let n = data.len();
        match m {
            Mutation::FlipBit { at, bit } => data[at % n] ^= 1 << bit,
            Mutation::Truncate(len) => data.truncate(len % (n + 1)),
            Mutation::Extreme { at, value, wide } => {
                let bytes = if *wide {
                    value.to_le_bytes().to_vec()
                } else {
                    (*value as u32).to_be_bytes().to_vec()
                };
                let at = at % n;
                for (slot, b) in data.iter_mut().skip(at).zip(bytes) {
                    *slot = b;
                }
            }
            Mutation::Byte { at, value } => data[at % n] = *value,
            Mutation::Insert { at, bytes } => {
                let at = at % n;
                data.splice(at..at, bytes.iter().copied());
            }
        }
    }
    data
}

/// A fresh folder in the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("vlm-hostile-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// A folder whose files are symlinks to `src`'s (sub-folders mirrored the same way),
    /// so that one file can be replaced without copying the others.
    pub fn mirror(src: &Path, tag: &str) -> Self {
        let dir = Self::new(tag);
        link_tree(src, dir.path());
        dir
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Replaces `rel` (a symlink or file) with a file holding `bytes`.
    pub fn replace(&self, rel: &str, bytes: &[u8]) {
        let p = self.0.join(rel);
        let _ = std::fs::remove_file(&p);
        std::fs::write(&p, bytes).unwrap();
    }
}

fn link_tree(src: &Path, dst: &Path) {
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let target = dst.join(entry.file_name());
        if entry.path().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            link_tree(&entry.path(), &target);
        } else {
            std::os::unix::fs::symlink(entry.path(), &target).unwrap();
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
