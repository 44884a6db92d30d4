//! The HTTP surface: routes, handlers, the guard every request passes (concurrency limit,
//! timeout, metrics, logs), the server-sent-event body, and `serve` with graceful shutdown.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper::body::Frame;
use ralm_models::llama::Sampler;
use tokio::sync::mpsc;

use crate::api::{
    check_k, check_lambda, check_text, retriever_kind, ApiJson, AskRequest, AskResponse,
    GenerateRequest, RetrieveRequest, ScoreRequest, TranslateRequest, TranslateResponse,
    UsedDatastore,
};
use crate::error::ApiError;
use crate::lm::{self, GenerateSpec, ScoreJob};
use crate::openapi;
use crate::state::{AppState, RetrieveJob};

/// Shared state as the handlers see it.
type St = State<Arc<AppState>>;

/// The router with every endpoint, the guard and the body limit.
pub fn router(state: Arc<AppState>) -> Router {
    let body_limit = state.config.limits.max_body_bytes;
    Router::new()
        .route("/v1/retrieve", post(retrieve))
        .route("/v1/ask", post(ask))
        .route("/v1/lm/score", post(score))
        .route("/v1/lm/generate", post(generate))
        .route("/v1/translate", post(translate))
        .route("/v1/indexes", get(indexes))
        .route("/v1/datastores", get(datastores))
        .route("/v1/admin/reload/{name}", post(reload))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_json))
        .fallback(no_route)
        .layer(from_fn_with_state(state.clone(), guard))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// Serves `state` on `listener` until `shutdown` resolves, then stops accepting connections
/// and returns once the requests in flight have been answered.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Every request: `/v1/*` ones take a concurrency permit (503 + Retry-After when none is left)
/// and are cut at the timeout (504); all are counted, timed and logged.
async fn guard(State(st): St, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let start = Instant::now();
    let resp = if route.starts_with("/v1/") {
        match st.limiter.clone().try_acquire_owned() {
            Err(_) => ApiError::overloaded().into_response(),
            Ok(_permit) => {
                match tokio::time::timeout(st.config.limits.timeout(), next.run(req)).await {
                    Ok(r) => r,
                    Err(_) => ApiError::new(
                        StatusCode::GATEWAY_TIMEOUT,
                        format!(
                            "the request took longer than {} ms",
                            st.config.limits.timeout_ms
                        ),
                    )
                    .into_response(),
                }
            }
        }
    } else {
        next.run(req).await
    };
    let secs = start.elapsed().as_secs_f64();
    let status = resp.status().as_u16();
    st.metrics.request(&route, status, secs);
    tracing::info!(route, status, ms = secs * 1e3, "request");
    resp
}

async fn no_route(req: Request) -> ApiError {
    ApiError::not_found(format!(
        "no route for {} {}",
        req.method(),
        req.uri().path()
    ))
}

/// Runs blocking model work on tokio's blocking pool; a panic becomes a 500.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("worker failed: {e}")))?
}

async fn retrieve(
    State(st): St,
    ApiJson(r): ApiJson<RetrieveRequest>,
) -> Result<Response, ApiError> {
    let limits = &st.config.limits;
    check_text("query", &r.query, limits)?;
    check_k(r.k, limits)?;
    let kind = retriever_kind(r.retriever.as_deref())?;
    let (_, entry) = st.qa_entry(r.index.as_deref())?;
    let job = RetrieveJob {
        query: r.query,
        k: r.k,
        kind,
    };
    Ok(Json(entry.retrieve.submit(job).await??).into_response())
}

async fn ask(State(st): St, ApiJson(r): ApiJson<AskRequest>) -> Result<Response, ApiError> {
    let limits = &st.config.limits;
    check_text("question", &r.question, limits)?;
    check_k(r.k, limits)?;
    let kind = retriever_kind(r.retriever.as_deref())?;
    let (index, entry) = st.qa_entry(r.index.as_deref())?;
    let (version, sys) = entry.slot.get();
    let result = blocking(move || Ok(sys.ask(&r.question, r.k, kind)?)).await?;
    Ok(Json(AskResponse {
        index,
        version,
        result,
    })
    .into_response())
}

async fn score(State(st): St, ApiJson(r): ApiJson<ScoreRequest>) -> Result<Response, ApiError> {
    check_text("text", &r.text, &st.config.limits)?;
    let (_, entry) = st.datastore(r.datastore.as_deref())?;
    let lambda = r.lambda.unwrap_or(entry.slot.get().1.params.lambda);
    check_lambda(lambda)?;
    let job = ScoreJob {
        text: r.text,
        lambda,
    };
    let out = entry.score.submit(job).await??;
    Ok(Json(out).into_response())
}

