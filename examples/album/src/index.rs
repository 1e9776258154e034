//! `album index`: find photos, skip what the album already knows, caption the rest, and
//! commit each batch in one transaction so an interrupted run loses at most one batch.

use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rusqlite::Connection;
use serde::Serialize;
use vlm_core::{Image, Language};

use crate::captioner::{CaptionOptions, Captioner, Job};
use crate::db::{self, FileStamp, PhotoMeta, Setting};
use crate::{exif, scan};

/// Tests set this to hold the indexer after each commit, long enough to kill it there.
const PAUSE_ENV: &str = "ALBUM_TEST_PAUSE_AFTER_BATCH_MS";
/// Most files in one transaction when they are all indexed already, so progress and
/// Ctrl-C stay responsive while a re-run walks a large library.
const MAX_FILES_PER_BATCH: usize = 512;

#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub processed: usize,
    pub cached: usize,
    pub failed: usize,
    pub skipped: usize,
    pub seconds: f64,
    /// Generation requests sent to the model (0 when everything was already indexed).
    pub model_calls: usize,
    pub interrupted: bool,
}

/// A photo that needs the model, with the languages it lacks.
struct Pending {
    path: String,
    hash: String,
    stamp: Option<FileStamp>,
    meta: PhotoMeta,
    image: Image,
    languages: Vec<Language>,
}

/// What one batch will write.
#[derive(Default)]
struct Batch {
    pending: Vec<Pending>,
    /// Paths whose content is already fully indexed (or pending in this batch).
    known: Vec<(String, String, Option<FileStamp>)>,
    errors: Vec<(String, Option<String>, String)>,
}

pub fn run(
    conn: &mut Connection,
    roots: &[PathBuf],
    options: &CaptionOptions,
    stop: &AtomicBool,
) -> Result<Summary> {
    let started = Instant::now();
    let found = scan::scan(roots)?;
    let mut summary = Summary {
        skipped: found.skipped.len(),
        ..Summary::default()
    };
    let tx = conn.transaction()?;
    for (path, reason) in &found.skipped {
        db::record_skipped(&tx, &path.display().to_string(), reason)?;
    }
    tx.commit()?;

    let bar = progress_bar(found.photos.len() as u64);
    let pause = std::env::var(PAUSE_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis);
    let mut captioner: Option<Captioner> = None;
    // Computed once: a model folder's key is its canonical path.
    let settings: Vec<(Language, Setting)> = options
        .languages
        .iter()
        .map(|&l| (l, options.setting(l)))
        .collect();
    let mut files = found.photos.iter();
    loop {
        let (batch, taken) = prepare(conn, &mut files, options.batch_size.max(1), &settings)?;
        if taken == 0 {
            break;
        }
        let outputs = if batch.pending.is_empty() {
            Vec::new()
        } else {
            let model = match captioner.as_mut() {
                Some(m) => m,
                None => captioner.insert(Captioner::load(options)?),
            };
            let keys: Vec<(usize, Language)> = batch
                .pending
                .iter()
                .enumerate()
                .flat_map(|(i, p)| p.languages.iter().map(move |&language| (i, language)))
                .collect();
            let jobs: Vec<Job> = keys
                .iter()
                .map(|&(i, language)| Job {
                    image: &batch.pending[i].image,
                    language,
                })
                .collect();
            keys.into_iter().zip(model.run(&jobs)).collect()
        };
        commit(conn, &batch, outputs, &settings, &mut summary)?;
        bar.inc(taken as u64);
        bar.set_message(format!(
            "cached {}, failed {}",
            summary.cached, summary.failed
        ));
        if let Some(pause) = pause {
            std::thread::sleep(pause);
        }
        if stop.load(Ordering::SeqCst) {
            summary.interrupted = true;
            break;
        }
    }
    bar.finish_and_clear();
    summary.model_calls = captioner.map_or(0, |c| c.calls);
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Takes files until `batch_size` photos need the model: reads and hashes each (unless
/// its path, size and mtime are unchanged since the last run), and decodes only photos
/// that still need the model. Returns the batch and how many files it took.
fn prepare(
    conn: &Connection,
    files: &mut std::slice::Iter<PathBuf>,
    batch_size: usize,
    settings: &[(Language, Setting)],
) -> Result<(Batch, usize)> {
    let mut batch = Batch::default();
    let mut in_batch = HashSet::new();
    let mut taken = 0;
    while batch.pending.len() < batch_size && taken < MAX_FILES_PER_BATCH {
        let Some(path) = files.next() else { break };
        taken += 1;
        let shown = path.display().to_string();
        let stamp = std::fs::metadata(path).ok().and_then(|m| FileStamp::of(&m));
        if let Some(hash) = stamp.and_then(|s| db::stamped_hash(conn, &shown, &s).transpose()) {
            let hash = hash?;
            if missing(conn, &hash, settings)?.is_empty() && db::photo_exists(conn, &hash)? {
                batch.known.push((shown, hash, stamp));
                continue;
            }
        }
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                let message = format!("cannot read {shown}: {e}; check its permissions");
                batch.errors.push((shown, None, message));
                continue;
            }
        };
        let hash = blake3::hash(&bytes).to_hex().to_string();
        let languages = missing(conn, &hash, settings)?;
        if in_batch.contains(&hash) || (languages.is_empty() && db::photo_exists(conn, &hash)?) {
            batch.known.push((shown, hash, stamp));
            continue;
        }
        let image = match Image::from_bytes(&bytes) {
            Ok(image) => image,
            Err(e) => {
                let e = e.to_string().replacen("the image data", "the file", 1);
                batch
                    .errors
                    .push((shown.clone(), Some(hash), format!("{shown}: {e}")));
                continue;
            }
        };
        let info = exif::read(&bytes);
        let meta = PhotoMeta {
            bytes: bytes.len() as u64,
            width: image.width(),
            height: image.height(),
            taken_at: info.taken_at,
            lat: info.lat,
            lon: info.lon,
            camera: info.camera,
            orientation: info.orientation,
        };
        in_batch.insert(hash.clone());
        batch.pending.push(Pending {
            path: shown,
            hash,
            stamp,
            meta,
            image,
            languages,
        });
    }
    Ok((batch, taken))
}

