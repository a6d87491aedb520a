//! Counts every call on the control socket, of every service, by method and gRPC status, and
//! times it: a tower layer outside the guard, so refused calls are counted too. A call ends when
//! its status is known: in the response head for refusals and unary failures, in the trailers
//! of a stream, or when the caller drops a stream before its end (`CANCELLED`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::auth;
use super::guard::method_of;
use crate::metrics::Metrics;

/// The layer.
#[derive(Clone)]
pub struct MeteredLayer {
    metrics: Arc<Metrics>,
}

impl MeteredLayer {
    /// Counts into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for MeteredLayer {
    type Service = Metered<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Metered {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service the layer wraps.
#[derive(Clone)]
pub struct Metered<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// The label of a request path: a method of the authorization table, or `unknown`, so that
/// callers cannot create series.
fn method_label(path: &str) -> &'static str {
    let method = method_of(path);
    auth::ACCESS
        .iter()
        .find(|(name, _)| *name == method)
        .map_or("unknown", |(name, _)| name)
}

/// One call being measured; records itself once.
struct Call {
    metrics: Arc<Metrics>,
    method: &'static str,
    started: Instant,
    done: bool,
}

impl Call {
    fn finish(&mut self, code: tonic::Code) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        self.metrics
            .grpc_requests
            .with_label_values(&[self.method, code_name(code)])
            .inc();
        self.metrics
            .grpc_duration
            .with_label_values(&[self.method])
            .observe(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish(tonic::Code::Cancelled);
    }
}

fn status_in(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .map(|value| tonic::Code::from_bytes(value.as_bytes()))
}

impl<S, B> tower::Service<http::Request<B>> for Metered<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let mut call = Call {
            metrics: self.metrics.clone(),
            method: method_label(request.uri().path()),
            started: Instant::now(),
            done: false,
        };
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let response = inner.call(request).await?;
            if let Some(code) = status_in(response.headers()) {
                call.finish(code);
                return Ok(response);
            }
            Ok(response.map(|body| tonic::body::Body::new(MeteredBody { inner: body, call })))
        })
    }
}

/// A response body that records its call when the trailers carry the status.
struct MeteredBody {
    inner: tonic::body::Body,
    call: Call,
}

impl Body for MeteredBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(context);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(status_in) {
                    self.call.finish(code);
                }
            }
            Poll::Ready(Some(Err(status))) => self.call.finish(status.code()),
            // An end without trailers is not a gRPC answer.
            Poll::Ready(None) => self.call.finish(tonic::Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The conventional label of a gRPC status code.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_methods_become_labels() {
        assert_eq!(method_label("/blufio.control.v1.Control/GetStatus"), "GetStatus");
        assert_eq!(method_label("/grpc.health.v1.Health/Check"), "grpc.health.v1.Health");
        assert_eq!(method_label("/blufio.control.v1.Control/NoSuchCall"), "unknown");
        assert_eq!(method_label("/anything/at-all"), "unknown");
    }
}
