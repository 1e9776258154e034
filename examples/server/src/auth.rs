//! Optional API keys: with any key configured, `/v1/*` needs
//! `Authorization: Bearer <key>`; `/health` and `/metrics` stay open for probes and
//! scrapers.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::errors::ApiError;

/// The keys the server accepts; empty: no key needed.
#[derive(Clone, Default)]
pub struct ApiKeys(pub Arc<Vec<String>>);

impl ApiKeys {
    fn accepts(&self, header_value: Option<&str>) -> bool {
        if self.0.is_empty() {
            return true;
        }
        let Some(given) = header_value.and_then(|v| v.strip_prefix("Bearer ")) else {
            return false;
        };
        // Compared in full every time, so the answer's timing says nothing about how
        // much of a key was right.
        self.0.iter().fold(false, |found, key| {
            found | same_bytes(key.as_bytes(), given.trim().as_bytes())
        })
    }
}

fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Middleware for the `/v1` routes.
pub async fn require_key(State(keys): State<ApiKeys>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if keys.accepts(given) {
        next.run(request).await
    } else {
        ApiError::unauthorized().into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_keys() {
        let keys = ApiKeys(Arc::new(vec!["k1".into(), "secret-2".into()]));
        assert!(keys.accepts(Some("Bearer secret-2")));
        assert!(keys.accepts(Some("Bearer k1")));
        assert!(!keys.accepts(Some("Bearer k2")));
        assert!(!keys.accepts(Some("secret-2")));
        assert!(!keys.accepts(None));
        assert!(ApiKeys::default().accepts(None));
    }
}
