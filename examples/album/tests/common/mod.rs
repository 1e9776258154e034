//! Shared by the album's integration tests: generated photos with real EXIF, the tiny
//! fixture model, and running the `album` binary.

#![allow(dead_code)] // each test file uses a different part

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use exif::experimental::Writer;
use exif::{Field, In, Rational, Tag, Value};
use image::{codecs::jpeg::JpegEncoder, Rgb, RgbImage};

/// Two trips ~1,070 km apart and nine days apart: Beijing, then Shanghai.
pub const BEIJING: (f64, f64) = (39.9042, 116.4074);
pub const SHANGHAI: (f64, f64) = (31.2304, 121.4737);
pub const TRIP_PHOTOS: &[(&str, &str, (f64, f64))] = &[
    ("beijing/a.jpg", "2024:05:01 09:00:00", BEIJING),
    ("beijing/b.jpg", "2024:05:01 11:30:00", (39.91, 116.39)),
    ("beijing/c.jpg", "2024:05:01 16:00:00", (39.99, 116.31)),
    ("shanghai/d.jpg", "2024:05:10 10:00:00", SHANGHAI),
    ("shanghai/e.jpg", "2024:05:10 13:00:00", (31.24, 121.49)),
    ("shanghai/f.jpg", "2024:05:10 18:00:00", (31.22, 121.45)),
];

pub fn model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../vlm-models/tests/fixtures/qwen/qwen2_5_vl/model")
}

/// A fresh, empty folder for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("album-{name}-{}", std::process::id()));
    if dir.exists() {
        make_writable(&dir);
        std::fs::remove_dir_all(&dir).expect("clear old test folder");
    }
    std::fs::create_dir_all(&dir).expect("create test folder");
    dir
}

fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for entry in walkdir::WalkDir::new(dir).into_iter().flatten() {
        if entry.file_type().is_dir() {
            let _ = std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o755));
        }
    }
}

/// A small JPEG whose pixels depend on `seed` (so every photo has its own hash).
pub fn jpeg(seed: u32) -> Vec<u8> {
    let img = RgbImage::from_fn(48, 32, |x, y| {
        let v = seed
            .wrapping_mul(2_654_435_761)
            .wrapping_add(x * 7 + y * 13);
        Rgb([
            (v % 251) as u8,
            (v / 3 % 241) as u8,
            (seed * 40 % 256) as u8,
        ])
    });
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, 90)
        .encode_image(&img)
        .expect("encode JPEG");
    out
}

/// Puts an EXIF APP1 segment (time, GPS, camera) right after the JPEG's SOI marker,
/// where cameras put it.
pub fn with_exif(jpeg: &[u8], time: &str, (lat, lon): (f64, f64)) -> Vec<u8> {
    let dms = |deg: f64| {
        let d = deg.abs();
        let m = (d - d.floor()) * 60.0;
        let s = (m - m.floor()) * 60.0;
        Value::Rational(vec![
            Rational {
                num: d.floor() as u32,
                denom: 1,
            },
            Rational {
                num: m.floor() as u32,
                denom: 1,
            },
            Rational {
                num: (s * 1000.0).round() as u32,
                denom: 1000,
            },
        ])
    };
    let ascii = |s: &str| Value::Ascii(vec![s.as_bytes().to_vec()]);
    let fields = [
        (Tag::Make, ascii("TestCam")),
        (Tag::Model, ascii("T1")),
        (Tag::Orientation, Value::Short(vec![1])),
        (Tag::DateTimeOriginal, ascii(time)),
        (
            Tag::GPSLatitudeRef,
            ascii(if lat < 0.0 { "S" } else { "N" }),
        ),
        (Tag::GPSLatitude, dms(lat)),
        (
            Tag::GPSLongitudeRef,
            ascii(if lon < 0.0 { "W" } else { "E" }),
        ),
        (Tag::GPSLongitude, dms(lon)),
    ]
    .map(|(tag, value)| Field {
        tag,
        ifd_num: In::PRIMARY,
        value,
    });
    let mut writer = Writer::new();
    for f in &fields {
        writer.push_field(f);
    }
    let mut tiff = Cursor::new(Vec::new());
    writer.write(&mut tiff, false).expect("write EXIF");
    let tiff = tiff.into_inner();
    let len = u16::try_from(2 + 6 + tiff.len()).expect("EXIF fits one segment");
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(b"Exif\0\0");
    out.extend_from_slice(&tiff);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// Writes the two trips' photos under `dir`.
pub fn trip_library(dir: &Path) {
    for (i, (name, time, place)) in TRIP_PHOTOS.iter().enumerate() {
        write(
            &dir.join(name),
            &with_exif(&jpeg(i as u32 + 1), time, *place),
        );
    }
}

pub fn write(path: &Path, bytes: &[u8]) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create folder");
    }
    std::fs::write(path, bytes).expect("write file");
}

pub fn album() -> Command {
    Command::new(env!("CARGO_BIN_EXE_album"))
}

/// `album index` with the tiny model, short answers and small batches.
pub fn index_cmd(db: &Path, dirs: &[&Path], extra: &[&str]) -> Command {
    let mut cmd = album();
    cmd.arg("index")
        .args(dirs)
        .arg("--db")
        .arg(db)
        .arg("--model")
        .arg(model());
    cmd.args(["--max-new-tokens", "6", "--batch-size", "2", "--json"]);
    cmd.args(extra);
    cmd
}

pub fn ok(mut cmd: Command) -> String {
    let out = cmd.output().expect("run album");
    assert_success(&out);
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

pub fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "album failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `album index` and returns its JSON summary.
pub fn index(db: &Path, dirs: &[&Path], extra: &[&str]) -> serde_json::Value {
    let out = ok(index_cmd(db, dirs, extra));
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("summary is not JSON ({e}): {out}"))
}

pub fn count(db: &Path, sql: &str) -> i64 {
    let conn = rusqlite::Connection::open(db).expect("open db");
    conn.query_row(sql, [], |r| r.get(0)).expect(sql)
}

/// Reports a test that cannot run here and lets it pass, or fails it under
/// `VLM_REQUIRE_ALL_TESTS=1` (.ci/run sets it, with everything the tests need installed:
/// there a skip means something went missing). The line goes straight to stderr, past the
/// test harness's capture, so that `cargo test` shows it; with `VLM_SKIP_LOG` set (scripts/test.sh)
/// it is also appended to that file, which counts the skips of the whole run.
pub fn skip(reason: &str) {
    use std::io::Write;
    if std::env::var_os("VLM_REQUIRE_ALL_TESTS").is_some_and(|v| v == "1") {
        panic!("VLM_REQUIRE_ALL_TESTS=1, but this test cannot run: {reason}");
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    let line = format!("SKIPPED {test}: {reason}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    if let Some(log) = std::env::var_os("VLM_SKIP_LOG") {
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let _ = file.write_all(line.as_bytes());
        }
    }
}
