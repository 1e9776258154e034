//! `album index`: every photo once, nothing lost, bad input recorded and survived.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

const N: i64 = TRIP_PHOTOS.len() as i64;

#[test]
fn second_run_is_all_cached_and_a_renamed_copy_adds_a_path() {
    let dir = temp_dir("rerun");
    let photos = dir.join("photos");
    trip_library(&photos);
    let db = dir.join("album.db");

    let first = index(&db, &[&photos], &[]);
    assert_eq!(first["processed"], N, "{first}");
    assert_eq!(first["cached"], 0);
    assert_eq!(first["failed"], 0);
    assert_eq!(
        first["model_calls"],
        3 * N,
        "caption, tags and text per photo"
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM results"), N);
    // EXIF made it in.
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM photos WHERE taken_at = '2024-05-01 09:00:00' AND abs(lat - 39.9042) < 1e-3 AND camera = 'TestCam T1' AND width = 48"),
        1
    );

    let second = index(&db, &[&photos], &[]);
    assert_eq!(second["processed"], 0, "{second}");
    assert_eq!(second["cached"], N);
    assert_eq!(second["model_calls"], 0);

    std::fs::copy(photos.join("beijing/a.jpg"), photos.join("renamed.jpg")).expect("copy");
    let third = index(&db, &[&photos], &[]);
    assert_eq!(third["model_calls"], 0, "{third}");
    assert_eq!(third["cached"], N + 1);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM photos"), N);
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM paths WHERE hash = (SELECT hash FROM paths WHERE path LIKE '%/renamed.jpg')"),
        2
    );

    // An edited file is a new photo at the same path.
    let edited = photos.join("beijing/a.jpg");
    write(
        &edited,
        &with_exif(&jpeg(500), "2024:05:01 09:00:00", BEIJING),
    );
    let fourth = index(&db, &[&photos], &[]);
    assert_eq!(fourth["processed"], 1, "{fourth}");
    assert_eq!(count(&db, "SELECT COUNT(*) FROM photos"), N + 1);

    // Unchanged size and mtime mean unchanged content, as for git: a re-run does not
    // even read such files. Shown by swapping content behind the album's back.
    let stamp = std::fs::metadata(&edited)
        .and_then(|m| m.modified())
        .expect("mtime");
    let mut swapped = std::fs::read(&edited).expect("read");
    let near_end = swapped.len() - 3;
    swapped[near_end] ^= 0xff;
    write(&edited, &swapped);
    std::fs::File::options()
        .write(true)
        .open(&edited)
        .and_then(|f| f.set_modified(stamp))
        .expect("restore mtime");
    let fifth = index(&db, &[&photos], &[]);
    assert_eq!(
        (fifth["processed"].clone(), fifth["cached"].clone()),
        (0.into(), (N + 1).into()),
        "{fifth}"
    );
}

