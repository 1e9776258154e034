//! Finding the photos under the folders the user names.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use walkdir::WalkDir;

/// File endings of the formats `vlm_core::Image` decodes.
const PHOTO_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "jpe", "png", "webp", "gif", "bmp", "tif", "tiff",
];

#[derive(Debug, Default)]
pub struct Scan {
    /// Absolute paths of files that look like photos, sorted, each once.
    pub photos: Vec<PathBuf>,
    /// Everything else met on the way, with why it was left out.
    pub skipped: Vec<(PathBuf, String)>,
}

/// Walks `roots` following symlinks (photo libraries often link folders together);
/// walkdir notices a link that points back up the tree and reports it instead of looping.
pub fn scan(roots: &[PathBuf]) -> Result<Scan> {
    let mut scan = Scan::default();
    for root in roots {
        if !root.exists() {
            bail!(
                "{} does not exist; pass folders of photos to index",
                root.display()
            );
        }
        for entry in WalkDir::new(root).follow_links(true) {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    let path = e
                        .path()
                        .map(Path::to_path_buf)
                        .unwrap_or_else(|| root.clone());
                    let reason = match e.loop_ancestor() {
                        Some(a) => format!("symlink loop back to {}", a.display()),
                        None => format!("cannot read: {e}"),
                    };
                    scan.skipped.push((absolute(&path), reason));
                    continue;
                }
            };
            if !entry.file_type().is_file() {
                continue;
            }
            let path = absolute(entry.path());
            if is_photo(&path) {
                scan.photos.push(path);
            } else {
                let kind = path
                    .extension()
                    .map(|e| format!(".{} files are", e.to_string_lossy()))
                    .unwrap_or_else(|| "files without an extension are".into());
                scan.skipped.push((
                    path,
                    format!(
                        "not a photo: {kind} not indexed (photos are {})",
                        vlm_core::image::SUPPORTED_FORMATS
                    ),
                ));
            }
        }
    }
    scan.photos.sort();
    scan.photos.dedup();
    Ok(scan)
}

fn is_photo(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| PHOTO_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Absolute but not canonical: a photo reached through a symlink keeps the name the
/// user knows it by.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}
