//! The operator HTTP endpoints of a relay (DESIGN.md §7), served by the tree's HttpServer on
//! the `http` address of the config (localhost by default):
//!
//! - `GET /health`: liveness JSON `{status, version, relay_id, uptime_secs, storage}`; 200
//!   while the process serves HTTP at all. `storage` is `"full"` while the store refuses
//!   pushes for lack of space (budget, free-disk floor, a full disk), else `"damaged"` once
//!   the store found damaged records (`damaged_records` says how many), else `"ok"`.
//! - `GET /ready`: 200 `{"ready":true}` once the store is open and the endpoint bound (the
//!   tree sets [`HttpState::ready`]), 503 `{"ready":false}` before that and while shutting
//!   down, so load balancers stop sending clients.
//! - `GET /metrics`: the node's own Prometheus registry in text format.
//!
//! Anything else is 404. The handlers only read shared state: no actor is called, so a
//! stuck actor cannot stall a probe. Nothing here exposes keys, ids of groups or payload.
//! [`client`] is a minimal HTTP/1.1 GET client for tests and operational checks.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Serialize;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use zerok_actors::relay::metrics::RelayMetrics;

/// Content type of the Prometheus text exposition format, version 0.0.4.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the endpoints read. Cheap to clone: the handlers get a clone per request.
#[derive(Clone)]
pub struct HttpState {
    /// The relay's id (its endpoint id, hex).
    pub relay_id: String,
    /// The relay's version, normally `env!("CARGO_PKG_VERSION")`.
    pub version: &'static str,
    /// When the relay started; `/health` reports the seconds since.
    pub started: tokio::time::Instant,
    /// The node's metrics.
    pub metrics: RelayMetrics,
    /// Whether the relay takes clients: set once the store is open and the endpoint bound,
    /// cleared when shutdown begins.
    pub ready: Arc<AtomicBool>,
}

/// Body of `/health`.
#[derive(Debug, Serialize)]
struct Health<'a> {
    status: &'static str,
    version: &'static str,
    relay_id: &'a str,
    uptime_secs: u64,
    /// `"ok"`; `"full"` while the store refuses pushes for lack of space; else `"damaged"`
    /// once the store found damaged records.
    storage: &'static str,
    /// Damaged records the store found (never served); `zerok-relay check` lists them.
    damaged_records: u64,
}

/// Body of `/ready`.
#[derive(Debug, Serialize)]
struct Ready {
    ready: bool,
}

/// The routes, with 404 for any other path.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn health(State(state): State<HttpState>) -> impl IntoResponse {
    axum::Json(Health {
        status: "ok",
        version: state.version,
        relay_id: &state.relay_id,
        uptime_secs: state.started.elapsed().as_secs(),
        storage: if state.metrics.store_full.get() > 0 {
            "full"
        } else if state.metrics.store_damaged_records_total.get() > 0 {
            "damaged"
        } else {
            "ok"
        },
        damaged_records: state.metrics.store_damaged_records_total.get(),
    })
    .into_response()
}

async fn ready(State(state): State<HttpState>) -> impl IntoResponse {
    let ready = state.ready.load(Ordering::Acquire);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(Ready { ready }))
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        state.metrics.render(),
    )
}

/// Serve [`router`] on `listener` until `shutdown` completes, then finish the requests in
/// progress and return.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: HttpState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// A minimal HTTP/1.1 GET client, for tests (the relay's own and process tests of the
/// binary) and operational checks: one request per connection (`Connection: close`), the
/// whole response read to the end, plain or chunked bodies. No TLS, no redirects, no
/// timeout: wrap calls in `tokio::time::timeout` where a hang must fail (not under a paused
/// clock, where real I/O lets the timer fire at once).
pub mod client {
    use std::io;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Largest response read: far above any `/metrics` page, small enough that a wrong
    /// server cannot fill a test's memory.
    pub const RESPONSE_BYTES_MAX: u64 = 16 * 1024 * 1024;

