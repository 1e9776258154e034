//! Loading the reference fixtures (tools/fixtures/*.py) and comparing generations with them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde_json::Value;

use super::{full_precision, rel_err};

/// A family's variant folder under `VLM_FIXTURES` (the GPU check runs the test binary away
/// from the repository) or this crate's tests/fixtures.
pub fn fixture_dir(family: &str, variant: &str) -> PathBuf {
    let root = std::env::var_os("VLM_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"));
    root.join(family).join(variant)
}

pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e} (fixtures: tools/fixtures)", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn read_tensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One variant's `cases.json` cases and `goldens.safetensors` tensors.
pub struct Fixture {
    pub dir: PathBuf,
    pub cases: Vec<Value>,
    pub goldens: HashMap<String, Tensor>,
}

impl Fixture {
    pub fn load(family: &str, variant: &str) -> Self {
        let dir = fixture_dir(family, variant);
        let meta = read_json(&dir.join("cases.json"));
        let goldens = read_tensors(&dir.join("goldens.safetensors"));
        Fixture {
            cases: meta["cases"].as_array().unwrap().clone(),
            dir,
            goldens,
        }
    }

    pub fn model_dir(&self) -> PathBuf {
        self.dir.join("model")
    }

    pub fn model_path(&self) -> String {
        self.model_dir().to_str().unwrap().to_string()
    }

    pub fn case(&self, name: &str) -> &Value {
        self.cases
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("{}: no case {name}", self.dir.display()))
    }
}

/// `[[t, h, w], ...]` as the processors' grids.
pub fn grids(v: &Value) -> Vec<Vec<usize>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|g| {
            g.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as usize)
                .collect()
        })
        .collect()
}

/// Per-step logits of a generation (`return_logits`) as one `[steps, vocab]` tensor.
pub fn steps_tensor(steps: &[Vec<f32>]) -> Tensor {
    let vocab = steps[0].len();
    Tensor::from_vec(steps.concat(), (steps.len(), vocab), &Device::Cpu).unwrap()
}

/// Relative error of per-step logits against a `step_logits` golden: every step in f32,
/// only the first in half precision (later steps follow tokens that may differ there).
pub fn step_logits_rel_err(steps: &[Vec<f32>], want: &Tensor) -> f32 {
    let got = steps_tensor(steps);
    if full_precision() {
        rel_err(&got, want)
    } else {
        rel_err(
            &got.narrow(0, 0, 1).unwrap(),
            &want.narrow(0, 0, 1).unwrap(),
        )
    }
}
