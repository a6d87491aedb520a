//! Which host a request is addressed to, and whether that is this daemon.
//!
//! A request names its target in `Host` (HTTP/1.1), in `:authority` (HTTP/2) or in an
//! absolute-form target. They must agree, there must be at most one `Host`, and the host must be
//! one of the daemon's own names: the listen address (every local address when it is a wildcard),
//! `localhost`, the names the serving certificate is valid for, and `gateway.server_names`. So a
//! request signed for another daemon with the same device key does not replay here, and a DNS
//! name an attacker controls cannot be rebound onto the open endpoints.
//!
//! This module only judges the head; it never reads a body.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::StatusCode;

use super::problem::Problem;
use super::tls::ReloadableCert;

/// The names this daemon answers to, besides those of its certificate and the live
/// `gateway.server_names`.
#[derive(Debug)]
pub struct ServerNames {
    fixed: HashSet<String>,
    cert: Option<Arc<ReloadableCert>>,
}

impl ServerNames {
    /// The names of a listener bound to `address`, serving `cert` (if TLS).
    pub fn new(address: SocketAddr, cert: Option<Arc<ReloadableCert>>) -> Self {
        let mut fixed: HashSet<String> = ["localhost".to_owned()].into();
        let mut add_ip = |ip: IpAddr| {
            fixed.insert(ip.to_string());
        };
        if address.ip().is_unspecified() {
            // A wildcard listener is reached through any address of the machine.
            add_ip(IpAddr::from([127, 0, 0, 1]));
            add_ip(IpAddr::from(std::net::Ipv6Addr::LOCALHOST));
            for ip in crate::util::interface_addresses().unwrap_or_default() {
                add_ip(ip);
            }
            if let Ok(host) = nix::unistd::gethostname()
                && let Some(host) = host.to_str()
                && !host.is_empty()
            {
                fixed.insert(host.to_ascii_lowercase());
            }
        } else {
            add_ip(address.ip());
            if address.ip().is_loopback() {
                add_ip(IpAddr::from([127, 0, 0, 1]));
                add_ip(IpAddr::from(std::net::Ipv6Addr::LOCALHOST));
            }
        }
        Self { fixed, cert }
    }

    /// Whether `host` (lower-case, without port or IPv6 brackets) names this daemon.
    pub fn accepts(&self, host: &str, configured: &[String]) -> bool {
        self.fixed.contains(host)
            || configured.iter().any(|name| name.eq_ignore_ascii_case(host))
            || self.cert.as_ref().is_some_and(|cert| cert.is_valid_for(host))
    }
}

/// The authority a request was sent to: `:authority` or the absolute-form target's authority,
/// else `Host`. `None` when there is neither (an HTTP/1.0 request).
pub fn authority_of(parts: &http::request::Parts) -> Option<String> {
    parts
        .uri
        .authority()
        .map(|authority| authority.as_str().to_owned())
        .or_else(|| {
            parts
                .headers
                .get(http::header::HOST)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        })
}

