//! The HTTP exchange of `blufioctl remote`, on hyper's connection API: one connection to the
//! gateway (TCP, then TLS with ALPN `h2`/`http/1.1` for `https`), kept for the client's life and
//! opened again when the gateway closed it. Redirects are never followed (a signature covers the
//! authority and path it was made for), and every answer is read chunk by chunk, under the
//! request's deadline when it has one.
//!
//! This module knows nothing of signatures or of the gateway's documents; it says whether the
//! connection could not be made, the exchange broke, or the deadline passed ([`Failure`]).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HOST, HeaderValue, USER_AGENT};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::url::{BaseUrl, Endpoint, Host, Scheme};

/// Why an exchange failed.
#[derive(Debug)]
pub enum Failure {
    /// The TCP connection or the TLS handshake failed.
    Connect(io::Error),
    /// No connection (TCP and TLS) within the connect timeout.
    ConnectTimeout(Duration),
    /// The connection broke, or the answer is not HTTP.
    Exchange(hyper::Error),
    /// The request's deadline passed before the answer was read.
    Timeout,
    /// The URL makes no valid request target.
    Request(http::Error),
}

/// One request's answer: its status, and its body still to read.
pub struct Answer {
    pub status: StatusCode,
    body: Incoming,
    deadline: Option<Instant>,
}

impl Answer {
    /// The next piece of the body; `None` at its end. Trailers are skipped.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, Failure> {
        loop {
            let frame = match self.deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, self.body.frame())
                    .await
                    .map_err(|_| Failure::Timeout)?,
                None => self.body.frame().await,
            };
            match frame {
                None => return Ok(None),
                Some(Err(error)) => return Err(Failure::Exchange(error)),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data()
                        && !data.is_empty()
                    {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }
}

/// A request sender on an open connection.
enum Sender {
    Http1(http1::SendRequest<Full<Bytes>>),
    Http2(http2::SendRequest<Full<Bytes>>),
}

/// A client of one origin (`scheme://host:port` of the base URL).
pub struct Client {
    host: Host,
    port: u16,
    /// `Host` (HTTP/1.1) and `:authority` (HTTP/2): what the signature covers too.
    authority: HeaderValue,
    /// `None` for plain `http`.
    tls: Option<tokio_rustls::TlsConnector>,
    connect_timeout: Duration,
    /// The open connection, if any. Requests are sequential, so one is enough.
    sender: tokio::sync::Mutex<Option<Sender>>,
}

impl Client {
    /// A client of `base`'s origin: over TLS with `tls`, which an `https` base must have and an
    /// `http` one must not.
    pub fn new(
        base: &BaseUrl,
        tls: Option<rustls::ClientConfig>,
        connect_timeout: Duration,
    ) -> Result<Client, http::header::InvalidHeaderValue> {
        debug_assert_eq!(tls.is_some(), base.scheme() == Scheme::Https);
        let tls = tls.map(|config| tokio_rustls::TlsConnector::from(Arc::new(config)));
        Ok(Client {
            host: base.host().clone(),
            port: base.port(),
            authority: HeaderValue::from_str(&base.authority())?,
            tls,
            connect_timeout,
            sender: tokio::sync::Mutex::new(None),
        })
    }

