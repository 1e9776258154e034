//! `load`: config.json's `model_type` → the family that handles it. Each family adds
//! one line to [`FAMILIES`].

use std::path::Path;

use vlm_contract::files::ModelDir;
use vlm_contract::model::LoadOptions;
use vlm_contract::{Error, Result, VisionLanguageModel};

use crate::load_log::{self, LoadLog};
use crate::quantized_folder::{write_folder, LoadContext, SaveReport};

type Loader =
    fn(&ModelDir, &LoadOptions, Option<&LoadContext>) -> Result<Box<dyn VisionLanguageModel>>;

/// (model types, loader) for every family.
const FAMILIES: &[(&[&str], Loader)] = &[
    (crate::qwen_vl::MODEL_TYPES, crate::qwen_vl::load_boxed),
    (crate::blip2::MODEL_TYPES, crate::blip2::load_boxed),
    (crate::minigpt4::MODEL_TYPES, crate::minigpt4::load_boxed),
];

/// Every `model_type` some family handles.
pub fn supported_model_types() -> Vec<&'static str> {
    FAMILIES
        .iter()
        .flat_map(|(types, _)| types.iter().copied())
        .collect()
}

/// Loads a model from a local HF-format folder or a hub repo id (downloaded through
/// hf-hub on first use).
///
/// ```no_run
/// let model = vlm_models::load("Qwen/Qwen2.5-VL-3B-Instruct", &vlm_models::LoadOptions::default())?;
/// println!("{:?}", model.info());
/// # Ok::<(), vlm_contract::Error>(())
/// ```
pub fn load(path_or_id: &str, options: &LoadOptions) -> Result<Box<dyn VisionLanguageModel>> {
    let dir = ModelDir::resolve(path_or_id, options.revision.as_deref())?;
    load_dir(&dir, options)
}

/// Loads from an already resolved folder.
pub fn load_dir(dir: &ModelDir, options: &LoadOptions) -> Result<Box<dyn VisionLanguageModel>> {
    load_dir_with(dir, options, None)
}

fn load_dir_with(
    dir: &ModelDir,
    options: &LoadOptions,
    ctx: Option<&LoadContext>,
) -> Result<Box<dyn VisionLanguageModel>> {
    let model_type = dir.model_type()?;
    for (types, loader) in FAMILIES {
        if types.contains(&model_type.as_str()) {
            tracing::info!(
                target: load_log::TARGET,
                "loading {model_type} from {} (asked for device {}, dtype {}, quantization {})",
                dir.root().display(),
                options.device,
                options.dtype,
                options.quantization.as_str(),
            );
            let log = LoadLog::start();
            let model = loader(dir, options, ctx)?;
            log.finish(&model.info());
            return Ok(model);
        }
    }
    Err(Error::UnsupportedModel {
        model_type,
        supported: supported_model_types(),
    })
}

/// Loads `path_or_id` with `options.quantization` (and `vision_quantization`) and writes
/// a quantized folder to `dst`: model.gguf with every tensor the model reads (quantized
/// ones in their GGML block types, the rest in the load dtype), quantization.json, and
/// the source's config, tokenizer and processor files. Loading `dst` does not quantize
/// again.
///
/// ```no_run
/// use vlm_contract::Quantization;
/// let options = vlm_models::LoadOptions { quantization: Quantization::Int4, ..Default::default() };
/// vlm_models::save_quantized("Qwen/Qwen2-VL-2B-Instruct", "qwen2-vl-2b-int4".as_ref(), &options)?;
/// let model = vlm_models::load("qwen2-vl-2b-int4", &Default::default())?;
/// # Ok::<(), vlm_contract::Error>(())
/// ```
pub fn save_quantized(path_or_id: &str, dst: &Path, options: &LoadOptions) -> Result<SaveReport> {
    let dir = ModelDir::resolve(path_or_id, options.revision.as_deref())?;
    if dir
        .path(crate::quantized_folder::QUANTIZATION_FILE)
        .is_file()
    {
        return Err(Error::invalid_option(
            "quant",
            "the source is already a quantized folder; quantize the original checkpoint",
        ));
    }
    let ctx = LoadContext::new(true);
    let model = load_dir_with(&dir, options, Some(&ctx))?;
    drop(model);
    write_folder(&ctx, dir.root(), dst, options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_model_type_lists_the_supported_ones() {
        let dir = std::env::temp_dir().join(format!("vlm-registry-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), r#"{"model_type": "llava"}"#).unwrap();
        let err = load(dir.to_str().unwrap(), &LoadOptions::default())
            .err()
            .unwrap();
        let msg = err.to_string();
        assert!(matches!(err, Error::UnsupportedModel { .. }));
        assert!(
            msg.contains("llava") && msg.contains("qwen2_5_vl") && msg.contains("qwen3_vl"),
            "{msg}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn family_detection_from_config() {
        let types = supported_model_types();
        for t in ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"] {
            assert!(types.contains(&t), "{t} not registered");
        }
    }
}
