//! The HTTP surface: OpenAI's `/v1/videos` endpoints, vidgen's `/events` extension, health,
//! metrics and the web page.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::{Read, Seek, SeekFrom};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use vidgen::pipeline::GenerateRequest;

use crate::media::Variant;
use crate::store::{now_ms, InsertError, Job, JobParams, COMPLETED, FAILED};
use crate::App;

type Shared = Arc<App>;

/// Error messages are cut to this many bytes.
const MAX_MESSAGE: usize = 512;
/// Longest prompt, in characters.
pub const MAX_PROMPT_CHARS: usize = 2000;
/// Fields `POST /v1/videos` takes.
const CREATE_FIELDS: &[&str] = &[
    "prompt",
    "model",
    "seconds",
    "size",
    "input_reference",
    "negative_prompt",
    "seed",
    "steps",
    "guidance",
    "fps",
    "step_cache",
];

pub(crate) fn router(app: Shared) -> Router {
    let v1 = Router::new()
        .route("/videos", get(list_videos).post(create_video))
        .route("/videos/{id}", get(get_video).delete(delete_video))
        .route("/videos/{id}/content", get(get_content))
        .route("/videos/{id}/remix", axum::routing::post(remix_video))
        .route("/videos/{id}/events", get(video_events))
        .route("/models", get(list_models))
        .layer(middleware::from_fn_with_state(app.clone(), require_key));
    Router::new()
        .route("/", get(page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .nest("/v1", v1)
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(DefaultBodyLimit::max(app.cfg.max_body_bytes))
        .with_state(app)
}

/// An error response in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    param: Option<&'static str>,
    code: &'static str,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            param: None,
            code,
            retry_after: None,
        }
    }

    fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        Self {
            param: Some(param),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_value", message)
        }
    }

    /// A well-formed value this model cannot take (422).
    fn unprocessable(param: &'static str, message: impl Into<String>) -> Self {
        Self {
            param: Some(param),
            ..Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unsupported_value",
                message,
            )
        }
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    fn internal(e: anyhow::Error) -> Self {
        tracing::error!("request failed: {e:#}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "internal error; see the server log",
        )
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        Self::internal(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = match self.status.as_u16() {
            401 => "authentication_error",
            429 => "rate_limit_error",
            500..=599 => "server_error",
            _ => "invalid_request_error",
        };
        let mut message = self.message;
        if message.len() > MAX_MESSAGE {
            let mut cut = MAX_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let body = json!({"error": {
            "message": message,
            "type": kind,
            "param": self.param,
            "code": self.code,
        }});
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

type ApiResult<T> = Result<T, ApiError>;

async fn require_key(State(app): State<Shared>, request: Request, next: Next) -> Response {
    if let Some(key) = &app.cfg.api_key {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_api_key",
                "missing or wrong API key: send `Authorization: Bearer <key>`",
            )
            .into_response();
        }
    }
    next.run(request).await
}

async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

async fn readyz(State(app): State<Shared>) -> Response {
    if let Some(reason) = app
        .load_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
    {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", reason).into_response();
    }
    if app.shutting_down() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "shutting down",
        )
        .into_response();
    }
    if !app.ready.load(Ordering::SeqCst) {
        let reason = if app.cfg.workers == 0 {
            "no worker in this process (--workers 0)"
        } else {
            "the model is loading"
        };
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", reason).into_response();
    }
    "ready\n".into_response()
}

async fn metrics(State(app): State<Shared>) -> ApiResult<Response> {
    let counts = app.store.counts()?;
    let text = app.metrics.render(
        &counts,
        app.ready.load(Ordering::SeqCst),
        app.busy_workers.load(Ordering::SeqCst),
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

/// `GET /v1/models`: the one model this server runs.
async fn list_models(State(app): State<Shared>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{"id": app.model_name, "object": "model", "created": 0, "owned_by": "vidgen"}],
    }))
}

