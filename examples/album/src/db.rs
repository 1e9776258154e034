//! The album database: schema, migrations and every write the indexer makes.
//!
//! One SQLite file holds everything, so an album can be copied, backed up or opened with
//! the `sqlite3` shell. Migrations are numbered and tracked in `PRAGMA user_version`; a
//! database written by an older album is upgraded in place on open.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rusqlite::{params, Connection, ErrorCode, OptionalExtension};

/// Migration `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // v1: photos by content hash, the paths they were seen at, and one row of model output
    // per (photo, setting).
    "CREATE TABLE photos (
        hash TEXT PRIMARY KEY,
        bytes INTEGER NOT NULL,
        width INTEGER, height INTEGER,
        taken_at TEXT, lat REAL, lon REAL, camera TEXT, orientation INTEGER,
        first_seen TEXT NOT NULL DEFAULT (datetime('now')));
     CREATE TABLE paths (
        path TEXT PRIMARY KEY,
        hash TEXT NOT NULL REFERENCES photos(hash),
        seen_at TEXT NOT NULL DEFAULT (datetime('now')));
     CREATE INDEX paths_by_hash ON paths(hash);
     CREATE TABLE results (
        id INTEGER PRIMARY KEY,
        hash TEXT NOT NULL REFERENCES photos(hash),
        model TEXT NOT NULL, quant TEXT NOT NULL, language TEXT NOT NULL, options TEXT NOT NULL,
        caption TEXT NOT NULL, tags TEXT NOT NULL, photo_text TEXT NOT NULL,
        seconds REAL NOT NULL,
        created_at TEXT NOT NULL DEFAULT (datetime('now')),
        UNIQUE (hash, model, quant, language, options));
     CREATE TABLE errors (
        path TEXT PRIMARY KEY, hash TEXT, message TEXT NOT NULL,
        at TEXT NOT NULL DEFAULT (datetime('now')));
     CREATE TABLE skipped (path TEXT PRIMARY KEY, reason TEXT NOT NULL);",
    // v2: per-stage timings, full-text search, trip stories and cached thumbnails.
    // The trigram tokenizer indexes every 3-character window, so Chinese text is
    // searchable without a word segmenter.
    "ALTER TABLE results ADD COLUMN timings TEXT NOT NULL DEFAULT '{}';
     CREATE VIRTUAL TABLE results_fts USING fts5(
        caption, tags, photo_text, content='results', content_rowid='id', tokenize='trigram');
     CREATE TRIGGER results_ai AFTER INSERT ON results BEGIN
        INSERT INTO results_fts(rowid, caption, tags, photo_text)
        VALUES (new.id, new.caption, new.tags, new.photo_text);
     END;
     CREATE TRIGGER results_ad AFTER DELETE ON results BEGIN
        INSERT INTO results_fts(results_fts, rowid, caption, tags, photo_text)
        VALUES ('delete', old.id, old.caption, old.tags, old.photo_text);
     END;
     CREATE TRIGGER results_au AFTER UPDATE ON results BEGIN
        INSERT INTO results_fts(results_fts, rowid, caption, tags, photo_text)
        VALUES ('delete', old.id, old.caption, old.tags, old.photo_text);
        INSERT INTO results_fts(rowid, caption, tags, photo_text)
        VALUES (new.id, new.caption, new.tags, new.photo_text);
     END;
     INSERT INTO results_fts(results_fts) VALUES ('rebuild');
     CREATE TABLE stories (
        trip_key TEXT PRIMARY KEY, photos TEXT NOT NULL, model TEXT NOT NULL,
        story TEXT NOT NULL, created_at TEXT NOT NULL DEFAULT (datetime('now')));
     CREATE TABLE thumbnails (hash TEXT PRIMARY KEY, jpeg BLOB NOT NULL);",
    // v3: each path's size and mtime when it was hashed, so a re-run skips reading
    // unchanged files (as git's index does).
    "ALTER TABLE paths ADD COLUMN size INTEGER;
     ALTER TABLE paths ADD COLUMN mtime_ns INTEGER;",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// Opens (creating if needed) and migrates the album database. Waits up to `busy` for
