//! Finding a model's files: a local HF-format folder, or a hub repo id fetched with hf-hub.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{Error, Result};

/// Files that are worth fetching from the hub when present; only config.json and the
/// weights are required (each family checks for what it needs).
const OPTIONAL_HUB_FILES: &[&str] = &[
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.json",
    "chat_template.jinja",
];

/// Whether `HF_HUB_OFFLINE` asks for no network, with the values the Python hub library
/// takes (`1`, `true`, `yes`, `on`, any case).
fn hub_offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
        .unwrap_or(false)
}

/// A model folder on local disk.
#[derive(Debug, Clone)]
pub struct ModelDir {
    root: PathBuf,
}

impl ModelDir {
    /// `path_or_id` is a folder, or a hub id like `Qwen/Qwen2.5-VL-3B-Instruct` that is
    /// downloaded (or found in the hub cache) first.
    pub fn resolve(path_or_id: &str, revision: Option<&str>) -> Result<Self> {
        let path = Path::new(path_or_id);
        if path.is_dir() {
            return Self::local(path);
        }
        if path.exists() {
            return Err(Error::MissingFile {
                path: path.to_path_buf(),
                hint: "expected a model folder (with config.json), not a file".into(),
            });
        }
        let looks_like_repo = path_or_id.split('/').count() == 2
            && !path_or_id.starts_with('.')
            && !path_or_id.starts_with('/')
            && !path_or_id.contains('\\');
        if !looks_like_repo {
            return Err(Error::MissingFile {
                path: path.to_path_buf(),
                hint: "no such folder; pass a local model folder or a hub repo id like Qwen/Qwen2.5-VL-3B-Instruct".into(),
            });
        }
        Self::from_hub(path_or_id, revision)
    }

