//! `album export`: one row per photo and setting, for pandas, DuckDB or a spreadsheet.

use std::io::Write;

use anyhow::{bail, Result};
use rusqlite::types::ValueRef;
use rusqlite::Connection;
use serde_json::Value;

/// Columns holding lists: arrays in JSON lines; in CSV one cell, paths joined by `;`
/// (rare in file names) and tags by `, ` as the model wrote them.
const PATHS: &str = "paths";
const TAGS: &str = "tags";

pub fn export(conn: &Connection, format: &str, out: &mut dyn Write) -> Result<usize> {
    if format != "jsonl" && format != "csv" {
        bail!("unknown export format \"{format}\"; use --format jsonl or --format csv");
    }
    let mut stmt = conn.prepare(
        "SELECT p.hash, (SELECT group_concat(path, char(10))
                         FROM (SELECT path FROM paths WHERE hash = p.hash ORDER BY path)) AS paths,
                p.bytes, p.width, p.height, p.taken_at, p.lat, p.lon, p.camera, p.orientation,
                r.model, r.quant, r.language, r.options, r.caption, r.tags, r.photo_text, r.seconds
         FROM results r JOIN photos p ON p.hash = r.hash ORDER BY p.taken_at, p.hash, r.id",
    )?;
    let columns: Vec<String> = stmt.column_names().into_iter().map(String::from).collect();
    let mut csv = None;
    let mut jsonl = None;
    if format == "csv" {
        let mut writer = csv::Writer::from_writer(out);
        writer.write_record(&columns)?;
        csv = Some(writer);
    } else {
        jsonl = Some(out);
    }
    let mut rows = stmt.query([])?;
    let mut n = 0;
    while let Some(row) = rows.next()? {
        let mut cells = Vec::with_capacity(columns.len());
        for (i, name) in columns.iter().enumerate() {
            cells.push(cell(name, row.get_ref(i)?));
        }
        if let Some(csv) = &mut csv {
            csv.write_record(columns.iter().zip(&cells).map(|(c, v)| csv_text(c, v)))?;
        }
        if let Some(out) = &mut jsonl {
            let object: serde_json::Map<String, Value> =
                columns.iter().cloned().zip(cells).collect();
            serde_json::to_writer(&mut **out, &object)?;
            out.write_all(b"\n")?;
        }
        n += 1;
    }
    if let Some(mut csv) = csv {
        csv.flush()?;
    }
    Ok(n)
}

fn cell(column: &str, value: ValueRef) -> Value {
    let list = |text: &str, sep: &str| {
        Value::Array(
            text.split(sep)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_string()))
                .collect(),
        )
    };
    match value {
        ValueRef::Null if column == PATHS || column == TAGS => Value::Array(Vec::new()),
        ValueRef::Null | ValueRef::Blob(_) => Value::Null,
        ValueRef::Integer(i) => i.into(),
        ValueRef::Real(x) => x.into(),
        ValueRef::Text(t) => {
            let text = String::from_utf8_lossy(t);
            match column {
                PATHS => list(&text, "\n"),
                TAGS => list(&text, ", "),
                _ => Value::String(text.into_owned()),
            }
        }
    }
}

fn csv_text(column: &str, value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) => {
            let texts: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
            texts.join(if column == PATHS { ";" } else { ", " })
        }
        other => other.to_string(),
    }
}