/// The video object of `job`, as OpenAI's API returns it (plus vidgen's settings).
fn video_json(job: &Job) -> Value {
    let p = &job.params;
    json!({
        "id": job.id,
        "object": "video",
        "created_at": job.created_at,
        "status": job.status,
        "progress": job.progress,
        "model": job.model,
        "seconds": job.seconds,
        "size": job.size,
        "prompt": p.prompt,
        "completed_at": job.completed_at,
        "expires_at": Value::Null,
        "error": job.error.as_ref().map(|(code, message)| json!({"code": code, "message": message})),
        "remixed_from_video_id": job.remixed_from,
        "vidgen": {
            "negative_prompt": p.negative_prompt,
            "frames": p.num_frames,
            "steps": p.steps,
            "guidance": p.guidance,
            "seed": p.seed,
            "fps": p.fps,
            "step_cache": p.step_cache,
        },
    })
}

/// A video object response with the poll hint the SDK's `poll` reads.
fn video_response(app: &App, status: StatusCode, job: &Job) -> Response {
    let mut response = (status, Json(video_json(job))).into_response();
    response.headers_mut().insert(
        "openai-poll-after-ms",
        HeaderValue::from(app.cfg.poll_after_ms),
    );
    response
}

fn find(app: &App, id: &str) -> ApiResult<Job> {
    app.store
        .get(id)?
        .ok_or_else(|| ApiError::not_found(format!("no video `{}`", clip(id, 80))))
}

fn clip(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

async fn get_video(State(app): State<Shared>, Path(id): Path<String>) -> ApiResult<Response> {
    let job = find(&app, &id)?;
    Ok(video_response(&app, StatusCode::OK, &job))
}

#[derive(serde::Deserialize)]
struct ListQuery {
    after: Option<String>,
    limit: Option<String>,
    order: Option<String>,
}

async fn list_videos(State(app): State<Shared>, Query(q): Query<ListQuery>) -> ApiResult<Response> {
    let limit = match q.limit.as_deref() {
        None => 20,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=100).contains(&n) => n,
            _ => {
                return Err(ApiError::invalid(
                    "limit",
                    "limit: an integer from 1 to 100",
                ))
            }
        },
    };
    let ascending = match q.order.as_deref() {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(_) => return Err(ApiError::invalid("order", "order: `asc` or `desc`")),
    };
    if let Some(after) = &q.after {
        find(&app, after).map_err(|_| {
            ApiError::invalid("after", format!("after: no video `{}`", clip(after, 80)))
        })?;
    }
    let (jobs, has_more) = app.store.list(q.after.as_deref(), limit, ascending)?;
    let data: Vec<Value> = jobs.iter().map(video_json).collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "first_id": jobs.first().map(|j| j.id.clone()),
        "last_id": jobs.last().map(|j| j.id.clone()),
        "has_more": has_more,
    }))
    .into_response())
}

async fn delete_video(State(app): State<Shared>, Path(id): Path<String>) -> ApiResult<Response> {
    let job = app
        .store
        .delete(&id)?
        .ok_or_else(|| ApiError::not_found(format!("no video `{}`", clip(&id, 80))))?;
    // A running job's worker sees the row gone at its next heartbeat and cleans up itself.
    crate::media::remove_outputs(&app.videos, &job.id);
    let _ = std::fs::remove_file(crate::media::input_path(&app.cfg.data_dir, &job.id));
    Ok(Json(json!({"id": job.id, "object": "video.deleted", "deleted": true})).into_response())
}

#[derive(serde::Deserialize)]
struct ContentQuery {
    variant: Option<String>,
}