    /// A local folder; it must hold config.json (or the family's own config file).
    pub fn local(root: &Path) -> Result<Self> {
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    fn from_hub(repo_id: &str, revision: Option<&str>) -> Result<Self> {
        let repo = hf_hub::Repo::with_revision(
            repo_id.into(),
            hf_hub::RepoType::Model,
            revision.unwrap_or("main").into(),
        );
        if hub_offline() {
            return Self::from_hub_cache(repo_id, revision, repo);
        }
        let hub_err = |e: &dyn std::fmt::Display| Error::Hub {
            repo: repo_id.to_string(),
            message: e.to_string(),
        };
        // A first download of a 7B model takes minutes with no other sign of life.
        tracing::info!(
            target: "vlm::load",
            "fetching {repo_id} from the Hugging Face hub (files already in the hub cache are not downloaded again)"
        );
        let started = std::time::Instant::now();
        let mut builder = hf_hub::api::sync::ApiBuilder::from_env();
        // hf-hub reads only the token file `huggingface-cli login` writes; HF_TOKEN (what
        // the Python hub library reads first) takes precedence, as it does there.
        if let Some(token) = std::env::var("HF_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty())
        {
            builder = builder.with_token(Some(token.trim().to_string()));
        }
        let api = builder.build().map_err(|e| hub_err(&e))?;
        let repo = api.repo(repo);
        let config = repo.get("config.json").map_err(|e| hub_err(&e))?;
        for name in OPTIONAL_HUB_FILES {
            // Absent optional files are normal (not every repo has every file).
            let _ = repo.get(name);
        }
        match repo.get("model.safetensors.index.json") {
            Ok(index) => {
                for shard in shard_names(&index)? {
                    repo.get(&shard).map_err(|e| hub_err(&e))?;
                }
            }
            Err(_) => {
                repo.get("model.safetensors").map_err(|e| hub_err(&e))?;
            }
        }
        let root = config.parent().map(Path::to_path_buf).unwrap_or_default();
        tracing::info!(
            target: "vlm::load",
            "{repo_id} is in {} ({:.1} s)",
            root.display(),
            started.elapsed().as_secs_f64()
        );
        Ok(Self { root })
    }

    /// With `HF_HUB_OFFLINE` set: the snapshot already in the hub cache (`HF_HOME`, else
    /// ~/.cache/huggingface), without a single network request.
    fn from_hub_cache(repo_id: &str, revision: Option<&str>, repo: hf_hub::Repo) -> Result<Self> {
        let cache = hf_hub::Cache::from_env();
        // A commit id names its snapshot folder directly (no refs/ file points at it).
        let snapshot = cache
            .path()
            .join(repo.folder_name())
            .join("snapshots")
            .join(repo.revision());
        let cached = cache.repo(repo);
        let get = |name: &str| {
            cached
                .get(name)
                .or_else(|| Some(snapshot.join(name)).filter(|p| p.is_file()))
        };
        let missing = |what: &str| {
            Error::Hub {
            repo: repo_id.to_string(),
            message: format!(
                "HF_HUB_OFFLINE is set and {what} of revision {} is not in the hub cache {}; \
                 download the model once with network access (or unset HF_HUB_OFFLINE), or pass a local folder",
                revision.unwrap_or("main"),
                cache.path().display()
            ),
        }
        };
        let config = get("config.json").ok_or_else(|| missing("config.json"))?;
        match get("model.safetensors.index.json") {
            Some(index) => {
                for shard in shard_names(&index)? {
                    get(&shard).ok_or_else(|| missing(&shard))?;
                }
            }
            None => {
                get("model.safetensors").ok_or_else(|| missing("model.safetensors"))?;
            }
        }
        let root = config.parent().map(Path::to_path_buf).unwrap_or_default();
        tracing::info!(target: "vlm::load", "{repo_id} from the hub cache, offline: {}", root.display());
        Ok(Self { root })
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `root/name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// `root/name`, or a [`Error::MissingFile`] saying what the file is for.
    pub fn require(&self, name: &str, what: &str) -> Result<PathBuf> {
        let p = self.path(name);
        if p.is_file() {
            Ok(p)
        } else {
            Err(Error::MissingFile {
                path: p,
                hint: format!("{what}; copy it from the original model repo"),
            })
        }
    }

    /// The text of a file of the folder; `what` says what it is for when it is missing.
    pub fn read_text(&self, name: &str, what: &str) -> Result<String> {
        let p = self.require(name, what)?;
        std::fs::read_to_string(&p).map_err(|e| Error::bad_file(&p, e))
    }

    /// Parses a JSON file of the folder.
    pub fn read_json<T: for<'de> Deserialize<'de>>(&self, name: &str, what: &str) -> Result<T> {
        let text = self.read_text(name, what)?;
        serde_json::from_str(&text).map_err(|e| Error::bad_file(self.path(name), e))
    }

    /// The config's `model_type`.
    pub fn model_type(&self) -> Result<String> {
        #[derive(Deserialize)]
        struct Head {
            model_type: Option<String>,
        }
        let head: Head = self.read_json("config.json", "config.json describes the model")?;
        head.model_type
            .ok_or_else(|| Error::bad_file(self.path("config.json"), "no \"model_type\" field"))
    }

    /// The safetensors files: the shards of model.safetensors.index.json, else
    /// model.safetensors, else every *.safetensors in the folder.
    pub fn safetensors(&self) -> Result<Vec<PathBuf>> {
        let index = self.path("model.safetensors.index.json");
        if index.is_file() {
            let files = shard_names(&index)?
                .into_iter()
                .map(|s| self.root.join(s))
                .collect::<Vec<_>>();
            if let Some(missing) = files.iter().find(|f| !f.is_file()) {
                return Err(Error::MissingFile {
                    path: missing.clone(),
                    hint: "a weight shard listed in model.safetensors.index.json; download every shard".into(),
                });
            }
            return Ok(files);
        }
        let single = self.path("model.safetensors");
        if single.is_file() {
            return Ok(vec![single]);
        }
        let mut all: Vec<PathBuf> = std::fs::read_dir(&self.root)
            .map_err(|e| Error::bad_file(&self.root, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        all.sort();
        if all.is_empty() {
            return Err(Error::MissingFile {
                path: single,
                hint: "no .safetensors weights in the model folder (PyTorch .bin checkpoints are not read; convert them to safetensors)".into(),
            });
        }
        Ok(all)
    }

    /// Loads tokenizer.json.
    pub fn tokenizer(&self) -> Result<tokenizers::Tokenizer> {
        let p = self.require("tokenizer.json", "tokenizer.json holds the tokenizer")?;
        tokenizers::Tokenizer::from_file(&p).map_err(|e| Error::bad_file(&p, e))
    }
}

/// The shard files a `*.index.json` names (sorted, each once). A name that leaves the
/// model folder (`../`, an absolute path) is refused: indexes come from downloaded folders,
/// and a hostile one must not make the loader read files elsewhere.
pub fn shard_names(index: &Path) -> Result<Vec<String>> {
    #[derive(Deserialize)]
    struct Index {
        weight_map: std::collections::BTreeMap<String, String>,
    }
    let text = std::fs::read_to_string(index).map_err(|e| Error::bad_file(index, e))?;
    let idx: Index = serde_json::from_str(&text).map_err(|e| Error::bad_file(index, e))?;
    let mut shards: Vec<String> = idx.weight_map.into_values().collect();
    shards.sort();
    shards.dedup();
    if let Some(outside) = shards.iter().find(|s| !inside_folder(s)) {
        return Err(Error::bad_file(
            index,
            format!(
                "it names the shard {outside:?}, which is outside the model folder; an index may \
                 only name files inside its folder (re-download the model from a trusted source)"
            ),
        ));
    }
    Ok(shards)
}

/// Whether `name` is a relative path that stays inside its folder (no `..`, no root, no
/// drive prefix, not empty).
pub fn inside_folder(name: &str) -> bool {
    use std::path::Component;
    !name.is_empty()
        && Path::new(name)
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_indexes_cannot_leave_the_folder() {
        let dir = std::env::temp_dir().join(format!("vlm-shards-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let index = dir.join("model.safetensors.index.json");
        for (name, ok) in [
            ("model-00001.safetensors", true),
            ("sub/model-00001.safetensors", true),
            ("../model-00001.safetensors", false),
            ("sub/../../x.safetensors", false),
            ("/etc/passwd", false),
            ("", false),
        ] {
            let json = serde_json::json!({"weight_map": {"a.weight": name}});
            std::fs::write(&index, json.to_string()).unwrap();
            let result = shard_names(&index);
            assert_eq!(result.is_ok(), ok, "{name:?}: {result:?}");
            if let Err(e) = result {
                assert!(e.to_string().contains("outside the model folder"), "{e}");
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_folder_suggests_what_to_pass() {
        let err = ModelDir::resolve("./no/such/folder", None).unwrap_err();
        assert!(matches!(err, Error::MissingFile { .. }));
        assert!(err.to_string().contains("hub repo id"), "{err}");
    }

    #[test]
    fn model_type_and_missing_weights() {
        let dir = std::env::temp_dir().join(format!("vlm-files-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), r#"{"model_type": "qwen2_vl"}"#).unwrap();
        let md = ModelDir::resolve(dir.to_str().unwrap(), None).unwrap();
        assert_eq!(md.model_type().unwrap(), "qwen2_vl");
        let err = md.safetensors().unwrap_err();
        assert!(err.to_string().contains("safetensors"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
