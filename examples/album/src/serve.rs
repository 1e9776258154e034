//! `album serve`: a local web page over the album: thumbnails with captions, search,
//! and trip stories. The page works without JavaScript (`/?q=` renders results on the
//! server); with it, the search box also searches as you type through `/api/search`.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rusqlite::Connection;

use crate::trips::TripRules;
use crate::{db, search, trips};

/// Longest side of a thumbnail in pixels: sharp in a 200-pixel grid cell on HiDPI screens.
const THUMB_SIZE: u32 = 320;
const THUMB_QUALITY: u8 = 80;
/// Photos shown in the grid; search reaches the rest.
const GRID_LIMIT: usize = 500;
const SEARCH_LIMIT: usize = 50;

struct Album {
    db: PathBuf,
    busy: Duration,
    rules: TripRules,
}

type Failure = (StatusCode, String);

impl Album {
    /// A connection per request: SQLite connections are not shared across threads, and
    /// opening one is cheap next to decoding a thumbnail.
    async fn with_db<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T, Failure> {
        let album = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let conn = db::open(&album.db, album.busy)?;
            work(&conn)
        })
        .await
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))
    }
}

pub fn serve(db: PathBuf, busy: Duration, host: IpAddr, port: u16, rules: TripRules) -> Result<()> {
    // Fail now, not on the first request, if the database cannot be opened.
    db::open(&db, busy)?;
    let album = Arc::new(Album { db, busy, rules });
    let app = Router::new()
        .route("/", get(page))
        .route("/api/search", get(api_search))
        .route("/thumb/{hash}", get(thumb))
        .with_state(album);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((host, port))
            .await
            .with_context(|| format!("cannot listen on {host}:{port}; pick another --port"))?;
        eprintln!(
            "album: open http://{} (Ctrl-C stops)",
            listener.local_addr()?
        );
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .context("serving the album")
    })
}

#[derive(serde::Deserialize)]
struct SearchParams {
    #[serde(default)]
    q: String,
}

async fn api_search(
    State(album): State<Arc<Album>>,
    Query(params): Query<SearchParams>,
) -> Result<Json<Vec<search::Hit>>, Failure> {
    let hits = album
        .with_db(move |conn| search::search(conn, &params.q, SEARCH_LIMIT))
        .await?;
    Ok(Json(hits))
}

async fn page(
    State(album): State<Arc<Album>>,
    Query(params): Query<SearchParams>,
) -> Result<Html<String>, Failure> {
    let rules = album.rules;
    let html = album
        .with_db(move |conn| {
            let hits = search::search(conn, &params.q, SEARCH_LIMIT)?;
            let trips = trips::trips(conn, &rules)?;
            let photos = db::photos(conn, GRID_LIMIT)?;
            Ok(render(&params.q, &hits, &trips, &photos))
        })
        .await?;
    Ok(Html(html))
}

async fn thumb(State(album): State<Arc<Album>>, Path(hash): Path<String>) -> Response {
    let result = album
        .with_db(move |conn| {
            if let Some(jpeg) = db::thumbnail(conn, &hash)? {
                return Ok(Some(jpeg));
            }
            let Some(path) = db::existing_path(conn, &hash)? else {
                return Ok(None);
            };
            let jpeg = make_thumbnail(&std::fs::read(&path)?)?;
            db::save_thumbnail(conn, &hash, &jpeg)?;
            Ok(Some(jpeg))
        })
        .await;
    match result {
        Ok(Some(jpeg)) => ([(header::CONTENT_TYPE, "image/jpeg")], jpeg).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, "photo not on disk any more").into_response(),
        Err(e) => e.into_response(),
    }
}