    /// Sends one request to `url` (of this client's origin) and waits for the answer's head,
    /// all before `head_deadline`; the answer's body is then read before `body_deadline`, if
    /// any (a streamed turn's has none).
    pub async fn send(
        &self,
        method: Method,
        url: &Endpoint,
        mut headers: HeaderMap,
        body: Vec<u8>,
        head_deadline: Instant,
        body_deadline: Option<Instant>,
    ) -> Result<Answer, Failure> {
        let exchange = async {
            let mut slot = self.sender.lock().await;
            if let Some(sender) = slot.as_mut()
                && !ready(sender, self.connect_timeout).await
            {
                *slot = None;
            }
            let sender = match slot.as_mut() {
                Some(sender) => sender,
                None => {
                    let opened = tokio::time::timeout(self.connect_timeout, self.connect())
                        .await
                        .map_err(|_| Failure::ConnectTimeout(self.connect_timeout))??;
                    slot.insert(opened)
                }
            };
            headers.insert(
                USER_AGENT,
                HeaderValue::from_static(concat!("blufioctl/", env!("CARGO_PKG_VERSION"))),
            );
            let body = Full::new(Bytes::from(body));
            let answer = match sender {
                Sender::Http1(sender) => {
                    headers.insert(HOST, self.authority.clone());
                    sender
                        .send_request(request(method, &url.target(), headers, body)?)
                        .await
                }
                Sender::Http2(sender) => {
                    // HTTP/2 takes the scheme and authority from the (absolute) URI.
                    sender
                        .send_request(request(method, &url.to_string(), headers, body)?)
                        .await
                }
            };
            answer.map_err(|error| {
                // A connection that failed a request is not used again.
                *slot = None;
                Failure::Exchange(error)
            })
        };
        let answer: Response<Incoming> = tokio::time::timeout_at(head_deadline, exchange)
            .await
            .map_err(|_| Failure::Timeout)??;
        let (head, body) = answer.into_parts();
        Ok(Answer {
            status: head.status,
            body,
            deadline: body_deadline,
        })
    }

    /// Opens a connection: TCP, TLS for `https` (HTTP/2 when the gateway chooses `h2`), and the
    /// HTTP handshake. The connection is driven by a task of its own until it closes.
    async fn connect(&self) -> Result<Sender, Failure> {
        let tcp = match &self.host {
            Host::Name(name) => TcpStream::connect((name.as_str(), self.port)).await,
            Host::Ip(address) => TcpStream::connect(SocketAddr::from((*address, self.port))).await,
        }
        .map_err(Failure::Connect)?;
        // Requests are small and answered at once: no Nagle delay.
        tcp.set_nodelay(true).map_err(Failure::Connect)?;
        let Some(tls) = &self.tls else {
            return handshake_http1(TokioIo::new(tcp)).await;
        };
        let server_name = match &self.host {
            Host::Name(name) => ServerName::try_from(name.clone())
                .map_err(|error| Failure::Connect(io::Error::new(io::ErrorKind::InvalidInput, error)))?,
            Host::Ip(address) => ServerName::from(*address),
        };
        let stream = tls.connect(server_name, tcp).await.map_err(Failure::Connect)?;
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(stream);
        if h2 {
            let (sender, connection) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(Failure::Exchange)?;
            tokio::spawn(connection);
            Ok(Sender::Http2(sender))
        } else {
            handshake_http1(io).await
        }
    }
}

/// The HTTP/1.1 handshake on an open stream.
async fn handshake_http1<T>(io: TokioIo<T>) -> Result<Sender, Failure>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = http1::handshake(io).await.map_err(Failure::Exchange)?;
    tokio::spawn(connection);
    Ok(Sender::Http1(sender))
}

/// Whether an open connection can take the next request within `wait` (an HTTP/1.1 one that
/// the gateway closed, or whose last answer was dropped unread, cannot).
async fn ready(sender: &mut Sender, wait: Duration) -> bool {
    let ready = async {
        match sender {
            Sender::Http1(sender) => !sender.is_closed() && sender.ready().await.is_ok(),
            Sender::Http2(sender) => !sender.is_closed() && sender.ready().await.is_ok(),
        }
    };
    tokio::time::timeout(wait, ready).await.unwrap_or(false)
}

/// A request with `target` (origin form for HTTP/1.1, absolute for HTTP/2).
fn request(
    method: Method,
    target: &str,
    headers: HeaderMap,
    body: Full<Bytes>,
) -> Result<Request<Full<Bytes>>, Failure> {
    let mut request = Request::builder()
        .method(method)
        .uri(target)
        .body(body)
        .map_err(Failure::Request)?;
    *request.headers_mut() = headers;
    Ok(request)
}
