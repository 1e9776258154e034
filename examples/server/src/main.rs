//! `vlm-server`: an OpenAI-compatible chat-completions server over one vlm model.
//!
//! ```text
//! vlm-server --model Qwen/Qwen2.5-VL-3B-Instruct --port 8000
//! vlm-server --model DIR --host 0.0.0.0 --api-key "$KEY" --max-batch-size 8 --max-wait-ms 20
//! ```
//!
//! Concurrent requests are batched on one model thread (batcher.rs); Ctrl-C or SIGTERM
//! stops taking connections and finishes the requests in flight before exiting.

mod api;
mod auth;
mod batcher;
mod errors;
mod images;
mod metrics;
mod routes;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use vlm_core::model::LoadOptions;
use vlm_core::{DTypeChoice, DeviceChoice, ImageLimits, Quantization, VisionLanguageModel};

use api::RequestLimits;
use auth::ApiKeys;
use batcher::{BatchConfig, Batcher};
use images::ImagePolicy;
use metrics::Metrics;
use routes::App;

/// Serve a vision-language model over the OpenAI chat-completions API.
#[derive(Parser)]
#[command(name = "vlm-server", version)]
struct Args {
    /// Model folder (HF format) or hub id.
    #[arg(long)]
    model: String,
    /// The model's name in the API (default: the folder's name).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Address to listen on; 0.0.0.0 listens on every interface.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Accept only requests with `Authorization: Bearer KEY`; repeat for several keys
    /// (env: comma-separated).
    #[arg(
        long,
        env = "VLM_API_KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    api_key: Vec<String>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// auto, f32, f16 or bf16.
    #[arg(long, default_value = "auto")]
    dtype: String,
    /// none, int8 or int4.
    #[arg(long, default_value = "none")]
    quant: String,
    /// Largest image area the model sees, in pixels (Qwen-VL's max_pixels; 1003520 is
    /// the album budget docs/models.md recommends).
    #[arg(long)]
    max_pixels: Option<usize>,
    /// MB of image encodings kept to reuse for the same photo (0: off).
    #[arg(long, default_value_t = 0)]
    image_cache_mb: u64,
    /// Most requests in one batch.
    #[arg(long, default_value_t = 8)]
    max_batch_size: usize,
    /// How long the first request of a batch waits for more, in ms.
    #[arg(long, default_value_t = 10)]
    max_wait_ms: u64,
    /// Requests that may wait for the model; more get 429.
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// Largest request body, in MB (images as data: URLs count).
    #[arg(long, default_value_t = 32)]
    max_body_mb: usize,
    /// Most pixels of one decoded image, before resizing (refuses decompression bombs).
    #[arg(long, default_value_t = 50_000_000)]
    max_image_pixels: u64,
    /// Most images in one request.
    #[arg(long, default_value_t = 8)]
    max_images: usize,
    /// Largest `max_tokens` a request may ask for.
    #[arg(long, default_value_t = 4096)]
    max_tokens_limit: usize,
    /// Serve `file://` image URLs, but only for files below DIR (off by default).
    #[arg(long, value_name = "DIR")]
    file_root: Option<PathBuf>,
    /// Refuse http(s) image URLs instead of fetching them.
    #[arg(long)]
    no_remote_images: bool,
    /// Time limit of one http(s) image fetch, in seconds.
    #[arg(long, default_value_t = 10)]
    remote_image_timeout_s: u64,
    /// Largest http(s) image, in MB.
    #[arg(long, default_value_t = 20)]
    remote_image_max_mb: u64,
}

fn main() -> ExitCode {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    if args.max_batch_size == 0 || args.max_queue == 0 {
        return Err("--max-batch-size and --max-queue must be at least 1".into());
    }
    let load = LoadOptions {
        device: DeviceChoice::parse(&args.device)?,
        dtype: DTypeChoice::parse(&args.dtype)?,
        quantization: Quantization::parse(&args.quant)?,
        max_pixels: args.max_pixels,
        image_cache_bytes: args.image_cache_mb << 20,
        runtime: vlm_core::RuntimeOptions::from_env(),
        ..LoadOptions::default()
    };
    let model: Arc<dyn VisionLanguageModel> = Arc::from(vlm_core::load(&args.model, &load)?);
    let info = model.info();
    let model_id = args
        .served_model_name
        .clone()
        .unwrap_or_else(|| folder_name(&args.model));
    let file_root = args
        .file_root
        .as_ref()
        .map(|dir| {
            dir.canonicalize()
                .map_err(|e| format!("--file-root {}: {e}", dir.display()))
        })
        .transpose()?;

    let metrics = Arc::new(Metrics::default());
    let config = BatchConfig {
        max_batch: args.max_batch_size,
        max_wait: Duration::from_millis(args.max_wait_ms),
        max_queue: args.max_queue,
    };
    let (batcher, model_thread) = Batcher::start(model.clone(), config, metrics.clone())?;
    let app = Arc::new(App {
        model,
        model_id: model_id.clone(),
        batcher,
        metrics,
        limits: RequestLimits {
            max_tokens: args.max_tokens_limit,
            max_images: args.max_images,
        },
        images: ImagePolicy {
            limits: ImageLimits {
                max_pixels: args.max_image_pixels,
                // The widest decoded layout is 16-bit RGBA: 8 bytes a pixel.
                max_alloc_bytes: args.max_image_pixels.saturating_mul(8),
            },
            file_root,
            remote: !args.no_remote_images,
            remote_timeout: Duration::from_secs(args.remote_image_timeout_s),
            remote_max_bytes: args.remote_image_max_mb << 20,
        },
        max_queue: args.max_queue,
        max_body_bytes: args.max_body_mb << 20,
        started: routes::unix_now(),
        next_id: AtomicU64::new(0),
    });
    let router = routes::router(app, ApiKeys(Arc::new(args.api_key.clone())));

    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let addr = SocketAddr::new(args.host, args.port);
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            format!("cannot listen on {addr}: {e} (is another server on that port? try --port)")
        })?;
        tracing::info!(
            "serving {model_id} ({} on {}) at http://{}/v1{}",
            info.model_type,
            info.device,
            listener.local_addr()?,
            if args.api_key.is_empty() {
                ""
            } else {
                " (API key required)"
            },
        );
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown_signal())
            .await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    // Every handler is done, so the queue's senders are gone and the model thread ends
    // after the last batch.
    drop(runtime);
    if model_thread.join().is_err() {
        return Err("the model thread panicked".into());
    }
    tracing::info!("stopped");
    Ok(())
}

/// Ctrl-C or SIGTERM (what `docker stop` and systemd send).
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down: finishing the requests in flight");
}

/// `Qwen/Qwen2.5-VL-3B-Instruct` → `Qwen2.5-VL-3B-Instruct`; `/models/qwen/` → `qwen`.
fn folder_name(model: &str) -> String {
    model
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or(model)
        .to_string()
}
