//! The HTTP side: routes, the chat-completions handler (whole answers and SSE streams)
//! and error counting.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request as HttpRequest, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use vlm_core::{CancelFlag, GenerationOptions, Image, Prompt, Request, VisionLanguageModel};

use crate::api::{self, ChatRequest, RequestLimits};
use crate::auth::{self, ApiKeys};
use crate::batcher::{Batcher, Job, Reply, StreamEvent};
use crate::errors::ApiError;
use crate::images::{self, ImagePolicy};
use crate::metrics::Metrics;

/// What every handler shares.
pub struct App {
    pub model: Arc<dyn VisionLanguageModel>,
    /// The name clients pass as `model` and see in answers.
    pub model_id: String,
    pub batcher: Batcher,
    pub metrics: Arc<Metrics>,
    pub limits: RequestLimits,
    pub images: ImagePolicy,
    pub max_queue: usize,
    pub max_body_bytes: usize,
    pub started: u64,
    pub next_id: AtomicU64,
}

pub fn router(app: Arc<App>, keys: ApiKeys) -> Router {
    let v1 = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route_layer(middleware::from_fn_with_state(keys, auth::require_key));
    Router::new()
        .merge(v1)
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(app.max_body_bytes))
        .layer(middleware::from_fn_with_state(app.clone(), count_errors))
        .with_state(app)
}

/// Counts every error answer by kind (401s from the key check included). Requests whose
/// client left never get an answer; the model thread counts those.
async fn count_errors(State(app): State<Arc<App>>, request: HttpRequest, next: Next) -> Response {
    let response = next.run(request).await;
    let kind = match response.status().as_u16() {
        401 => Some("unauthorized"),
        404 => Some("not_found"),
        429 => Some("overloaded"),
        499 => None,
        400..=499 => Some("bad_request"),
        500..=599 => Some("internal"),
        _ => None,
    };
    if let Some(kind) = kind {
        app.metrics.error(kind);
    }
    response
}

async fn health(State(app): State<Arc<App>>) -> Json<Value> {
    let info = app.model.info();
    Json(json!({
        "status": "ok",
        "model": app.model_id,
        "model_type": info.model_type,
        "device": info.device,
    }))
}

async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(app.model.cache_stats()),
    )
}

async fn models(State(app): State<Arc<App>>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": app.model_id,
            "object": "model",
            "created": app.started,
            "owned_by": "vlm",
        }],
    }))
}

async fn chat_completions(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    app.metrics.request();
    chat(app, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn chat(app: Arc<App>, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let body = body.map_err(|e| {
        ApiError::bad_request(format!(
            "the request body could not be read ({e}); this server takes at most {} bytes (--max-body-mb)",
            app.max_body_bytes
        ))
    })?;
    let request: ChatRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body is not a valid chat completion request: {e}"
        ))
    })?;
    if let Some(model) = request.model.as_deref() {
        if model != app.model_id {
            return Err(ApiError::not_found(format!(
                "the model `{model}` does not exist here; this server serves `{}` (GET /v1/models)",
                app.model_id
            )));
        }
    }
    let parsed = request.parse(app.limits)?;
    let images = load_images(&app, parsed.image_urls).await?;
    let cancel = CancelFlag::new();
    let request = Request {
        images,
        prompt: Prompt::Chat(parsed.messages),
        options: GenerationOptions {
            cancel: Some(cancel.clone()),
            ..parsed.options
        },
    };
    let answer = Answer {
        id: format!(
            "chatcmpl-{:x}{:04x}",
            app.started,
            app.next_id.fetch_add(1, Ordering::Relaxed)
        ),
        created: unix_now(),
        arrived,
        guard: CancelOnDrop(Some(cancel.clone())),
        app: app.clone(),
    };
    if parsed.stream {
        let (tx, rx) = mpsc::unbounded_channel();
        submit(&app, request, cancel, Reply::Stream(tx), arrived)?;
        Ok(stream(answer, rx, parsed.include_usage).into_response())
    } else {
        let (tx, rx) = oneshot::channel();
        submit(&app, request, cancel, Reply::Whole(tx), arrived)?;
        answer.whole(rx).await
    }
}

fn submit(
    app: &App,
    request: Request,
    cancel: CancelFlag,
    reply: Reply,
    arrived: Instant,
) -> Result<(), ApiError> {
    app.batcher
        .submit(Job {
            request,
            cancel,
            reply,
            arrived,
        })
        .map_err(|_| ApiError::overloaded(app.max_queue))
}