async fn get_content(
    State(app): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<ContentQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let variant = match q.variant.as_deref() {
        None => Variant::Video,
        Some(name) => Variant::parse(name).ok_or_else(|| {
            ApiError::invalid("variant", "variant: `video`, `thumbnail` or `spritesheet`")
        })?,
    };
    let job = find(&app, &id)?;
    if job.status != COMPLETED {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "video_not_ready",
            format!("video `{}` is {}, not completed", job.id, job.status),
        ));
    }
    let path = variant.path(&app.videos, &job.id);
    let mut file = std::fs::File::open(&path)
        .map_err(|_| ApiError::not_found(format!("the files of `{}` are gone", job.id)))?;
    let len = file
        .metadata()
        .map_err(|e| ApiError::internal(e.into()))?
        .len();
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|v| parse_range(v, len));
    let (status, start, end) = match range {
        None => (StatusCode::OK, 0, len),
        Some(Some((start, end))) => (StatusCode::PARTIAL_CONTENT, start, end),
        Some(None) => {
            return Ok((
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{len}"))],
            )
                .into_response())
        }
    };
    let mut bytes = vec![0u8; (end - start) as usize];
    file.seek(SeekFrom::Start(start))
        .and_then(|_| file.read_exact(&mut bytes))
        .map_err(|e| ApiError::internal(e.into()))?;
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(variant.content_type()),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if status == StatusCode::PARTIAL_CONTENT {
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes {start}-{}/{len}", end - 1)).expect("ascii"),
        );
    }
    Ok(response)
}

/// `bytes=a-b`, `bytes=a-` or `bytes=-n` over a file of `len` bytes → the half-open byte range,
/// or `None` when it cannot be satisfied. Several ranges are not supported (the first is
/// served).
fn parse_range(value: &str, len: u64) -> Option<(u64, u64)> {
    let spec = value.trim().strip_prefix("bytes=")?;
    let first = spec.split(',').next()?.trim();
    let (a, b) = first.split_once('-')?;
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        if n == 0 {
            return None;
        }
        (len.saturating_sub(n), len)
    } else {
        let start: u64 = a.parse().ok()?;
        let end = if b.is_empty() {
            len
        } else {
            b.parse::<u64>().ok()?.saturating_add(1).min(len)
        };
        (start, end)
    };
    (start < end && start < len).then_some((start, end))
}

