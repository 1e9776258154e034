//! `album`: a smart photo album on vlm. Indexes folders of photos into SQLite (captions,
//! tags, the text in each photo, EXIF time and place), then searches them, groups them
//! into trips with a story each, exports them, and shows them in a local web page.
//!
//! ```text
//! album index ~/Pictures --db album.db --model Qwen/Qwen2.5-VL-3B-Instruct --language zh,en
//! album search 海滩 --db album.db
//! album trips --db album.db
//! album story 1 --db album.db --model Qwen/Qwen2.5-VL-3B-Instruct
//! album export --format csv --db album.db > photos.csv
//! album serve --db album.db --port 8080
//! ```

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use vlm_core::{Language, Quantization};

use vlm_album::captioner::{CaptionOptions, Captioner};
use vlm_album::trips::TripRules;
use vlm_album::{db, export, index, search, serve, trips};

#[derive(Parser)]
#[command(
    name = "album",
    version,
    args_override_self = true,
    about = "A smart photo album: caption, search and tell the stories of your photos"
)]
struct Cli {
    /// The album database (SQLite); created if missing.
    #[arg(long, global = true, default_value = "album.db")]
    db: PathBuf,
    /// How long to wait for another program's lock on the database before giving up.
    #[arg(long, global = true, default_value_t = 5000)]
    busy_timeout_ms: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct ModelArgs {
    /// Model folder or Hugging Face hub id.
    #[arg(long)]
    model: String,
    /// Weight quantization: none, int8, int4.
    #[arg(long, default_value = "none")]
    quant: String,
    /// Longest answer in tokens.
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Pixel budget per photo for Qwen models (fewer pixels: faster, less detail).
    #[arg(long)]
    max_pixels: Option<usize>,
}

#[derive(Subcommand)]
enum Command {
    /// Caption, tag and read every photo under the folders (photos already done are skipped).
    Index {
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        #[command(flatten)]
        model: ModelArgs,
        /// Languages of the captions, comma-separated (en, zh).
        #[arg(long, default_value = "en")]
        language: String,
        /// Photos that need the model per transaction, and requests per forward pass.
        #[arg(long, default_value_t = 4)]
        batch_size: usize,
        /// Print one JSON summary at the end.
        #[arg(long)]
        json: bool,
    },
    /// Full-text search over captions, tags and text in photos.
    Search {
        query: String,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// List the trips: photos grouped by time gaps and distance.
    Trips {
        #[command(flatten)]
        rules: TripRules,
        #[arg(long)]
        json: bool,
    },
    /// Tell (and store) the story of one trip, by its number or key from `album trips`.
    Story {
        trip_id: String,
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        rules: TripRules,
        /// Language of the story (en or zh).
        #[arg(long, default_value = "en")]
        language: String,
        /// Most photos shown to the model, spread over the trip.
        #[arg(long, default_value_t = 4)]
        photos: usize,
    },
    /// Write every photo and its captions as JSON lines or CSV.
    Export {
        #[arg(long, default_value = "jsonl", value_parser = ["jsonl", "csv"])]
        format: String,
        /// File to write (default: standard output).
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Serve a local web page over the album.
    Serve {
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Address to listen on; the default keeps the album on this computer.
        #[arg(long, default_value = "127.0.0.1")]
        host: IpAddr,
        #[command(flatten)]
        rules: TripRules,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        // `album export | head` closing the pipe early is the reader's choice, not an error.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        let io = cause
            .downcast_ref::<std::io::Error>()
            .map(std::io::Error::kind);
        let json = cause
            .downcast_ref::<serde_json::Error>()
            .and_then(|j| j.io_error_kind());
        let csv = cause
            .downcast_ref::<csv::Error>()
            .and_then(|c| match c.kind() {
                csv::ErrorKind::Io(io) => Some(io.kind()),
                _ => None,
            });
        [io, json, csv].contains(&Some(std::io::ErrorKind::BrokenPipe))
    })
}

fn run(cli: Cli) -> Result<ExitCode> {
    let busy = Duration::from_millis(cli.busy_timeout_ms);
    if let Command::Serve { port, host, rules } = cli.command {
        serve::serve(cli.db, busy, host, port, rules)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut conn = db::open(&cli.db, busy)?;
    let explain = |e: anyhow::Error| match e.downcast::<rusqlite::Error>() {
        Ok(e) => db::explain(e, &cli.db),
        Err(e) => e,
    };
    match cli.command {
        Command::Index {
            dirs,
            model,
            language,
            batch_size,
            json,
        } => {
            let options = caption_options(&model, &language, batch_size)?;
            let stop = interrupt_flag()?;
            let summary = index::run(&mut conn, &dirs, &options, &stop).map_err(explain)?;
            if json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                println!(
                    "{} processed, {} cached, {} failed, {} skipped in {:.1} s ({} model calls)",
                    summary.processed,
                    summary.cached,
                    summary.failed,
                    summary.skipped,
                    summary.seconds,
                    summary.model_calls
                );
                if summary.failed > 0 {
                    println!(
                        "see why with: sqlite3 {} 'SELECT path, message FROM errors'",
                        cli.db.display()
                    );
                }
            }
            if summary.interrupted {
                eprintln!("interrupted: every finished batch is saved; run the same command again to finish");
                return Ok(ExitCode::from(130));
            }
        }
        Command::Search { query, limit, json } => {
            let hits = search::search(&conn, &query, limit).map_err(explain)?;
            if json {
                println!("{}", serde_json::to_string(&hits)?);
            } else if hits.is_empty() {
                println!("no photo matches \"{query}\"");
            }
            for h in hits.iter().filter(|_| !json) {
                println!(
                    "{}\t{:.3}\t{}",
                    h.path,
                    h.score,
                    h.snippet.replace('\n', " ")
                );
            }
        }
        Command::Trips { rules, json } => {
            let trips = trips::trips(&conn, &rules).map_err(explain)?;
            if json {
                println!("{}", serde_json::to_string(&trips)?);
            }
            for t in trips.iter().filter(|_| !json) {
                println!(
                    "#{} {}  {} – {}  {} photos",
                    t.number,
                    t.key,
                    t.start,
                    t.end,
                    t.photos.len()
                );
                if let Some(story) = &t.story {
                    println!("    {}", story.replace('\n', "\n    "));
                }
            }
            let undated = db::undated_count(&conn).map_err(explain)?;
            if !json && undated > 0 {
                println!("({undated} photos have no EXIF time and are in no trip)");
            }
        }
        Command::Story {
            trip_id,
            model,
            rules,
            language,
            photos,
        } => {
            let trip = trips::find(trips::trips(&conn, &rules).map_err(explain)?, &trip_id)?;
            let options = caption_options(&model, &language, 1)?;
            let language = *options.languages.first().context("pass one --language")?;
            let mut captioner = Captioner::load(&options)?;
            let story = trips::tell(
                &conn,
                &mut captioner,
                &trip,
                photos,
                language,
                &options.model_id(),
            )
            .map_err(explain)?;
            println!(
                "#{} {} ({} – {})\n{story}",
                trip.number, trip.key, trip.start, trip.end
            );
        }
        Command::Export { format, output } => {
            let mut out: Box<dyn Write> = match &output {
                Some(path) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(path)
                        .with_context(|| format!("cannot create {}", path.display()))?,
                )),
                None => Box::new(std::io::stdout().lock()),
            };
            let n = export::export(&conn, &format, &mut out).map_err(explain)?;
            out.flush()?;
            if let Some(path) = output {
                eprintln!("wrote {n} rows to {}", path.display());
            }
        }
        Command::Serve { .. } => unreachable!("served above"),
    }
    Ok(ExitCode::SUCCESS)
}

