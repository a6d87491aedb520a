//! `http_get`: fetches one URL with a GET request and returns its status, content type and body.
//!
//! It must never connect to an address it has not vetted: it resolves the host itself, refuses
//! loopback, private, link-local, unspecified, broadcast and CGNAT addresses (and IPv4-mapped
//! forms of them) unless `allow_private` allows the host or address, and then pins the connection
//! to exactly the vetted addresses so DNS rebinding cannot slip past the check. It never follows a
//! redirect (the target was not vetted) and never uses a proxy (the proxy would resolve the host).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use reqwest::Url;
use reqwest::header::{CONTENT_TYPE, LOCATION};
use serde::Deserialize;
use serde_json::json;

use super::{ToolOutput, error_chain, parse_input};
use crate::agent::provider::{ToolSpec, install_crypto_provider};
use crate::config::HttpGetConfig;

/// The tool's spec.
pub(super) fn spec() -> ToolSpec {
    ToolSpec {
        name: "http_get".to_owned(),
        description: "Fetch a web page or API response with an HTTP GET request. Returns the status line, the \
content type and the body as text (cut at a size limit). Redirects are not followed: the redirect target is \
returned instead, and you can call http_get again with it."
            .to_owned(),
        input_schema: json!({
            "type": "object",
            "properties": {
                "url": {"type": "string", "description": "Absolute URL to fetch, normally https://"}
            },
            "required": ["url"],
            "additionalProperties": false
        }),
    }
}

/// `http_get`, configured.
pub(super) struct HttpGet {
    allow_http: bool,
    /// Lower-case host names without a trailing dot.
    allow_hosts: Vec<String>,
    allow_networks: Vec<IpNet>,
    max_bytes: u64,
    timeout: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    url: String,
}

/// Why a fetch failed. The model only ever sees one string, so causes are folded into the messages.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("http_get cannot parse {url:?} as a URL ({reason}); give an absolute URL such as https://example.com/")]
    ParseUrl { url: String, reason: String },
    #[error(
        "http_get refused {url}: only https:// URLs are allowed; the owner can allow plain http with \
tools.http_get.allow_http = true"
    )]
    PlainHttp { url: String },
    #[error("http_get refused {url}: only http:// and https:// URLs can be fetched")]
    UnsupportedScheme { url: String },
    #[error("http_get refused {url}: the URL has no host")]
    NoHost { url: String },
    #[error("http_get cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error(
        "http_get refused {target}: {blocked} addresses are blocked; add the host to \
tools.http_get.allow_private to allow it"
    )]
    Refused { target: String, blocked: Blocked },
    #[error("http_get cannot set up its HTTP client: {reason}")]
    BuildClient { reason: String },
    #[error("http_get request to {url} failed: {reason}")]
    Request { url: String, reason: String },
    #[error("http_get failed reading the response from {url}: {reason}")]
    ReadBody { url: String, reason: String },
}