/// Progress as server-sent events: a `video` event with the video object whenever it changes,
/// ending after `completed` or `failed`; `deleted` if the job goes away.
async fn video_events(State(app): State<Shared>, Path(id): Path<String>) -> ApiResult<Response> {
    find(&app, &id)?;
    let state = (app, id, String::new(), false);
    let stream = futures_util::stream::unfold(state, |(app, id, last, done)| async move {
        if done {
            return None;
        }
        loop {
            let job = match app.store.get(&id) {
                Ok(job) => job,
                Err(e) => {
                    tracing::error!("events of {id}: {e:#}");
                    None
                }
            };
            let Some(job) = job else {
                let event = Event::default()
                    .event("deleted")
                    .data(json!({"id": id}).to_string());
                return Some((Ok::<_, Infallible>(event), (app, id, last, true)));
            };
            let data = video_json(&job).to_string();
            let terminal = job.status == COMPLETED || job.status == FAILED;
            if data != last {
                let event = Event::default().event("video").data(data.clone());
                return Some((Ok(event), (app, id, data, terminal)));
            }
            if app.shutting_down() {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// Request fields, from JSON or multipart: text values by name, and an uploaded file.
#[derive(Default)]
struct Fields {
    values: BTreeMap<String, Value>,
    /// The `input_reference` file's bytes.
    image: Option<Vec<u8>>,
    /// `input_reference` given in a form that is not a file upload.
    reference_not_a_file: bool,
}

impl Fields {
    fn text(&self, name: &'static str) -> ApiResult<Option<String>> {
        match self.values.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(_) => Err(ApiError::invalid(
                name,
                format!("{name}: expected a string"),
            )),
        }
    }

    fn number<T: std::str::FromStr>(&self, name: &'static str, what: &str) -> ApiResult<Option<T>> {
        match self.text(name)? {
            None => Ok(None),
            Some(s) => s.trim().parse().map(Some).map_err(|_| {
                ApiError::invalid(
                    name,
                    format!("{name}: expected {what}, got `{}`", clip(&s, 40)),
                )
            }),
        }
    }
}

async fn read_fields(app: &App, request: Request) -> ApiResult<Fields> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            format!("the request body is over {} bytes", app.cfg.max_body_bytes),
        )
    };
    let mut fields = Fields::default();
    if content_type.starts_with("multipart/form-data") {
        let mut multipart = Multipart::from_request(request, &())
            .await
            .map_err(|e| ApiError::invalid("body", format!("bad multipart body: {e}")))?;
        loop {
            let field = match multipart.next_field().await {
                Ok(Some(field)) => field,
                Ok(None) => break,
                Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(too_large()),
                Err(e) => {
                    return Err(ApiError::invalid(
                        "body",
                        format!("bad multipart body: {e}"),
                    ))
                }
            };
            let name = field.name().unwrap_or_default().to_string();
            let is_file = field.file_name().is_some();
            let bytes = field.bytes().await.map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    too_large()
                } else {
                    ApiError::invalid("body", format!("bad multipart body: {e}"))
                }
            })?;
            if name == "input_reference" {
                if is_file {
                    fields.image = Some(bytes.to_vec());
                } else {
                    fields.reference_not_a_file = true;
                }
                fields.values.insert(name, Value::Null);
                continue;
            }
            if is_file {
                fields.values.insert(name, Value::Null);
                continue;
            }
            let text = String::from_utf8(bytes.to_vec()).map_err(|_| {
                ApiError::invalid(
                    "body",
                    format!("field `{}` is not UTF-8 text", clip(&name, 40)),
                )
            })?;
            fields.values.insert(name, Value::String(text));
        }
    } else {
        let bytes = axum::body::to_bytes(request.into_body(), app.cfg.max_body_bytes)
            .await
            .map_err(|_| too_large())?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::invalid(
                "body",
                format!("the body is not JSON or multipart/form-data: {e}"),
            )
        })?;
        let Value::Object(map) = value else {
            return Err(ApiError::invalid("body", "the body must be a JSON object"));
        };
        fields.reference_not_a_file = map.get("input_reference").is_some_and(|v| !v.is_null());
        fields.values = map.into_iter().collect();
    }
    Ok(fields)
}

async fn create_video(State(app): State<Shared>, request: Request) -> ApiResult<Response> {
    let fields = read_fields(&app, request).await?;
    if let Some(unknown) = fields
        .values
        .keys()
        .find(|k| !CREATE_FIELDS.contains(&k.as_str()))
    {
        return Err(ApiError::invalid(
            "body",
            format!(
                "unknown field `{}`; accepted: {}",
                clip(unknown, 40),
                CREATE_FIELDS.join(", ")
            ),
        ));
    }
    if let Some(model) = fields.text("model")? {
        if model != app.model_name {
            return Err(ApiError::invalid(
                "model",
                format!(
                    "model `{}` is not served here; this server runs `{}`",
                    clip(&model, 60),
                    app.model_name
                ),
            ));
        }
    }
    if fields.reference_not_a_file {
        return Err(ApiError::invalid(
            "input_reference",
            "input_reference: upload the first frame as an image file (multipart/form-data)",
        ));
    }
    let prompt = fields
        .text("prompt")?
        .filter(|p| !p.trim().is_empty())
        .ok_or_else(|| ApiError::invalid("prompt", "prompt: required, a non-empty string"))?;
    let image = match &fields.image {
        Some(bytes) => Some(decode_reference(bytes)?),
        None => None,
    };
    let plan = plan_job(&app, &fields, prompt, image.as_ref())?;
    submit(&app, plan, None, image.as_ref())
}

/// Largest side of an `input_reference` image, checked from its header before decoding.
pub const MAX_IMAGE_SIDE: u32 = 4096;

