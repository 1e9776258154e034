//! The `vlm` binary end to end on the tiny Qwen2.5-VL fixture: `--json` speaks the Python
//! API's names and units, and a hub id loads from the hub cache with `HF_HUB_OFFLINE=1`
//! without touching the network.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../vlm-models/tests/fixtures/qwen/qwen2_5_vl/model")
}

fn photo(dir: &Path) -> PathBuf {
    let path = dir.join("photo.png");
    image::RgbImage::from_fn(40, 28, |x, y| {
        image::Rgb([(x * 6) as u8, (y * 9) as u8, 120])
    })
    .save(&path)
    .expect("writes the photo");
    path
}

fn vlm(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vlm"));
    cmd.args(args).env_remove("HF_HUB_OFFLINE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("runs vlm")
}

fn json_of(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "vlm failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

#[test]
fn json_uses_the_python_names_and_seconds() {
    let tmp = tempdir("json");
    let photo = photo(&tmp);
    let model = fixture();
    let out = vlm(
        &[
            "describe",
            "-m",
            model.to_str().unwrap(),
            "--image",
            photo.to_str().unwrap(),
            "--device",
            "cpu",
            "--greedy",
            "--max-new-tokens",
            "3",
            "--json",
        ],
        &[],
    );
    let json = json_of(&out);
    assert_eq!(json["finish_reason"], "length", "{json}");
    assert!(json["stop_string"].is_null());
    assert_eq!(json["token_ids"].as_array().unwrap().len(), 3);
    assert_eq!(json["family"], "qwen_vl");
    assert_eq!(json["model"], "qwen2_5_vl");
    assert_eq!(json["device"], "cpu");
    assert_eq!(json["dtype"], "f32");
    assert_eq!(json["quantization"], "none");
    let t = &json["timings"];
    for key in [
        "preprocess",
        "image_encode",
        "prefill",
        "decode",
        "time_to_first_token",
    ] {
        let s = t[key]
            .as_f64()
            .unwrap_or_else(|| panic!("timings.{key} missing: {json}"));
        // Seconds, not milliseconds: the tiny model takes well under a minute.
        assert!((0.0..60.0).contains(&s), "timings.{key} = {s}");
    }
    let ttft = t["time_to_first_token"].as_f64().unwrap();
    let parts: f64 = ["preprocess", "image_encode", "prefill"]
        .iter()
        .map(|k| t[k].as_f64().unwrap())
        .sum();
    assert!((ttft - parts).abs() < 1e-6, "{ttft} vs {parts}");
    assert_eq!(t["decode_steps"], 2);
    let load = json["load_time"].as_f64().unwrap();
    assert!(load > 0.0 && load < 60.0, "load_time {load}");
}

/// A hub cache laid out as the hub libraries write it: refs/main → a commit, the files in
/// snapshots/<commit>/.
fn hub_cache(root: &Path, repo_folder: &str, commit: &str) {
    let repo = root.join("hub").join(repo_folder);
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    for entry in std::fs::read_dir(fixture()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), snapshot.join(entry.file_name())).unwrap();
    }
}

#[test]
fn offline_hub_ids_load_from_the_cache_without_network() {
    let tmp = tempdir("offline");
    let photo = photo(&tmp);
    let home = tmp.join("hf");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    hub_cache(&home, "models--vlm-test--tiny-qwen", commit);
    // Any request would go to a closed port and fail the load.
    let dead_endpoint = Path::new("http://127.0.0.1:9");
    let offline = [("HF_HOME", home.as_path()), ("HF_ENDPOINT", dead_endpoint)];
    let run = |model: &str, revision: Option<&str>, offline_flag: &str| {
        let mut args = vec![
            "describe",
            "-m",
            model,
            "--image",
            photo.to_str().unwrap(),
            "--device",
            "cpu",
            "--greedy",
            "--max-new-tokens",
            "2",
            "--json",
        ];
        if let Some(r) = revision {
            args.extend(["--revision", r]);
        }
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vlm"));
        cmd.args(&args).env("HF_HUB_OFFLINE", offline_flag);
        for (k, v) in offline {
            cmd.env(k, v);
        }
        cmd.output().expect("runs vlm")
    };

    let by_branch = json_of(&run("vlm-test/tiny-qwen", None, "1"));
    let local = json_of(&vlm(
        &[
            "describe",
            "-m",
            fixture().to_str().unwrap(),
            "--image",
            photo.to_str().unwrap(),
            "--device",
            "cpu",
            "--greedy",
            "--max-new-tokens",
            "2",
            "--json",
        ],
        &[],
    ));
    assert_eq!(by_branch["token_ids"], local["token_ids"]);
    // A commit id has no refs/ file: online, hf-hub would ask the (dead) endpoint and
    // fail, so this passing shows that the offline path made no request.
    let by_commit = json_of(&run("vlm-test/tiny-qwen", Some(commit), "true"));
    assert_eq!(by_commit["token_ids"], local["token_ids"]);
    let online = run("vlm-test/tiny-qwen", Some(commit), "0");
    assert!(
        !online.status.success(),
        "the endpoint is not dead: {online:?}"
    );

    let missing = run("vlm-test/not-cached", None, "1");
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("HF_HUB_OFFLINE is set") && err.contains("config.json"),
        "{err}"
    );
    let other_branch = run("vlm-test/tiny-qwen", Some("v2"), "1");
    let err = String::from_utf8_lossy(&other_branch.stderr);
    assert!(
        !other_branch.status.success() && err.contains("revision v2"),
        "{err}"
    );
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vlm-cli-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// docs/cli.md is the CLI reference: every subcommand and every flag `--help` prints must
/// be named there, so a new flag without documentation fails here.
#[test]
fn every_command_and_flag_is_in_the_cli_reference() {
    let reference =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/cli.md"))
            .expect("docs/cli.md");
    let help = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_vlm"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let top = help(&["--help"]);
    let commands: Vec<String> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect();
    assert!(commands.len() >= 7, "{top}");
    let mut missing = Vec::new();
    for command in &commands {
        if !reference.contains(&format!("vlm {command}")) {
            missing.push(format!("vlm {command}"));
        }
        for line in help(&[command, "--help"]).lines() {
            let line = line.trim_start();
            if !line.starts_with('-') {
                continue;
            }
            // "-m, --model <MODEL>  text": the flag is the first `--word` of the line.
            let flag = line
                .split(|c: char| c.is_whitespace() || c == ',')
                .find(|w| w.starts_with("--"))
                .unwrap_or_default();
            if flag != "--help" && flag != "--version" && !names(&reference, flag) {
                missing.push(format!("vlm {command} {flag}"));
            }
        }
    }
    missing.sort();
    missing.dedup();
    assert!(missing.is_empty(), "not in docs/cli.md: {missing:?}");
}

/// Whether `text` names `flag` as a whole word (`--top-p` does not count for `--top`).
fn names(text: &str, flag: &str) -> bool {
    text.match_indices(flag).any(|(i, _)| {
        let next = text[i + flag.len()..].chars().next();
        !matches!(next, Some(c) if c.is_alphanumeric() || c == '-' || c == '_')
    })
}
