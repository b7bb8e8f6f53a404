//! The floor of a hyper reverse proxy: `floor LISTEN UPSTREAM pool|direct`.
//!
//! `pool` forwards through hyper-util's pooled client (what guestgate uses);
//! `direct` gives each client connection its own upstream connection
//! through hyper's low-level client (no pool). One single-threaded runtime,
//! like guestgate with one worker. Request bodies are collected, responses
//! streamed back; nothing else happens.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, upstream, mode] = args.as_slice() else {
        return Err("usage: floor LISTEN UPSTREAM pool|direct".into());
    };
    let direct = match mode.as_str() {
        "pool" => false,
        "direct" => true,
        _ => return Err("mode is pool or direct".into()),
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(listen.clone(), upstream.clone(), direct))
}

async fn serve(listen: String, upstream: String, direct: bool) -> Result<(), Error> {
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
            let _ = if direct {
                let Ok(sender) = connect(&upstream).await else {
                    return;
                };
                let sender = Arc::new(Mutex::new(sender));
                let service = service_fn(move |request: Request<Incoming>| {
                    let sender = sender.clone();
                    async move {
                        let request = collected(request).await?;
                        let mut sender = sender.lock().await;
                        sender.ready().await.map_err(|e| e.to_string())?;
                        sender.send_request(request).await.map_err(|e| e.to_string())
                    }
                });
                http1.serve_connection(io, service).await
            } else {
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
            };
        });
    }
}

async fn collected(request: Request<Incoming>) -> Result<Request<Full<Bytes>>, String> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Request::from_parts(parts, Full::new(body)))
}

async fn connect(
    upstream: &str,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, Error> {
    let stream = TcpStream::connect(upstream).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}