/// An uploaded first frame → `(H, W, 3)` f32 in [0, 1]; its size is read from the header and
/// checked before the pixels are decoded.
fn decode_reference(bytes: &[u8]) -> ApiResult<candle_core::Tensor> {
    let bad = |m: String| ApiError::invalid("input_reference", m);
    let reader = || {
        image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| bad(format!("input_reference: {e}")))
    };
    let (w, h) = reader()?
        .into_dimensions()
        .map_err(|_| bad("input_reference: not a PNG, JPEG or WebP image".into()))?;
    if w == 0 || h == 0 || w > MAX_IMAGE_SIDE || h > MAX_IMAGE_SIDE {
        return Err(bad(format!(
            "input_reference: {w}x{h}; images may be at most {MAX_IMAGE_SIDE} pixels a side"
        )));
    }
    let decoded = reader()?
        .decode()
        .map_err(|_| bad("input_reference: the image could not be decoded".into()))?
        .into_rgb32f();
    candle_core::Tensor::from_vec(
        decoded.into_raw(),
        (h as usize, w as usize, 3),
        &candle_core::Device::Cpu,
    )
    .map_err(|e| ApiError::internal(e.into()))
}

/// A validated job: its parameters and the `seconds` and `size` it reports.
struct Plan {
    params: JobParams,
    seconds: String,
    size: String,
}

