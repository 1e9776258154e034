//! Reading the album back: search, trips and stories, export, and old databases.

mod common;

use std::path::Path;

use common::*;
use vlm_album::db::{self, Output, Setting};

const N: usize = TRIP_PHOTOS.len();

fn search(db: &Path, query: &str) -> Vec<serde_json::Value> {
    let out = ok({
        let mut cmd = album();
        cmd.args(["search", query, "--json", "--db"]).arg(db);
        cmd
    });
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("search output is not JSON ({e}): {out}"))
}

fn paths(hits: &[serde_json::Value]) -> Vec<String> {
    hits.iter()
        .map(|h| h["path"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The first `n` characters of the longest text the model stored for some photo.
fn stored_text(db: &Path, language: &str, n: usize) -> (String, String) {
    let conn = rusqlite::Connection::open(db).expect("db");
    let mut stmt = conn
        .prepare(
            "SELECT (SELECT MIN(path) FROM paths WHERE hash = r.hash), caption, tags, photo_text
             FROM results r WHERE language = ?1",
        )
        .expect("query");
    let rows = stmt
        .query_map([language], |r| {
            Ok((
                r.get::<_, String>(0)?,
                [r.get::<_, String>(1)?, r.get(2)?, r.get(3)?],
            ))
        })
        .expect("rows");
    let (path, text) = rows
        .flatten()
        .flat_map(|(path, texts)| texts.into_iter().map(move |t| (path.clone(), t)))
        .max_by_key(|(_, t)| t.trim().chars().count())
        .expect("some result");
    let chars: Vec<char> = text.trim().chars().collect();
    assert!(
        chars.len() >= 3,
        "the tiny model wrote too little to search: {text:?}"
    );
    (path, chars[..n.min(chars.len())].iter().collect())
}

#[test]
fn search_finds_photos_by_what_the_model_wrote() {
    let dir = temp_dir("search");
    let photos = dir.join("photos");
    trip_library(&photos);
    let db = dir.join("album.db");
    index(&db, &[&photos], &["--language", "en,zh"]);

    for language in ["en", "zh"] {
        let (path, query) = stored_text(&db, language, 4);
        let hits = search(&db, &query);
        assert!(
            paths(&hits).contains(&path),
            "{language} query {query:?} missed {path}: {hits:?}"
        );
        assert!(hits
            .iter()
            .all(|h| h["score"].is_number() && h["snippet"].is_string()));
    }

    // Known Chinese text through the app's own writer: a 3-character query uses the
    // trigram index, a 2-character one the LIKE fallback.
    let conn = db::open(&db, std::time::Duration::from_secs(5)).expect("db");
    let hash: String = conn
        .query_row(
            "SELECT hash FROM paths WHERE path LIKE '%/shanghai/d.jpg'",
            [],
            |r| r.get(0),
        )
        .expect("d.jpg indexed");
    let setting = Setting {
        model: "test".into(),
        quant: "none".into(),
        language: "zh".into(),
        options: "{}".into(),
    };
    let output = Output {
        caption: "我们在外滩看日落,江边人很多。".into(),
        tags: vec!["外滩".into(), "日落".into(), "Sunset".into()],
        ..Output::default()
    };
    db::insert_result(&conn, &hash, &setting, &output).expect("insert");
    for query in ["外滩看日落", "看日落", "外滩", "sunset"] {
        let hits = search(&db, query);
        let found = paths(&hits);
        assert!(
            found.iter().any(|p| p.ends_with("shanghai/d.jpg")),
            "{query}: {hits:?}"
        );
        assert!(
            hits[0]["snippet"].as_str().is_some_and(|s| s.contains('[')),
            "{hits:?}"
        );
    }
    assert!(search(&db, "外滩看日出").is_empty());

    let text = ok({
        let mut cmd = album();
        cmd.args(["search", "外滩", "--db"]).arg(&db);
        cmd
    });
    assert!(text.contains("shanghai/d.jpg\t"), "{text}");
}

#[test]
fn trips_group_by_time_and_place_and_get_a_story() {
    let dir = temp_dir("trips");
    let photos = dir.join("photos");
    trip_library(&photos);
    write(&photos.join("undated.jpg"), &jpeg(50));
    let db = dir.join("album.db");
    index(&db, &[&photos], &[]);

    let trips = |extra: &[&str]| -> Vec<serde_json::Value> {
        let mut cmd = album();
        cmd.args(["trips", "--json", "--db"]).arg(&db).args(extra);
        serde_json::from_str(&ok(cmd)).expect("trips JSON")
    };
    let default = trips(&[]);
    assert_eq!(default.len(), 2, "{default:?}");
    let names = |t: &serde_json::Value| -> Vec<String> {
        t["photos"]
            .as_array()
            .expect("photos")
            .iter()
            .map(|p| {
                p["path"]
                    .as_str()
                    .unwrap_or_default()
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    };
    assert_eq!(names(&default[0]), ["a.jpg", "b.jpg", "c.jpg"]);
    assert_eq!(names(&default[1]), ["d.jpg", "e.jpg", "f.jpg"]);
    // With no time limit the 1,070 km jump still splits them; with no distance limit
    // and no time limit there is one trip.
    assert_eq!(trips(&["--gap-hours", "100000"]).len(), 2);
    assert_eq!(
        trips(&["--gap-hours", "100000", "--max-km", "5000"]).len(),
        1
    );
    // A 4-hour limit splits Beijing's 11:30 → 16:00 and Shanghai's 13:00 → 18:00.
    assert_eq!(trips(&["--gap-hours", "4"]).len(), 4);

    let key = default[1]["key"].as_str().expect("key").to_string();
    let mut cmd = album();
    cmd.args([
        "story",
        "2",
        "--photos",
        "2",
        "--max-new-tokens",
        "6",
        "--db",
    ])
    .arg(&db)
    .arg("--model")
    .arg(model());
    let printed = ok(cmd);
    assert!(printed.contains(&key), "{printed}");
    let after = trips(&[]);
    assert!(after[1]["story"].is_string(), "{after:?}");
    assert!(after[0]["story"].is_null());
    let conn = rusqlite::Connection::open(&db).expect("db");
    let used: String = conn
        .query_row("SELECT photos FROM stories", [], |r| r.get(0))
        .expect("story row");
    assert_eq!(
        serde_json::from_str::<Vec<String>>(&used)
            .expect("hashes")
            .len(),
        2,
        "first and last photo"
    );

    let mut missing = album();
    missing
        .args(["story", "9", "--db"])
        .arg(&db)
        .arg("--model")
        .arg(model());
    let out = missing.output().expect("run");
    assert!(String::from_utf8_lossy(&out.stderr).contains("album trips"));
}

#[test]
fn export_jsonl_and_csv_parse_back() {
    let dir = temp_dir("export");
    let photos = dir.join("photos");
    trip_library(&photos);
    let db = dir.join("album.db");
    index(&db, &[&photos], &["--language", "zh,en"]);

    let export = |format: &str| {
        let mut cmd = album();
        cmd.args(["export", "--format", format, "--db"]).arg(&db);
        ok(cmd)
    };
    let rows: Vec<serde_json::Value> = export("jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(rows.len(), 2 * N);
    assert!(rows
        .iter()
        .all(|r| r["paths"].is_array() && r["tags"].is_array() && r["caption"].is_string()));
    assert!(rows
        .iter()
        .any(|r| r["taken_at"] == "2024-05-10 10:00:00" && r["language"] == "zh"));

    let csv_text = export("csv");
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    let headers = reader.headers().expect("header").clone();
    for column in [
        "hash",
        "paths",
        "taken_at",
        "lat",
        "lon",
        "caption",
        "tags",
        "photo_text",
        "language",
    ] {
        assert!(
            headers.iter().any(|h| h == column),
            "{column} missing from {headers:?}"
        );
    }
    let records: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("CSV row")).collect();
    assert_eq!(records.len(), 2 * N);
    for (record, json) in records.iter().zip(&rows) {
        assert_eq!(record.get(0), json["hash"].as_str());
        assert_eq!(
            record.get(14),
            json["caption"].as_str(),
            "captions survive CSV quoting"
        );
    }

    let file = dir.join("out.jsonl");
    let mut cmd = album();
    cmd.args(["export", "--db"])
        .arg(&db)
        .arg("--output")
        .arg(&file);
    ok(cmd);
    assert_eq!(
        std::fs::read_to_string(&file)
            .expect("file")
            .lines()
            .count(),
        2 * N
    );
}

/// The first released schema, written here by hand as an old album would have left it.
const SCHEMA_V1: &str = "
    CREATE TABLE photos (hash TEXT PRIMARY KEY, bytes INTEGER NOT NULL, width INTEGER, height INTEGER,
        taken_at TEXT, lat REAL, lon REAL, camera TEXT, orientation INTEGER,
        first_seen TEXT NOT NULL DEFAULT (datetime('now')));
    CREATE TABLE paths (path TEXT PRIMARY KEY, hash TEXT NOT NULL REFERENCES photos(hash),
        seen_at TEXT NOT NULL DEFAULT (datetime('now')));
    CREATE INDEX paths_by_hash ON paths(hash);
    CREATE TABLE results (id INTEGER PRIMARY KEY, hash TEXT NOT NULL REFERENCES photos(hash),
        model TEXT NOT NULL, quant TEXT NOT NULL, language TEXT NOT NULL, options TEXT NOT NULL,
        caption TEXT NOT NULL, tags TEXT NOT NULL, photo_text TEXT NOT NULL, seconds REAL NOT NULL,
        created_at TEXT NOT NULL DEFAULT (datetime('now')),
        UNIQUE (hash, model, quant, language, options));
    CREATE TABLE errors (path TEXT PRIMARY KEY, hash TEXT, message TEXT NOT NULL,
        at TEXT NOT NULL DEFAULT (datetime('now')));
    CREATE TABLE skipped (path TEXT PRIMARY KEY, reason TEXT NOT NULL);
    INSERT INTO photos (hash, bytes, taken_at) VALUES ('oldhash', 10, '2020-01-01 12:00:00');
    INSERT INTO paths (path, hash) VALUES ('/old/lighthouse.jpg', 'oldhash');
    INSERT INTO results (hash, model, quant, language, options, caption, tags, photo_text, seconds)
        VALUES ('oldhash', 'm', 'none', 'en', '{}', 'A red lighthouse on a cliff', 'sea, lighthouse', '', 1.0);
    PRAGMA user_version = 1;";

#[test]
fn a_v1_database_is_migrated_and_keeps_its_photos() {
    let dir = temp_dir("migrate");
    let db = dir.join("album.db");
    rusqlite::Connection::open(&db)
        .and_then(|c| c.execute_batch(SCHEMA_V1))
        .expect("v1 db");

    let hits = search(&db, "lighthouse");
    assert_eq!(
        paths(&hits),
        ["/old/lighthouse.jpg"],
        "old rows are searchable after the migration"
    );
    assert_eq!(count(&db, "PRAGMA user_version"), db::SCHEMA_VERSION as i64);
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM results WHERE timings = '{}'"),
        1
    );

    // And the migrated database takes new photos.
    let photos = dir.join("photos");
    trip_library(&photos);
    assert_eq!(index(&db, &[&photos], &[])["processed"], N as i64);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM photos"), N as i64 + 1);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM results_fts"), N as i64 + 1);
}
