//! Pixel budgets (`min_pixels` / `max_pixels`) against transformers 5.17 on the tiny Qwen-VL
//! checkpoints: with a budget set at load, per request, or on the `vlm` command line, the
//! input ids, grids and pixel values must be the reference processor's, and greedy tokens
//! the reference's; budgets transformers silently accepts but that make no sense must be
//! bad-input errors. Fixtures: tools/fixtures/qwen_budgets.py (budgets.json /
//! budgets.safetensors next to qwen_vl.py's cases).
//!
//! `VLM_TEST_DEVICE` / `VLM_TEST_DTYPE` / `VLM_FIXTURES` work as in qwen_parity.rs; in half
//! precision only the preprocessing is compared (tokens need f32 margins).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::Tensor;
use serde_json::Value;
use vlm_contract::files::ModelDir;
use vlm_contract::model::LoadOptions;
use vlm_contract::{ErrorKind, Family, GenerationOptions, Image, Prompt, Request};
use vlm_models::qwen_vl::{QwenInputs, QwenVl};

mod common;
use common::fixture::{fixture_dir, grids, read_json, read_tensors};
use common::{cpu_f32, full_precision, ids, max_abs_diff, messages, skip, Failures, PIXEL_TOL};

const VARIANTS: &[&str] = &["qwen2_vl", "qwen2_5_vl", "qwen3_vl"];
/// Greedy steps recorded per case (`max_new_tokens` in budgets.json).
const NEW_TOKENS: usize = 8;

struct Fixture {
    variant: &'static str,
    dir: PathBuf,
    cases: Vec<Value>,
    invalid: Vec<Value>,
    pixels: HashMap<String, Tensor>,
}

fn fixture(variant: &'static str) -> Fixture {
    let dir = fixture_dir("qwen", variant);
    let meta = read_json(&dir.join("budgets.json"));
    assert_eq!(meta["max_new_tokens"].as_u64(), Some(NEW_TOKENS as u64));
    let pixels = read_tensors(&dir.join("budgets.safetensors"));
    Fixture {
        variant,
        cases: meta["cases"].as_array().unwrap().clone(),
        invalid: meta["invalid_budgets"].as_array().unwrap().clone(),
        dir,
        pixels,
    }
}

impl Fixture {
    fn model_dir(&self) -> PathBuf {
        self.dir.join("model")
    }

    fn model_path(&self) -> String {
        self.model_dir().to_str().unwrap().to_string()
    }

