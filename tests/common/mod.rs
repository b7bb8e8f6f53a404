//! Test harness: a real recording upstream on a loopback port, the proxy on
//! port 0, and raw-socket clients that send exactly the bytes a test writes.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const ROUTE: &str = "/api/v2/conversations/messaging/guest/conversations/conv-1/messages";
pub const QUEUE: &str = "queue-1";

/// One request as the upstream really received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The proxy's end of the upstream connection the request came on.
    pub peer: SocketAddr,
    pub method: String,
    pub uri: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn body_str(&self) -> &str {
        std::str::from_utf8(&self.body).expect("utf-8 body")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

type Responder = Arc<dyn Fn(&Recorded) -> Response<Full<Bytes>> + Send + Sync>;

/// A hyper server (HTTP/1.1 and h2c) that records every request it receives.
pub struct RecordingUpstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Recorded>>>,
}

impl RecordingUpstream {
    /// Answers 200 with a fixed JSON body and a marker header.
    pub async fn start() -> Self {
        Self::start_with(|_| {
            Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .header("x-upstream", "recording")
                .body(Full::new(Bytes::from_static(
                    br#"{"id":"server-generated","ok":true}"#,
                )))
                .unwrap()
        })
        .await
    }

    pub async fn start_with(
        respond: impl Fn(&Recorded) -> Response<Full<Bytes>> + Send + Sync + 'static,
    ) -> Self {
        Self::start_delayed(Duration::ZERO, respond).await
    }

    /// Like `start_with`, answering only after `delay`.
    pub async fn start_delayed(
        delay: Duration,
        respond: impl Fn(&Recorded) -> Response<Full<Bytes>> + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let respond: Responder = Arc::new(respond);
        let seen_task = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    return;
                };
                let seen = seen_task.clone();
                let respond = respond.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let seen = seen.clone();
                        let respond = respond.clone();
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let recorded = Recorded {
                                peer,
                                method: parts.method.to_string(),
                                uri: parts.uri.to_string(),
                                version: parts.version,
                                headers: parts.headers,
                                body,
                            };
                            let response = respond(&recorded);
                            seen.lock().unwrap().push(recorded);
                            tokio::time::sleep(delay).await;
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, seen }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap().clone()
    }

    /// The single request received; fails if there were none or several.
    pub fn only(&self) -> Recorded {
        let seen = self.requests();
        assert_eq!(
            seen.len(),
            1,
            "upstream saw {} requests: {seen:#?}",
            seen.len()
        );
        seen.into_iter().next().unwrap()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// Starts the proxy in front of `upstream` (an `http://` base URL) with extra
/// `GUESTGATE__...` settings.
pub async fn proxy_to(base_url: &str, extra: &[(&str, &str)]) -> guestgate::Running {
    let mut env: HashMap<String, String> = HashMap::from([
        ("GUESTGATE__SERVER__LISTEN".into(), "127.0.0.1:0".into()),
        ("GUESTGATE__ADMIN__LISTEN".into(), "127.0.0.1:0".into()),
        ("GUESTGATE__UPSTREAM__BASE_URL".into(), base_url.into()),
        ("GUESTGATE__GUEST_MESSAGES__TO__ID".into(), QUEUE.into()),
    ]);
    for (k, v) in extra {
        env.insert((*k).into(), (*v).into());
    }
    let config = guestgate::Config::load_with_env(None, Some(env)).expect("valid test config");
    guestgate::start(config).await.expect("proxy starts")
}

pub async fn proxy(upstream: &RecordingUpstream, extra: &[(&str, &str)]) -> guestgate::Running {
    proxy_to(&format!("http://{}", upstream.addr), extra).await
}

/// A parsed HTTP/1.1 response read from a raw socket.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body_str()))
    }

    /// Asserts this is a problem+json answer with `status` and returns it.
    pub fn assert_problem(&self, status: u16) -> serde_json::Value {
        assert_eq!(self.status, status, "{}\n{}", self.head, self.body_str());
        assert_eq!(
            self.header("content-type").as_deref(),
            Some("application/problem+json")
        );
        let json = self.json();
        assert_eq!(json["status"], status);
        json
    }
}

/// Sends raw bytes and reads one response (the request should carry
/// `Connection: close`, or the response a Content-Length).
pub async fn raw(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_response(&mut stream).await
}

