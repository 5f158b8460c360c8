//! `vidgen serve` as a process, over real HTTP on loopback, with the built-in model: the job
//! queue survives SIGKILL, SIGTERM requeues or finishes, deleting a running job stops it, a
//! full queue answers 429, and errors come in OpenAI's shape without file paths.
//! (`tests/serve/run.sh` drives the same server with the official `openai` SDK and headless
//! Chromium.)

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Server {
    child: Child,
    addr: String,
}

impl Server {
    /// Starts `vidgen serve --port 0` on `data` with `extra` flags; waits for /readyz
    /// (/healthz with `--workers 0`, which is never ready).
    fn start(data: &Path, extra: &[&str]) -> Server {
        let probe = if extra.contains(&"0") && extra.contains(&"--workers") {
            "/healthz"
        } else {
            "/readyz"
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_vidgen"))
            .args(["serve", "--port", "0", "--data-dir"])
            .arg(data)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("vidgen serve: listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_string();
        let server = Server { child, addr };
        server.wait_until(Duration::from_secs(60), || {
            server.request("GET", probe, None, &[]).0 == 200
        });
        server
    }

    /// One HTTP/1.1 request → (status, headers lower-cased, body).
    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let mut stream = TcpStream::connect(&self.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        if !body.is_empty() {
            head.push_str("Content-Type: application/json\r\n");
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body.as_bytes()).unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).unwrap();
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a response head");
        let head = String::from_utf8_lossy(&raw[..split]).to_string();
        let mut lines = head.lines();
        let status: u16 = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut body = raw[split + 4..].to_vec();
        if headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v == "chunked")
        {
            body = dechunk(&body);
        }
        (status, headers, body)
    }

    fn json(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let (status, _, bytes) = self.request(method, path, body.as_ref(), &[]);
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    fn create(&self, body: Value) -> String {
        let (status, video) = self.json("POST", "/v1/videos", Some(body));
        assert_eq!(status, 200, "{video}");
        video["id"].as_str().unwrap().to_string()
    }

    fn video(&self, id: &str) -> Value {
        let (status, video) = self.json("GET", &format!("/v1/videos/{id}"), None);
        assert_eq!(status, 200, "{video}");
        video
    }

    fn wait_until(&self, limit: Duration, mut ok: impl FnMut() -> bool) {
        let started = Instant::now();
        while !ok() {
            assert!(started.elapsed() < limit, "timed out after {limit:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_status(&self, id: &str, status: &str) -> Value {
        let mut last = Value::Null;
        self.wait_until(Duration::from_secs(300), || {
            last = self.video(id);
            last["status"] == status
        });
        last
    }

    fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(end) = body.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&body[..end]).trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[end + 2..end + 2 + size]);
        body = &body[end + 4 + size..];
    }
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn jobs_survive_sigkill_and_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let flags = ["--lease-seconds", "1", "--grace-seconds", "0.2"];
    let server = Server::start(&data, &flags);
    let done = server.create(json!({"prompt": "a red ball bounces on the floor", "seed": 1}));
    server.wait_status(&done, "completed");
    let (status, _, first_mp4) =
        server.request("GET", &format!("/v1/videos/{done}/content"), None, &[]);
    assert_eq!(status, 200);

    // a long job, killed mid-generation
    let long = server.create(json!({"prompt": "a blue square moves to the right", "steps": 60}));
    server.wait_until(Duration::from_secs(120), || {
        let v = server.video(&long);
        v["status"] == "in_progress" && v["progress"].as_i64().unwrap() > 0
    });
    drop(server); // SIGKILL
    let videos = data.join("videos");
    assert!(
        !files(&videos)
            .iter()
            .any(|f| f.starts_with(&long) && f.ends_with(".mp4")),
        "a killed job left a video: {:?}",
        files(&videos)
    );

    // restarted: the interrupted job runs again and completes; the finished one is intact
    let server = Server::start(&data, &flags);
    let video = server.wait_status(&long, "completed");
    assert_eq!(video["progress"], 100);
    let (status, _, mp4) = server.request("GET", &format!("/v1/videos/{long}/content"), None, &[]);
    assert_eq!(status, 200);
    assert_eq!(&mp4[4..8], b"ftyp");
    let (status, _, again) =
        server.request("GET", &format!("/v1/videos/{done}/content"), None, &[]);
    assert_eq!((status, again), (200, first_mp4));
    assert!(
        files(&videos).iter().all(|f| !f.ends_with(".tmp")),
        "temporary files left: {:?}",
        files(&videos)
    );

