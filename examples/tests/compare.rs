//! `vlm compare` end to end: the built `vlm` binary over the three families' tiny fixtures
//! (Qwen2-VL, BLIP-2 OPT, MiniGPT-4 Vicuna v0) on photos this test draws, with a broken
//! photo, a model folder that does not exist, references (one for a photo that is not
//! there) and a price. Checks that every metric is present and consistent (p95 ≥ p50,
//! cost = price × time), that the cascade row follows its threshold, and that the HTML
//! report renders and sorts in headless Chromium.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const PRICE: f64 = 5.8;
/// Between the tiny BLIP-2 OPT's per-photo mean token log-probabilities on these photos
/// (p1 -0.556, p2 -0.509, p3 -0.471 at 6 greedy tokens in f32), so the cascade routes one
/// photo of three; the routing is also checked against the outputs' own numbers.
const THRESHOLD: &str = "-0.53";

fn fixtures() -> PathBuf {
    std::env::var_os("VLM_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../vlm-models/tests/fixtures")
        })
}

fn models() -> Vec<String> {
    let f = fixtures();
    vec![
        f.join("qwen/qwen2_vl/model").display().to_string(),
        f.join("blip2/opt/model").display().to_string(),
        f.join("minigpt4/vicuna0/model").display().to_string(),
    ]
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vlm-compare-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A 64×48 gradient photo, different per seed.
fn draw(path: &Path, seed: u8) {
    let img = image::RgbImage::from_fn(64, 48, |x, y| {
        image::Rgb([(x * 4) as u8 ^ seed, (y * 5) as u8, seed.wrapping_mul(37)])
    });
    img.save(path).unwrap();
}

/// photos/{p1,p2,p3}.png + broken.jpg, trips/beijing/{a,b}.png, q.jsonl, refs.jsonl.
fn album(dir: &Path) {
    let photos = dir.join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    for (i, name) in ["p1.png", "p2.png", "p3.png"].iter().enumerate() {
        draw(&photos.join(name), 40 * i as u8 + 7);
    }
    std::fs::write(photos.join("broken.jpg"), b"not a photo").unwrap();
    let trip = dir.join("trips/beijing");
    std::fs::create_dir_all(&trip).unwrap();
    draw(&trip.join("a.png"), 200);
    draw(&trip.join("b.png"), 220);
    std::fs::write(
        dir.join("q.jsonl"),
        "{\"question\": \"How many people are there?\"}\n{\"photo\": \"p1.png\", \"question\": \"照片中主菜是什么?\"}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("refs.jsonl"),
        "{\"photo\": \"p1.png\", \"caption\": \"一家人围着一桌菜吃饭\", \"language\": \"zh\"}\n\
         {\"photo\": \"p2.png\", \"question\": \"照片中主菜是什么?\", \"answer\": \"红烧肉\"}\n\
         {\"photo\": \"nope.png\", \"caption\": \"a photo that is not there\"}\n",
    )
    .unwrap();
}

fn vlm_compare(dir: &Path, extra: &[&str], models: &[String]) -> (String, Value, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vlm"));
    cmd.arg("compare");
    for m in models {
        cmd.args(["--model", m]);
    }
    let report = dir.join("report");
    cmd.arg("--photos")
        .arg(dir.join("photos"))
        .args([
            "--device",
            "cpu",
            "--dtype",
            "f32",
            "--batch-size",
            "2",
            "--max-new-tokens",
            "6",
        ])
        .args(extra)
        .arg("--report")
        .arg(&report);
    let out = cmd.output().expect("run vlm");
    assert!(
        out.status.success(),
        "vlm compare failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("results.json")).unwrap())
            .unwrap();
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    (md, json, String::from_utf8_lossy(&out.stdout).into_owned())
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// The cheap model's mean token log-probability over its outputs for `photo`, weighted
/// by tokens, as results.json records them.
fn photo_logprob(model: &Value, photo: &str) -> Option<f64> {
    let (mut sum, mut tokens) = (0.0, 0.0);
    for o in model["outputs"].as_array().unwrap() {
        if o["subject"] == photo && o["task"] != "relate" {
            if let (Some(lp), Some(n)) = (o["mean_logprob"].as_f64(), o["tokens"].as_f64()) {
                sum += lp * n;
                tokens += n;
            }
        }
    }
    (tokens > 0.0).then(|| sum / tokens)
}

#[test]
fn compare_three_families_with_price_references_and_bad_input() {
    let dir = temp_dir("full");
    album(&dir);
    let mut specs = models();
    specs.push(dir.join("no-such-model").display().to_string());
    let cascade = "opt/model:qwen2_vl/model";
    let (md, r, stdout) = vlm_compare(
        &dir,
        &[
            "--trips",
            dir.join("trips").to_str().unwrap(),
            "--questions",
            dir.join("q.jsonl").to_str().unwrap(),
            "--references",
            dir.join("refs.jsonl").to_str().unwrap(),
            "--price-per-hour",
            "5.8",
            "--currency",
            "CNY",
            "--card",
            "A10G",
            "--cascade",
            cascade,
            "--threshold",
            THRESHOLD,
        ],
        &specs,
    );

    assert_eq!(
        r["photos"],
        serde_json::json!(["p1.png", "p2.png", "p3.png"])
    );
    assert_eq!(
        r["failed_photos"][0]["photo"], "broken.jpg",
        "{}",
        r["failed_photos"]
    );
    assert_eq!(
        r["unknown_references"],
        serde_json::json!([{"line": 3, "photo": "nope.png"}])
    );
    assert_eq!(r["trips"][0]["trip"], "beijing");
    assert!(r["gpu_memory"]["note"]
        .as_str()
        .unwrap()
        .starts_with("not measured"));

    let rows = r["models"].as_array().unwrap();
    assert_eq!(rows.len(), 4);
    let missing = &rows[3];
    assert!(
        missing["error"].as_str().unwrap().contains("no-such-model"),
        "{missing}"
    );
    assert!(missing["metrics"].is_null());

    for m in &rows[..3] {
        let name = m["name"].as_str().unwrap();
        assert!(m["error"].is_null(), "{name}: {}", m["error"]);
        let x = &m["metrics"];
        for key in [
            "load_s",
            "first_call_s",
            "latency_p50_s",
            "latency_p95_s",
            "throughput_photos_per_s",
            "time_to_first_token_s",
            "decode_tokens_per_s",
        ] {
            assert!(f(&x[key]) > 0.0, "{name}: {key} = {}", x[key]);
        }
        assert!(
            f(&x["latency_p95_s"]) >= f(&x["latency_p50_s"]),
            "{name}: p95 < p50"
        );
        assert_eq!(x["latency_samples"], 6, "3 photos × zh and en");
        assert_eq!(x["throughput_batch_size"], 2);
        assert!(x["weights_bytes"].as_u64().unwrap() > 0);
        assert!(
            x["peak_gpu_memory_bytes"].is_null(),
            "never a number on the CPU"
        );
        assert!(x["gpu_memory_note"]
            .as_str()
            .unwrap()
            .starts_with("not measured"));
        assert_eq!(f(&x["cost_per_hour"]), PRICE);
        let per_photo = 1.0 / f(&x["throughput_photos_per_s"]);
        assert!(
            close(
                f(&x["cost_per_1000_photos"]),
                PRICE * per_photo * 1000.0 / 3600.0
            ),
            "{name}: cost = price × time"
        );

        let outputs = m["outputs"].as_array().unwrap();
        let count = |task: &str| outputs.iter().filter(|o| o["task"] == task).count();
        assert_eq!(count("describe"), 6);
        // p1: two q.jsonl questions; p2: one, plus the reference's; p3: one.
        assert_eq!(count("vqa"), 5);
        assert_eq!(count("relate"), 1);
        for o in outputs {
            assert!(o["error"].is_null(), "{name}: {o}");
            assert!(o["text"].is_string());
        }
        let relate = outputs.iter().find(|o| o["task"] == "relate").unwrap();
        let native = m["info"]["native_multi_image"].as_bool().unwrap();
        assert_eq!(
            relate["multi_image"],
            if native { "native" } else { "captions" }
        );

        let q = &m["quality"];
        assert_eq!(q["vqa_scored"], 1);
        assert_eq!(q["captions_scored"], 1);
        for key in ["vqa_exact_match", "vqa_contains_match"] {
            assert!((0.0..=1.0).contains(&f(&q[key])), "{name}: {key}");
        }
        assert!((0.0..=100.0).contains(&f(&q["caption_chrf"])));
        assert!(md.contains(&format!("| {name} |")), "{name} has a row");
    }
    assert_eq!(
        rows[0]["info"]["native_multi_image"], true,
        "Qwen relates natively"
    );
    assert_eq!(
        rows[1]["info"]["native_multi_image"], false,
        "BLIP-2 captions first"
    );

    // The cascade: routing follows the cheap model's own log-probabilities, cost its
    // measured time plus the strong model's for the routed share.
    let c = &r["cascade"];
    assert!(c["error"].is_null(), "{c}");
    let threshold: f64 = THRESHOLD.parse().unwrap();
    let cheap = &rows[1];
    let strong = &rows[0];
    let expected: Vec<&str> = ["p1.png", "p2.png", "p3.png"]
        .into_iter()
        .filter(|p| photo_logprob(cheap, p).is_none_or(|lp| lp < threshold))
        .collect();
    assert_eq!(c["routed_photos"], serde_json::json!(expected));
    assert_eq!(
        expected,
        ["p1.png"],
        "the threshold sits between the photos' log-probabilities"
    );
    let share = expected.len() as f64 / 3.0;
    assert!(close(f(&c["routed_share"]), share));
    let seconds = 1.0 / f(&cheap["metrics"]["throughput_photos_per_s"])
        + share / f(&strong["metrics"]["throughput_photos_per_s"]);
    assert!(close(f(&c["seconds_per_photo"]), seconds));
    assert!(close(
        f(&c["cost_per_1000_photos"]),
        PRICE * seconds * 1000.0 / 3600.0
    ));
    assert_eq!(c["quality"]["vqa_scored"], 1);

    // report.md: the founders' table, the notes, the outputs side by side.
    for needle in [
        "| model | load | first call | latency p50 | latency p95 | photos/s (batch 2) | first token | decode tok/s | peak GPU memory | weights | CNY/hour | CNY/1,000 photos | VQA exact | VQA contains | caption chrF |",
        "A10G at 5.8 CNY/hour",
        "| no-such-model | error: ",
        "| cascade opt/model → qwen2_vl/model (log-prob < -0.53) |",
        "photo broken.jpg could not be read",
        "references line 3: no photo \"nope.png\"",
        "## Outputs side by side",
        "### photo p1.png",
        "| vqa: 照片中主菜是什么? |",
        "| describe (zh) |",
        "### trip beijing",
        "[no native multi-image: each photo captioned, then the captions related]",
    ] {
        assert!(md.contains(needle), "report.md lacks {needle:?}:\n{md}");
    }
    assert!(
        stdout.contains("wrote ") && stdout.contains("| model | load |"),
        "{stdout}"
    );

    html_renders_and_sorts(&dir.join("report"), &r);
}

/// Without a price or references: no cost columns (a note says so), no scores.
#[test]
fn compare_without_price_or_references() {
    let dir = temp_dir("bare");
    album(&dir);
    let (md, r, _) = vlm_compare(&dir, &["--languages", "en"], &models()[..1]);
    let m = &r["models"][0];
    assert!(m["metrics"]["cost_per_hour"].is_null());
    assert!(m["metrics"]["cost_per_1000_photos"].is_null());
    assert!(m["quality"].is_null(), "never invented scores");
    assert_eq!(m["metrics"]["latency_samples"], 3);
    // Default questions: the founders' and one in English, for every photo.
    let vqa: Vec<&str> = m["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["task"] == "vqa" && o["subject"] == "p1.png")
        .map(|o| o["question"].as_str().unwrap())
        .collect();
    assert_eq!(
        vqa,
        [
            "照片中主菜是什么?",
            "What is the main subject of this photo?"
        ]
    );
    assert!(
        !md.contains("CNY/hour") && !md.contains("VQA exact"),
        "{md}"
    );
    assert!(md.contains("no --price-per-hour: the cost columns are omitted"));
    assert!(md.contains("no --references: outputs are shown side by side, unscored"));
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

/// report.html in headless Chromium: the page's script ran (the table is sortable), the
/// thumbnails are inline, and `#sort=1` orders the models by load time.
fn html_renders_and_sorts(report: &Path, r: &Value) {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but no chromium was found: install it (apt-get install -y chromium)"
        );
        common::skip(
            "the HTML check needs a chromium binary: install it with `apt-get install -y chromium`",
        );
        return;
    };
    let profile = report.join("chromium-profile");
    let url = format!("file://{}#sort=1", report.join("report.html").display());
    let out = Command::new(browser)
        .args([
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--virtual-time-budget=3000", "--dump-dom", &url])
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("data-sortable=\"ready\""),
        "the sort script did not run:\n{dom}"
    );
    // 3 photos + 2 trip photos, inline.
    assert_eq!(dom.matches("<img src=\"data:image/jpeg;base64,").count(), 5);
    let founders = dom
        .split("id=\"founders\"")
        .nth(1)
        .unwrap()
        .split("</table>")
        .next()
        .unwrap();
    let mut by_load: Vec<(f64, &str)> = r["models"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["error"].is_null())
        .map(|m| (f(&m["metrics"]["load_s"]), m["name"].as_str().unwrap()))
        .collect();
    by_load.sort_by(|a, b| a.0.total_cmp(&b.0));
    let positions: Vec<usize> = by_load
        .iter()
        .map(|(_, name)| {
            founders
                .find(&format!("<td>{name}</td>"))
                .unwrap_or_else(|| panic!("{name} in {founders}"))
        })
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "rows sorted by load time: {by_load:?}"
    );
    let error_row = founders.find("no-such-model").unwrap();
    assert!(
        positions.iter().all(|&p| p < error_row),
        "the error row stays at the bottom"
    );
}