    /// A parsed response.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct HttpResponse {
        /// Status code, e.g. 200.
        pub status: u16,
        /// Header names (lowercase) and values, in order.
        pub headers: Vec<(String, String)>,
        /// The body (de-chunked), as text.
        pub body: String,
    }

    impl HttpResponse {
        /// The first value of header `name` (any case).
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, value)| value.as_str())
        }
    }

    /// `GET path` from `addr`: the status code and the body.
    pub async fn http_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
        let response = get(addr, path).await?;
        Ok((response.status, response.body))
    }

    /// `GET path` from `addr`: the whole response.
    pub async fn get(addr: SocketAddr, path: &str) -> io::Result<HttpResponse> {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream
            .take(RESPONSE_BYTES_MAX)
            .read_to_end(&mut raw)
            .await?;
        parse_response(&raw)
    }

    fn malformed(what: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("malformed http response: {what}"),
        )
    }

    /// Parse a complete HTTP/1.1 response.
    pub fn parse_response(raw: &[u8]) -> io::Result<HttpResponse> {
        let head_end = raw
            .windows(4)
            .position(|window| window == b"\r\n\r\n")
            .ok_or_else(|| malformed("no end of headers"))?;
        let head = std::str::from_utf8(&raw[..head_end]).map_err(|_| malformed("head"))?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().ok_or_else(|| malformed("no status line"))?;
        let mut parts = status_line.split(' ');
        let version = parts.next().unwrap_or("");
        if !version.starts_with("HTTP/1.") {
            return Err(malformed("not HTTP/1.x"));
        }
        let status = parts
            .next()
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or_else(|| malformed("status code"))?;
        let headers = lines
            .map(|line| {
                let (name, value) = line.split_once(':').ok_or_else(|| malformed("header"))?;
                Ok((name.trim().to_ascii_lowercase(), value.trim().to_string()))
            })
            .collect::<io::Result<Vec<_>>>()?;
        let body = &raw[head_end + 4..];
        let is_chunked = headers.iter().any(|(name, value)| {
            name == "transfer-encoding" && value.to_ascii_lowercase().contains("chunked")
        });
        let body = if is_chunked {
            dechunk(body)?
        } else {
            body.to_vec()
        };
        let body = String::from_utf8(body).map_err(|_| malformed("body is not UTF-8"))?;
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }

    fn dechunk(mut rest: &[u8]) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line_end = rest
                .windows(2)
                .position(|window| window == b"\r\n")
                .ok_or_else(|| malformed("chunk size line"))?;
            let size_text =
                std::str::from_utf8(&rest[..line_end]).map_err(|_| malformed("chunk size"))?;
            let size_text = size_text.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16).map_err(|_| malformed("chunk size"))?;
            rest = &rest[line_end + 2..];
            if size == 0 {
                return Ok(body);
            }
            if rest.len() < size + 2 || &rest[size..size + 2] != b"\r\n" {
                return Err(malformed("chunk data"));
            }
            body.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::client::{get, http_get, parse_response};
    use super::*;
    use std::net::SocketAddr;
    use std::time::Duration;
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    struct Server {
        addr: SocketAddr,
        state: HttpState,
        stop: oneshot::Sender<()>,
        task: JoinHandle<std::io::Result<()>>,
    }

    async fn start(started: tokio::time::Instant) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = HttpState {
            relay_id: "ab".repeat(32),
            version: "9.8.7",
            started,
            metrics: RelayMetrics::new(),
            ready: Arc::new(AtomicBool::new(false)),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, state.clone(), async move {
            let _ = stopped.await;
        }));
        Server {
            addr,
            state,
            stop,
            task,
        }
    }

    async fn start_now() -> Server {
        start(tokio::time::Instant::now()).await
    }

    #[tokio::test]
    async fn health_reports_status_version_relay_id_and_uptime() {
        let started = tokio::time::Instant::now()
            .checked_sub(Duration::from_secs(90))
            .unwrap();
        let server = start(started).await;
        let response = get(server.addr, "/health").await.unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.header("content-type"), Some("application/json"));
        let body: serde_json::Value = serde_json::from_str(&response.body).unwrap();
        assert_eq!(body["status"], "ok");
        assert_eq!(body["version"], "9.8.7");
        assert_eq!(body["relay_id"], "ab".repeat(32));
        assert_eq!(body["storage"], "ok");
        let uptime_secs = body["uptime_secs"].as_u64().unwrap();
        assert!((90..3600).contains(&uptime_secs), "{uptime_secs}");
    }

    #[tokio::test]
    async fn health_says_full_while_the_store_is_full() {
        let server = start_now().await;
        server.state.metrics.store_full.set(1);
        let (status, body) = http_get(server.addr, "/health").await.unwrap();
        assert_eq!(status, 200, "a full relay is alive");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["storage"], "full");
        let (_, metrics) = http_get(server.addr, "/metrics").await.unwrap();
        assert!(
            metrics.contains("\nzerok_relay_store_full 1\n"),
            "{metrics}"
        );
        server.state.metrics.store_full.set(0);
        let (_, body) = http_get(server.addr, "/health").await.unwrap();
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["storage"], "ok");
    }

    #[tokio::test]
    async fn health_says_damaged_once_the_store_found_damage() {
        let server = start_now().await;
        let (_, body) = http_get(server.addr, "/health").await.unwrap();
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["damaged_records"], 0);
        server.state.metrics.store_damaged_records_total.inc_by(2);
        let (status, body) = http_get(server.addr, "/health").await.unwrap();
        assert_eq!(status, 200, "a relay with damage still serves the rest");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["storage"], "damaged");
        assert_eq!(body["damaged_records"], 2);
        let (_, metrics) = http_get(server.addr, "/metrics").await.unwrap();
        assert!(
            metrics.contains("\nzerok_relay_store_damaged_records_total 2\n"),
            "{metrics}"
        );
    }

    #[tokio::test]
    async fn ready_is_503_until_the_flag_is_set_and_again_after_it_is_cleared() {
        let server = start_now().await;
        let (status, body) = http_get(server.addr, "/ready").await.unwrap();
        assert_eq!(status, 503);
        assert_eq!(body, r#"{"ready":false}"#);

        server.state.ready.store(true, Ordering::Release);
        let (status, body) = http_get(server.addr, "/ready").await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(body, r#"{"ready":true}"#);

        server.state.ready.store(false, Ordering::Release);
        let (status, _) = http_get(server.addr, "/ready").await.unwrap();
        assert_eq!(status, 503);
    }

    #[tokio::test]
    async fn metrics_render_the_nodes_registry_as_prometheus_text() {
        let server = start_now().await;
        server.state.metrics.connections_total.inc_by(3);
        server.state.metrics.sessions.set(2);
        let response = get(server.addr, "/metrics").await.unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.header("content-type"), Some(METRICS_CONTENT_TYPE));
        assert!(
            response
                .body
                .contains("# TYPE zerok_relay_connections_total counter"),
            "{}",
            response.body
        );
        assert!(
            response
                .body
                .contains("\nzerok_relay_connections_total 3\n"),
            "{}",
            response.body
        );
        assert!(
            response.body.contains("\nzerok_relay_sessions 2\n"),
            "{}",
            response.body
        );
    }

    #[tokio::test]
    async fn unknown_paths_are_404() {
        let server = start_now().await;
        for path in ["/", "/healthz", "/metrics/x", "/ready/"] {
            let (status, _) = http_get(server.addr, path).await.unwrap();
            assert_eq!(status, 404, "{path}");
        }
    }

    #[tokio::test]
    async fn serve_returns_after_shutdown_and_stops_listening() {
        let server = start_now().await;
        let (status, _) = http_get(server.addr, "/health").await.unwrap();
        assert_eq!(status, 200);
        server.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), server.task)
            .await
            .expect("serve returns after shutdown")
            .unwrap()
            .unwrap();
        assert!(http_get(server.addr, "/health").await.is_err());
    }

    #[test]
    fn client_parses_plain_and_chunked_bodies() {
        let plain = parse_response(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\nX-A: b\r\n\r\nhi",
        )
        .unwrap();
        assert_eq!(plain.status, 503);
        assert_eq!(plain.header("x-a"), Some("b"));
        assert_eq!(plain.body, "hi");

        let chunked = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n5;x=y\r\npedia\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(chunked.status, 200);
        assert_eq!(chunked.body, "Wikipedia");

        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_response(b"SSH-2.0-x\r\n\r\n").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nab\r\n")
                .is_err()
        );
    }
}