fn caption_options(
    model: &ModelArgs,
    languages: &str,
    batch_size: usize,
) -> Result<CaptionOptions> {
    let mut parsed = Vec::new();
    for code in languages
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
    {
        let language = match Language::parse(code)? {
            Language::Auto => anyhow::bail!("--language needs en or zh, not auto"),
            l => l,
        };
        if !parsed.contains(&language) {
            parsed.push(language);
        }
    }
    anyhow::ensure!(
        !parsed.is_empty(),
        "--language is empty; pass en, zh or en,zh"
    );
    anyhow::ensure!(batch_size > 0, "--batch-size must be at least 1");
    anyhow::ensure!(
        model.max_new_tokens > 0,
        "--max-new-tokens must be at least 1"
    );
    Ok(CaptionOptions {
        model: model.model.clone(),
        quant: Quantization::parse(&model.quant)?,
        languages: parsed,
        max_pixels: model.max_pixels,
        max_new_tokens: model.max_new_tokens,
        batch_size,
    })
}

/// The first Ctrl-C lets the current batch finish and commit; a second one quits at
/// once, and SQLite rolls the unfinished batch back.
fn interrupt_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\nstopping after this batch (Ctrl-C again to quit now)");
    })
    .context("installing the Ctrl-C handler")?;
    Ok(stop)
}