    fn images(&self, case: &Value) -> Vec<Image> {
        case["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| Image::open(self.dir.join(p.as_str().unwrap())).unwrap())
            .collect()
    }

    /// A golden case as a chat request (the same one-turn conversation the reference
    /// rendered with its chat template).
    fn request(&self, case: &Value, options: GenerationOptions) -> Request {
        Request {
            images: self.images(case),
            prompt: Prompt::Chat(messages(&case["messages"])),
            options,
        }
    }

    /// An invalid budget's request: one image and the question, in a chat turn.
    fn invalid_request(&self, case: &Value, options: GenerationOptions) -> Request {
        let question = case["question"].as_str().unwrap();
        let images = self.images(case);
        let turn = serde_json::json!([{"role": "user", "content": [
            {"type": "image"}, {"type": "text", "text": question}
        ]}]);
        Request {
            images,
            prompt: Prompt::Chat(messages(&turn)),
            options,
        }
    }
}

/// `min_pixels` / `max_pixels` of a case (JSON null = not set).
fn budget(case: &Value) -> (Option<usize>, Option<usize>) {
    let get = |k: &str| case[k].as_u64().map(|v| v as usize);
    (get("min_pixels"), get("max_pixels"))
}

fn load_options(budget: (Option<usize>, Option<usize>)) -> LoadOptions {
    LoadOptions {
        min_pixels: budget.0,
        max_pixels: budget.1,
        ..cpu_f32()
    }
}

fn request_options(budget: (Option<usize>, Option<usize>)) -> GenerationOptions {
    GenerationOptions {
        min_pixels: budget.0,
        max_pixels: budget.1,
        ..GenerationOptions::greedy(NEW_TOKENS)
    }
}

/// Processor outputs of one case against its goldens; `how` names the route in messages.
fn check_inputs(f: &mut Failures, fx: &Fixture, case: &Value, inputs: &QwenInputs, how: &str) {
    let name = case["name"].as_str().unwrap();
    let label = format!("{}/{name} ({how})", fx.variant);
    f.check(inputs.input_ids == ids(&case["input_ids"]), || {
        format!(
            "{label}: input_ids differ ({} ids, want {})",
            inputs.input_ids.len(),
            case["prompt_len"]
        )
    });
    let got: Vec<Vec<usize>> = inputs.images.iter().map(|i| i.grid_thw.to_vec()).collect();
    let want = grids(&case["image_grid_thw"]);
    f.check(got == want, || {
        format!("{label}: image_grid_thw {got:?} != {want:?}")
    });
    if got != want {
        return;
    }
    let pixels: Vec<f32> = inputs
        .images
        .iter()
        .flat_map(|i| i.pixel_values.iter().copied())
        .collect();
    let d = max_abs_diff(&pixels, &fx.pixels[&format!("{name}.pixel_values")]);
    f.check(d <= PIXEL_TOL, || {
        format!("{label}: pixel_values max abs diff {d}")
    });
}

fn load_qwen(fx: &Fixture, options: &LoadOptions) -> vlm_contract::Result<QwenVl> {
    QwenVl::load(&ModelDir::local(&fx.model_dir()).unwrap(), options)
}

/// A budget given when loading applies to every request that sets none.
fn check_load_budget(variant: &'static str) {
    let fx = fixture(variant);
    let mut f = Failures::default();
    for case in &fx.cases {
        let model = load_qwen(&fx, &load_options(budget(case))).unwrap();
        let prepared = model
            .prepare(&fx.request(case, GenerationOptions::greedy(NEW_TOKENS)))
            .unwrap();
        check_inputs(&mut f, &fx, case, prepared.inputs(), "load budget");
    }
    f.assert_none();
}

/// A budget given with the request, on a model loaded without one, and over a different
/// load budget (the request's values win).
fn check_request_budget(variant: &'static str) {
    let fx = fixture(variant);
    let mut f = Failures::default();
    let plain = load_qwen(&fx, &cpu_f32()).unwrap();
    // The tightest valid budget, so that any leak of the load value into a request that
    // sets both values would change the grid.
    let group = fx
        .cases
        .iter()
        .find(|c| c["budget"] == "one_group")
        .unwrap();
    let budgeted = load_qwen(&fx, &load_options(budget(group))).unwrap();
    for case in &fx.cases {
        let b = budget(case);
        let prepared = plain
            .prepare(&fx.request(case, request_options(b)))
            .unwrap();
        check_inputs(&mut f, &fx, case, prepared.inputs(), "request budget");
        if b.0.is_some() && b.1.is_some() {
            let prepared = budgeted
                .prepare(&fx.request(case, request_options(b)))
                .unwrap();
            check_inputs(
                &mut f,
                &fx,
                case,
                prepared.inputs(),
                "request budget over a load budget",
            );
        }
    }
    f.assert_none();
}

/// Greedy tokens through the public `vlm_models::load` + `generate`, budget at load and per
/// request; tokens only where the reference's margins are clear (`compare_tokens`).
fn check_generate(variant: &'static str) {
    let fx = fixture(variant);
    let mut f = Failures::default();
    let plain = vlm_models::load(&fx.model_path(), &cpu_f32()).unwrap();
    for case in &fx.cases {
        let name = case["name"].as_str().unwrap();
        let b = budget(case);
        let at_load = vlm_models::load(&fx.model_path(), &load_options(b)).unwrap();
        let runs = [
            (
                "load budget",
                at_load
                    .generate(&fx.request(case, GenerationOptions::greedy(NEW_TOKENS)))
                    .unwrap(),
            ),
            (
                "request budget",
                plain
                    .generate(&fx.request(case, request_options(b)))
                    .unwrap(),
            ),
        ];
        for (how, out) in runs {
            f.check(
                out.prompt_tokens == case["prompt_len"].as_u64().unwrap() as usize,
                || {
                    format!(
                        "{variant}/{name} ({how}): prompt_tokens {} != {}",
                        out.prompt_tokens, case["prompt_len"]
                    )
                },
            );
            let compare = full_precision() && case["compare_tokens"].as_bool().unwrap();
            f.check(
                !compare || out.token_ids == ids(&case["greedy_tokens"]),
                || {
                    format!(
                        "{variant}/{name} ({how}): greedy tokens {:?} != {}",
                        out.token_ids, case["greedy_tokens"]
                    )
                },
            );
        }
    }
    f.assert_none();
}

/// A bad-input error that says which option is wrong.
fn check_budget_error(f: &mut Failures, label: &str, result: vlm_contract::Result<()>) {
    match result {
        Ok(()) => {
            f.0.push(format!("{label}: accepted, want a bad-input error"))
        }
        Err(e) => {
            let msg = e.to_string();
            f.check(e.kind() == ErrorKind::BadInput, || {
                format!("{label}: error kind {:?}, want BadInput ({msg})", e.kind())
            });
            f.check(
                msg.contains("min_pixels") || msg.contains("max_pixels"),
                || format!("{label}: message does not name min_pixels/max_pixels: {msg}"),
            );
        }
    }
}

/// Budgets transformers accepts (min above max, max below one merged patch group) are
/// errors here, whether given at load (refused by `load` or by the first request) or per
/// request.
fn check_invalid(variant: &'static str) {
    let fx = fixture(variant);
    let mut f = Failures::default();
    let plain_qwen = load_qwen(&fx, &cpu_f32()).unwrap();
    let plain = vlm_models::load(&fx.model_path(), &cpu_f32()).unwrap();
    for case in &fx.invalid {
        let name = case["name"].as_str().unwrap();
        let b = budget(case);
        let plain_request = fx.invalid_request(case, GenerationOptions::greedy(NEW_TOKENS));

        let load_then_prepare =
            load_qwen(&fx, &load_options(b)).and_then(|m| m.prepare(&plain_request).map(|_| ()));
        check_budget_error(
            &mut f,
            &format!("{variant}/{name} (QwenVl::load budget)"),
            load_then_prepare,
        );
        let load_then_generate = vlm_models::load(&fx.model_path(), &load_options(b))
            .and_then(|m| m.generate(&plain_request).map(|_| ()));
        check_budget_error(
            &mut f,
            &format!("{variant}/{name} (vlm_models::load budget)"),
            load_then_generate,
        );

        let request = fx.invalid_request(case, request_options(b));
        check_budget_error(
            &mut f,
            &format!("{variant}/{name} (prepare, request budget)"),
            plain_qwen.prepare(&request).map(|_| ()),
        );
        check_budget_error(
            &mut f,
            &format!("{variant}/{name} (generate, request budget)"),
            plain.generate(&request).map(|_| ()),
        );
    }
    f.assert_none();
}

#[test]
fn qwen2_vl_load_budget_matches_reference_processor() {
    check_load_budget("qwen2_vl");
}

#[test]
fn qwen2_5_vl_load_budget_matches_reference_processor() {
    check_load_budget("qwen2_5_vl");
}

#[test]
fn qwen3_vl_load_budget_matches_reference_processor() {
    check_load_budget("qwen3_vl");
}

#[test]
fn qwen2_vl_request_budget_matches_reference_processor() {
    check_request_budget("qwen2_vl");
}

#[test]
fn qwen2_5_vl_request_budget_matches_reference_processor() {
    check_request_budget("qwen2_5_vl");
}

#[test]
fn qwen3_vl_request_budget_matches_reference_processor() {
    check_request_budget("qwen3_vl");
}

#[test]
fn budgeted_greedy_generation_matches_reference() {
    for v in VARIANTS {
        check_generate(v);
    }
}

#[test]
fn invalid_budgets_are_bad_input() {
    for v in VARIANTS {
        check_invalid(v);
    }
}

/// A request value completes a load value into a budget with min above max: that is as
/// invalid as giving both at once (transformers would silently take the max branch).
#[test]
fn request_min_above_load_max_is_bad_input() {
    let mut f = Failures::default();
    for v in VARIANTS {
        let fx = fixture(v);
        let small = fx.cases.iter().find(|c| c["budget"] == "small").unwrap();
        let large = fx.cases.iter().find(|c| c["budget"] == "large").unwrap();
        let (Some(_), Some(small_max)) = budget(small) else {
            panic!("{v}: the small budget sets both values");
        };
        let (Some(large_min), _) = budget(large) else {
            panic!("{v}: the large budget sets min_pixels");
        };
        assert!(large_min > small_max);
        let model = load_qwen(&fx, &load_options(budget(small))).unwrap();
        let request = fx.request(small, request_options((Some(large_min), None)));
        check_budget_error(
            &mut f,
            &format!("{v}: load max {small_max}, request min {large_min}"),
            model.prepare(&request).map(|_| ()),
        );
    }
    f.assert_none();
}

// ---- the `vlm` command line -------------------------------------------------------------

/// The `vlm` binary of the workspace (package vlm-examples, which this crate does not
/// depend on, so cargo only builds it for `cargo test --workspace` or `cargo build`).
fn vlm_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let target = if target.is_relative() {
        // cargo resolves a relative CARGO_TARGET_DIR against the directory it ran in; the
        // tests run in this crate's folder, so take the workspace root as the likely one.
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(target)
    } else {
        target
    };
    target
        .join("debug")
        .join(format!("vlm{}", std::env::consts::EXE_SUFFIX))
}