#[test]
fn another_language_processes_only_what_it_lacks() {
    let dir = temp_dir("languages");
    let photos = dir.join("photos");
    trip_library(&photos);
    let db = dir.join("album.db");
    index(&db, &[&photos], &["--language", "en"]);
    let zh = index(&db, &[&photos], &["--language", "zh,en"]);
    assert_eq!(zh["processed"], N, "{zh}");
    assert_eq!(zh["model_calls"], 3 * N, "only the Chinese requests run");
    let again = index(&db, &[&photos], &["--language", "en,zh"]);
    assert_eq!(again["model_calls"], 0, "{again}");
    let longer = index(
        &db,
        &[&photos],
        &["--language", "en", "--max-new-tokens", "7"],
    );
    assert_eq!(
        longer["processed"], N,
        "another option set is another result"
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM results"), 3 * N);
    assert_eq!(
        count(&db, "SELECT COUNT(DISTINCT language) FROM results"),
        2
    );
}

#[test]
fn a_pixel_budget_reaches_the_model_and_is_its_own_setting() {
    let dir = temp_dir("budget");
    let photos = dir.join("photos");
    trip_library(&photos);
    let db = dir.join("album.db");
    index(&db, &[&photos], &["--language", "en"]);
    // 4 merged tokens (56×56): a different encoding, so a result of its own.
    let small = index(
        &db,
        &[&photos],
        &["--language", "en", "--max-pixels", "3136"],
    );
    assert_eq!(small["processed"], N, "{small}");
    let timings = count(
        &db,
        "SELECT COUNT(*) FROM results WHERE options LIKE '%\"max_pixels\":3136%'",
    );
    assert_eq!(timings, N);
    // The model itself checks the budget: one that cannot hold a patch group is refused.
    let out = index_cmd(&db, &[&photos], &["--language", "zh", "--max-pixels", "10"])
        .output()
        .expect("run album");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_pixels"), "{err}");
}

/// Polls (as another reader would) until the indexer has committed its first batch.
fn wait_for_first_commit(db: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = if db.exists() {
            rusqlite::Connection::open(db)
                .and_then(|c| {
                    c.query_row("SELECT COUNT(*) FROM results", [], |r| r.get::<_, i64>(0))
                })
                .unwrap_or(0)
        } else {
            0
        };
        if done > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "no batch committed in 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn kill_9_mid_run_then_rerun_gives_every_photo_once() {
    let dir = temp_dir("kill");
    let photos = dir.join("photos");
    trip_library(&photos);
    let db = dir.join("album.db");
    let mut cmd = index_cmd(&db, &[&photos], &[]);
    cmd.env("ALBUM_TEST_PAUSE_AFTER_BATCH_MS", "3000")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("spawn album");
    wait_for_first_commit(&db);
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    let partial = count(&db, "SELECT COUNT(*) FROM results");
    assert!(
        partial > 0 && partial < N,
        "killed after the first batch, {partial} rows"
    );

    let rerun = index(&db, &[&photos], &[]);
    assert_eq!(rerun["processed"], N - partial, "{rerun}");
    assert_eq!(rerun["cached"], partial);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM results"), N);
    assert_eq!(count(&db, "SELECT COUNT(DISTINCT hash) FROM results"), N);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM photos"), N);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM paths"), N);
}

#[test]
fn ctrl_c_finishes_the_batch_and_exits_cleanly() {
    let dir = temp_dir("ctrlc");
    let photos = dir.join("photos");
    trip_library(&photos);
    let db = dir.join("album.db");
    let mut cmd = index_cmd(&db, &[&photos], &[]);
    cmd.env("ALBUM_TEST_PAUSE_AFTER_BATCH_MS", "1500")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn album");
    wait_for_first_commit(&db);
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(status.success());
    let out = child.wait_with_output().expect("wait");
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("summary JSON");
    assert_eq!(summary["interrupted"], true);
    let saved = count(&db, "SELECT COUNT(*) FROM results");
    assert_eq!(
        summary["processed"], saved,
        "what it says it saved is saved"
    );
    assert!(saved < N);
    let rerun = index(&db, &[&photos], &[]);
    assert_eq!(rerun["processed"], N - saved, "{rerun}");
    assert_eq!(count(&db, "SELECT COUNT(*) FROM results"), N);
}