async fn load_images(app: &App, urls: Vec<String>) -> Result<Vec<Image>, ApiError> {
    if urls.is_empty() {
        return Ok(vec![]);
    }
    let policy = app.images.clone();
    tokio::task::spawn_blocking(move || {
        urls.iter()
            .enumerate()
            .map(|(i, url)| images::load(url, i + 1, &policy))
            .collect()
    })
    .await
    .map_err(|_| ApiError::internal("loading the images panicked; this is a bug in vlm-server"))?
}

/// Sets the request's cancel flag when dropped while armed: axum drops the handler (or
/// the response stream) when the client disconnects, and the model stops that request.
struct CancelOnDrop(Option<CancelFlag>);

impl CancelOnDrop {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(flag) = &self.0 {
            flag.cancel();
        }
    }
}

/// One request's answer in the making.
struct Answer {
    id: String,
    created: u64,
    arrived: Instant,
    guard: CancelOnDrop,
    app: Arc<App>,
}

impl Answer {
    async fn whole(
        mut self,
        rx: oneshot::Receiver<vlm_core::Result<vlm_core::Generation>>,
    ) -> Result<Response, ApiError> {
        let result = rx
            .await
            .map_err(|_| ApiError::internal("the model thread stopped"))?;
        self.guard.disarm();
        let generation = result?;
        self.app.metrics.latency(self.arrived.elapsed());
        Ok(Json(api::completion(
            &self.id,
            self.created,
            &self.app.model_id,
            &generation,
        ))
        .into_response())
    }

    fn event(&self, delta: Value, finish_reason: Option<&str>) -> Event {
        let chunk = api::chunk(
            &self.id,
            self.created,
            &self.app.model_id,
            delta,
            finish_reason,
        );
        Event::default().data(chunk.to_string())
    }
}

/// The SSE answer: a role chunk, one chunk per piece of text, a chunk with the finish
/// reason, the usage chunk when asked for, then `[DONE]`. A failure after the stream
/// started arrives as an `{"error": ...}` event (the status is already 200).
fn stream(
    answer: Answer,
    rx: mpsc::UnboundedReceiver<StreamEvent>,
    include_usage: bool,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    struct State {
        answer: Answer,
        rx: mpsc::UnboundedReceiver<StreamEvent>,
        pending: VecDeque<Event>,
        done: bool,
        include_usage: bool,
    }
    let first = answer.event(json!({"role": "assistant", "content": ""}), None);
    let state = State {
        answer,
        rx,
        pending: VecDeque::from([first]),
        done: false,
        include_usage,
    };
    let events = futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(event) = s.pending.pop_front() {
                return Some((Ok(event), s));
            }
            if s.done {
                return None;
            }
            let event = s.rx.recv().await;
            s.done = !matches!(event, Some(StreamEvent::Text(_)));
            match event {
                Some(StreamEvent::Text(text)) => {
                    let e = s.answer.event(json!({"content": text}), None);
                    s.pending.push_back(e);
                }
                Some(StreamEvent::Done(Ok(g))) => {
                    s.answer.guard.disarm();
                    let a = &s.answer;
                    let reason = api::finish_reason(&g.finish_reason);
                    s.pending.push_back(a.event(json!({}), Some(reason)));
                    if s.include_usage {
                        let usage = api::usage_chunk(&a.id, a.created, &a.app.model_id, &g);
                        s.pending
                            .push_back(Event::default().data(usage.to_string()));
                    }
                    s.pending.push_back(Event::default().data("[DONE]"));
                    a.app.metrics.latency(a.arrived.elapsed());
                }
                Some(StreamEvent::Done(Err(e))) => {
                    s.answer.guard.disarm();
                    let e = ApiError::from(e);
                    if e.status != StatusCode::from_u16(499).unwrap_or(e.status) {
                        let kind = if e.status.is_client_error() {
                            "bad_request"
                        } else {
                            "internal"
                        };
                        s.answer.app.metrics.error(kind);
                    }
                    s.pending
                        .push_back(Event::default().data(e.body().to_string()));
                }
                None => {
                    s.answer.app.metrics.error("internal");
                    let e = ApiError::internal("the model thread stopped");
                    s.pending
                        .push_back(Event::default().data(e.body().to_string()));
                }
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
