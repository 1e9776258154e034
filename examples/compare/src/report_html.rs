//! `report.html`: one self-contained page: the founders' table (click a header to sort),
//! the notes, and the outputs side by side with each photo's thumbnail inline.

use std::fmt::Write;
use std::io::Cursor;
use std::path::Path;

use base64::Engine;

use crate::results::Results;
use crate::table::{founders_table, notes, side_by_side};

/// Longest side of an inline thumbnail, in pixels.
const THUMBNAIL_SIZE: u32 = 160;

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// A JPEG thumbnail as a data URL; `None` when the photo cannot be read (it is listed
/// among the failed photos).
fn thumbnail(path: &Path) -> Option<String> {
    let photo = vlm_core::Image::open(path).ok()?;
    let (w, h) = (f64::from(photo.width()), f64::from(photo.height()));
    let scale = (f64::from(THUMBNAIL_SIZE) / w.max(h)).min(1.0);
    let small = image::imageops::thumbnail(
        photo.as_rgb(),
        ((w * scale).round() as u32).max(1),
        ((h * scale).round() as u32).max(1),
    );
    let mut jpeg = Vec::new();
    image::DynamicImage::ImageRgb8(small)
        .write_to(&mut Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
        .ok()?;
    Some(format!(
        "data:image/jpeg;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(jpeg)
    ))
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 8px;vertical-align:top}
th{background:#f3f3f3;cursor:pointer;white-space:nowrap}td.num{text-align:right;white-space:nowrap}
tr.error td{color:#a00}.outputs td{max-width:32em}img{max-width:160px;display:block;margin:.5em 0}
th[aria-sort=ascending]::after{content:' ▲'}th[aria-sort=descending]::after{content:' ▼'}";

/// Sorts `#founders` by the clicked column: numbers by `data-sort` (before cells without a
/// number), text otherwise; error and cascade rows (`data-pinned`) stay at the bottom.
/// `#sort=N` in the address sorts by column N on load (a link can keep an order).
const SORT_SCRIPT: &str = "const t=document.getElementById('founders');
t.querySelectorAll('th').forEach((th,i)=>th.addEventListener('click',()=>{
const up=th.getAttribute('aria-sort')!=='ascending';
t.querySelectorAll('th').forEach(h=>h.removeAttribute('aria-sort'));
th.setAttribute('aria-sort',up?'ascending':'descending');
const body=t.tBodies[0];const all=[...body.rows];
const rows=all.filter(r=>!r.dataset.pinned),pinned=all.filter(r=>r.dataset.pinned);
const key=r=>{const c=r.cells[i];if(!c)return '';const s=c.dataset.sort;return s===undefined?c.textContent:parseFloat(s)};
rows.sort((a,b)=>{const x=key(a),y=key(b);let d;
if(typeof x==='number'&&typeof y==='number')d=x-y;else if(typeof x==='number')return -1;else if(typeof y==='number')return 1;else d=String(x).localeCompare(String(y));
return up?d:-d});
rows.concat(pinned).forEach(r=>body.appendChild(r));}));
const m=location.hash.match(/sort=(\\d+)/);if(m)t.querySelectorAll('th')[+m[1]].click();
t.dataset.sortable='ready';";

/// The page. Thumbnails are read from `photos_dir` (and `trips_dir` for trip photos).
pub fn render(r: &Results, photos_dir: &Path, trips_dir: Option<&Path>) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Model comparison</title><style>{STYLE}</style></head><body>\n<h1>Model comparison</h1>\n"
    );
    let s = &r.settings;
    let _ = writeln!(
        out,
        "<p>{} photos, {} trips; device {}, dtype {}, quantization {}, batch {}, at most {} new tokens{}.</p>",
        r.photos.len(),
        r.trips.len(),
        escape(&s.device),
        escape(&s.dtype),
        escape(&s.quantization),
        s.batch_size,
        s.max_new_tokens,
        match (s.price_per_hour, &s.card) {
            (Some(p), Some(card)) => format!("; {} at {p} {}/hour", escape(card), escape(&s.currency)),
            (Some(p), None) => format!("; {p} {}/hour", escape(&s.currency)),
            _ => String::new(),
        }
    );
    let table = founders_table(r);
    out += "<table id=\"founders\"><thead><tr>";
    for h in &table.header {
        let _ = write!(out, "<th>{}</th>", escape(h));
    }
    out += "</tr></thead><tbody>\n";
    for cells in &table.rows {
        let error = cells.len() == 2 && cells[1].text.starts_with("error:");
        let cascade = cells[0].text.starts_with("cascade ");
        out += match (error, cascade) {
            (true, _) => "<tr class=\"error\" data-pinned=\"1\">",
            (false, true) => "<tr class=\"cascade\" data-pinned=\"1\">",
            _ => "<tr>",
        };
        for (i, c) in cells.iter().enumerate() {
            let span = if error && i == 1 {
                format!(" colspan=\"{}\"", table.header.len() - 1)
            } else {
                String::new()
            };
            match c.sort {
                Some(v) => {
                    let _ = write!(
                        out,
                        "<td class=\"num\" data-sort=\"{v}\"{span}>{}</td>",
                        escape(&c.text)
                    );
                }
                None => {
                    let _ = write!(out, "<td{span}>{}</td>", escape(&c.text));
                }
            }
        }
        out += "</tr>\n";
    }
    out += "</tbody></table>\n<ul id=\"notes\">";
    for n in notes(r) {
        let _ = write!(out, "<li>{}</li>", escape(&n));
    }
    out += "</ul>\n";
    let (models, blocks) = side_by_side(r);
    if !models.is_empty() {
        out += "<h2>Outputs side by side</h2>\n";
        for b in blocks {
            let _ = write!(
                out,
                "<section class=\"{}\"><h3>{}</h3>",
                b.kind,
                escape(&b.subject)
            );
            let photos: Vec<std::path::PathBuf> = if b.kind == "photo" {
                vec![photos_dir.join(&b.subject)]
            } else {
                let trip = r.trips.iter().find(|t| t.trip == b.subject);
                trip.map(|t| {
                    t.photos
                        .iter()
                        .filter_map(|p| trips_dir.map(|d| d.join(p)))
                        .collect()
                })
                .unwrap_or_default()
            };
            for p in photos {
                if let Some(url) = thumbnail(&p) {
                    let _ = write!(
                        out,
                        "<img src=\"{url}\" alt=\"{}\">",
                        escape(&p.display().to_string())
                    );
                }
            }
            out += "<table class=\"outputs\"><thead><tr><th>task</th>";
            for m in &models {
                let _ = write!(out, "<th>{}</th>", escape(m));
            }
            out += "</tr></thead><tbody>";
            for (label, texts) in b.rows {
                let _ = write!(out, "<tr><td>{}</td>", escape(&label));
                for t in texts {
                    let _ = write!(out, "<td>{}</td>", escape(&t));
                }
                out += "</tr>";
            }
            out += "</tbody></table></section>\n";
        }
    }
    let _ = write!(out, "<script>{SORT_SCRIPT}</script>\n</body></html>\n");
    out
}