/// Reads one HTTP/1.1 response (Content-Length, chunked, or until close).
pub async fn read_response(stream: &mut TcpStream) -> RawResponse {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(pos) = find(&buf, b"\r\n\r\n") {
            break pos + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("response head in time")
            .unwrap();
        assert!(
            n > 0,
            "connection closed before a response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut body = buf[head_end..].to_vec();
    let mut response = RawResponse {
        status,
        head,
        body: Vec::new(),
    };
    if let Some(len) = response.header("content-length") {
        let len: usize = len.parse().unwrap();
        while body.len() < len {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed mid-body");
            body.extend_from_slice(&chunk[..n]);
        }
        body.truncate(len);
    } else if response
        .header("transfer-encoding")
        .is_some_and(|t| t.contains("chunked"))
    {
        while find(&body, b"0\r\n\r\n").is_none() {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        body = dechunk(&body);
    } else if status != 101 && status != 204 && status != 304 {
        let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut body)).await;
    }
    response.body = body;
    response
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

pub fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = find(data, b"\r\n").expect("chunk size line");
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..line_end]).unwrap().trim(), 16)
                .unwrap();
        data = &data[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// A POST of `body` to `path` with `Connection: close` and extra header lines.
pub fn post(path: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: proxy.test\r\nConnection: close\r\nContent-Length: {}\r\n{headers}\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

/// A WebSocket upgrade request (GET with the RFC 6455 handshake headers).
pub fn websocket_upgrade(path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: proxy.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .into_bytes()
}

pub fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap()
}

/// Accepts the first connection that sends bytes, skipping the proxy's
/// readiness checks (which connect and close without a request).
pub async fn accept_request(listener: &TcpListener) -> TcpStream {
    loop {
        let (socket, _) = listener.accept().await.unwrap();
        let mut byte = [0u8; 1];
        if socket.peek(&mut byte).await.unwrap_or(0) > 0 {
            return socket;
        }
    }
}

/// A TLS client configuration trusting exactly one (test) certificate.
pub fn client_tls_trusting(
    cert: &rustls::pki_types::CertificateDer<'static>,
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// A loopback port where nothing listens, the same for the whole test
/// binary: its socket is bound (without `SO_REUSEADDR`) and never listens,
/// so connecting is refused and no other listener can be given the port.
/// A port that was only free a moment ago is not enough: tests run in
/// parallel, and another one's collector or upstream may get it.
pub fn closed_port() -> u16 {
    static RESERVED: std::sync::OnceLock<(tokio::net::TcpSocket, u16)> = std::sync::OnceLock::new();
    RESERVED
        .get_or_init(|| {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let port = socket.local_addr().unwrap().port();
            (socket, port)
        })
        .1
}

/// The listener and admin addresses from the binary's "guestgate listening"
/// log line, once it is written.
fn listening(log: &std::path::Path) -> Option<(SocketAddr, SocketAddr)> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["message"] == "guestgate listening")?;
    let addr = line["addr"].as_str()?.parse().ok()?;
    let admin = line["admin"]
        .as_str()?
        .strip_prefix("Some(")?
        .strip_suffix(')')?
        .parse()
        .ok()?;
    Some((addr, admin))
}

/// The real `guestgate` binary, run with a configuration file; killed when
/// dropped. Its stdout (the log, as JSON lines) is kept for assertions.
pub struct Binary {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl Binary {
    /// Starts the binary with `config` as its `--config` file, listening and
    /// serving admin on loopback ports it binds itself (port 0), sending to
    /// `upstream` and not watching its file unless `env` says otherwise (an
    /// empty value removes the variable, leaving the file's setting); returns
    /// once it has logged that it listens.
    pub async fn start(config: &str, upstream: &RecordingUpstream, env: &[(&str, &str)]) -> Self {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("guestgate-bin-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("guestgate.toml");
        std::fs::write(&file, config).unwrap();
        let log = std::fs::File::create(dir.join("stdout.log")).unwrap();
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_guestgate"));
        command
            .arg("--config")
            .arg(&file)
            .env_remove("RUST_LOG")
            .env("GUESTGATE__SERVER__LISTEN", "127.0.0.1:0")
            .env("GUESTGATE__ADMIN__LISTEN", "127.0.0.1:0")
            .env("GUESTGATE__ADMIN__CONFIG_WATCH_INTERVAL_SECS", "0")
            .env("GUESTGATE__LOG__FORMAT", "json")
            .env(
                "GUESTGATE__UPSTREAM__BASE_URL",
                format!("http://{}", upstream.addr),
            )
            .stdout(log)
            .stderr(std::process::Stdio::piped());
        for (k, v) in env {
            if v.is_empty() {
                command.env_remove(k);
            } else {
                command.env(k, v);
            }
        }
        let mut child = command.spawn().unwrap();
        let log = dir.join("stdout.log");
        for _ in 0..200 {
            // The binary binds port 0 and logs the addresses it got.
            if let Some((addr, admin)) = listening(&log) {
                return Self {
                    addr,
                    admin,
                    child,
                    dir,
                };
            }
            if let Some(status) = child.try_wait().unwrap() {
                let mut stderr = String::new();
                std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr)
                    .unwrap();
                panic!("guestgate exited with {status}:\n{stderr}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("guestgate did not log that it listens");
    }

    /// Replaces the configuration file and sends SIGHUP; returns once the
    /// reload is logged.
    pub async fn reload(&self, config: &str) {
        self.write_config(config);
        let before = self.log_text().matches("configuration reloaded").count();
        let status = std::process::Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        for _ in 0..200 {
            if self.log_text().matches("configuration reloaded").count() > before {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("no reload logged:\n{}", self.log_text());
    }

    /// Replaces the configuration file without signalling (for the file
    /// watch).
    pub fn write_config(&self, config: &str) {
        std::fs::write(self.dir.join("guestgate.toml"), config).unwrap();
    }

    /// The log lines written so far, parsed.
    pub fn log(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join("stdout.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The raw log text written so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("stdout.log")).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits (at most 20 s) for the graceful exit.
    pub async fn stop(&mut self) -> std::process::ExitStatus {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        for _ in 0..800 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("guestgate did not exit within 20 s of SIGTERM");
    }

    /// `GET /metrics` from the admin listener.
    pub async fn metrics(&self) -> String {
        raw(
            self.admin,
            b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
        )
        .await
        .body_str()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `guestgate check` on `config` (as its `--config` file) and returns
/// whether it passed, its stdout and its stderr.
pub fn check(config: &str) -> (bool, String, String) {
    let dir = std::env::temp_dir().join(format!(
        "guestgate-check-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("guestgate.toml");
    std::fs::write(&file, config).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_guestgate"))
        .arg("--config")
        .arg(&file)
        .arg("check")
        .env_remove("GUESTGATE__GUEST_MESSAGES__TO__ID")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
