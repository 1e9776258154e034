//! Each family's image preprocessing of a 1024×768 photo, at the real checkpoints'
//! settings: Qwen2.5-VL smart_resize to 1036×756 (torchvision bicubic), normalise and
//! patchify; BLIP-2 torchvision bicubic to 224×224; MiniGPT-4 Pillow bicubic to 224×224.
//!
//! BLIP-2's and MiniGPT-4's fixtures already use the real 224 settings, so their loaded
//! models' own processors are timed. The Qwen fixture caps images at 9,408 pixels, so its
//! processor is rebuilt with Qwen2.5-VL-7B-Instruct's preprocessor_config.json.

use std::hint::black_box;

use criterion::Criterion;
use vlm_models::blip2::Blip2;
use vlm_models::minigpt4::MiniGpt4;
use vlm_models::qwen_vl::{QwenProcessor, QwenVl};

use crate::{cpu_f32, fixture, photo};

/// Qwen2.5-VL-7B-Instruct's preprocessor_config.json, as the checkpoint ships it.
const QWEN2_5_VL_PREPROCESSOR: &str = r#"{
  "min_pixels": 3136,
  "max_pixels": 12845056,
  "patch_size": 14,
  "temporal_patch_size": 2,
  "merge_size": 2,
  "image_mean": [0.48145466, 0.4578275, 0.40821073],
  "image_std": [0.26862954, 0.26130258, 0.27577711],
  "image_processor_type": "Qwen2VLImageProcessor",
  "processor_class": "Qwen2_5_VLProcessor"
}"#;

/// smart_resize of 1024×768 with 28-pixel merged patches: 37 × 27 of them.
const QWEN_GRID: [usize; 3] = [1, 756 / 14, 1036 / 14];

fn qwen2_5_vl_processor() -> QwenProcessor {
    // Only the tokenizer is taken from the fixture; preprocessing never touches it.
    let fixture = QwenVl::load(&fixture("qwen/qwen2_5_vl/model"), &cpu_f32()).expect("loads");
    let config = serde_json::from_str(QWEN2_5_VL_PREPROCESSOR).expect("valid config");
    let tokenizer = fixture.processor().tokenizer().clone();
    QwenProcessor::new(config, tokenizer, None, fixture.config().image_token_id).expect("valid")
}

pub fn bench(c: &mut Criterion) {
    let photo = photo::synthetic_photo();
    let mut group = c.benchmark_group("preprocess");

    let qwen = qwen2_5_vl_processor();
    let grid = qwen.preprocess(&photo).expect("preprocesses").grid_thw;
    assert_eq!(grid, QWEN_GRID, "Qwen2.5-VL smart_resize of 1024×768");
    group.bench_function("qwen2_5_vl_1036x756", |b| {
        b.iter(|| qwen.preprocess(black_box(&photo)).expect("preprocesses"))
    });

    let blip2 = Blip2::load(&fixture("blip2/opt/model"), &cpu_f32()).expect("loads");
    assert_eq!(blip2.processor().image_size(), (224, 224));
    group.bench_function("blip2_224", |b| {
        b.iter(|| blip2.processor().preprocess(black_box(&photo)))
    });

    let minigpt4 = MiniGpt4::load(&fixture("minigpt4/vicuna0/model"), &cpu_f32()).expect("loads");
    assert_eq!(minigpt4.config().image_size, 224);
    group.bench_function("minigpt4_224", |b| {
        b.iter(|| minigpt4.preprocess(black_box(&photo)))
    });

    group.finish();
}
