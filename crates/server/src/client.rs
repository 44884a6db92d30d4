//! A small HTTP/1 client for the server (hyper's, which axum already builds on), used by the
//! load test and the integration tests.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;

/// A transport failure (not an HTTP error status).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClientError(pub String);

fn err(e: impl std::fmt::Display) -> ClientError {
    ClientError(e.to_string())
}

/// A complete response.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Reply {
    /// The body parsed as JSON.
    pub fn json(&self) -> Result<serde_json::Value, ClientError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            ClientError(format!(
                "status {}: body is not JSON ({e}): {}",
                self.status,
                self.text()
            ))
        })
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `(event, data)` pairs of a server-sent-event body.
    pub fn events(&self) -> Vec<(String, String)> {
        self.text()
            .split("\n\n")
            .filter_map(|block| {
                let mut event = None;
                let mut data = None;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        event = Some(v.to_string());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(v.to_string());
                    }
                }
                Some((event?, data?))
            })
            .collect()
    }
}

/// A client of one server.
#[derive(Clone)]
pub struct Client {
    http: HyperClient<HttpConnector, Full<Bytes>>,
    base: String,
}

impl Client {
    /// A client of the server at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            http: HyperClient::builder(TokioExecutor::new()).build_http(),
            base: format!("http://{addr}"),
        }
    }

    /// Sends a request with extra `headers` and `body`; reads the whole response.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Reply, ClientError> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body)).map_err(err)?;
        let resp = self.http.request(req).await.map_err(err)?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.map_err(err)?.to_bytes();
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<Reply, ClientError> {
        self.send(Method::GET, path, &[], Bytes::new()).await
    }

    /// `POST path` with a JSON body.
    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<Reply, ClientError> {
        self.post_raw(path, body.to_string()).await
    }

    /// `POST path` with `body` sent as `application/json` verbatim.
    pub async fn post_raw(&self, path: &str, body: impl Into<Bytes>) -> Result<Reply, ClientError> {
        let headers = [("content-type", "application/json")];
        self.send(Method::POST, path, &headers, body.into()).await
    }

    /// `POST path` with no body and, when given, `Authorization: Bearer <token>`.
    pub async fn post_admin(&self, path: &str, token: Option<&str>) -> Result<Reply, ClientError> {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|v| ("authorization", v))
            .into_iter()
            .collect();
        self.send(Method::POST, path, &headers, Bytes::new()).await
    }
}