/// The languages whose result this photo lacks under the run's settings.
fn missing(
    conn: &Connection,
    hash: &str,
    settings: &[(Language, Setting)],
) -> Result<Vec<Language>> {
    let mut languages = Vec::new();
    for (language, setting) in settings {
        if !db::has_result(conn, hash, setting)? {
            languages.push(*language);
        }
    }
    Ok(languages)
}

/// Writes the whole batch or nothing.
fn commit(
    conn: &mut Connection,
    batch: &Batch,
    outputs: Vec<((usize, Language), Result<db::Output, String>)>,
    settings: &[(Language, Setting)],
    summary: &mut Summary,
) -> Result<()> {
    let tx = conn.transaction()?;
    let mut failure: HashMap<usize, String> = HashMap::new();
    let mut made: HashMap<usize, Vec<(Language, db::Output)>> = HashMap::new();
    for ((i, language), result) in outputs {
        match result {
            Ok(out) => made.entry(i).or_default().push((language, out)),
            Err(e) => {
                failure.entry(i).or_insert(e);
            }
        }
    }
    for (i, p) in batch.pending.iter().enumerate() {
        let outs = made.remove(&i).unwrap_or_default();
        // A photo whose every language failed gets no row; a re-run tries it again.
        if !outs.is_empty() {
            db::insert_photo(&tx, &p.hash, &p.meta)?;
            db::add_path(&tx, &p.path, &p.hash, p.stamp)?;
            for (language, out) in &outs {
                let setting = settings
                    .iter()
                    .find(|(l, _)| l == language)
                    .map(|(_, s)| s)
                    .context("internal: an answer in a language that was not asked for")?;
                db::insert_result(&tx, &p.hash, setting, out)?;
            }
        }
        match failure.remove(&i) {
            Some(e) => {
                db::record_error(&tx, &p.path, Some(&p.hash), &format!("{}: {e}", p.path))?;
                summary.failed += 1;
            }
            None => summary.processed += 1,
        }
    }
    for (path, hash, stamp) in &batch.known {
        if db::photo_exists(&tx, hash)? {
            db::add_path(&tx, path, hash, *stamp)?;
            summary.cached += 1;
        } else {
            let message =
                format!("{path}: has the same content as a photo that failed in this batch");
            db::record_error(&tx, path, Some(hash), &message)?;
            summary.failed += 1;
        }
    }
    for (path, hash, message) in &batch.errors {
        db::record_error(&tx, path, hash.as_deref(), message)?;
        summary.failed += 1;
    }
    tx.commit()?;
    Ok(())
}

fn progress_bar(len: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{bar:30} {pos}/{len} photos, {per_sec}, ETA {eta} ({msg})")
    {
        bar.set_style(style);
    }
    bar
}