/// Checks the head's framing and target: at most one `Host`, `Host` equal to `:authority` when
/// both are present, a `Transfer-Encoding` (if any) that is exactly `chunked`, and a host that is
/// one of this daemon's names. Returns the problem to answer with otherwise.
pub fn check(parts: &http::request::Parts, names: &ServerNames, configured: &[String]) -> Result<(), Problem> {
    let bad = |detail: String| Problem::new(StatusCode::BAD_REQUEST, "bad-request", "Bad request", detail);
    let mut hosts = parts.headers.get_all(http::header::HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return Err(bad(
            "the request has more than one Host header; send exactly one".to_owned()
        ));
    }
    let mut encodings = parts.headers.get_all(http::header::TRANSFER_ENCODING).iter();
    if let Some(encoding) = encodings.next()
        && (encoding.as_bytes() != b"chunked" || encodings.next().is_some())
    {
        return Err(bad(
            "Transfer-Encoding must be exactly \"chunked\" when it is sent; send a Content-Length or chunked framing"
                .to_owned(),
        ));
    }
    if let (Some(authority), Some(host_header)) = (parts.uri.authority(), host_header)
        && !host_header
            .to_str()
            .is_ok_and(|host| host.eq_ignore_ascii_case(authority.as_str()))
    {
        return Err(bad(
            "the Host header differs from the request target's authority; send the same host in both".to_owned(),
        ));
    }
    let Some(authority) = authority_of(parts) else {
        return Err(bad("the request names no host; send a Host header".to_owned()));
    };
    if authority.contains('@') {
        // RFC 9110 and 9113: no user info in a request's authority.
        return Err(bad(
            "the request's authority carries user info (`user@`); send only the host".to_owned(),
        ));
    }
    let host = host_of(&authority);
    if names.accepts(&host, configured) {
        Ok(())
    } else {
        Err(Problem::new(
            StatusCode::MISDIRECTED_REQUEST,
            "misdirected-request",
            "Misdirected request",
            format!(
                "this daemon does not answer to {host:?}; use one of its own names, or the owner can add it to gateway.server_names"
            ),
        ))
    }
}

/// The host of an authority, lower-cased, without port, user info or IPv6 brackets.
fn host_of(authority: &str) -> String {
    let authority = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let host = if let Some(rest) = authority.strip_prefix('[') {
        rest.split_once(']').map_or(rest, |(host, _)| host)
    } else {
        authority.rsplit_once(':').map_or(authority, |(host, _)| host)
    };
    host.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut builder = http::Request::builder().uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn names() -> ServerNames {
        ServerNames::new("127.0.0.1:8443".parse().unwrap(), None)
    }

    #[test]
    fn hosts_are_taken_without_port_and_brackets() {
        assert_eq!(host_of("Example.COM:8443"), "example.com");
        assert_eq!(host_of("[::1]:8443"), "::1");
        assert_eq!(host_of("127.0.0.1"), "127.0.0.1");
        assert_eq!(host_of("user@host:1"), "host");
    }

    #[test]
    fn own_names_pass_and_others_are_misdirected() {
        check(&parts("/v1/models", &[("host", "127.0.0.1:8443")]), &names(), &[]).unwrap();
        check(&parts("/v1/models", &[("host", "LOCALHOST:8443")]), &names(), &[]).unwrap();
        let problem = check(&parts("/v1/models", &[("host", "evil.example")]), &names(), &[]).unwrap_err();
        assert_eq!(problem.status, StatusCode::MISDIRECTED_REQUEST);
        check(
            &parts("/v1/models", &[("host", "agent.example:443")]),
            &names(),
            &["agent.example".to_owned()],
        )
        .unwrap();
        let absolute = check(&parts("https://evil.example/v1/models", &[]), &names(), &[]).unwrap_err();
        assert_eq!(absolute.status, StatusCode::MISDIRECTED_REQUEST);
    }

    #[test]
    fn ambiguous_heads_are_bad_requests() {
        let two_hosts = parts("/", &[("host", "localhost"), ("host", "localhost")]);
        assert_eq!(
            check(&two_hosts, &names(), &[]).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        let differing = parts("https://localhost/", &[("host", "127.0.0.1")]);
        assert_eq!(
            check(&differing, &names(), &[]).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        for encoding in ["identity, chunked", " Chunked\t", "Chunked", "gzip"] {
            let odd = parts("/", &[("host", "localhost"), ("transfer-encoding", encoding)]);
            assert_eq!(
                check(&odd, &names(), &[]).unwrap_err().status,
                StatusCode::BAD_REQUEST,
                "{encoding:?}"
            );
        }
        assert_eq!(
            check(&parts("https://x@localhost/", &[]), &names(), &[])
                .unwrap_err()
                .status,
            StatusCode::BAD_REQUEST
        );
        check(
            &parts("/", &[("host", "localhost"), ("transfer-encoding", "chunked")]),
            &names(),
            &[],
        )
        .unwrap();
        assert_eq!(
            check(&parts("/", &[]), &names(), &[]).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
    }
}
