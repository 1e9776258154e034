//! `vlm-server` seen by an HTTP client: the built binary on a free loopback port with the
//! tiny Qwen2.5-VL fixture (random weights: its text is gibberish, but deterministic).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use vlm_core::{Content, GenerationOptions, Image, Message, Prompt, Request, Role, Sampling};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../vlm-models/tests/fixtures/qwen/qwen2_5_vl")
}

/// A client that opens a connection per request: a pooled keep-alive connection can be
/// reset by the server between two requests, which is not what these tests look at.
fn http() -> ureq::Agent {
    ureq::AgentBuilder::new().max_idle_connections(0).build()
}

/// The server process; killed when the test ends, even when it fails.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_vlm-server"))
            .arg("--model")
            .arg(fixture().join("model"))
            .args(["--port", &port.to_string(), "--device", "cpu"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .env_remove("VLM_API_KEY")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start vlm-server");
        let server = Server { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "vlm-server did not listen within 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// POSTs a chat completion; returns the status, its headers' Retry-After and the
    /// JSON body (error bodies included).
    fn chat(&self, body: &Value, key: Option<&str>) -> (u16, Option<String>, Value) {
        let mut req = http().post(&self.url("/v1/chat/completions"));
        if let Some(key) = key {
            req = req.set("Authorization", &format!("Bearer {key}"));
        }
        let response = match req.send_json(body) {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("request failed: {e}"),
        };
        let status = response.status();
        let retry_after = response.header("retry-after").map(str::to_string);
        let text = response.into_string().expect("body");
        let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
        (status, retry_after, json)
    }

    fn metric(&self, name: &str) -> f64 {
        let text = http()
            .get(&self.url("/metrics"))
            .call()
            .expect("metrics")
            .into_string()
            .expect("metrics text");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in\n{text}"))
    }
}

impl Server {
    /// Waits until the server has received `requests` chat requests and `queued` of them
    /// wait for the model: the others are running (or done). Sleeping a fixed time instead
    /// fails on a loaded machine.
    fn wait_until(&self, requests: f64, queued: f64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.metric("vlm_requests_total") < requests
            || self.metric("vlm_queue_depth") != queued
        {
            assert!(
                Instant::now() < deadline,
                "the server never had {requests} requests with {queued} queued"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn image_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture().join("images").join(name)).expect("fixture image")
}

fn data_url(bytes: &[u8]) -> String {
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// One user turn: the images (as data URLs), then the text.
fn user_turn(images: &[&str], text: &str) -> Value {
    let mut parts: Vec<Value> = images
        .iter()
        .map(
            |name| json!({"type": "image_url", "image_url": {"url": data_url(&image_bytes(name))}}),
        )
        .collect();
    parts.push(json!({"type": "text", "text": text}));
    json!({"role": "user", "content": parts})
}

fn greedy(messages: Value, max_tokens: usize) -> Value {
    json!({"model": "model", "messages": messages, "max_tokens": max_tokens, "temperature": 0})
}

fn answer(body: &Value) -> &str {
    body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("no answer in {body}"))
}

#[test]
fn concurrent_requests_are_batched_and_each_answer_equals_its_solo_answer() {
    let server = Server::start(&["--max-batch-size", "4", "--max-wait-ms", "500"]);
    let cases: Vec<(Vec<&str>, &str, Option<&str>)> = vec![
        (vec!["a.png"], "What is in the photo?", None),
        (vec!["a.png", "b.png"], "Compare the two photos.", None),
        (vec![], "Say hello.", Some("You are terse.")),
        (vec!["single.png"], "照片中主菜是什么?", None),
    ];
    let bodies: Vec<Value> = cases
        .iter()
        .map(|(images, text, system)| {
            let mut messages = vec![];
            if let Some(system) = system {
                messages.push(json!({"role": "system", "content": system}));
            }
            messages.push(user_turn(images, text));
            greedy(Value::Array(messages), 10)
        })
        .collect();
    let answers: Vec<Value> = std::thread::scope(|scope| {
        let handles: Vec<_> = bodies
            .iter()
            .map(|body| scope.spawn(|| server.chat(body, None)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                let (status, _, body) = h.join().expect("client thread");
                assert_eq!(status, 200, "{body}");
                body
            })
            .collect()
    });

    // The same requests, one at a time, straight through the library.
    let model = vlm_core::load(
        fixture().join("model").to_str().unwrap(),
        &Default::default(),
    )
    .expect("load fixture");
    for ((images, text, system), served) in cases.iter().zip(&answers) {
        let images: Vec<Image> = images
            .iter()
            .map(|n| Image::from_bytes(&image_bytes(n)).unwrap())
            .collect();
        let mut messages = vec![];
        if let Some(system) = system {
            messages.push(Message::text(Role::System, *system));
        }
        let mut content = vec![Content::Image; images.len()];
        content.push(Content::Text(text.to_string()));
        messages.push(Message {
            role: Role::User,
            content,
        });
        let request = Request {
            images,
            prompt: Prompt::Chat(messages),
            options: GenerationOptions {
                sampling: Some(Sampling::Greedy),
                ..GenerationOptions::greedy(10)
            },
        };
        let solo = model.generate(&request).expect("solo generation");
        assert_eq!(answer(served), solo.text, "{text}");
        assert_eq!(served["usage"]["completion_tokens"], solo.token_ids.len());
        assert_eq!(served["usage"]["prompt_tokens"], solo.prompt_tokens);
        assert_eq!(served["model"], "model");
    }
    // Four requests within the 500 ms wait: fewer batches than requests.
    let batches = server.metric("vlm_batch_size_count");
    assert_eq!(server.metric("vlm_batch_size_sum"), 4.0);
    assert!(batches < 4.0, "4 requests ran in {batches} batches");
}

/// The SSE events of a streamed completion, `[DONE]` included.
fn stream(server: &Server, body: &Value) -> Vec<String> {
    let response = http()
        .post(&server.url("/v1/chat/completions"))
        .send_json(body)
        .expect("stream");
    assert_eq!(response.content_type(), "text/event-stream");
    let text = response.into_string().expect("events");
    text.lines()
        .filter_map(|l| l.strip_prefix("data: ").map(str::to_string))
        .collect()
}

#[test]
fn streamed_pieces_add_up_to_the_whole_answer() {
    let server = Server::start(&[]);
    let mut body = greedy(json!([user_turn(&["a.png"], "Describe it.")]), 24);
    let (_, _, whole) = server.chat(&body, None);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let events = stream(&server, &body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("JSON chunk"))
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, answer(&whole));
    assert!(
        chunks.len() > 4,
        "one chunk per piece, got {}",
        chunks.len()
    );
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(
        finish["choices"][0]["finish_reason"],
        whole["choices"][0]["finish_reason"]
    );
    assert_eq!(chunks[chunks.len() - 1]["usage"], whole["usage"]);
    assert!(server.metric("vlm_time_to_first_token_seconds_count") >= 2.0);
}

#[test]
fn bad_requests_get_openai_style_errors() {
    let dir = std::env::temp_dir();
    let server = Server::start(&["--max-body-mb", "1", "--max-image-pixels", "100000"]);
    let not_an_image = json!([{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}},
        {"type": "text", "text": "?"}]}]);
    let big = image::RgbImage::new(400, 300); // 120,000 pixels > 100,000
    let mut png = Vec::new();
    big.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let too_many_pixels = json!([{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(&png)}},
        {"type": "text", "text": "?"}]}]);
    let file_url = json!([{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": format!("file://{}", dir.display())}},
        {"type": "text", "text": "?"}]}]);
    let cases = [
        (greedy(not_an_image, 4), 400, "image 1"),
        (greedy(too_many_pixels, 4), 400, "pixels"),
        (greedy(file_url, 4), 400, "--file-root"),
        (
            greedy(json!([user_turn(&[], "hi")]), 1_000_000),
            400,
            "max_tokens",
        ),
        (
            json!({"messages": [user_turn(&[], "hi")], "response_format": {"type": "xml"}}),
            400,
            "response_format.type must be",
        ),
        (
            json!({"messages": "hi"}),
            400,
            "valid chat completion request",
        ),
        (
            json!({"model": "gpt-4o", "messages": [user_turn(&[], "hi")]}),
            404,
            "model",
        ),
    ];
    for (body, status, says) in &cases {
        let (got, _, error) = server.chat(body, None);
        assert_eq!(got, *status, "{error}");
        let message = error["error"]["message"].as_str().expect("error.message");
        assert!(message.contains(says), "{message:?} should say {says:?}");
        assert!(error["error"]["type"].is_string(), "{error}");
    }
    assert_eq!(
        server.metric("vlm_request_errors_total{kind=\"bad_request\"}"),
        6.0
    );
    // The server answers as soon as the body passes the limit and closes the
    // connection, which can break the client's pipe while it still sends: try again.
    let oversized = json!({"messages": [user_turn(&[], &"x".repeat(2 << 20))]});
    let refused = (0..5).find_map(|_| {
        match http()
            .post(&server.url("/v1/chat/completions"))
            .send_json(&oversized)
        {
            Err(ureq::Error::Status(status, r)) => Some((status, r.into_string().unwrap())),
            Ok(r) => Some((r.status(), r.into_string().unwrap())),
            Err(ureq::Error::Transport(_)) => None,
        }
    });
    let (status, error) = refused.expect("an answer to the oversized body");
    assert_eq!(status, 400, "{error}");
    assert!(error.contains("--max-body-mb"), "{error}");
    assert_eq!(
        server.metric("vlm_request_errors_total{kind=\"not_found\"}"),
        1.0
    );
}