/// another process's write lock, then fails with advice instead of hanging.
pub fn open(path: &Path, busy: Duration) -> Result<Connection> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            bail!(
                "the folder of the database {} does not exist; create it or pass another --db",
                path.display()
            );
        }
    }
    let conn = Connection::open(path).with_context(|| {
        format!(
            "cannot open the database {}; check that its folder is writable or pass another --db",
            path.display()
        )
    })?;
    conn.busy_timeout(busy)?;
    let setup = || -> rusqlite::Result<()> {
        // WAL lets `album serve` read while `album index` writes.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        Ok(())
    };
    setup().map_err(|e| explain(e, path))?;
    migrate(&conn).map_err(|e| match e.downcast::<rusqlite::Error>() {
        Ok(e) => explain(e, path),
        Err(e) => e,
    })?;
    Ok(conn)
}

/// Turns SQLite's lock and permission codes into what the user should do.
pub fn explain(e: rusqlite::Error, path: &Path) -> anyhow::Error {
    let db = path.display();
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => anyhow::anyhow!(
            "the database {db} is locked by another program (another `album index`?); wait for it to finish, or raise --busy-timeout-ms"
        ),
        Some(ErrorCode::ReadOnly | ErrorCode::CannotOpen | ErrorCode::PermissionDenied) => {
            anyhow::anyhow!(
                "cannot write the database {db} ({e}); check the permissions of the file and its folder, or pass another --db"
            )
        }
        Some(ErrorCode::NotADatabase) => anyhow::anyhow!(
            "{db} is not an album database (or it is damaged); pass another --db"
        ),
        _ => anyhow::Error::new(e).context(format!("database {db}")),
    }
}

fn migrate(conn: &Connection) -> Result<()> {
    let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        bail!(
            "the database was written by a newer album (schema v{version}, this one knows v{SCHEMA_VERSION}); update album or pass another --db"
        );
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        // Each step and its version bump commit together, so a crash never leaves a
        // half-migrated file.
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)
            .with_context(|| format!("migrating the album database to v{}", i + 1))?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
    }
    Ok(())
}

/// What EXIF and the decoder say about a photo.
#[derive(Debug, Clone, Default)]
pub struct PhotoMeta {
    pub bytes: u64,
    pub width: u32,
    pub height: u32,
    pub taken_at: Option<String>,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    pub camera: Option<String>,
    pub orientation: Option<u32>,
}

/// The key of one row of model output: everything that changes what the model says.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Setting {
    pub model: String,
    pub quant: String,
    pub language: String,
    pub options: String,
}

/// One photo's model output under one setting.
#[derive(Debug, Clone, Default)]
pub struct Output {
    pub caption: String,
    pub tags: Vec<String>,
    pub photo_text: String,
    pub seconds: f64,
    pub timings: serde_json::Value,
}

pub fn photo_exists(conn: &Connection, hash: &str) -> Result<bool> {
    Ok(conn
        .query_row("SELECT 1 FROM photos WHERE hash = ?1", [hash], |_| Ok(()))
        .optional()?
        .is_some())
}

pub fn has_result(conn: &Connection, hash: &str, s: &Setting) -> Result<bool> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM results WHERE hash = ?1 AND model = ?2 AND quant = ?3
             AND language = ?4 AND options = ?5",
            params![hash, s.model, s.quant, s.language, s.options],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

pub fn insert_photo(conn: &Connection, hash: &str, m: &PhotoMeta) -> Result<()> {
    conn.execute(
        "INSERT OR IGNORE INTO photos
         (hash, bytes, width, height, taken_at, lat, lon, camera, orientation)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            hash,
            m.bytes,
            m.width,
            m.height,
            m.taken_at,
            m.lat,
            m.lon,
            m.camera,
            m.orientation
        ],
    )?;
    Ok(())
}

/// A file's size and modification time: unchanged, its content hash is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    pub size: i64,
    pub mtime_ns: i64,
}

impl FileStamp {
    pub fn of(meta: &std::fs::Metadata) -> Option<Self> {
        let since_epoch = meta
            .modified()
            .ok()?
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?;
        Some(Self {
            size: i64::try_from(meta.len()).ok()?,
            mtime_ns: i64::try_from(since_epoch.as_nanos()).ok()?,
        })
    }
}

/// The hash stored for `path` if the file still has the size and mtime it had then.
pub fn stamped_hash(conn: &Connection, path: &str, stamp: &FileStamp) -> Result<Option<String>> {
    Ok(conn
        .query_row(
            "SELECT hash FROM paths WHERE path = ?1 AND size = ?2 AND mtime_ns = ?3",
            params![path, stamp.size, stamp.mtime_ns],
            |r| r.get(0),
        )
        .optional()?)
}

