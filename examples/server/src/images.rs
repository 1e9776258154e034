//! Turns the `url` of an `image_url` part into a decoded [`Image`]: `data:` URLs always,
//! `file://` paths only under `--file-root`, and http(s) URLs (unless
//! `--no-remote-images`) fetched with a time and a size limit. Every failure is the
//! client's to fix, so every error is a 400.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use vlm_core::{Image, ImageLimits};

use crate::errors::ApiError;

/// Redirects a remote image may take (a CDN usually needs one).
const MAX_REDIRECTS: u32 = 3;

/// Where images may come from and how big they may be.
#[derive(Debug, Clone)]
pub struct ImagePolicy {
    /// Decoding limits (pixels and decoder memory).
    pub limits: ImageLimits,
    /// `file://` URLs are read only below this folder (canonical); `None` refuses them.
    pub file_root: Option<PathBuf>,
    /// Whether http(s) URLs are fetched.
    pub remote: bool,
    /// Whole-request time limit of one remote fetch.
    pub remote_timeout: Duration,
    /// Most bytes of one remote image.
    pub remote_max_bytes: u64,
}

/// Loads image `index` (1-based in messages) of a request. Blocking: call it off the
/// async runtime.
pub fn load(url: &str, index: usize, policy: &ImagePolicy) -> Result<Image, ApiError> {
    let fail = |what: String| ApiError::bad_param("messages", format!("image {index}: {what}"));
    let decoded = if let Some(rest) = url.strip_prefix("data:") {
        let bytes = data_url_bytes(rest).map_err(fail)?;
        Image::from_bytes_with(&bytes, &policy.limits)
    } else if let Some(path) = url.strip_prefix("file://") {
        let path = allowed_file(path, policy.file_root.as_deref()).map_err(fail)?;
        Image::open_with(path, &policy.limits)
    } else if url.starts_with("http://") || url.starts_with("https://") {
        if !policy.remote {
            return Err(fail(
                "http(s) image URLs are turned off on this server (--no-remote-images); send the image as a data: URL".into(),
            ));
        }
        let bytes = fetch(url, policy).map_err(fail)?;
        Image::from_bytes_with(&bytes, &policy.limits)
    } else {
        return Err(fail(
            "the URL must be a data: URL (data:image/jpeg;base64,...), an http(s) URL, or a file:// path when the server allows them".into(),
        ));
    };
    decoded.map_err(|e| fail(e.to_string()))
}

/// The bytes of a `data:` URL's payload (`[<mediatype>];base64,<data>`).
fn data_url_bytes(rest: &str) -> Result<Vec<u8>, String> {
    let (meta, payload) = rest
        .split_once(',')
        .ok_or("a data: URL needs a comma before its data")?;
    if !meta.ends_with(";base64") {
        return Err("only base64 data: URLs are taken (data:image/png;base64,...)".into());
    }
    base64::engine::general_purpose::STANDARD
        .decode(payload.trim())
        .map_err(|e| format!("the data: URL is not valid base64 ({e})"))
}

/// `path` if it lies below `root` once symlinks and `..` are resolved.
fn allowed_file(path: &str, root: Option<&Path>) -> Result<PathBuf, String> {
    let root = root.ok_or(
        "file:// URLs are turned off on this server; start it with --file-root DIR to serve images below DIR, or send a data: URL",
    )?;
    let path = Path::new(path)
        .canonicalize()
        .map_err(|e| format!("cannot open {path}: {e}"))?;
    if path.starts_with(root) {
        Ok(path)
    } else {
        Err(format!(
            "{} is outside the folder this server may read (--file-root {})",
            path.display(),
            root.display()
        ))
    }
}

fn fetch(url: &str, policy: &ImagePolicy) -> Result<Vec<u8>, String> {
    let agent = ureq::AgentBuilder::new()
        .timeout(policy.remote_timeout)
        .redirects(MAX_REDIRECTS)
        .build();
    let response = agent
        .get(url)
        .call()
        .map_err(|e| format!("fetching {url} failed: {e}"))?;
    let limit = policy.remote_max_bytes;
    let too_big = || format!("{url} is larger than the {limit} bytes this server fetches");
    if let Some(len) = response
        .header("content-length")
        .and_then(|l| l.parse::<u64>().ok())
    {
        if len > limit {
            return Err(too_big());
        }
    }
    let mut bytes = Vec::new();
    response
        .into_reader()
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("reading {url} failed: {e}"))?;
    if bytes.len() as u64 > limit {
        return Err(too_big());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_urls_need_base64() {
        assert_eq!(data_url_bytes("image/png;base64,aGk=").unwrap(), b"hi");
        assert!(data_url_bytes("image/png,hi").is_err());
        assert!(data_url_bytes("image/png;base64").is_err());
        assert!(data_url_bytes("image/png;base64,@@").is_err());
    }

    #[test]
    fn file_urls_stay_below_the_root() {
        let root = std::env::temp_dir().canonicalize().unwrap();
        let inside = root.join(format!("vlm-server-images-{}", std::process::id()));
        std::fs::write(&inside, b"x").unwrap();
        let ok = allowed_file(inside.to_str().unwrap(), Some(&root));
        let escape = allowed_file(&format!("{}/../etc/passwd", root.display()), Some(&root));
        let off = allowed_file(inside.to_str().unwrap(), None);
        std::fs::remove_file(&inside).unwrap();
        assert_eq!(ok.unwrap(), inside);
        assert!(escape.is_err());
        assert!(off.unwrap_err().contains("--file-root"));
    }
}