#[test]
fn api_keys_guard_the_v1_routes() {
    let server = Server::start(&["--api-key", "k1", "--api-key", "k2"]);
    let body = greedy(json!([user_turn(&[], "hi")]), 2);
    for key in [None, Some("k3")] {
        let (status, _, error) = server.chat(&body, key);
        assert_eq!(status, 401, "{error}");
        assert_eq!(error["error"]["code"], "invalid_api_key");
    }
    assert_eq!(server.chat(&body, Some("k2")).0, 200);
    let models = http().get(&server.url("/v1/models")).call();
    assert!(matches!(models, Err(ureq::Error::Status(401, _))));
    let health = http()
        .get(&server.url("/health"))
        .call()
        .expect("health is open");
    assert_eq!(health.status(), 200);
    assert_eq!(
        server.metric("vlm_request_errors_total{kind=\"unauthorized\"}"),
        3.0
    );
}

/// A request that runs for seconds on the tiny model: end-of-sequence is ignored until
/// `tokens` exist (vLLM's `min_tokens`).
fn long(tokens: usize) -> Value {
    json!({"messages": [user_turn(&[], "hi")], "max_tokens": tokens, "min_tokens": tokens, "temperature": 0})
}

#[test]
fn a_full_queue_answers_429_with_retry_after() {
    let server = Server::start(&[
        "--max-batch-size",
        "1",
        "--max-queue",
        "1",
        "--max-wait-ms",
        "0",
    ]);
    std::thread::scope(|scope| {
        let running = scope.spawn(|| server.chat(&long(3000), None));
        server.wait_until(1.0, 0.0);
        let waiting = scope.spawn(|| server.chat(&long(5), None));
        server.wait_until(2.0, 1.0);
        let (status, retry_after, error) = server.chat(&long(5), None);
        assert_eq!(status, 429, "{error}");
        assert_eq!(retry_after.as_deref(), Some("1"));
        assert_eq!(error["error"]["code"], "server_overloaded");
        assert_eq!(running.join().unwrap().0, 200);
        assert_eq!(waiting.join().unwrap().0, 200);
    });
    assert_eq!(
        server.metric("vlm_request_errors_total{kind=\"overloaded\"}"),
        1.0
    );
}

