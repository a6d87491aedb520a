//! The control socket's front door, a tower layer in front of every service (control, health,
//! reflection): it authorizes each call from the connection's peer credentials against the one
//! table ([`super::auth::ACCESS`]) before tonic reads a byte of the request body, and bounds the
//! calls that peers other than root and the daemon's own user have in flight, so that no group
//! member can make the daemon buffer request bodies without limit.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use tonic::Status;

use super::auth::{self, Policy};
use crate::config::ConfigHandle;

/// Calls in flight from one uid other than root and the daemon's own.
pub const PER_UID_IN_FLIGHT: usize = 8;
/// Calls in flight from all such uids together.
pub const OTHERS_IN_FLIGHT: usize = 32;

/// The layer.
#[derive(Clone)]
pub struct GuardLayer {
    state: Arc<State>,
}

struct State {
    policy: Policy,
    config: ConfigHandle,
    in_flight: Mutex<InFlight>,
}

#[derive(Default)]
struct InFlight {
    total: usize,
    per_uid: HashMap<u32, usize>,
}

impl GuardLayer {
    /// Authorizes with `policy` and the live `control.group_access`.
    pub fn new(policy: Policy, config: ConfigHandle) -> Self {
        Self {
            state: Arc::new(State {
                policy,
                config,
                in_flight: Mutex::default(),
            }),
        }
    }
}

impl<S> tower::Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Guard {
            inner,
            state: self.state.clone(),
        }
    }
}

/// The service the layer wraps around the server's routes.
#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    state: Arc<State>,
}

/// A call's place in the in-flight count of its uid, given back on drop.
struct Slot {
    state: Arc<State>,
    uid: u32,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut in_flight = self.state.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
        in_flight.total -= 1;
        if let Some(count) = in_flight.per_uid.get_mut(&self.uid) {
            *count -= 1;
            if *count == 0 {
                in_flight.per_uid.remove(&self.uid);
            }
        }
    }
}

/// The name a gRPC path has in the authorization table.
pub(super) fn method_of(path: &str) -> &str {
    let path = path.trim_start_matches('/');
    let (service, method) = path.split_once('/').unwrap_or((path, ""));
    match service {
        blufio_proto::control::v1::SERVICE_NAME => method,
        "grpc.health.v1.Health" => "grpc.health.v1.Health",
        service if service.starts_with("grpc.reflection.") => "grpc.reflection",
        _ => path,
    }
}

impl State {
    /// Authorizes the call and takes its in-flight place (owners are not counted).
    fn admit<B>(self: &Arc<Self>, request: &http::Request<B>) -> Result<Option<Slot>, Status> {
        let method = method_of(request.uri().path());
        let caller = auth::authorize(
            &self.policy,
            self.config.get().config.control.group_access,
            request.extensions(),
            method,
        )?;
        if caller.owner {
            return Ok(None);
        }
        let uid = caller.uid;
        let mut in_flight = self.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
        let mine = in_flight.per_uid.get(&uid).copied().unwrap_or(0);
        if mine >= PER_UID_IN_FLIGHT || in_flight.total >= OTHERS_IN_FLIGHT {
            return Err(Status::resource_exhausted(format!(
                "too many calls in flight from uid {uid} (at most {PER_UID_IN_FLIGHT} per user, {OTHERS_IN_FLIGHT} for all users but the owner); retry when one has finished"
            )));
        }
        in_flight.total += 1;
        *in_flight.per_uid.entry(uid).or_default() += 1;
        Ok(Some(Slot {
            state: self.clone(),
            uid,
        }))
    }
}

impl<S, B> tower::Service<http::Request<B>> for Guard<S>
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
        let slot = match self.state.admit(&request) {
            Ok(slot) => slot,
            Err(status) => return Box::pin(async move { Ok(status.into_http()) }),
        };
        // The clone that was made ready is the one to call (tower's usual dance).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let response = inner.call(request).await?;
            // The place is held until the answer's body ends: a stream (reflection, a turn) is
            // a call in flight for as long as it is open.
            Ok(match slot {
                None => response,
                Some(slot) => response.map(|body| {
                    tonic::body::Body::new(HeldBody {
                        inner: body,
                        _slot: slot,
                    })
                }),
            })
        })
    }
}

/// A response body that keeps its call's in-flight place until it is dropped.
struct HeldBody {
    inner: tonic::body::Body,
    _slot: Slot,
}

impl hyper::body::Body for HeldBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(context)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_the_table_names() {
        assert_eq!(method_of("/blufio.control.v1.Control/GetStatus"), "GetStatus");
        assert_eq!(method_of("/grpc.health.v1.Health/Check"), "grpc.health.v1.Health");
        assert_eq!(
            method_of("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            "grpc.reflection"
        );
        assert_eq!(method_of("/other.Service/X"), "other.Service/X");
        assert_eq!(auth::needed_for(method_of("/other.Service/X")), auth::Need::Full);
    }
}