impl HttpGet {
    /// Builds the tool from its config. `allow_private` entries that parse as a CIDR network or an
    /// IP address are networks; everything else is a host name.
    pub(super) fn from_config(config: &HttpGetConfig) -> Self {
        let mut allow_hosts = Vec::new();
        let mut allow_networks = Vec::new();
        for entry in &config.allow_private {
            let entry = entry.trim();
            if let Ok(network) = entry.parse::<IpNet>() {
                allow_networks.push(network);
            } else if let Ok(address) = entry.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
                allow_networks.push(IpNet::from(address));
            } else {
                allow_hosts.push(normalize_host(entry));
            }
        }
        Self {
            allow_http: config.allow_http,
            allow_hosts,
            allow_networks,
            max_bytes: config.max_bytes,
            timeout: Duration::from_secs(config.timeout_secs),
        }
    }

    /// Runs one call.
    pub(super) async fn call(&self, input: &serde_json::Value) -> ToolOutput {
        let input: Input = match parse_input("http_get", input, r#"{"url": "https://..."}"#) {
            Ok(input) => input,
            Err(output) => return output,
        };
        match tokio::time::timeout(self.timeout, self.fetch(&input.url)).await {
            Ok(Ok(output)) => output,
            Ok(Err(error)) => ToolOutput::error(error.to_string()),
            Err(_elapsed) => ToolOutput::error(format!(
                "http_get gave up on {} after {} s (tools.http_get.timeout_secs); try again later or another URL",
                input.url,
                self.timeout.as_secs()
            )),
        }
    }

    async fn fetch(&self, raw_url: &str) -> Result<ToolOutput, FetchError> {
        let url = Url::parse(raw_url).map_err(|error| FetchError::ParseUrl {
            url: raw_url.to_owned(),
            reason: error.to_string(),
        })?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            "http" => return Err(FetchError::PlainHttp { url: url.to_string() }),
            _ => return Err(FetchError::UnsupportedScheme { url: url.to_string() }),
        }
        let host = url
            .host_str()
            .ok_or_else(|| FetchError::NoHost { url: url.to_string() })?;
        let port = url.port_or_known_default().unwrap_or(443);

        // An IP literal is vetted as it is; a name is resolved here, and the client below may
        // only connect to what this lookup returned.
        let literal = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok();
        let addresses: Vec<SocketAddr> = match literal {
            Some(address) => vec![SocketAddr::new(address, port)],
            None => tokio::net::lookup_host((host, port))
                .await
                .map_err(|error| FetchError::Resolve {
                    host: host.to_owned(),
                    reason: error_chain(&error),
                })?
                .collect(),
        };
        if addresses.is_empty() {
            return Err(FetchError::Resolve {
                host: host.to_owned(),
                reason: "no addresses found".to_owned(),
            });
        }
        self.vet(host, literal.is_some(), &addresses)?;

        install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(self.timeout)
            .user_agent(concat!("blufiod/", env!("CARGO_PKG_VERSION"), " (http_get tool)"));
        if literal.is_none() {
            builder = builder.resolve_to_addrs(host, &addresses);
        }
        let client = builder.build().map_err(|error| FetchError::BuildClient {
            reason: error_chain(&error),
        })?;

        let mut response = client
            .get(url.clone())
            .send()
            .await
            .map_err(|error| FetchError::Request {
                url: url.to_string(),
                reason: error_chain(&error),
            })?;
        let status = response.status();
        let mut content = format!(
            "HTTP {} {}\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("(unknown status)")
        );

        if status.is_redirection() {
            let location = response
                .headers()
                .get(LOCATION)
                .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
            match location {
                Some(location) => {
                    // Relative locations are resolved so the model can call again as it is.
                    let target = url.join(&location).map(|target| target.to_string()).unwrap_or(location);
                    content.push_str(&format!(
                        "location: {target}\nthe redirect was not followed; call http_get with that URL to fetch it\n"
                    ));
                }
                None => content.push_str("the redirect has no location header\n"),
            }
            return Ok(ToolOutput::ok(content));
        }

        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
            .unwrap_or_else(|| "(none)".to_owned());
        content.push_str(&format!("content-type: {content_type}\n\n"));

        let limit = usize::try_from(self.max_bytes).unwrap_or(usize::MAX);
        let mut body = Vec::new();
        let mut cut = false;
        while let Some(chunk) = response.chunk().await.map_err(|error| FetchError::ReadBody {
            url: url.to_string(),
            reason: error_chain(&error),
        })? {
            let room = limit - body.len();
            if chunk.len() > room {
                body.extend_from_slice(&chunk[..room]);
                cut = true;
                // Stop reading: the rest of the body is not wanted, and dropping the response
                // closes the connection.
                break;
            }
            body.extend_from_slice(&chunk);
        }
        content.push_str(&String::from_utf8_lossy(&body));
        if cut {
            content.push_str(&format!(
                "\n[... body cut at {limit} bytes (tools.http_get.max_bytes); the rest was not read]"
            ));
        }
        Ok(ToolOutput {
            content,
            is_error: status.is_client_error() || status.is_server_error(),
        })
    }

    /// Refuses the fetch if any address is blocked and neither the host nor the address is allowed.
    fn vet(&self, host: &str, is_literal: bool, addresses: &[SocketAddr]) -> Result<(), FetchError> {
        if !is_literal && self.allow_hosts.contains(&normalize_host(host)) {
            return Ok(());
        }
        for address in addresses {
            let ip = address.ip();
            let Some(blocked) = blocked_kind(ip) else {
                continue;
            };
            if self.network_allowed(ip) {
                continue;
            }
            let target = if is_literal {
                ip.to_string()
            } else {
                format!("{host} ({ip})")
            };
            return Err(FetchError::Refused { target, blocked });
        }
        Ok(())
    }

    fn network_allowed(&self, ip: IpAddr) -> bool {
        // An IPv4-mapped IPv6 address reaches the IPv4 host, so an IPv4 network allows it too.
        let mapped = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.allow_networks
            .iter()
            .any(|network| network.contains(&ip) || mapped.is_some_and(|v4| network.contains(&v4)))
    }
}