#[test]
fn broken_files_are_recorded_and_the_rest_indexed() {
    let dir = temp_dir("broken");
    let photos = dir.join("photos");
    trip_library(&photos);
    let good = jpeg(99);
    write(&photos.join("truncated.jpg"), &good[..good.len() / 3]);
    write(&photos.join("empty.jpg"), b"");
    write(
        &photos.join("not-really.png"),
        b"plain text in a png's clothes",
    );
    write(&photos.join("notes.txt"), b"shopping list");
    write(&photos.join("no-exif.jpg"), &jpeg(100));
    let db = dir.join("album.db");

    let summary = index(&db, &[&photos], &[]);
    assert_eq!(summary["processed"], N + 1, "{summary}");
    assert_eq!(summary["failed"], 3);
    assert_eq!(summary["skipped"], 1);
    for name in ["truncated.jpg", "empty.jpg", "not-really.png"] {
        let conn = rusqlite::Connection::open(&db).expect("db");
        let message: String = conn
            .query_row(
                "SELECT message FROM errors WHERE path LIKE ?1",
                [format!("%/{name}")],
                |r| r.get(0),
            )
            .unwrap_or_else(|e| panic!("{name} not in errors: {e}"));
        assert!(message.contains(name), "{message}");
    }
    let conn = rusqlite::Connection::open(&db).expect("db");
    let reason: String = conn
        .query_row(
            "SELECT reason FROM skipped WHERE path LIKE '%/notes.txt'",
            [],
            |r| r.get(0),
        )
        .expect("notes.txt skipped");
    assert!(reason.contains("not a photo"), "{reason}");
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM photos WHERE taken_at IS NULL"),
        1,
        "no-exif.jpg indexed"
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM photos WHERE hash IN (SELECT hash FROM errors)"
        ),
        0,
        "no half rows"
    );

    // Fixing a file clears its error.
    write(&photos.join("empty.jpg"), &jpeg(101));
    let fixed = index(&db, &[&photos], &[]);
    assert_eq!(fixed["processed"], 1, "{fixed}");
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM errors WHERE path LIKE '%/empty.jpg'"
        ),
        0
    );
}

#[test]
fn symlink_loops_and_read_only_folders_are_survived() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("links");
    let photos = dir.join("photos");
    trip_library(&photos);
    std::os::unix::fs::symlink(&photos, photos.join("beijing/loop")).expect("symlink");
    std::fs::set_permissions(
        photos.join("shanghai"),
        std::fs::Permissions::from_mode(0o555),
    )
    .expect("chmod");
    let db = dir.join("album.db");
    let summary = index(&db, &[&photos], &[]);
    std::fs::set_permissions(
        photos.join("shanghai"),
        std::fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    assert_eq!(summary["processed"], N, "{summary}");
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM skipped WHERE reason LIKE 'symlink loop%'"
        ),
        1
    );
}

#[test]
fn a_locked_database_gives_a_clear_error_not_a_hang() {
    let dir = temp_dir("locked");
    let photos = dir.join("photos");
    trip_library(&photos);
    let db = dir.join("album.db");
    index(&db, &[&photos], &[]);
    write(&photos.join("new.jpg"), &jpeg(77));

    let conn = rusqlite::Connection::open(&db).expect("db");
    conn.execute_batch("BEGIN EXCLUSIVE").expect("lock");
    let started = Instant::now();
    let mut cmd = index_cmd(&db, &[&photos], &[]);
    cmd.args(["--busy-timeout-ms", "300"]);
    let out = cmd.output().expect("run album");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("locked by another program"), "{stderr}");
    conn.execute_batch("ROLLBACK").expect("unlock");
    assert_eq!(index(&db, &[&photos], &[])["processed"], 1);
}

#[test]
fn a_database_from_a_newer_album_is_refused() {
    let dir = temp_dir("newer");
    let db = dir.join("album.db");
    rusqlite::Connection::open(&db)
        .and_then(|c| c.pragma_update(None, "user_version", 99))
        .expect("db");
    let out = album()
        .args(["search", "x", "--db"])
        .arg(&db)
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("newer album"));
}

#[test]
fn a_photo_the_model_refuses_fails_alone() {
    let dir = temp_dir("refused");
    let photos = dir.join("photos");
    trip_library(&photos);
    // Qwen refuses images more than 200:1; its batch is retried one request at a time.
    image::RgbImage::new(1, 400)
        .save(photos.join("beijing/thin.png"))
        .expect("write PNG");
    let db = dir.join("album.db");
    let summary = index(&db, &[&photos], &["--batch-size", "4"]);
    assert_eq!(summary["processed"], N, "{summary}");
    assert_eq!(summary["failed"], 1);
    let conn = rusqlite::Connection::open(&db).expect("db");
    let message: String = conn
        .query_row(
            "SELECT message FROM errors WHERE path LIKE '%/thin.png'",
            [],
            |r| r.get(0),
        )
        .expect("thin.png in errors");
    assert!(message.contains("200:1"), "{message}");
    assert_eq!(count(&db, "SELECT COUNT(*) FROM results"), N);
}
