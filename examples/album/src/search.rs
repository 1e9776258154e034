//! Full-text search over captions, tags and the text in photos.

use anyhow::Result;
use rusqlite::{params, Connection};
use serde::Serialize;

/// The trigram tokenizer cannot match fewer characters than this; shorter queries (a
/// two-character Chinese word like 海滩) use a plain substring scan instead.
const TRIGRAM: usize = 3;
/// Characters of context each side of a match in a LIKE-fallback snippet.
const SNIPPET_CONTEXT: usize = 12;

#[derive(Debug, Clone, Serialize)]
pub struct Hit {
    pub hash: String,
    pub path: String,
    /// Higher is better (negated bm25); substring matches all score 0.
    pub score: f64,
    pub snippet: String,
    pub caption: String,
}

pub fn search(conn: &Connection, query: &str, limit: usize) -> Result<Vec<Hit>> {
    let query = query.trim();
    if query.is_empty() {
        return Ok(Vec::new());
    }
    let mut hits = if query.chars().count() < TRIGRAM {
        like(conn, query, limit)?
    } else {
        fts(conn, query, limit)?
    };
    // One line per photo: its best-scoring setting (photos have a row per language).
    let mut seen = std::collections::HashSet::new();
    hits.retain(|h| seen.insert(h.hash.clone()));
    hits.truncate(limit);
    Ok(hits)
}

fn fts(conn: &Connection, query: &str, limit: usize) -> Result<Vec<Hit>> {
    // Quoted as one phrase so the user's punctuation is text, not FTS5 syntax.
    let phrase = format!("\"{}\"", query.replace('"', "\"\""));
    let mut stmt = conn.prepare(
        "SELECT r.hash, (SELECT MIN(path) FROM paths WHERE hash = r.hash),
                -bm25(results_fts),
                snippet(results_fts, -1, '[', ']', '…', 12), r.caption
         FROM results_fts JOIN results r ON r.id = results_fts.rowid
         WHERE results_fts MATCH ?1
         ORDER BY bm25(results_fts) LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![phrase, limit as i64 * 4], hit)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

fn like(conn: &Connection, query: &str, limit: usize) -> Result<Vec<Hit>> {
    let escaped = query
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    let pattern = format!("%{escaped}%");
    let mut stmt = conn.prepare(
        "SELECT r.hash, (SELECT MIN(path) FROM paths WHERE hash = r.hash), 0.0,
                CASE WHEN r.caption LIKE ?1 ESCAPE '\\' THEN r.caption
                     WHEN r.tags LIKE ?1 ESCAPE '\\' THEN r.tags
                     ELSE r.photo_text END,
                r.caption
         FROM results r
         WHERE r.caption LIKE ?1 ESCAPE '\\' OR r.tags LIKE ?1 ESCAPE '\\'
            OR r.photo_text LIKE ?1 ESCAPE '\\'
         ORDER BY r.id LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![pattern, limit as i64 * 4], hit)?;
    let mut hits: Vec<Hit> = rows.collect::<rusqlite::Result<_>>()?;
    for h in &mut hits {
        h.snippet = around(&h.snippet, query);
    }
    Ok(hits)
}

fn hit(r: &rusqlite::Row) -> rusqlite::Result<Hit> {
    Ok(Hit {
        hash: r.get(0)?,
        path: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
        score: r.get(2)?,
        snippet: r.get(3)?,
        caption: r.get(4)?,
    })
}

/// The match in brackets with a little context, as FTS5's snippet() marks it.
fn around(text: &str, query: &str) -> String {
    let lower = text.to_lowercase();
    let Some(at) = lower
        .find(&query.to_lowercase())
        .filter(|_| lower.len() == text.len())
    else {
        return text.chars().take(SNIPPET_CONTEXT * 4).collect();
    };
    let before: String = {
        let chars: Vec<char> = text[..at].chars().collect();
        chars[chars.len().saturating_sub(SNIPPET_CONTEXT)..]
            .iter()
            .collect()
    };
    let rest = &text[at..];
    let found: String = rest.chars().take(query.chars().count()).collect();
    let after: String = rest[found.len()..].chars().take(SNIPPET_CONTEXT).collect();
    format!("{before}[{found}]{after}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippets_mark_the_match() {
        assert_eq!(around("我们在海滩上看日落", "海滩"), "我们在[海滩]上看日落");
        assert_eq!(around("A Dog", "do"), "A [Do]g");
    }
}