fn plan_job(
    app: &App,
    fields: &Fields,
    prompt: String,
    image: Option<&candle_core::Tensor>,
) -> ApiResult<Plan> {
    if prompt.chars().count() > MAX_PROMPT_CHARS {
        return Err(ApiError::invalid(
            "prompt",
            format!("prompt: at most {MAX_PROMPT_CHARS} characters"),
        ));
    }
    let d = &app.defaults;
    let (width, height) = match fields.text("size")? {
        None => (d.width, d.height),
        Some(size) => parse_size(&size).ok_or_else(|| {
            ApiError::invalid(
                "size",
                format!("size: `WIDTHxHEIGHT` such as `{}x{}`", d.width, d.height),
            )
        })?,
    };
    let fps = fields.number::<u32>("fps", "an integer")?.unwrap_or(d.fps);
    if !(1..=120).contains(&fps) {
        return Err(ApiError::invalid("fps", "fps: from 1 to 120"));
    }
    let steps = fields
        .number::<usize>("steps", "an integer")?
        .unwrap_or(d.num_inference_steps);
    if !(1..=1000).contains(&steps) {
        return Err(ApiError::invalid("steps", "steps: from 1 to 1000"));
    }
    let guidance = fields
        .number::<f64>("guidance", "a number")?
        .unwrap_or(d.guidance_scale);
    if !(guidance.is_finite() && (0.0..=50.0).contains(&guidance)) {
        return Err(ApiError::invalid("guidance", "guidance: from 0 to 50"));
    }
    let step_cache = fields.number::<f64>("step_cache", "a number")?;
    if vidgen::pipeline::check_step_cache(step_cache).is_err() {
        return Err(ApiError::invalid(
            "step_cache",
            "step_cache: a positive number (0.05 is diffusers' default; 0.1-0.3 skip more steps)",
        ));
    }
    let seed = match fields.number::<u64>("seed", "a non-negative integer")? {
        Some(seed) => seed,
        None => rand::random::<u32>() as u64,
    };
    let negative_prompt = fields.text("negative_prompt")?;
    if negative_prompt
        .as_ref()
        .is_some_and(|n| n.chars().count() > MAX_PROMPT_CHARS)
    {
        return Err(ApiError::invalid(
            "negative_prompt",
            format!("negative_prompt: at most {MAX_PROMPT_CHARS} characters"),
        ));
    }
    let wanted_frames = match fields.number::<f64>("seconds", "a number of seconds")? {
        None => None,
        Some(s) if s.is_finite() && s > 0.0 && s <= 600.0 => {
            Some((s * fps as f64).round() as usize + 1)
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "seconds",
                "seconds: more than 0, at most 600",
            ))
        }
    };
    let request = |num_frames: Option<usize>| GenerateRequest {
        prompt: prompt.clone(),
        negative_prompt: negative_prompt.clone(),
        num_frames,
        height: Some(height),
        width: Some(width),
        num_inference_steps: Some(steps),
        guidance_scale: Some(guidance),
        seed,
        fps: Some(fps),
        image: image.cloned(),
        step_cache,
        ..GenerateRequest::default()
    };
    let validator = app.validator.lock().unwrap_or_else(|p| p.into_inner());
    let settings = match wanted_frames {
        None => validator.resolve(&request(None)),
        // the nearest frame count the model takes (Wan: 4k + 1, LTX: 8k + 1, …)
        Some(n) => (0..=16)
            .flat_map(|d| [n + d, n.saturating_sub(d)])
            .filter(|&f| f >= 1)
            .find_map(|f| validator.resolve(&request(Some(f))).ok())
            .ok_or(())
            .or_else(|_| validator.resolve(&request(Some(n)))),
    }
    .map_err(|e| {
        let param = match &e {
            vidgen::Error::InvalidRequest(m) if m.contains("image-to-video") => "input_reference",
            // the pipelines' messages about the frame count start with "frames" or name the
            // latent frame count; about steps, with "steps"
            vidgen::Error::InvalidRequest(m)
                if m.starts_with("frames") || m.contains("latent frame count") =>
            {
                "seconds"
            }
            vidgen::Error::InvalidRequest(m) if m.starts_with("steps") => "steps",
            _ => "size",
        };
        match e {
            // a mode the model does not have is a bad request, not an impossible size
            vidgen::Error::InvalidRequest(m) if param == "input_reference" => {
                ApiError::invalid(param, m)
            }
            vidgen::Error::InvalidRequest(m) => ApiError::unprocessable(param, m),
            other => ApiError::internal(other.into()),
        }
    })?;
    drop(validator);
    // u128: a hostile size must not wrap around the budget
    let pixels = settings.num_frames as u128
        * settings.height as u128
        * settings.width as u128
        * steps as u128;
    if pixels > app.cfg.max_pixels_per_job as u128 {
        return Err(ApiError::unprocessable(
            "size",
            format!(
                "{} frames × {}×{} × {} steps = {pixels} is over this server's budget of {} per \
                 video; ask for fewer seconds, a smaller size or fewer steps",
                settings.num_frames,
                settings.width,
                settings.height,
                steps,
                app.cfg.max_pixels_per_job
            ),
        ));
    }
    let seconds = (settings.num_frames - 1) as f64 / fps as f64;
    Ok(Plan {
        params: JobParams {
            prompt: settings.prompt,
            negative_prompt,
            num_frames: settings.num_frames,
            width: settings.width,
            height: settings.height,
            steps,
            guidance,
            seed,
            fps,
            image: image.is_some(),
            step_cache,
        },
        seconds: format_seconds(seconds),
        size: format!("{}x{}", settings.width, settings.height),
    })
}

fn parse_size(size: &str) -> Option<(usize, usize)> {
    let (w, h) = size.trim().split_once(['x', 'X'])?;
    let (w, h) = (w.trim().parse().ok()?, h.trim().parse().ok()?);
    (w > 0 && h > 0).then_some((w, h))
}