fn normalize_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// Why an address is blocked: its kind and whether it was embedded in an IPv6 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Blocked {
    kind: &'static str,
    embedded_v4: bool,
}

impl std::fmt::Display for Blocked {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.embedded_v4 {
            formatter.write_str("IPv4-mapped ")?;
        }
        formatter.write_str(self.kind)
    }
}

/// The reason `ip` must not be fetched without an allow rule, or `None` if it is a public address.
fn blocked_kind(ip: IpAddr) -> Option<Blocked> {
    match ip {
        IpAddr::V4(v4) => blocked_v4(v4).map(|kind| Blocked {
            kind,
            embedded_v4: false,
        }),
        IpAddr::V6(v6) => blocked_v6(v6),
    }
}

fn blocked_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let octets = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if octets[0] == 0 {
        // 0.0.0.0/8 means "this network"; connecting to 0.0.0.0 reaches the local host.
        Some("unspecified")
    } else if ip.is_broadcast() {
        Some("broadcast")
    } else if octets[0] == 100 && octets[1] & 0xc0 == 64 {
        Some("shared (CGNAT, 100.64.0.0/10)")
    } else {
        None
    }
}

fn blocked_v6(ip: Ipv6Addr) -> Option<Blocked> {
    let plain = |kind| {
        Some(Blocked {
            kind,
            embedded_v4: false,
        })
    };
    let first = ip.segments()[0];
    if ip.is_loopback() {
        return plain("loopback");
    }
    if ip.is_unspecified() {
        return plain("unspecified");
    }
    if first & 0xfe00 == 0xfc00 {
        return plain("unique local (private)");
    }
    if first & 0xffc0 == 0xfe80 {
        return plain("link-local");
    }
    if first & 0xffc0 == 0xfec0 {
        return plain("site-local");
    }
    // IPv4-mapped (::ffff:a.b.c.d) and the deprecated IPv4-compatible (::a.b.c.d) forms reach the
    // IPv4 address they embed.
    ip.to_ipv4().and_then(blocked_v4).map(|kind| Blocked {
        kind,
        embedded_v4: true,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    fn kind(address: &str) -> Option<String> {
        blocked_kind(address.parse().unwrap()).map(|blocked| blocked.to_string())
    }

    #[test]
    fn ipv4_classification() {
        assert_eq!(kind("127.0.0.1").as_deref(), Some("loopback"));
        assert_eq!(kind("127.255.0.9").as_deref(), Some("loopback"));
        assert_eq!(kind("10.1.2.3").as_deref(), Some("private"));
        assert_eq!(kind("172.16.0.1").as_deref(), Some("private"));
        assert_eq!(kind("172.31.255.255").as_deref(), Some("private"));
        assert_eq!(kind("192.168.1.1").as_deref(), Some("private"));
        assert_eq!(kind("169.254.169.254").as_deref(), Some("link-local"));
        assert_eq!(kind("0.0.0.0").as_deref(), Some("unspecified"));
        assert_eq!(kind("255.255.255.255").as_deref(), Some("broadcast"));
        assert_eq!(kind("100.64.0.1").as_deref(), Some("shared (CGNAT, 100.64.0.0/10)"));
        assert_eq!(
            kind("100.127.255.255").as_deref(),
            Some("shared (CGNAT, 100.64.0.0/10)")
        );
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "172.15.0.1",
            "100.63.255.255",
            "100.128.0.1",
        ] {
            assert_eq!(kind(public), None, "{public}");
        }
    }

    #[test]
    fn ipv6_classification() {
        assert_eq!(kind("::1").as_deref(), Some("loopback"));
        assert_eq!(kind("::").as_deref(), Some("unspecified"));
        assert_eq!(kind("fc00::1").as_deref(), Some("unique local (private)"));
        assert_eq!(kind("fd12:3456::1").as_deref(), Some("unique local (private)"));
        assert_eq!(kind("fe80::1").as_deref(), Some("link-local"));
        assert_eq!(kind("febf::1").as_deref(), Some("link-local"));
        assert_eq!(kind("fec0::1").as_deref(), Some("site-local"));
        for public in ["2606:4700:4700::1111", "2001:4860:4860::8888", "fe00::1"] {
            assert_eq!(kind(public), None, "{public}");
        }
    }

    #[test]
    fn ipv4_mapped_classification() {
        assert_eq!(kind("::ffff:127.0.0.1").as_deref(), Some("IPv4-mapped loopback"));
        assert_eq!(kind("::ffff:10.0.0.1").as_deref(), Some("IPv4-mapped private"));
        assert_eq!(
            kind("::ffff:169.254.169.254").as_deref(),
            Some("IPv4-mapped link-local")
        );
        assert_eq!(
            kind("::ffff:100.64.0.1").as_deref(),
            Some("IPv4-mapped shared (CGNAT, 100.64.0.0/10)")
        );
        assert_eq!(kind("::ffff:0.0.0.0").as_deref(), Some("IPv4-mapped unspecified"));
        assert_eq!(kind("::127.0.0.1").as_deref(), Some("IPv4-mapped loopback"));
        assert_eq!(kind("::ffff:8.8.8.8"), None);
    }

    fn tool(allow_http: bool, allow_private: &[&str], max_bytes: u64) -> HttpGet {
        HttpGet::from_config(&HttpGetConfig {
            enabled: true,
            allow_http,
            allow_private: allow_private.iter().map(|entry| (*entry).to_owned()).collect(),
            max_bytes,
            timeout_secs: 5,
        })
    }

    fn addresses(list: &[&str]) -> Vec<SocketAddr> {
        list.iter()
            .map(|address| SocketAddr::new(address.parse().unwrap(), 443))
            .collect()
    }

    #[test]
    fn allow_private_matches_hosts_and_networks() {
        let tool = tool(
            false,
            &["Intranet.Example", "10.0.0.0/8", "192.168.1.5", "fd00::/8"],
            1024,
        );
        // Host names match exactly and case-insensitively, and allow every address they resolve to.
        assert!(tool.vet("intranet.example", false, &addresses(&["127.0.0.1"])).is_ok());
        assert!(tool.vet("INTRANET.example.", false, &addresses(&["127.0.0.1"])).is_ok());
        assert!(
            tool.vet("other.intranet.example", false, &addresses(&["127.0.0.1"]))
                .is_err()
        );
        // Networks allow the addresses inside them, also in IPv4-mapped form.
        assert!(
            tool.vet("a.example", false, &addresses(&["10.9.8.7", "fd00::5"]))
                .is_ok()
        );
        assert!(tool.vet("a.example", false, &addresses(&["::ffff:10.9.8.7"])).is_ok());
        assert!(tool.vet("192.168.1.5", true, &addresses(&["192.168.1.5"])).is_ok());
        // One blocked address among public ones refuses the whole host.
        let error = tool
            .vet("b.example", false, &addresses(&["8.8.8.8", "192.168.1.6"]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("b.example (192.168.1.6): private"), "{error}");
        assert!(
            tool.vet("c.example", false, &addresses(&["8.8.8.8", "2001:db8::1"]))
                .is_ok()
        );
    }

    /// Serves `response` to every connection on 127.0.0.1 and counts the connections.
    async fn serve(response: Vec<u8>) -> (u16, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&connections);
        let response = Arc::new(response);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let response = Arc::clone(&response);
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buffer = [0_u8; 1024];
                    while !request.windows(4).any(|window| window == b"\r\n\r\n") {
                        match stream.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buffer[..n]),
                        }
                    }
                    let _ = stream.write_all(&response).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        (port, connections)
    }

    fn response(status: &str, headers: &str, body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {status}\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[tokio::test]
    async fn loopback_is_refused_unless_allowed() {
        let (port, connections) = serve(response("200 OK", "content-type: text/plain\r\n", "hello")).await;
        let input = json!({"url": format!("http://127.0.0.1:{port}/page")});

        let refused = tool(true, &[], 1024).call(&input).await;
        assert!(refused.is_error);
        assert!(
            refused
                .content
                .contains("refused 127.0.0.1: loopback addresses are blocked"),
            "{}",
            refused.content
        );
        assert!(
            refused.content.contains("tools.http_get.allow_private"),
            "{}",
            refused.content
        );
        assert_eq!(
            connections.load(Ordering::SeqCst),
            0,
            "a refused fetch must not connect"
        );

        let fetched = tool(true, &["127.0.0.1/32"], 1024).call(&input).await;
        assert!(!fetched.is_error, "{}", fetched.content);
        assert_eq!(fetched.content, "HTTP 200 OK\ncontent-type: text/plain\n\nhello");
        assert_eq!(connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn plain_http_is_refused_without_allow_http() {
        let (port, connections) = serve(response("200 OK", "", "hello")).await;
        let output = tool(false, &["127.0.0.1/32"], 1024)
            .call(&json!({"url": format!("http://127.0.0.1:{port}/")}))
            .await;
        assert!(output.is_error);
        assert!(
            output.content.contains("tools.http_get.allow_http"),
            "{}",
            output.content
        );
        assert_eq!(connections.load(Ordering::SeqCst), 0);

        let ftp = tool(true, &[], 1024).call(&json!({"url": "ftp://example.com/"})).await;
        assert!(ftp.is_error);
        assert!(ftp.content.contains("only http:// and https://"), "{}", ftp.content);

        let garbage = tool(true, &[], 1024).call(&json!({"url": "not a url"})).await;
        assert!(garbage.is_error);
        assert!(garbage.content.contains("cannot parse"), "{}", garbage.content);
    }

    #[tokio::test]
    async fn the_body_is_cut_at_max_bytes() {
        let body = "x".repeat(1000);
        let (port, _) = serve(response("200 OK", "content-type: text/plain\r\n", &body)).await;
        let output = tool(true, &["127.0.0.1"], 100)
            .call(&json!({"url": format!("http://127.0.0.1:{port}/")}))
            .await;
        assert!(!output.is_error, "{}", output.content);
        let expected_body = format!(
            "\n\n{}\n[... body cut at 100 bytes (tools.http_get.max_bytes); the rest was not read]",
            "x".repeat(100)
        );
        assert!(output.content.ends_with(&expected_body), "{}", output.content);
    }

    #[tokio::test]
    async fn redirects_are_reported_not_followed() {
        let (port, connections) = serve(response("302 Found", "location: /next\r\n", "")).await;
        let output = tool(true, &["127.0.0.1/32"], 1024)
            .call(&json!({"url": format!("http://127.0.0.1:{port}/start")}))
            .await;
        assert!(!output.is_error, "{}", output.content);
        assert!(output.content.starts_with("HTTP 302 Found\n"), "{}", output.content);
        assert!(
            output
                .content
                .contains(&format!("location: http://127.0.0.1:{port}/next\n")),
            "{}",
            output.content
        );
        assert!(output.content.contains("not followed"), "{}", output.content);
        assert_eq!(
            connections.load(Ordering::SeqCst),
            1,
            "the redirect must not be followed"
        );
    }

    #[tokio::test]
    async fn http_errors_are_error_results() {
        let (port, _) = serve(response(
            "404 Not Found",
            "content-type: text/plain\r\n",
            "no such page",
        ))
        .await;
        let output = tool(true, &["127.0.0.1/32"], 1024)
            .call(&json!({"url": format!("http://127.0.0.1:{port}/")}))
            .await;
        assert!(output.is_error);
        assert!(output.content.starts_with("HTTP 404 Not Found\n"), "{}", output.content);
        assert!(output.content.ends_with("no such page"), "{}", output.content);
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // Accept and hold connections without ever answering.
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let mut tool = tool(true, &["127.0.0.1/32"], 1024);
        tool.timeout = Duration::from_millis(300);
        let started = std::time::Instant::now();
        let output = tool.call(&json!({"url": format!("http://127.0.0.1:{port}/")})).await;
        assert!(output.is_error);
        assert!(output.content.contains("gave up"), "{}", output.content);
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