#[test]
fn a_client_that_disconnects_cancels_its_generation() {
    let server = Server::start(&["--max-tokens-limit", "50000"]);
    for stream in [false, true] {
        let mut body = long(50_000); // about a minute of work if nobody stopped it
        body["stream"] = json!(stream);
        let body = body.to_string();
        let mut conn = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
        write!(
            conn,
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        if stream {
            // Wait for the first event, so the generation is surely running.
            let mut first = [0u8; 64];
            let _ = conn.read(&mut first).unwrap();
        } else {
            server.wait_until(1.0, 0.0);
        }
        drop(conn);
        // The model is free again within a step or two.
        let started = Instant::now();
        let (status, _, _) = server.chat(&greedy(json!([user_turn(&[], "hi")]), 2), None);
        assert_eq!(status, 200);
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the next request waited {:?}: the disconnected one kept running",
            started.elapsed()
        );
    }
    assert_eq!(
        server.metric("vlm_request_errors_total{kind=\"cancelled\"}"),
        2.0
    );
}

#[test]
fn sigterm_finishes_the_requests_in_flight_then_exits() {
    let mut server = Server::start(&[]);
    std::thread::scope(|scope| {
        let in_flight = scope.spawn(|| server.chat(&long(1000), None));
        server.wait_until(1.0, 0.0);
        let status = Command::new("kill")
            .args(["-TERM", &server.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let (status, _, body) = in_flight.join().unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["usage"]["completion_tokens"], 1000);
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = server.child.try_wait().expect("wait") {
            assert!(status.success(), "vlm-server exited with {status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "vlm-server did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn models_and_health() {
    let server = Server::start(&["--served-model-name", "tiny-qwen"]);
    let models: Value = http()
        .get(&server.url("/v1/models"))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(models["data"][0]["id"], "tiny-qwen");
    let health: Value = http()
        .get(&server.url("/health"))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["model_type"], "qwen2_5_vl");
}
