//! The one thread that runs the model. Handlers queue [`Job`]s; the thread gathers the
//! requests that arrive within `max_wait` of the first (up to `max_batch`) and runs
//! them as one batch through the library's batch path (`prepare_items` + `run_items`),
//! which gives each request the answer it would get alone.
//!
//! Streamed requests run alone, one after another between batches, through
//! `generate_stream`: the batch path hands out whole answers only, and a streamed
//! request wants its first token as soon as it exists.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc as tokio_mpsc, oneshot};
use vlm_core::{CancelFlag, Error, Generation, Request, VisionLanguageModel};

use crate::metrics::Metrics;

/// How requests are gathered into batches.
#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    /// Most requests in one batch.
    pub max_batch: usize,
    /// How long the first request of a batch waits for others.
    pub max_wait: Duration,
    /// Requests that may wait (the running batch excluded); more are refused.
    pub max_queue: usize,
}

/// What a streamed request receives.
pub enum StreamEvent {
    /// A piece of final text.
    Text(String),
    /// The end: the whole generation, or why it failed.
    Done(vlm_core::Result<Generation>),
}

/// Where a job's answer goes.
pub enum Reply {
    Whole(oneshot::Sender<vlm_core::Result<Generation>>),
    Stream(tokio_mpsc::UnboundedSender<StreamEvent>),
}

/// One request waiting for the model.
pub struct Job {
    /// With `options.cancel` set to `cancel`.
    pub request: Request,
    /// Set when the client went away.
    pub cancel: CancelFlag,
    pub reply: Reply,
    /// When the request arrived (for time-to-first-token).
    pub arrived: Instant,
}

/// The queue is full; the caller answers 429.
pub struct Overloaded;

/// The handlers' side of the queue. Dropping every clone ends the thread once the
/// queue is empty.
#[derive(Clone)]
pub struct Batcher {
    queue: SyncSender<Job>,
    metrics: Arc<Metrics>,
}

impl Batcher {
    /// Starts the model thread.
    pub fn start(
        model: Arc<dyn VisionLanguageModel>,
        config: BatchConfig,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<(Batcher, JoinHandle<()>)> {
        let (queue, jobs) = mpsc::sync_channel(config.max_queue);
        let worker = Worker {
            model,
            config,
            metrics: metrics.clone(),
            jobs,
            retry: VecDeque::new(),
        };
        let thread = std::thread::Builder::new()
            .name("vlm-model".into())
            .spawn(move || worker.run())?;
        Ok((Batcher { queue, metrics }, thread))
    }

    /// Queues a job, or refuses it at once when `max_queue` jobs already wait.
    pub fn submit(&self, job: Job) -> Result<(), Overloaded> {
        // Counted first: the thread may take the job before `try_send` returns.
        self.metrics.queued();
        match self.queue.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.metrics.dequeued();
                Err(Overloaded)
            }
        }
    }
}

struct Worker {
    model: Arc<dyn VisionLanguageModel>,
    config: BatchConfig,
    metrics: Arc<Metrics>,
    jobs: mpsc::Receiver<Job>,
    /// Jobs to run again: the library stops a whole batch when one of its requests is
    /// cancelled, so the others of that batch go round once more.
    retry: VecDeque<Job>,
}

impl Worker {
    fn run(mut self) {
        while let Some(first) = self.next(None) {
            let mut jobs = vec![first];
            let deadline = Instant::now() + self.config.max_wait;
            while jobs.len() < self.config.max_batch {
                match self.next(Some(deadline)) {
                    Some(job) => jobs.push(job),
                    None => break,
                }
            }
            let (streamed, whole): (Vec<Job>, Vec<Job>) = jobs
                .into_iter()
                .filter(|job| self.still_wanted(job))
                .partition(|job| matches!(job.reply, Reply::Stream(_)));
            if !whole.is_empty() {
                self.run_batch(whole);
            }
            for job in streamed {
                self.run_streamed(job);
            }
        }
    }

    /// The next job: a retried one first, else from the queue, waiting until `deadline`
    /// (`None`: until one comes or every sender is gone).
    fn next(&mut self, deadline: Option<Instant>) -> Option<Job> {
        if let Some(job) = self.retry.pop_front() {
            return Some(job);
        }
        let job = match deadline {
            None => self.jobs.recv().ok(),
            Some(deadline) => {
                let wait = deadline.saturating_duration_since(Instant::now());
                self.jobs.recv_timeout(wait).ok()
            }
        }?;
        self.metrics.dequeued();
        Some(job)
    }

    /// False (and the job answered) when its client left while it waited.
    fn still_wanted(&self, job: &Job) -> bool {
        if job.cancel.is_cancelled() {
            self.metrics.error("cancelled");
            return false;
        }
        true
    }

    fn run_batch(&mut self, jobs: Vec<Job>) {
        self.metrics.batch(jobs.len());
        let started = Instant::now();
        let model = &self.model;
        let requests = jobs.iter().map(|j| Ok(j.request.clone())).collect();
        let results = std::panic::catch_unwind(AssertUnwindSafe(|| {
            model.run_items(model.prepare_items(requests))
        }))
        .unwrap_or_else(|_| {
            jobs.iter()
                .map(|_| Err(Error::Generation(panic_message())))
                .collect()
        });
        let mut speed = 0.0;
        for (job, result) in jobs.into_iter().zip(results) {
            match result {
                Err(Error::Cancelled) if !job.cancel.is_cancelled() => {
                    self.retry.push_back(job);
                    continue;
                }
                Err(Error::Cancelled) => self.metrics.error("cancelled"),
                Err(_) => {}
                Ok(ref g) => {
                    speed += g.timings.decode_tokens_per_second();
                    self.metrics.tokens(g.prompt_tokens, g.token_ids.len());
                    let queued = started.saturating_duration_since(job.arrived);
                    self.metrics
                        .time_to_first_token(queued + g.timings.time_to_first_token());
                }
            }
            if let Reply::Whole(tx) = job.reply {
                // The handler is gone when its client left; nothing to tell.
                let _ = tx.send(result);
            }
        }
        if speed > 0.0 {
            self.metrics.decode_speed(speed);
        }
    }

    fn run_streamed(&mut self, job: Job) {
        let Reply::Stream(tx) = job.reply else {
            return;
        };
        self.metrics.batch(1);
        let mut first = true;
        let (metrics, cancel, arrived) = (&self.metrics, &job.cancel, job.arrived);
        let mut on_text = |piece: &str| {
            if first {
                metrics.time_to_first_token(arrived.elapsed());
                first = false;
            }
            if tx.send(StreamEvent::Text(piece.to_string())).is_err() {
                // The client closed the stream: stop at the next step.
                cancel.cancel();
            }
        };
        let model = &self.model;
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            model.generate_stream(&job.request, &mut on_text)
        }))
        .unwrap_or_else(|_| Err(Error::Generation(panic_message())));
        match &result {
            Ok(g) => {
                self.metrics.tokens(g.prompt_tokens, g.token_ids.len());
                self.metrics
                    .decode_speed(g.timings.decode_tokens_per_second());
            }
            Err(Error::Cancelled) => self.metrics.error("cancelled"),
            Err(_) => {}
        }
        let _ = tx.send(StreamEvent::Done(result));
    }
}

fn panic_message() -> String {
    "the model panicked on this request; this is a bug in vlm: please report it".into()
}
