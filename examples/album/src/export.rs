//! `album export`: one row per photo and setting, for pandas, DuckDB or a spreadsheet.

use std::io::Write;

use anyhow::{bail, Result};
use rusqlite::Connection;
use serde::Serialize;

#[derive(Debug, Serialize)]
struct Row {
    hash: String,
    paths: Vec<String>,
    bytes: i64,
    width: Option<i64>,
    height: Option<i64>,
    taken_at: Option<String>,
    lat: Option<f64>,
    lon: Option<f64>,
    camera: Option<String>,
    orientation: Option<i64>,
    model: String,
    quant: String,
    language: String,
    options: String,
    caption: String,
    tags: Vec<String>,
    photo_text: String,
    seconds: f64,
}

pub fn export(conn: &Connection, format: &str, out: &mut dyn Write) -> Result<usize> {
    if format != "jsonl" && format != "csv" {
        bail!("unknown export format \"{format}\"; use --format jsonl or --format csv");
    }
    let mut stmt = conn.prepare(
        "SELECT p.hash, (SELECT group_concat(path, char(10)) FROM (SELECT path FROM paths WHERE hash = p.hash ORDER BY path)),
                p.bytes, p.width, p.height, p.taken_at, p.lat, p.lon, p.camera, p.orientation,
                r.model, r.quant, r.language, r.options, r.caption, r.tags, r.photo_text, r.seconds
         FROM results r JOIN photos p ON p.hash = r.hash ORDER BY p.taken_at, p.hash, r.id",
    )?;
    let rows = stmt.query_map([], |r| {
        let paths: Option<String> = r.get(1)?;
        let tags: String = r.get(15)?;
        Ok(Row {
            hash: r.get(0)?,
            paths: paths
                .map(|p| p.lines().map(String::from).collect())
                .unwrap_or_default(),
            bytes: r.get(2)?,
            width: r.get(3)?,
            height: r.get(4)?,
            taken_at: r.get(5)?,
            lat: r.get(6)?,
            lon: r.get(7)?,
            camera: r.get(8)?,
            orientation: r.get(9)?,
            model: r.get(10)?,
            quant: r.get(11)?,
            language: r.get(12)?,
            options: r.get(13)?,
            caption: r.get(14)?,
            tags: tags
                .split(", ")
                .filter(|t| !t.is_empty())
                .map(String::from)
                .collect(),
            photo_text: r.get(16)?,
            seconds: r.get(17)?,
        })
    })?;
    let mut n = 0;
    if format == "jsonl" {
        for row in rows {
            serde_json::to_writer(&mut *out, &row?)?;
            out.write_all(b"\n")?;
            n += 1;
        }
    } else {
        let mut csv = csv::Writer::from_writer(out);
        csv.write_record([
            "hash",
            "paths",
            "bytes",
            "width",
            "height",
            "taken_at",
            "lat",
            "lon",
            "camera",
            "orientation",
            "model",
            "quant",
            "language",
            "options",
            "caption",
            "tags",
            "photo_text",
            "seconds",
        ])?;
        let text = |v: Option<String>| v.unwrap_or_default();
        let num = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
        let int = |v: Option<i64>| v.map(|x| x.to_string()).unwrap_or_default();
        for row in rows {
            let r = row?;
            // Lists become one cell: paths split by `;` (rare in file names), tags by `, `
            // as the model wrote them.
            csv.write_record([
                r.hash,
                r.paths.join(";"),
                r.bytes.to_string(),
                int(r.width),
                int(r.height),
                text(r.taken_at),
                num(r.lat),
                num(r.lon),
                text(r.camera),
                int(r.orientation),
                r.model,
                r.quant,
                r.language,
                r.options,
                r.caption,
                r.tags.join(", "),
                r.photo_text,
                r.seconds.to_string(),
            ])?;
            n += 1;
        }
        csv.flush()?;
    }
    Ok(n)
}
