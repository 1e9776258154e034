//! The founders' table and the side-by-side outputs as plain cells, which report_md and
//! report_html each lay out: the columns are decided once.

use crate::results::{Output, Quality, Results};

/// One cell: what is shown, and the number a sortable table sorts by.
pub struct Cell {
    pub text: String,
    pub sort: Option<f64>,
}

impl Cell {
    fn text(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            sort: None,
        }
    }

    fn number(value: Option<f64>, show: impl Fn(f64) -> String) -> Self {
        Self {
            text: value.map_or_else(|| "—".into(), show),
            sort: value,
        }
    }
}

/// A table: header, rows of cells, and the rows that are errors (one text cell).
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
}

fn seconds(s: f64) -> String {
    if s < 1.0 {
        format!("{:.0} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

/// Bytes in the largest binary unit that keeps a digit before the point (tiny test models
/// hold kilobytes, real ones gigabytes).
fn bytes(b: f64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = b;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b:.0} B")
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}

fn share(x: f64) -> String {
    format!("{:.0}%", x * 100.0)
}

/// The founders' table: one row per model, then the cascade.
pub fn founders_table(r: &Results) -> Table {
    let priced = r.settings.price_per_hour.is_some();
    let scored = r.models.iter().any(|m| m.quality.is_some());
    let currency = &r.settings.currency;
    let mut header: Vec<String> = ["model", "load", "first call", "latency p50", "latency p95"]
        .map(String::from)
        .to_vec();
    header.push(format!("photos/s (batch {})", r.settings.batch_size));
    header.extend(["first token", "decode tok/s", "peak GPU memory", "weights"].map(String::from));
    if priced {
        header.push(format!("{currency}/hour"));
        header.push(format!("{currency}/1,000 photos"));
    }
    if scored {
        header.extend(["VQA exact", "VQA contains", "caption chrF"].map(String::from));
    }
    let mut rows = Vec::new();
    for m in &r.models {
        let mut row = vec![Cell::text(&m.name)];
        let Some(x) = &m.metrics else {
            row.push(Cell::text(format!(
                "error: {}",
                m.error.as_deref().unwrap_or("did not run")
            )));
            rows.push(row);
            continue;
        };
        row.push(Cell::number(Some(x.load_s), seconds));
        row.push(Cell::number(Some(x.first_call_s), seconds));
        row.push(Cell::number(x.latency_p50_s, seconds));
        row.push(Cell::number(x.latency_p95_s, seconds));
        row.push(Cell::number(x.throughput_photos_per_s, |v| {
            format!("{v:.2}")
        }));
        row.push(Cell::number(x.time_to_first_token_s, seconds));
        row.push(Cell::number(x.decode_tokens_per_s, |v| format!("{v:.1}")));
        row.push(match x.peak_gpu_memory_bytes {
            Some(b) => Cell::number(Some(b as f64), bytes),
            None => Cell::text(x.gpu_memory_note.as_deref().unwrap_or("not measured")),
        });
        row.push(Cell::number(Some(x.weights_bytes as f64), bytes));
        if priced {
            row.push(Cell::number(x.cost_per_hour, |v| format!("{v:.2}")));
            row.push(Cell::number(x.cost_per_1000_photos, |v| format!("{v:.4}")));
        }
        if scored {
            quality_cells(&mut row, m.quality.as_ref());
        }
        rows.push(row);
    }
    if let Some(c) = &r.cascade {
        let mut row = vec![Cell::text(format!(
            "cascade {} → {} (log-prob < {})",
            short(&r.models, &c.cheap),
            short(&r.models, &c.strong),
            c.threshold
        ))];
        if let Some(e) = &c.error {
            row.push(Cell::text(format!("error: {e}")));
        } else {
            let routed = format!(
                "{} routed to the strong model",
                c.routed_share.map_or_else(|| "—".into(), share)
            );
            row.push(Cell::text(routed));
            // Latency columns have no meaning for a mix; throughput does.
            for _ in 0..3 {
                row.push(Cell::text(""));
            }
            row.push(Cell::number(c.seconds_per_photo.map(|s| 1.0 / s), |v| {
                format!("{v:.2}")
            }));
            for _ in 0..4 {
                row.push(Cell::text(""));
            }
            if priced {
                row.push(Cell::number(r.settings.price_per_hour, |v| {
                    format!("{v:.2}")
                }));
                row.push(Cell::number(c.cost_per_1000_photos, |v| format!("{v:.4}")));
            }
            if scored {
                quality_cells(&mut row, c.quality.as_ref());
            }
        }
        rows.push(row);
    }
    Table { header, rows }
}

fn quality_cells(row: &mut Vec<Cell>, q: Option<&Quality>) {
    let q = q.cloned().unwrap_or_default();
    row.push(Cell::number(q.vqa_exact_match, share));
    row.push(Cell::number(q.vqa_contains_match, share));
    row.push(Cell::number(q.caption_chrf, |v| format!("{v:.1}")));
}

fn short(models: &[crate::results::ModelResult], spec: &str) -> String {
    models
        .iter()
        .find(|m| m.model == spec)
        .map_or_else(|| spec.to_string(), |m| m.name.clone())
}

/// One block of the side-by-side outputs: a photo or a trip, its rows (task, one text per
/// model that ran).
pub struct Block {
    pub subject: String,
    /// `photo` or `trip`.
    pub kind: &'static str,
    pub rows: Vec<(String, Vec<String>)>,
}

/// Outputs side by side: for each photo its descriptions and answers, for each trip its
/// story, one column per model that ran.
pub fn side_by_side(r: &Results) -> (Vec<String>, Vec<Block>) {
    let ran: Vec<_> = r.models.iter().filter(|m| m.error.is_none()).collect();
    let header = ran.iter().map(|m| m.name.clone()).collect();
    let cell = |o: Option<&Output>| match o {
        Some(Output { text: Some(t), .. }) => t.trim().to_string(),
        Some(Output { error: Some(e), .. }) => format!("error: {e}"),
        _ => "—".into(),
    };
    let mut blocks = Vec::new();
    for photo in &r.photos {
        let mut keys: Vec<(String, String, Option<String>, Option<String>)> = Vec::new();
        for m in &ran {
            for o in m
                .outputs
                .iter()
                .filter(|o| &o.subject == photo && o.task != "relate")
            {
                let key = (
                    o.task.clone(),
                    o.subject.clone(),
                    o.language.clone(),
                    o.question.clone(),
                );
                if !keys.contains(&key) {
                    keys.push(key);
                }
            }
        }
        let rows = keys
            .into_iter()
            .map(|(task, subject, language, question)| {
                let label = match (&language, &question) {
                    (Some(l), _) => format!("{task} ({l})"),
                    (_, Some(q)) => format!("{task}: {q}"),
                    _ => task.clone(),
                };
                let texts = ran
                    .iter()
                    .map(|m| {
                        cell(m.outputs.iter().find(|o| {
                            o.task == task
                                && o.subject == subject
                                && o.language == language
                                && o.question == question
                        }))
                    })
                    .collect();
                (label, texts)
            })
            .collect();
        blocks.push(Block {
            subject: photo.clone(),
            kind: "photo",
            rows,
        });
    }
    for trip in &r.trips {
        let texts = ran
            .iter()
            .map(|m| {
                let o = m
                    .outputs
                    .iter()
                    .find(|o| o.task == "relate" && o.subject == trip.trip);
                let mark = match o.and_then(|o| o.multi_image.as_deref()) {
                    Some("captions") => {
                        " [no native multi-image: each photo captioned, then the captions related]"
                    }
                    _ => "",
                };
                format!("{}{mark}", cell(o))
            })
            .collect();
        blocks.push(Block {
            subject: trip.trip.clone(),
            kind: "trip",
            rows: vec![(format!("relate ({} photos)", trip.photos.len()), texts)],
        });
    }
    (header, blocks)
}

/// Lines under the table: notes, GPU memory, failed photos, unknown references.
pub fn notes(r: &Results) -> Vec<String> {
    let mut out = r.notes.clone();
    let g = &r.gpu_memory;
    match (&g.source, &g.note) {
        (Some(source), _) => out.push(format!(
            "GPU memory: NVML's count ({}){}; CUDA context of an empty device: {}, not included in the peaks",
            if source == "process" { "this process" } else { "the whole card, minus what was in use before" },
            g.card.as_deref().map(|c| format!(" on {c}")).unwrap_or_default(),
            g.cuda_context_bytes.map_or_else(|| "not measured".into(), |b| bytes(b as f64)),
        )),
        (None, Some(note)) => out.push(format!("GPU memory: {note}")),
        (None, None) => {}
    }
    for f in &r.failed_photos {
        out.push(format!("photo {} could not be read: {}", f.photo, f.error));
    }
    for u in &r.unknown_references {
        out.push(format!(
            "references line {}: no photo \"{}\" in the photos folder; not scored",
            u.line, u.photo
        ));
    }
    out
}