/// A small JPEG, upright (vlm's decoder applies the EXIF orientation).
pub fn make_thumbnail(bytes: &[u8]) -> Result<Vec<u8>> {
    let rgb = vlm_core::Image::from_bytes(bytes)?.into_rgb();
    let scale = THUMB_SIZE as f64 / rgb.width().max(rgb.height()) as f64;
    let small = if scale < 1.0 {
        let w = ((rgb.width() as f64 * scale).round() as u32).max(1);
        let h = ((rgb.height() as f64 * scale).round() as u32).max(1);
        image::imageops::thumbnail(&rgb, w, h)
    } else {
        rgb
    };
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, THUMB_QUALITY)
        .encode_image(&small)?;
    Ok(jpeg)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn render(q: &str, hits: &[search::Hit], trips: &[trips::Trip], photos: &[db::PhotoRow]) -> String {
    let mut h = String::with_capacity(16 * 1024);
    let _ = write!(
        h,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>album</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{{font-family:system-ui,sans-serif;margin:1.5rem;max-width:70rem}}
.grid{{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:1rem}}
figure{{margin:0}} img{{width:100%;border-radius:6px;background:#eee}}
figcaption,.snippet{{font-size:.9rem;color:#333}} .score,.path{{color:#777;font-size:.8rem}}
li.hit img{{width:80px;vertical-align:middle;margin-right:.5rem}}
</style></head><body>
<h1>album</h1>
<form method="get" action="/"><input id="q" name="q" value="{}" placeholder="Search captions, tags, text in photos" size="40"> <button>Search</button></form>
<ol id="live-results"></ol>
"#,
        esc(q)
    );
    if !q.trim().is_empty() {
        let _ = write!(
            h,
            r#"<section id="results"><h2>{} results for “{}”</h2><ol>"#,
            hits.len(),
            esc(q)
        );
        for hit in hits {
            let _ = write!(
                h,
                r#"<li class="hit" data-hash="{}"><img src="/thumb/{}" alt=""><span class="path">{}</span> <span class="score">{:.2}</span><div class="snippet">{}</div></li>"#,
                esc(&hit.hash),
                esc(&hit.hash),
                esc(&hit.path),
                hit.score,
                esc(&hit.snippet)
            );
        }
        h.push_str("</ol></section>");
    }
    h.push_str(r#"<section id="trips"><h2>Trips</h2>"#);
    for t in trips {
        let story = t.story.as_deref().map(esc).unwrap_or_else(|| {
            format!(
                "No story yet: run <code>album story {}</code>.",
                esc(&t.key)
            )
        });
        let _ = write!(
            h,
            r#"<article class="trip" id="trip-{}"><h3>#{} {} – {} ({} photos)</h3><p class="story">{}</p></article>"#,
            esc(&t.key),
            t.number,
            esc(&t.start),
            esc(&t.end),
            t.photos.len(),
            story
        );
    }
    h.push_str(r#"</section><section id="photos"><h2>Photos</h2><div class="grid">"#);
    for p in photos {
        let _ = write!(
            h,
            r#"<figure data-hash="{}"><img loading="lazy" src="/thumb/{}" alt="{}" title="{}"><figcaption>{}</figcaption></figure>"#,
            esc(&p.hash),
            esc(&p.hash),
            esc(&p.caption),
            esc(&p.path),
            esc(&p.caption)
        );
    }
    h.push_str(
        r#"</div></section>
<script>
const box = document.getElementById('q'), live = document.getElementById('live-results');
async function liveSearch(q) {
  const res = await fetch('/api/search?q=' + encodeURIComponent(q));
  const hits = res.ok ? await res.json() : [];
  live.replaceChildren(...hits.map(hit => {
    const li = document.createElement('li');
    li.className = 'live-hit';
    li.textContent = hit.path + ' — ' + hit.snippet;
    return li;
  }));
}
box.addEventListener('input', () => liveSearch(box.value));
// `/#live=QUERY` runs the live search at load (bookmarks, and the browser test).
if (location.hash.startsWith('#live=')) {
  box.value = decodeURIComponent(location.hash.slice(6));
  liveSearch(box.value);
}
</script></body></html>"#,
    );
    h
}
