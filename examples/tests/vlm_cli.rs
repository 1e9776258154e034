//! The `vlm` binary's locate and --json-schema on the tiny random fixtures of vlm-models.

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(family: &str, variant: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../vlm-models/tests/fixtures")
        .join(family)
        .join(variant)
}

fn vlm(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vlm"))
        .args(args)
        .output()
        .unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vlm-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn locate_prints_json_and_draws_the_photo() {
    let dir = fixture("qwen", "qwen3_vl");
    let out_png = scratch("locate").join("boxes.png");
    let out = vlm(&[
        "locate",
        "--model",
        dir.join("model").to_str().unwrap(),
        "--image",
        dir.join("images/a.png").to_str().unwrap(),
        "--device",
        "cpu",
        "--max-new-tokens",
        "80",
        "--temperature",
        "1.0",
        "--seed",
        "1",
        "--json",
        "--draw",
        out_png.to_str().unwrap(),
        "the cake",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (w, h) = (
        v["image"]["width"].as_f64().unwrap(),
        v["image"]["height"].as_f64().unwrap(),
    );
    for d in v["detections"].as_array().unwrap() {
        assert!(d["label"].is_string());
        let b: Vec<f64> = d["bbox"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert!(
            b.len() == 4 && b[0] <= b[2] && b[2] <= w && b[1] <= b[3] && b[3] <= h,
            "{d}"
        );
    }
    let drawn = image::open(&out_png).unwrap();
    assert_eq!((drawn.width() as f64, drawn.height() as f64), (w, h));
}

#[test]
fn locate_on_a_family_without_grounding_fails_with_the_reason() {
    let dir = fixture("blip2", "opt");
    let out = vlm(&[
        "locate",
        "--model",
        dir.join("model").to_str().unwrap(),
        "--image",
        dir.join("images/a.png").to_str().unwrap(),
        "--device",
        "cpu",
        "the cake",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot locate"), "{err}");
}

#[test]
fn json_schema_file_constrains_the_answer() {
    let dir = fixture("qwen", "qwen2_5_vl");
    let schema = scratch("schema").join("tags.json");
    std::fs::write(
        &schema,
        r#"{"type": "object", "properties": {"tags": {"type": "array", "items": {"enum": ["cake", "dog", "tree"]}, "maxItems": 3}}, "required": ["tags"], "additionalProperties": false}"#,
    )
    .unwrap();
    let out = vlm(&[
        "ask",
        "--model",
        dir.join("model").to_str().unwrap(),
        "--image",
        dir.join("images/a.png").to_str().unwrap(),
        "--device",
        "cpu",
        "--greedy",
        "--max-new-tokens",
        "64",
        "--json-schema",
        schema.to_str().unwrap(),
        "--no-stream",
        "tags?",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for tag in v["tags"].as_array().unwrap() {
        assert!(["cake", "dog", "tree"].contains(&tag.as_str().unwrap()));
    }
}
