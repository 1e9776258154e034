//! Helpers shared by the CLI tests.

#![allow(dead_code)] // each test binary uses its own subset

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
