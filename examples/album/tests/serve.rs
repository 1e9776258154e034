//! `album serve` seen by a client and by a real headless Chromium.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use vlm_album::db::{self, Output, Setting};

/// Kills the server when the test ends, even when it fails.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// An indexed album with a known caption on one photo, served on a free port.
fn served_album(name: &str) -> (Server, u16) {
    let dir = temp_dir(name);
    let photos = dir.join("photos");
    trip_library(&photos);
    let db_path = dir.join("album.db");
    index(&db_path, &[&photos], &[]);
    let conn = db::open(&db_path, Duration::from_secs(5)).expect("db");
    let hash: String = conn
        .query_row(
            "SELECT hash FROM paths WHERE path LIKE '%/beijing/b.jpg'",
            [],
            |r| r.get(0),
        )
        .expect("b.jpg indexed");
    let setting = Setting {
        model: "test".into(),
        quant: "none".into(),
        language: "en".into(),
        options: "{}".into(),
    };
    let caption = Output {
        caption: "Kites over the Forbidden City".into(),
        ..Output::default()
    };
    db::insert_result(&conn, &hash, &setting, &caption).expect("insert");

    let port = free_port();
    let child = album()
        .args(["serve", "--port", &port.to_string(), "--db"])
        .arg(&db_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start album serve");
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "album serve did not listen within 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (server, port)
}

/// A plain HTTP/1.1 GET; returns the status line and the body.
fn get(port: u16, path: &str) -> (String, Vec<u8>) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("headers end");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    (
        head.lines().next().unwrap_or_default().to_string(),
        raw[split + 4..].to_vec(),
    )
}

#[test]
fn the_json_api_and_thumbnails_answer() {
    let (_server, port) = served_album("api");
    let (status, body) = get(port, "/api/search?q=Forbidden%20City");
    assert!(status.contains("200"), "{status}");
    let hits: Vec<serde_json::Value> = serde_json::from_slice(&body).expect("JSON");
    assert!(
        hits[0]["path"]
            .as_str()
            .is_some_and(|p| p.ends_with("beijing/b.jpg")),
        "{hits:?}"
    );

    let hash = hits[0]["hash"].as_str().expect("hash");
    let (status, jpeg) = get(port, &format!("/thumb/{hash}"));
    assert!(status.contains("200"), "{status}");
    let thumb = image::load_from_memory(&jpeg).expect("a JPEG thumbnail");
    assert_eq!(
        (thumb.width(), thumb.height()),
        (48, 32),
        "small photos are not enlarged"
    );
    let (status, _) = get(port, "/thumb/nosuchhash");
    assert!(status.contains("404"), "{status}");
}

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|bin| {
            Command::new(bin)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

fn dump_dom(browser: &str, url: &str, profile: &Path) -> String {
    let out = Command::new(browser)
        .args([
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--virtual-time-budget=5000", "--dump-dom", url])
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn a_headless_browser_finds_a_photo() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but no chromium was found: install it (apt-get install -y chromium)"
        );
        common::skip("no chromium binary: install it with `apt-get install -y chromium`");
        return;
    };
    let (_server, port) = served_album("browser");
    let profile = temp_dir("browser-profile");

    // Server-rendered results.
    let dom = dump_dom(
        browser,
        &format!("http://127.0.0.1:{port}/?q=Forbidden"),
        &profile,
    );
    let results = dom
        .split("id=\"results\"")
        .nth(1)
        .expect("a results section");
    assert!(results.contains("beijing/b.jpg"), "{dom}");
    assert!(
        results.contains("[Forbidden]"),
        "snippet marks the match: {dom}"
    );
    assert!(dom.contains("class=\"trip\""), "trips are listed");
    assert!(
        dom.contains("Kites over the Forbidden City"),
        "captions under thumbnails"
    );

    // The search box's live results, fetched by the page's script from /api/search.
    let dom = dump_dom(
        browser,
        &format!("http://127.0.0.1:{port}/#live=Kites"),
        &profile,
    );
    let live = dom
        .split("id=\"live-results\"")
        .nth(1)
        .expect("live results list");
    assert!(
        live.contains("class=\"live-hit\"") && live.contains("beijing/b.jpg"),
        "{dom}"
    );
}
