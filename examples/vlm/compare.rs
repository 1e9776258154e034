//! `vlm compare`: the founders' evaluation of several models on your photos as one report
//! (the work is done by the vlm-compare crate, which Python's `vlm.compare` calls too).

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use vlm_compare::{CompareError, CompareOptions};
use vlm_core::Language;

#[derive(Args)]
pub struct CompareArgs {
    /// Model folder or hub id; repeat for each model to compare.
    #[arg(long = "model", required = true)]
    pub models: Vec<String>,
    /// Folder of photos to describe and ask about.
    #[arg(long)]
    pub photos: PathBuf,
    /// Folder of trip folders; each one's photos are related as one trip.
    #[arg(long)]
    pub trips: Option<PathBuf>,
    /// q.jsonl: {"question": "..."} for every photo, or with "photo" for one (default: a
    /// Chinese and an English question for every photo).
    #[arg(long)]
    pub questions: Option<PathBuf>,
    /// refs.jsonl: {"photo", "caption", "language"} or {"photo", "question", "answer"};
    /// without it, outputs are shown side by side, unscored.
    #[arg(long)]
    pub references: Option<PathBuf>,
    /// The card's price per hour; without it the cost columns are omitted.
    #[arg(long)]
    pub price_per_hour: Option<f64>,
    /// The price's currency, for the column headers.
    #[arg(long, default_value = "CNY")]
    pub currency: String,
    /// The card's name, for the report (e.g. A10G).
    #[arg(long)]
    pub card: Option<String>,
    /// Photos per forward pass for the throughput and question runs.
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Most tokens per answer (decoding is greedy, so reruns give the same outputs).
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// Describe languages, comma-separated.
    #[arg(long, default_value = "zh,en", value_delimiter = ',')]
    pub languages: Vec<String>,
    /// CHEAP:STRONG, two of the --model values (or their short names): the cheap model
    /// answers, photos it is unsure of go to the strong one.
    #[arg(long, requires = "threshold")]
    pub cascade: Option<String>,
    /// The cascade's mean token log-probability under which a photo goes to the strong model.
    #[arg(long, requires = "cascade", allow_hyphen_values = true)]
    pub threshold: Option<f64>,
    #[command(flatten)]
    pub model_args: crate::args::ModelArgs,
    /// Folder to write report.md, report.html and results.json to.
    #[arg(long)]
    pub report: PathBuf,
    /// Log each load step and its time.
    #[arg(long, short)]
    pub verbose: bool,
}

impl CompareArgs {
    fn options(&self) -> vlm_core::Result<CompareOptions> {
        let cascade = self
            .cascade
            .as_deref()
            .map(vlm_compare::parse_cascade)
            .transpose()
            .map_err(|e| vlm_core::Error::invalid_option("cascade", e.to_string()))?;
        Ok(CompareOptions {
            models: self.models.clone(),
            photos: self.photos.clone(),
            trips: self.trips.clone(),
            questions: self.questions.clone(),
            references: self.references.clone(),
            price_per_hour: self.price_per_hour,
            currency: self.currency.clone(),
            card: self.card.clone(),
            batch_size: self.batch_size,
            max_new_tokens: self.max_new_tokens,
            languages: self
                .languages
                .iter()
                .map(|l| Language::parse(l))
                .collect::<vlm_core::Result<_>>()?,
            cascade,
            threshold: self
                .threshold
                .unwrap_or(CompareOptions::default().threshold),
            load: self.model_args.load_options()?,
        })
    }
}

/// Runs the comparison with a progress bar (on a terminal), writes the report and prints
/// the founders' table.
pub fn run(args: &CompareArgs) -> Result<(), String> {
    let options = args.options().map_err(|e| e.to_string())?;
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new(0);
        if let Ok(style) =
            ProgressStyle::with_template("compare [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
        {
            bar.set_style(style);
        }
        bar
    });
    let results = vlm_compare::compare(&options, &mut |p| {
        if let Some(bar) = &bar {
            bar.set_length(p.total as u64);
            bar.set_position(p.done as u64);
            bar.set_message(p.model.clone());
        }
    });
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let results = results.map_err(|e: CompareError| e.to_string())?;
    vlm_compare::write_report(&results, &options, &args.report).map_err(|e| e.to_string())?;
    let md = vlm_compare::report_md::render(&results);
    let table = md.split("\n## Outputs side by side").next().unwrap_or(&md);
    println!("{table}");
    println!(
        "wrote {0}/report.md, {0}/report.html and {0}/results.json",
        args.report.display()
    );
    Ok(())
}
