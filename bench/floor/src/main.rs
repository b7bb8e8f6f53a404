//! The floor of a hyper reverse proxy:
//! `floor LISTEN UPSTREAM pool|lifo|direct|edit|edit-lifo`.
//!
//! `pool` forwards through hyper-util's pooled client; `lifo` through a
//! per-thread list of idle connections over hyper's low-level client, the
//! most recently idle taken first and given back when the response body
//! ends (guestgate's own pool, `src/pool.rs`, without its expiry);
//! `direct` gives each client connection its own upstream connection
//! through hyper's low-level client (no pool). `edit` is `direct` doing the
//! benchmark's sanitizing with serde_json, built with guestgate's features:
//! the body is parsed, `id` removed, `to` set to `{"id":"bench-queue-0001"}`
//! and the result serialized; a body that is not a JSON object gets a 400.
//! `edit-lifo` is `edit` over `lifo`'s idle connections. They bound what
//! the intercepted route can reach on hyper and serde_json.
//! One single-threaded runtime, like guestgate with one worker. Request
//! bodies are collected, responses streamed back; nothing else happens.

use std::cell::RefCell;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_LENGTH, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, upstream, mode] = args.as_slice() else {
        return Err("usage: floor LISTEN UPSTREAM pool|lifo|direct|edit|edit-lifo".into());
    };
    let mode = match mode.as_str() {
        "pool" => Mode::Pool,
        "lifo" => Mode::Lifo,
        "edit-lifo" => Mode::EditLifo,
        "direct" => Mode::Direct,
        "edit" => Mode::Edit,
        _ => return Err("mode is pool, lifo, direct, edit or edit-lifo".into()),
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(listen.clone(), upstream.clone(), mode))
}

#[derive(Clone, Copy)]
enum Mode {
    Pool,
    Lifo,
    Direct,
    Edit,
    EditLifo,
}

async fn serve(listen: String, upstream: String, mode: Mode) -> Result<(), Error> {
    let listener = TcpListener::bind(&listen).await?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let upstream = Arc::new(upstream);
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let (client, upstream) = (client.clone(), upstream.clone());
        tokio::spawn(async move {
            let io = TokioIo::new(stream);
            let http1 = hyper::server::conn::http1::Builder::new();
            let sender = match mode {
                Mode::Pool | Mode::Lifo | Mode::EditLifo => None,
                Mode::Direct | Mode::Edit => match connect(&upstream).await {
                    Ok(sender) => Some(Arc::new(Mutex::new(sender))),
                    Err(_) => return,
                },
            };
            let _ = match (mode, sender) {
                (Mode::Edit, Some(sender)) => {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let sender = sender.clone();
                        async move {
                            match edit(request).await? {
                                Ok(request) => Ok(send(&sender, request).await?.map(Either::Left)),
                                Err(invalid) => Ok::<_, String>(invalid),
                            }
                        }
                    });
                    http1.serve_connection(io, service).await
                }
                (_, Some(sender)) => {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let sender = sender.clone();
                        async move { send(&sender, collected(request).await?).await }
                    });
                    http1.serve_connection(io, service).await
                }
                (Mode::Lifo, None) => {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let upstream = upstream.clone();
                        async move { lifo_send(&upstream, collected(request).await?).await }
                    });
                    http1.serve_connection(io, service).await
                }
                (Mode::EditLifo, None) => {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let upstream = upstream.clone();
                        async move {
                            match edit(request).await? {
                                Ok(request) => {
                                    Ok(lifo_send(&upstream, request).await?.map(Either::Left))
                                }
                                Err(invalid) => Ok::<_, String>(invalid),
                            }
                        }
                    });
                    http1.serve_connection(io, service).await
                }
                (_, None) => {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let (client, upstream) = (client.clone(), upstream.clone());
                        async move {
                            let mut request = collected(request).await?;
                            let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
                            let uri = format!("http://{upstream}{path}").parse::<Uri>();
                            *request.uri_mut() = uri.map_err(|e| e.to_string())?;
                            client.request(request).await.map_err(|e| e.to_string())
                        }
                    });
                    http1.serve_connection(io, service).await
                }
            };
        });
    }
}

/// The intercepted route's job on `request`: its body edited, or the 400
/// answering a body that is not a JSON object.
async fn edit<B>(
    request: Request<Incoming>,
) -> Result<Result<Request<Full<Bytes>>, Response<Either<B, Full<Bytes>>>>, String> {
    let (mut parts, body) = request.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?;
    let Some(body) = edited(&body.to_bytes()) else {
        let mut invalid = Response::new(Either::Right(Full::new(Bytes::new())));
        *invalid.status_mut() = StatusCode::BAD_REQUEST;
        return Ok(Err(invalid));
    };
    parts
        .headers
        .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    Ok(Ok(Request::from_parts(parts, Full::new(Bytes::from(body)))))
}

async fn collected(request: Request<Incoming>) -> Result<Request<Full<Bytes>>, String> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Request::from_parts(parts, Full::new(body)))
}

/// One request over the client connection's own upstream connection.
async fn send(
    sender: &Mutex<SendRequest<Full<Bytes>>>,
    request: Request<Full<Bytes>>,
) -> Result<Response<Incoming>, String> {
    let mut sender = sender.lock().await;
    sender.ready().await.map_err(|e| e.to_string())?;
    sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())
}

thread_local! {
    /// This thread's idle upstream connections, the most recently idle last.
    static IDLE: RefCell<Vec<SendRequest<Full<Bytes>>>> = const { RefCell::new(Vec::new()) };
}

/// One request over this thread's most recently idle upstream connection,
/// or a new one; the connection goes back when the response body ends.
async fn lifo_send(
    upstream: &str,
    request: Request<Full<Bytes>>,
) -> Result<Response<Lifo>, String> {
    let idle = IDLE.with_borrow_mut(|idle| {
        while let Some(sender) = idle.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    });
    let mut sender = match idle {
        Some(sender) => sender,
        None => connect(upstream).await.map_err(|e| e.to_string())?,
    };
    sender.ready().await.map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    Ok(response.map(|body| Lifo {
        body,
        sender: Some(sender),
    }))
}

/// A response body that gives its connection back once read to the end.
struct Lifo {
    body: Incoming,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Lifo {
    fn release(&mut self) {
        if let Some(sender) = self.sender.take() {
            IDLE.with_borrow_mut(|idle| idle.push(sender));
        }
    }
}

impl Body for Lifo {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = std::task::ready!(Pin::new(&mut self.body).poll_frame(cx));
        match &frame {
            None => self.release(),
            Some(Ok(_)) if self.body.is_end_stream() => self.release(),
            Some(Ok(_)) => {}
            Some(Err(_)) => self.sender = None,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The benchmark's sanitizing: `None` when the body is not a JSON object.
fn edited(body: &[u8]) -> Option<Vec<u8>> {
    let Ok(Value::Object(mut message)) = serde_json::from_slice(body) else {
        return None;
    };
    message.shift_remove("id");
    message.insert("to".into(), json!({"id": "bench-queue-0001"}));
    serde_json::to_vec(&message).ok()
}

async fn connect(upstream: &str) -> Result<SendRequest<Full<Bytes>>, Error> {
    let stream = TcpStream::connect(upstream).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}