    // SIGTERM mid-job: the job goes back to the queue, the process exits cleanly
    let third = server.create(json!({"prompt": "a green triangle falls", "steps": 400}));
    server.wait_until(Duration::from_secs(120), || {
        server.video(&third)["status"] == "in_progress"
    });
    server.signal("TERM");
    let mut server = server;
    let exit = server.child.wait().unwrap();
    assert!(exit.success(), "exit after SIGTERM: {exit:?}");
    let server = Server::start(&data, &["--workers", "0"]);
    assert_eq!(server.video(&third)["status"], "queued");
    // with no worker in this process, the server is alive but not ready
    assert_eq!(server.request("GET", "/healthz", None, &[]).0, 200);
    assert_eq!(server.request("GET", "/readyz", None, &[]).0, 503);
}

#[test]
fn delete_cancels_a_running_job_and_a_full_queue_answers_429() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), &["--max-queue", "1"]);
    let running = server.create(json!({"prompt": "a red ball", "steps": 1000}));
    server.wait_until(Duration::from_secs(60), || {
        server.video(&running)["status"] == "in_progress"
    });
    let queued = server.create(json!({"prompt": "a blue ball", "steps": 2}));
    let (status, headers, body) = server.request(
        "POST",
        "/v1/videos",
        Some(&json!({"prompt": "one too many"})),
        &[],
    );
    assert_eq!(status, 429);
    assert!(headers.iter().any(|(k, _)| k == "retry-after"));
    let error: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["error"]["code"], "queue_full");

    // deleting the running job stops it at its next step; the queued one runs next
    let started = Instant::now();
    let (status, deleted) = server.json("DELETE", &format!("/v1/videos/{running}"), None);
    assert_eq!((status, &deleted["deleted"]), (200, &json!(true)));
    assert_eq!(
        server.json("GET", &format!("/v1/videos/{running}"), None).0,
        404
    );
    server.wait_status(&queued, "completed");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the deleted job was not stopped"
    );
    let (_, _, metrics) = server.request("GET", "/metrics", None, &[]);
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains("vidgen_jobs_cancelled_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("vidgen_jobs{status=\"completed\"} 1"));
}

