//! Trips: photos grouped by gaps in time and jumps in place, and a story for each.

use anyhow::{bail, Context, Result};
use clap::Args;
use rusqlite::Connection;
use serde::Serialize;
use vlm_core::{Image, Language};

use crate::captioner::Captioner;
use crate::db;

/// Mean Earth radius (IUGG), for the haversine distance.
const EARTH_RADIUS_KM: f64 = 6371.0088;

/// When a new trip starts.
#[derive(Debug, Clone, Copy, Args)]
pub struct TripRules {
    /// A gap longer than this between two photos starts a new trip.
    #[arg(long, default_value_t = 12.0)]
    pub gap_hours: f64,
    /// A jump farther than this from the trip's last known place starts a new trip.
    #[arg(long, default_value_t = 50.0)]
    pub max_km: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TripPhoto {
    pub hash: String,
    pub path: String,
    pub caption: String,
    pub taken_at: String,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Trip {
    /// Position in time order, from 1 (changes when earlier photos are added).
    pub number: usize,
    /// Stable name: first day and first photo, so a stored story stays with its trip.
    pub key: String,
    pub start: String,
    pub end: String,
    pub photos: Vec<TripPhoto>,
    pub story: Option<String>,
}

/// Photos without an EXIF time cannot be placed in a trip and are left out.
pub fn trips(conn: &Connection, rules: &TripRules) -> Result<Vec<Trip>> {
    let mut stmt = conn.prepare(
        "SELECT p.hash, COALESCE((SELECT MIN(path) FROM paths WHERE hash = p.hash), ''),
                COALESCE((SELECT caption FROM results WHERE hash = p.hash ORDER BY id DESC LIMIT 1), ''),
                p.taken_at, p.lat, p.lon, CAST(strftime('%s', p.taken_at) AS INTEGER) AS t
         FROM photos p WHERE t IS NOT NULL ORDER BY t, p.hash",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            TripPhoto {
                hash: r.get(0)?,
                path: r.get(1)?,
                caption: r.get(2)?,
                taken_at: r.get(3)?,
                lat: r.get(4)?,
                lon: r.get(5)?,
            },
            r.get::<_, i64>(6)?,
        ))
    })?;
    let mut groups: Vec<Vec<TripPhoto>> = Vec::new();
    let (mut last_time, mut last_place) = (i64::MIN, None);
    for row in rows {
        let (photo, time) = row?;
        let place = photo.lat.zip(photo.lon);
        let gap = time.saturating_sub(last_time) as f64 > rules.gap_hours * 3600.0;
        let jump =
            matches!((last_place, place), (Some(a), Some(b)) if haversine_km(a, b) > rules.max_km);
        if gap || jump || groups.is_empty() {
            groups.push(Vec::new());
            last_place = None;
        }
        last_time = time;
        last_place = place.or(last_place);
        if let Some(g) = groups.last_mut() {
            g.push(photo);
        }
    }
    groups
        .into_iter()
        .enumerate()
        .filter_map(|(i, photos)| {
            let (first, last) = (photos.first()?, photos.last()?);
            let key = format!(
                "{}-{}",
                first.taken_at.get(..10).unwrap_or("").replace('-', ""),
                first.hash.get(..8).unwrap_or(&first.hash)
            );
            Some((
                i + 1,
                key,
                first.taken_at.clone(),
                last.taken_at.clone(),
                photos,
            ))
        })
        .map(|(number, key, start, end, photos)| {
            let story = db::story(conn, &key)?;
            Ok(Trip {
                number,
                key,
                start,
                end,
                photos,
                story,
            })
        })
        .collect()
}

/// Finds a trip by its number or key, as `album trips` prints them.
pub fn find(trips: Vec<Trip>, id: &str) -> Result<Trip> {
    let count = trips.len();
    trips
        .into_iter()
        .find(|t| t.key == id || id.parse::<usize>().ok() == Some(t.number))
        .with_context(|| {
            format!("there is no trip {id} ({count} trips); run `album trips` to list their numbers and keys")
        })
}

/// Tells the story of a trip from up to `max_photos` photos spread over it, and stores it.
pub fn tell(
    conn: &Connection,
    captioner: &mut Captioner,
    trip: &Trip,
    max_photos: usize,
    language: Language,
    model_id: &str,
) -> Result<String> {
    let mut used = Vec::new();
    let mut images = Vec::new();
    for i in spread(trip.photos.len(), max_photos) {
        let photo = &trip.photos[i];
        let Some(path) = db::existing_path(conn, &photo.hash)? else {
            continue;
        };
        match Image::open(&path) {
            Ok(image) => {
                images.push(image);
                used.push(photo.hash.clone());
            }
            Err(e) => eprintln!("warning: leaving {path} out of the story: {e}"),
        }
    }
    if images.is_empty() {
        bail!(
            "none of the photos of trip {} can be opened any more; re-index their new folder with `album index`",
            trip.key
        );
    }
    let story = captioner.story(&images, language)?;
    db::save_story(conn, &trip.key, &used, model_id, &story)?;
    Ok(story)
}

/// `n` indexes evenly spread over `0..len`, first and last included.
pub fn spread(len: usize, n: usize) -> Vec<usize> {
    match (len, n) {
        (0, _) | (_, 0) => vec![],
        (len, n) if n >= len => (0..len).collect(),
        (_, 1) => vec![0],
        (len, n) => (0..n).map(|i| i * (len - 1) / (n - 1)).collect(),
    }
}

/// Great-circle distance between two (lat, lon) points in degrees.
pub fn haversine_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (lat1, lat2) = (a.0.to_radians(), b.0.to_radians());
    let dlat = lat2 - lat1;
    let dlon = (b.1 - a.1).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beijing_to_shanghai_is_about_1070_km() {
        let d = haversine_km((39.9042, 116.4074), (31.2304, 121.4737));
        assert!((d - 1067.0).abs() < 10.0, "{d}");
        assert_eq!(haversine_km((10.0, 10.0), (10.0, 10.0)), 0.0);
    }

    #[test]
    fn representatives_spread_over_the_trip() {
        assert_eq!(spread(10, 4), [0, 3, 6, 9]);
        assert_eq!(spread(3, 6), [0, 1, 2]);
        assert_eq!(spread(5, 1), [0]);
        assert!(spread(0, 3).is_empty());
    }
}