fn cli_device_dtype() -> (String, String) {
    (
        std::env::var("VLM_TEST_DEVICE").unwrap_or_else(|_| "cpu".into()),
        std::env::var("VLM_TEST_DTYPE").unwrap_or_else(|_| "f32".into()),
    )
}

/// `vlm ask` with the case's budget as flags; Ok(JSON) or Err(stderr).
fn run_cli(
    bin: &Path,
    fx: &Fixture,
    case: &Value,
    b: (Option<usize>, Option<usize>),
) -> Result<Value, String> {
    let (device, dtype) = cli_device_dtype();
    let image = fx.dir.join(case["images"][0].as_str().unwrap());
    let mut cmd = Command::new(bin);
    cmd.arg("ask")
        .arg("--model")
        .arg(fx.model_dir())
        .arg("--image")
        .arg(image)
        .args(["--device", &device, "--dtype", &dtype])
        .args([
            "--max-new-tokens",
            &NEW_TOKENS.to_string(),
            "--greedy",
            "--json",
        ]);
    if let Some(min) = b.0 {
        cmd.args(["--min-pixels", &min.to_string()]);
    }
    if let Some(max) = b.1 {
        cmd.args(["--max-pixels", &max.to_string()]);
    }
    cmd.arg(case["question"].as_str().unwrap());
    let out = cmd.output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let stdout = String::from_utf8(out.stdout).unwrap();
    Ok(serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}")))
}