#[test]
fn errors_name_the_field_and_never_a_path() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start(
        &data,
        &[
            "--api-key",
            "k",
            "--max-pixels-per-job",
            "2000000",
            "--max-body-bytes",
            "4096",
        ],
    );
    let auth = [("Authorization", "Bearer k")];
    let call = |method: &str, path: &str, body: Option<Value>| {
        let (status, headers, bytes) = server.request(method, path, body.as_ref(), &auth);
        let text = String::from_utf8_lossy(&bytes).to_string();
        assert!(
            !text.contains(data.to_str().unwrap()) && !text.contains("models/"),
            "a path leaked: {text}"
        );
        (
            status,
            headers,
            serde_json::from_str::<Value>(&text).unwrap_or(Value::Null),
        )
    };
    let cases: Vec<(Value, u16, &str)> = vec![
        (json!({}), 400, "prompt"),
        (json!({"prompt": ""}), 400, "prompt"),
        (json!({"prompt": "x".repeat(2001)}), 400, "prompt"),
        (json!({"prompt": "a ball", "size": "big"}), 400, "size"),
        (json!({"prompt": "a ball", "size": "70x64"}), 422, "size"),
        (json!({"prompt": "a ball", "steps": 0}), 400, "steps"),
        (json!({"prompt": "a ball", "steps": "ten"}), 400, "steps"),
        (json!({"prompt": "a ball", "seconds": "-1"}), 400, "seconds"),
        (
            json!({"prompt": "a ball", "guidance": 1e9}),
            400,
            "guidance",
        ),
        (
            json!({"prompt": "a ball", "step_cache": -1}),
            400,
            "step_cache",
        ),
        (
            json!({"prompt": "a ball", "step_cache": "fast"}),
            400,
            "step_cache",
        ),
        (json!({"prompt": "a ball", "model": "sora-2"}), 400, "model"),
        (json!({"prompt": "a ball", "stpes": 3}), 400, "body"),
        // 17 × 64 × 64 × 10 = 696 320 fits the budget of 2e6; 33 frames × 20 steps does not
        (
            json!({"prompt": "a ball", "seconds": "4", "steps": 20}),
            422,
            "size",
        ),
        // a size whose product would wrap a 64-bit budget check
        (
            json!({"prompt": "a ball", "size": "4294967296x4294967296"}),
            422,
            "size",
        ),
    ];
    for (body, want, param) in cases {
        let (status, _, error) = call("POST", "/v1/videos", Some(body.clone()));
        assert_eq!(status, want, "{body} → {error}");
        assert_eq!(error["error"]["param"], param, "{body} → {error}");
        assert!(error["error"]["message"].as_str().unwrap().len() <= 520);
        assert_eq!(error["error"]["type"], "invalid_request_error");
    }
    let (status, _, error) = call(
        "POST",
        "/v1/videos",
        Some(json!({"prompt": "x".repeat(5000)})),
    );
    assert_eq!(
        (status, &error["error"]["code"]),
        (413, &json!("request_too_large"))
    );
    let (status, _, error) = call("GET", "/v1/videos/video_nope", None);
    assert_eq!(
        (status, &error["error"]["code"]),
        (404, &json!("not_found"))
    );
    let (status, _, _) = call("GET", "/v1/videos?limit=0", None);
    assert_eq!(status, 400);
    let (status, _, error) = server.request("GET", "/v1/videos", None, &[]);
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&error));

    // a video that is not finished has no content yet; Range requests on one that is
    let id = {
        let (status, _, video) = call("POST", "/v1/videos", Some(json!({"prompt": "a ball"})));
        assert_eq!(status, 200);
        video["id"].as_str().unwrap().to_string()
    };
    server.wait_until(Duration::from_secs(120), || {
        call("GET", &format!("/v1/videos/{id}"), None).2["status"] == "completed"
    });
    let path = format!("/v1/videos/{id}/content");
    let (_, _, whole) = server.request("GET", &path, None, &auth);
    let (status, headers, part) =
        server.request("GET", &path, None, &[auth[0], ("Range", "bytes=4-11")]);
    assert_eq!((status, part.as_slice()), (206, &whole[4..12]));
    let range = headers.iter().find(|(k, _)| k == "content-range").unwrap();
    assert_eq!(range.1, format!("bytes 4-11/{}", whole.len()));
    let (status, _, _) = server.request(
        "GET",
        &path,
        None,
        &[auth[0], ("Range", &format!("bytes={}-", whole.len()))],
    );
    assert_eq!(status, 416);
    let (status, _, _) = call("GET", &format!("{path}?variant=poster"), None);
    assert_eq!(status, 400);

    // the page and the events stream
    let (status, _, page) = server.request("GET", "/", None, &[]);
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&page).contains("/v1/videos"));
    let (status, headers, events) =
        server.request("GET", &format!("/v1/videos/{id}/events"), None, &auth);
    assert_eq!(status, 200);
    assert!(headers
        .iter()
        .any(|(k, v)| k == "content-type" && v.starts_with("text/event-stream")));
    let events = String::from_utf8_lossy(&events);
    assert!(events.contains("event: video") && events.contains("\"status\":\"completed\""));
}

#[test]
fn two_workers_run_two_jobs_at_once_on_one_model() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), &["--workers", "2"]);
    let a = server.create(json!({"prompt": "a red ball", "steps": 1000}));
    let b = server.create(json!({"prompt": "a blue ball", "steps": 1000}));
    server.wait_until(Duration::from_secs(60), || {
        server.video(&a)["status"] == "in_progress" && server.video(&b)["status"] == "in_progress"
    });
    let (_, _, metrics) = server.request("GET", "/metrics", None, &[]);
    assert!(String::from_utf8(metrics)
        .unwrap()
        .contains("vidgen_workers_busy 2"));
    for id in [&a, &b] {
        assert_eq!(
            server.json("DELETE", &format!("/v1/videos/{id}"), None).0,
            200
        );
    }
    server.wait_until(Duration::from_secs(60), || {
        let (_, _, metrics) = server.request("GET", "/metrics", None, &[]);
        String::from_utf8(metrics)
            .unwrap()
            .contains("vidgen_jobs_cancelled_total 2")
    });
}