/// Records that `path` holds `hash` now (a moved or edited file re-points its path).
pub fn add_path(conn: &Connection, path: &str, hash: &str, stamp: Option<FileStamp>) -> Result<()> {
    conn.execute(
        "INSERT INTO paths (path, hash, size, mtime_ns) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(path) DO UPDATE SET hash = excluded.hash, size = excluded.size,
             mtime_ns = excluded.mtime_ns, seen_at = datetime('now')",
        params![path, hash, stamp.map(|s| s.size), stamp.map(|s| s.mtime_ns)],
    )?;
    conn.execute("DELETE FROM errors WHERE path = ?1", [path])?;
    conn.execute("DELETE FROM skipped WHERE path = ?1", [path])?;
    Ok(())
}

pub fn insert_result(conn: &Connection, hash: &str, s: &Setting, o: &Output) -> Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO results
         (hash, model, quant, language, options, caption, tags, photo_text, seconds, timings)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            hash,
            s.model,
            s.quant,
            s.language,
            s.options,
            o.caption,
            o.tags.join(", "),
            o.photo_text,
            o.seconds,
            o.timings.to_string()
        ],
    )?;
    Ok(())
}

pub fn record_error(
    conn: &Connection,
    path: &str,
    hash: Option<&str>,
    message: &str,
) -> Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO errors (path, hash, message) VALUES (?1, ?2, ?3)",
        params![path, hash, message],
    )?;
    Ok(())
}

pub fn record_skipped(conn: &Connection, path: &str, reason: &str) -> Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO skipped (path, reason) VALUES (?1, ?2)",
        params![path, reason],
    )?;
    Ok(())
}

/// A path of the photo that still exists on disk (files move; the album remembers all).
pub fn existing_path(conn: &Connection, hash: &str) -> Result<Option<String>> {
    let mut stmt = conn.prepare("SELECT path FROM paths WHERE hash = ?1 ORDER BY path")?;
    let paths = stmt
        .query_map([hash], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(paths.into_iter().find(|p| Path::new(p).is_file()))
}

/// A photo for listings: its first path and newest caption.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PhotoRow {
    pub hash: String,
    pub path: String,
    pub caption: String,
    pub taken_at: Option<String>,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
}

pub fn photos(conn: &Connection, limit: usize) -> Result<Vec<PhotoRow>> {
    let mut stmt = conn.prepare(
        "SELECT p.hash, (SELECT MIN(path) FROM paths WHERE hash = p.hash),
                COALESCE((SELECT caption FROM results WHERE hash = p.hash ORDER BY id DESC LIMIT 1), ''),
                p.taken_at, p.lat, p.lon
         FROM photos p ORDER BY p.taken_at IS NULL, p.taken_at, p.hash LIMIT ?1",
    )?;
    let rows = stmt.query_map([limit as i64], |r| {
        Ok(PhotoRow {
            hash: r.get(0)?,
            path: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
            caption: r.get(2)?,
            taken_at: r.get(3)?,
            lat: r.get(4)?,
            lon: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn undated_count(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row(
        "SELECT COUNT(*) FROM photos WHERE taken_at IS NULL",
        [],
        |r| r.get(0),
    )?)
}

pub fn save_story(
    conn: &Connection,
    trip_key: &str,
    photos: &[String],
    model: &str,
    story: &str,
) -> Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO stories (trip_key, photos, model, story) VALUES (?1, ?2, ?3, ?4)",
        params![trip_key, serde_json::to_string(photos)?, model, story],
    )?;
    Ok(())
}

pub fn story(conn: &Connection, trip_key: &str) -> Result<Option<String>> {
    Ok(conn
        .query_row(
            "SELECT story FROM stories WHERE trip_key = ?1",
            [trip_key],
            |r| r.get(0),
        )
        .optional()?)
}

pub fn thumbnail(conn: &Connection, hash: &str) -> Result<Option<Vec<u8>>> {
    Ok(conn
        .query_row("SELECT jpeg FROM thumbnails WHERE hash = ?1", [hash], |r| {
            r.get(0)
        })
        .optional()?)
}

pub fn save_thumbnail(conn: &Connection, hash: &str, jpeg: &[u8]) -> Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO thumbnails (hash, jpeg) VALUES (?1, ?2)",
        params![hash, jpeg],
    )?;
    Ok(())
}
