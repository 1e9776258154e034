//! `report.md`: the founders' table, the notes, then the outputs side by side.

use std::fmt::Write;

use crate::results::Results;
use crate::table::{founders_table, notes, side_by_side};

/// Markdown table cells hold no pipes or line breaks.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
        .replace("\r\n", "<br>")
        .replace('\n', "<br>")
}

fn row(cells: &[String]) -> String {
    format!(
        "| {} |\n",
        cells
            .iter()
            .map(|c| cell(c))
            .collect::<Vec<_>>()
            .join(" | ")
    )
}

/// The whole report.
pub fn render(r: &Results) -> String {
    let mut out = String::from("# Model comparison\n\n");
    let s = &r.settings;
    let _ = writeln!(
        out,
        "{} photos, {} trips; device {}, dtype {}, quantization {}, batch {}, at most {} new tokens, describe in {}{}.\n",
        r.photos.len(),
        r.trips.len(),
        s.device,
        s.dtype,
        s.quantization,
        s.batch_size,
        s.max_new_tokens,
        s.languages.join(" and "),
        match (s.price_per_hour, &s.card) {
            (Some(p), Some(card)) => format!("; {card} at {p} {}/hour", s.currency),
            (Some(p), None) => format!("; {p} {}/hour", s.currency),
            _ => String::new(),
        }
    );
    let table = founders_table(r);
    out += &row(&table.header);
    out += &row(&vec!["---".to_string(); table.header.len()]);
    for cells in &table.rows {
        let mut texts: Vec<String> = cells.iter().map(|c| c.text.clone()).collect();
        texts.resize(table.header.len(), String::new());
        out += &row(&texts);
    }
    out.push('\n');
    for note in notes(r) {
        let _ = writeln!(out, "- {note}");
    }
    let (models, blocks) = side_by_side(r);
    if !models.is_empty() {
        out += "\n## Outputs side by side\n";
        for b in blocks {
            let _ = writeln!(out, "\n### {} {}\n", b.kind, b.subject);
            let mut header = vec!["task".to_string()];
            header.extend(models.iter().cloned());
            out += &row(&header);
            out += &row(&vec!["---".to_string(); header.len()]);
            for (label, texts) in b.rows {
                let mut cells = vec![label];
                cells.extend(texts);
                out += &row(&cells);
            }
        }
    }
    out
}