#[test]
fn the_fast_mode_is_a_request_field() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), &[]);
    let id = server.create(json!({"prompt": "a red ball", "steps": 10, "step_cache": 0.3}));
    let done = server.wait_status(&id, "completed");
    assert_eq!(done["vidgen"]["step_cache"], 0.3);
    let plain = server.create(json!({"prompt": "a red ball", "steps": 10}));
    let done = server.wait_status(&plain, "completed");
    assert_eq!(done["vidgen"]["step_cache"], Value::Null);
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn load_many_clients_against_a_full_queue_lose_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), &["--max-queue", "6"]);
    // warm up, then measure memory under load
    let first = server.create(json!({"prompt": "a red ball", "steps": 1}));
    server.wait_status(&first, "completed");
    let rss_before = rss_kib(server.child.id());

    let (clients, per_client) = (8, 25);
    let results: Vec<(Vec<String>, Vec<u16>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let server = &server;
                scope.spawn(move || {
                    let (mut accepted, mut statuses) = (Vec::new(), Vec::new());
                    for i in 0..per_client {
                        let body = json!({"prompt": format!("a ball {c} {i}"), "steps": 1});
                        let (status, _, bytes) =
                            server.request("POST", "/v1/videos", Some(&body), &[]);
                        statuses.push(status);
                        if status == 200 {
                            let v: Value = serde_json::from_slice(&bytes).unwrap();
                            accepted.push(v["id"].as_str().unwrap().to_string());
                        }
                        // poll what was accepted, and list, as clients do
                        if let Some(id) = accepted.last() {
                            statuses.push(
                                server
                                    .request("GET", &format!("/v1/videos/{id}"), None, &[])
                                    .0,
                            );
                        }
                        statuses.push(server.request("GET", "/v1/videos?limit=5", None, &[]).0);
                        std::thread::sleep(Duration::from_millis(30));
                    }
                    (accepted, statuses)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let statuses: Vec<u16> = results.iter().flat_map(|r| r.1.clone()).collect();
    let mut accepted: Vec<String> = results.iter().flat_map(|r| r.0.clone()).collect();
    let rejected = statuses.iter().filter(|&&s| s == 429).count();
    assert!(
        statuses.iter().all(|&s| s == 200 || s == 429),
        "unexpected statuses: {:?}",
        statuses
            .iter()
            .filter(|&&s| s != 200 && s != 429)
            .collect::<Vec<_>>()
    );
    assert!(rejected > 0, "the queue never filled");
    assert!(!accepted.is_empty());
    let n = accepted.len();
    accepted.sort();
    accepted.dedup();
    assert_eq!(accepted.len(), n, "a job id was handed out twice");

    // every accepted job completes, and the store holds exactly those (and the warm-up)
    for id in &accepted {
        server.wait_status(id, "completed");
    }
    let mut listed = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/v1/videos?limit=100&order=asc&after={a}"),
            None => "/v1/videos?limit=100&order=asc".into(),
        };
        let (status, page) = server.json("GET", &path, None);
        assert_eq!(status, 200);
        for v in page["data"].as_array().unwrap() {
            listed.push(v["id"].as_str().unwrap().to_string());
        }
        if page["has_more"] != true {
            break;
        }
        after = page["last_id"].as_str().map(String::from);
    }
    listed.retain(|id| id != &first);
    listed.sort();
    assert_eq!(listed, accepted, "lost or extra jobs");
    let rss_after = rss_kib(server.child.id());
    println!(
        "{n} accepted, {rejected} answered 429, {} requests; RSS {rss_before} → {rss_after} KiB",
        statuses.len()
    );
    assert!(
        rss_after < rss_before + 100 * 1024,
        "memory grew from {rss_before} to {rss_after} KiB"
    );
}