/// `vlm ask --min-pixels/--max-pixels --json`: the prompt length and greedy tokens of the
/// reference; an invalid budget fails with a message naming the option.
#[test]
fn cli_budget_flags_match_reference() {
    let bin = vlm_binary();
    if !bin.is_file() {
        skip(&format!(
            "no vlm binary at {} (build it first: `cargo build -p vlm-examples`; \
             `cargo test --workspace` builds it before running the tests)",
            bin.display()
        ));
        return;
    }
    let mut f = Failures::default();
    for v in VARIANTS {
        let fx = fixture(v);
        // one case with both flags, one with --max-pixels alone (min from the checkpoint)
        for name in ["small_single", "max_only_single"] {
            let case = fx.cases.iter().find(|c| c["name"] == name).unwrap();
            let json = match run_cli(&bin, &fx, case, budget(case)) {
                Ok(json) => json,
                Err(stderr) => {
                    f.0.push(format!(
                        "{v}/{name}: vlm ask failed (a stale binary? rebuild with \
                         `cargo build -p vlm-examples`): {stderr}"
                    ));
                    continue;
                }
            };
            f.check(json["prompt_tokens"] == case["prompt_len"], || {
                format!(
                    "{v}/{name} (cli): prompt_tokens {} != {}",
                    json["prompt_tokens"], case["prompt_len"]
                )
            });
            let compare = full_precision() && case["compare_tokens"].as_bool().unwrap();
            f.check(
                !compare || json["token_ids"] == case["greedy_tokens"],
                || {
                    format!(
                        "{v}/{name} (cli): token_ids {} != {}",
                        json["token_ids"], case["greedy_tokens"]
                    )
                },
            );
        }
        let bad = fx
            .invalid
            .iter()
            .find(|c| c["name"] == "min_above_max")
            .unwrap();
        match run_cli(&bin, &fx, bad, budget(bad)) {
            Ok(json) => f.0.push(format!("{v}: vlm ask accepted min > max: {json}")),
            Err(stderr) => f.check(
                stderr.contains("min_pixels")
                    || stderr.contains("max_pixels")
                    || stderr.contains("min-pixels")
                    || stderr.contains("max-pixels"),
                || format!("{v}: vlm ask min > max: error does not name the option: {stderr}"),
            ),
        }
    }
    f.assert_none();
}