/// `4` for 4.0, `2.13` for 2.126: at most two decimals, no trailing zeros.
fn format_seconds(s: f64) -> String {
    let text = format!("{s:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Queues `plan`; its first frame (image-to-video) is saved as `inputs/<id>.png` before the job
/// exists, from `image` or copied from the job `remixed_from`.
fn submit(
    app: &App,
    plan: Plan,
    remixed_from: Option<String>,
    image: Option<&candle_core::Tensor>,
) -> ApiResult<Response> {
    if app.shutting_down() {
        return Err(ApiError {
            retry_after: Some(5),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the server is shutting down",
            )
        });
    }
    if let Some(reason) = app
        .load_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
    {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            reason,
        ));
    }
    let job = Job {
        id: format!(
            "video_{:016x}{:08x}",
            rand::random::<u64>(),
            rand::random::<u32>()
        ),
        created_at: now_ms() / 1000,
        status: crate::store::QUEUED.into(),
        progress: 0,
        model: app.model_name.clone(),
        seconds: plan.seconds,
        size: plan.size,
        params: plan.params,
        remixed_from,
        completed_at: None,
        error: None,
        attempts: 0,
    };
    if job.params.image {
        let path = crate::media::input_path(&app.cfg.data_dir, &job.id);
        match (image, &job.remixed_from) {
            (Some(image), _) => crate::media::write_input(&path, image)?,
            (None, Some(source)) => {
                let bytes = std::fs::read(crate::media::input_path(&app.cfg.data_dir, source))
                    .map_err(|_| ApiError::not_found("the source video's first frame is gone"))?;
                vidgen_video::write_atomic(&path, &bytes)
                    .map_err(|e| ApiError::internal(e.into()))?;
            }
            (None, None) => unreachable!("an image job without its image"),
        }
    }
    let inserted = app.store.insert(&job, app.cfg.max_queue);
    if !matches!(inserted, Ok(Ok(()))) && job.params.image {
        let _ = std::fs::remove_file(crate::media::input_path(&app.cfg.data_dir, &job.id));
    }
    match inserted? {
        Ok(()) => Ok(video_response(app, StatusCode::OK, &job)),
        Err(InsertError::QueueFull { queued }) => {
            app.metrics
                .rejected_queue_full
                .fetch_add(1, Ordering::Relaxed);
            Err(ApiError {
                retry_after: Some(10),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "queue_full",
                    format!("the queue is full ({queued} videos waiting); retry later"),
                )
            })
        }
    }
}

async fn remix_video(
    State(app): State<Shared>,
    Path(id): Path<String>,
    request: Request,
) -> ApiResult<Response> {
    let fields = read_fields(&app, request).await?;
    if let Some(unknown) = fields.values.keys().find(|k| k.as_str() != "prompt") {
        return Err(ApiError::invalid(
            "body",
            format!(
                "unknown field `{}`; remix takes `prompt`",
                clip(unknown, 40)
            ),
        ));
    }
    let prompt = fields
        .text("prompt")?
        .filter(|p| !p.trim().is_empty())
        .ok_or_else(|| ApiError::invalid("prompt", "prompt: required, a non-empty string"))?;
    if prompt.chars().count() > MAX_PROMPT_CHARS {
        return Err(ApiError::invalid(
            "prompt",
            format!("prompt: at most {MAX_PROMPT_CHARS} characters"),
        ));
    }
    let source = find(&app, &id)?;
    if source.status != COMPLETED {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "video_not_ready",
            format!(
                "only a completed video can be remixed; `{}` is {}",
                source.id, source.status
            ),
        ));
    }
    let params = JobParams {
        prompt,
        ..source.params.clone()
    };
    let plan = Plan {
        params,
        seconds: source.seconds.clone(),
        size: source.size.clone(),
    };
    submit(&app, plan, Some(source.id), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 10)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 100)));
        assert_eq!(parse_range("bytes=-10", 100), Some((90, 100)));
        assert_eq!(parse_range("bytes=50-500", 100), Some((50, 100)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=-0", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
    }

    #[test]
    fn sizes_and_seconds() {
        assert_eq!(parse_size("832x480"), Some((832, 480)));
        assert_eq!(parse_size(" 64X48 "), Some((64, 48)));
        assert_eq!(parse_size("64"), None);
        assert_eq!(parse_size("0x64"), None);
        assert_eq!(format_seconds(4.0), "4");
        assert_eq!(format_seconds(2.126), "2.13");
        assert_eq!(format_seconds(16.0 / 8.0), "2");
        assert_eq!(format_seconds(0.5), "0.5");
    }
}