/// A multipart/form-data body of text fields and one file part.
fn multipart(fields: &[(&str, &str)], file: (&str, &str, &[u8])) -> (String, Vec<u8>) {
    let boundary = "vidgenTestBoundary7MA4YWxk";
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                .as_bytes(),
        );
    }
    let (name, filename, bytes) = file;
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\nContent-Type: image/png\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn post_raw(server: &Server, path: &str, content_type: &str, body: &[u8]) -> (u16, Value) {
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        server.addr,
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let status = String::from_utf8_lossy(&raw[..split])
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    (
        status,
        serde_json::from_slice(&raw[split + 4..]).unwrap_or(Value::Null),
    )
}

#[test]
fn input_reference_is_image_to_video_where_the_model_does_it() {
    let tmp = tempfile::tempdir().unwrap();
    let frame = vidgen_video::Frames::new(1, 32, 64, 1.0, vec![0.5; 32 * 64 * 3]).unwrap();
    let png_path = tmp.path().join("first.png");
    vidgen_video::write(&png_path, &frame).unwrap();
    let png = std::fs::read(&png_path).unwrap();

    // LTX-Video (the tiny fixture) takes it
    let ltx = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/ltx/pipeline");
    let data = tmp.path().join("ltx-data");
    let server = Server::start(&data, &["--model", ltx.to_str().unwrap()]);
    let (ct, body) = multipart(
        &[
            ("prompt", "a red ball"),
            ("size", "64x32"),
            ("seconds", "0.32"),
            ("steps", "2"),
        ],
        ("input_reference", "first.png", &png),
    );
    let (status, video) = post_raw(&server, "/v1/videos", &ct, &body);
    assert_eq!(status, 200, "{video}");
    let id = video["id"].as_str().unwrap().to_string();
    assert!(data.join("inputs").join(format!("{id}.png")).is_file());
    let done = server.wait_status(&id, "completed");
    assert_eq!(
        (done["size"].as_str(), done["vidgen"]["frames"].as_u64()),
        (Some("64x32"), Some(9))
    );
    let (status, _, mp4) = server.request("GET", &format!("/v1/videos/{id}/content"), None, &[]);
    assert_eq!((status, &mp4[4..8]), (200, &b"ftyp"[..]));
    // a remix keeps the first frame
    let (status, remix) = server.json(
        "POST",
        &format!("/v1/videos/{id}/remix"),
        Some(json!({"prompt": "a blue ball"})),
    );
    assert_eq!(status, 200, "{remix}");
    let remix_id = remix["id"].as_str().unwrap();
    server.wait_status(remix_id, "completed");
    assert_eq!(
        server.json("DELETE", &format!("/v1/videos/{id}"), None).0,
        200
    );
    assert!(!data.join("inputs").join(format!("{id}.png")).exists());
    // not an image; too large an image (from its header)
    let (ct, body) = multipart(
        &[("prompt", "a ball")],
        ("input_reference", "x.png", b"not an image"),
    );
    let (status, error) = post_raw(&server, "/v1/videos", &ct, &body);
    assert_eq!(
        (status, &error["error"]["param"]),
        (400, &json!("input_reference")),
        "{error}"
    );
    let wide = vidgen_video::Frames::new(1, 2, 5000, 1.0, vec![0.5; 2 * 5000 * 3]).unwrap();
    vidgen_video::write(&tmp.path().join("wide.png"), &wide).unwrap();
    let wide = std::fs::read(tmp.path().join("wide.png")).unwrap();
    let (ct, body) = multipart(
        &[("prompt", "a ball")],
        ("input_reference", "wide.png", &wide),
    );
    let (status, error) = post_raw(&server, "/v1/videos", &ct, &body);
    assert_eq!(status, 400, "{error}");
    assert!(
        error["error"]["message"].as_str().unwrap().contains("4096"),
        "{error}"
    );
    drop(server);

    // the built-in (Wan, text-to-video) model refuses it with a 400 naming its modes
    let server = Server::start(&tmp.path().join("wan-data"), &[]);
    let (ct, body) = multipart(
        &[("prompt", "a ball")],
        ("input_reference", "first.png", &png),
    );
    let (status, error) = post_raw(&server, "/v1/videos", &ct, &body);
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["error"]["param"], "input_reference");
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("text-to-video"));
    assert!(std::fs::read_dir(tmp.path().join("wan-data/inputs"))
        .unwrap()
        .next()
        .is_none());
}
