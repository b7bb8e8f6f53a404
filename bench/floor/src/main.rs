//! The floor of a hyper reverse proxy: `floor LISTEN UPSTREAM pool|direct|edit`.
//!
//! `pool` forwards through hyper-util's pooled client (what guestgate uses);
//! `direct` gives each client connection its own upstream connection
//! through hyper's low-level client (no pool). `edit` is `direct` doing the
//! benchmark's sanitizing with serde_json, built with guestgate's features:
//! the body is parsed, `id` removed, `to` set to `{"id":"bench-queue-0001"}`
//! and the result serialized; a body that is not a JSON object gets a 400.
//! It bounds what the intercepted route can reach on hyper and serde_json.
//! One single-threaded runtime, like guestgate with one worker. Request
//! bodies are collected, responses streamed back; nothing else happens.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
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
        return Err("usage: floor LISTEN UPSTREAM pool|direct|edit".into());
    };
    let mode = match mode.as_str() {
        "pool" => Mode::Pool,
        "direct" => Mode::Direct,
        "edit" => Mode::Edit,
        _ => return Err("mode is pool, direct or edit".into()),
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(listen.clone(), upstream.clone(), mode))
}

#[derive(Clone, Copy)]
enum Mode {
    Pool,
    Direct,
    Edit,
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
                Mode::Pool => None,
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
                            let (mut parts, body) = request.into_parts();
                            let body = body.collect().await.map_err(|e| e.to_string())?;
                            let Some(body) = edited(&body.to_bytes()) else {
                                let mut invalid =
                                    Response::new(Either::Right(Full::new(Bytes::new())));
                                *invalid.status_mut() = StatusCode::BAD_REQUEST;
                                return Ok::<_, String>(invalid);
                            };
                            parts
                                .headers
                                .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
                            let request = Request::from_parts(parts, Full::new(Bytes::from(body)));
                            Ok(send(&sender, request).await?.map(Either::Left))
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