/// One server-sent event.
fn sse_event(event: &str, data: &serde_json::Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

/// A response body fed by a channel of already formatted events.
struct EventBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for EventBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// Streams tokens as `token` events (`{"id", "text"}`), then one `done` event with the whole
/// continuation, or an `error` event if the model fails midway.
async fn generate(
    State(st): St,
    ApiJson(r): ApiJson<GenerateRequest>,
) -> Result<Response, ApiError> {
    let limits = &st.config.limits;
    check_text("prompt", &r.prompt, limits)?;
    if r.max_new_tokens == 0 || r.max_new_tokens > limits.max_new_tokens {
        return Err(ApiError::bad_request(format!(
            "`max_new_tokens` must be between 1 and {}, got {}",
            limits.max_new_tokens, r.max_new_tokens
        )));
    }
    let (name, entry) = st.datastore(r.datastore.as_deref())?;
    let (version, knn) = entry.slot.get();
    let lambda = r.lambda.unwrap_or(knn.params.lambda);
    check_lambda(lambda)?;
    let sampler = if r.temperature > 0.0 {
        Sampler::temperature(r.temperature, r.seed)?
    } else if r.temperature == 0.0 {
        Sampler::Greedy
    } else {
        return Err(ApiError::bad_request("`temperature` must not be negative"));
    };
    let prompt = knn.tokenizer.encode(&r.prompt)?;
    let spec = GenerateSpec {
        prompt,
        max_new: r.max_new_tokens,
        lambda,
        sampler,
    };
    let (tx, rx) = mpsc::channel(16);
    tokio::task::spawn_blocking(move || {
        let mut ids = Vec::new();
        let mut emit = |id: u32| {
            ids.push(id);
            let text = knn.tokenizer.decode(&[id]).unwrap_or_default();
            let ev = sse_event("token", &serde_json::json!({"id": id, "text": text}));
            // A closed channel means the client went away: stop generating.
            tx.blocking_send(ev).is_ok()
        };
        let result = lm::generate(&knn, spec, &mut emit);
        let last = match result.and_then(|()| Ok(knn.tokenizer.decode(&ids)?)) {
            Ok(text) => sse_event(
                "done",
                &serde_json::json!({"datastore": name, "version": version, "lambda": lambda,
                    "tokens": ids.len(), "text": text}),
            ),
            Err(e) => sse_event("error", &serde_json::json!({"error": e.message})),
        };
        let _ = tx.blocking_send(last);
    });
    let mut resp = Response::new(Body::new(EventBody(rx)));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(resp)
}

async fn translate(
    State(st): St,
    ApiJson(r): ApiJson<TranslateRequest>,
) -> Result<Response, ApiError> {
    check_text("text", &r.text, &st.config.limits)?;
    let Some(ds) = r.datastore else {
        let (model, entry) = st.translator(r.model.as_deref())?;
        let translation = entry.batcher.submit(r.text).await??;
        return Ok(Json(TranslateResponse {
            model,
            translation,
            datastore: None,
        })
        .into_response());
    };
    let (name, entry) = st.mt_datastore(&ds)?;
    let model = entry.config.translator.clone();
    if r.model.as_ref().is_some_and(|m| *m != model) {
        return Err(ApiError::bad_request(format!(
            "kNN-MT datastore `{name}` was built with translator `{model}`, not `{}`",
            r.model.unwrap_or_default()
        )));
    }
    let (version, translation) = entry.batcher.submit(r.text).await??;
    Ok(Json(TranslateResponse {
        model,
        translation,
        datastore: Some(UsedDatastore { name, version }),
    })
    .into_response())
}

async fn indexes(State(st): St) -> Response {
    Json(serde_json::json!({ "indexes": st.index_infos() })).into_response()
}

async fn datastores(State(st): St) -> Response {
    Json(serde_json::json!({
        "datastores": st.datastore_infos(),
        "mt_datastores": st.mt_datastore_infos(),
    }))
    .into_response()
}

/// Whether `headers` carry `Authorization: Bearer <token>` (compared in constant time).
fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

async fn reload(
    State(st): St,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(token) = &st.config.admin_token {
        if !authorized(&headers, token) {
            let mut resp = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "admin endpoints need `Authorization: Bearer <token>`",
            )
            .into_response();
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return Ok(resp);
        }
    }
    let out = blocking(move || st.reload(&name)).await?;
    Ok(Json(out).into_response())
}

async fn healthz() -> Response {
    Json(serde_json::json!({"status": "ok"})).into_response()
}

async fn metrics(State(st): St) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        st.metrics.render(),
    )
        .into_response()
}

async fn openapi_json() -> Response {
    Json(openapi::document()).into_response()
}
