//! `http_get`: fetches one URL with a GET request and returns its status, content type and body.
//!
//! It must never connect to an address it has not vetted: it resolves the host itself, refuses
//! every address outside the public internet (the IANA IPv4 and IPv6 special-purpose registries,
//! multicast, anything outside IPv6 global unicast, and IPv4-mapped and NAT64 forms of them) and
//! this machine's own addresses (loopback and every interface address, read at each call) unless
//! `allow_private` allows the host or address, and then pins the connection to exactly the vetted
//! addresses so DNS rebinding cannot slip past the check. An allowed network never opens this
//! machine: that takes an entry naming the host or the very address. It never follows a redirect
//! (the target was not vetted) and never uses a proxy (the proxy would resolve the host).
//!
//! Until a response arrives, every failure (no such name, a refused address, a refused or timed
//! out connection, a TLS failure) reads the same to the model, so it cannot map which hosts and
//! ports exist behind the machine; the cause goes to the debug log for the owner.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use reqwest::Url;
use reqwest::header::{CONTENT_TYPE, LOCATION};
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

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
    /// Anything that kept a response from arriving. `detail` is for the debug log only: the
    /// model sees the same words whatever the cause, so it cannot probe the network with them.
    #[error(
        "http_get could not fetch {url}: no response (the name may not resolve, the host may be down, slow or \
refusing connections, or the address may be one http_get does not fetch: private and special-purpose networks \
and this machine, unless the owner lists them in tools.http_get.allow_private)"
    )]
    NoResponse { url: String, detail: String },
    #[error(
        "http_get gave up reading the response from {url} after {secs} s (tools.http_get.timeout_secs); try \
again later or another URL"
    )]
    BodyTimeout { url: String, secs: u64 },
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
        match self.fetch(&input.url, Instant::now() + self.timeout).await {
            Ok(output) => output,
            Err(error) => {
                if let FetchError::NoResponse { url, detail } = &error {
                    tracing::debug!(%url, %detail, "http_get could not fetch");
                }
                ToolOutput::error(error.to_string())
            }
        }
    }

    async fn fetch(&self, raw_url: &str, deadline: Instant) -> Result<ToolOutput, FetchError> {
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
        if url.host_str().is_none() {
            return Err(FetchError::NoHost { url: url.to_string() });
        }

        let no_response = |detail: String| FetchError::NoResponse {
            url: url.to_string(),
            detail,
        };
        let mut response = match tokio::time::timeout_at(deadline, self.send(&url)).await {
            Ok(Ok(response)) => response,
            Ok(Err(detail)) => return Err(no_response(detail)),
            Err(_elapsed) => {
                return Err(no_response(format!(
                    "no response within {} s (tools.http_get.timeout_secs)",
                    self.timeout.as_secs()
                )));
            }
        };
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
        loop {
            let chunk = tokio::time::timeout_at(deadline, response.chunk())
                .await
                .map_err(|_elapsed| FetchError::BodyTimeout {
                    url: url.to_string(),
                    secs: self.timeout.as_secs(),
                })?
                .map_err(|error| FetchError::ReadBody {
                    url: url.to_string(),
                    reason: error_chain(&error),
                })?;
            let Some(chunk) = chunk else { break };
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

    /// Resolves the host, vets its addresses and sends the request to exactly those; every
    /// failure is a detail for the debug log.
    async fn send(&self, url: &Url) -> Result<reqwest::Response, String> {
        let host = url.host_str().ok_or("the URL has no host")?;
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
                .map_err(|error| format!("cannot resolve {host}: {}", error_chain(&error)))?
                .collect(),
        };
        if addresses.is_empty() {
            return Err(format!("cannot resolve {host}: no addresses found"));
        }
        // Read now, not at startup: interfaces and their addresses change while the daemon runs.
        let this_machine = local_addresses()?;
        self.vet(host, literal.is_some(), &addresses, &this_machine)?;

        install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(self.timeout)
            .user_agent(concat!("blufiod/", env!("CARGO_PKG_VERSION"), " (http_get tool)"));
        if literal.is_none() {
            builder = builder.resolve_to_addrs(host, &addresses);
        }
        let client = builder
            .build()
            .map_err(|error| format!("cannot set up the HTTP client: {}", error_chain(&error)))?;
        client
            .get(url.clone())
            .send()
            .await
            .map_err(|error| format!("request failed: {}", error_chain(&error)))
    }

    /// Refuses the fetch if any address is blocked (special-purpose or `this_machine`'s) and not
    /// allowed; the message says which and why, for the debug log.
    fn vet(
        &self,
        host: &str,
        is_literal: bool,
        addresses: &[SocketAddr],
        this_machine: &[IpAddr],
    ) -> Result<(), String> {
        if !is_literal && self.allow_hosts.contains(&normalize_host(host)) {
            return Ok(());
        }
        for address in addresses {
            let ip = address.ip();
            let target = || {
                if is_literal {
                    ip.to_string()
                } else {
                    format!("{host} ({ip})")
                }
            };
            if is_this_machine(ip, this_machine) {
                if !self.names_address(ip) {
                    return Err(format!(
                        "refused {}: it is an address of this machine, which only an allow_private entry naming \
that address or host opens",
                        target()
                    ));
                }
                continue;
            }
            if let Some(blocked) = blocked_kind(ip)
                && !self.network_allowed(ip)
            {
                return Err(format!("refused {}: {blocked} addresses are blocked", target()));
            }
        }
        Ok(())
    }

    fn network_allowed(&self, ip: IpAddr) -> bool {
        // A mapped or NAT64 IPv6 address reaches the IPv4 host, so an IPv4 network allows it too.
        let embedded = embedded_v4(ip).map(|(_, v4)| IpAddr::V4(v4));
        self.allow_networks
            .iter()
            .any(|network| network.contains(&ip) || embedded.is_some_and(|v4| network.contains(&v4)))
    }

    /// Whether an allow_private network is exactly `ip` (a single address), in either form.
    fn names_address(&self, ip: IpAddr) -> bool {
        let embedded = embedded_v4(ip).map(|(_, v4)| IpAddr::V4(v4));
        self.allow_networks.iter().any(|network| {
            network.prefix_len() == network.max_prefix_len()
                && (network.addr() == ip || embedded.is_some_and(|v4| network.addr() == v4))
        })
    }
}

fn normalize_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// This machine's interface addresses, read afresh (a failure refuses the fetch: without the
/// list, no address can be shown not to be this machine's).
fn local_addresses() -> Result<Vec<IpAddr>, String> {
    crate::util::interface_addresses()
        .map_err(|error| format!("cannot list this machine's addresses: {}", error_chain(&error)))
}

/// Whether `ip` reaches this machine: loopback, "this network" / unspecified, or one of its
/// interface addresses, also in IPv4-mapped or NAT64 form.
fn is_this_machine(ip: IpAddr, this_machine: &[IpAddr]) -> bool {
    let reaches_self = |ip: IpAddr| {
        let inherent = match ip {
            IpAddr::V4(v4) => v4.is_loopback() || v4.octets()[0] == 0,
            IpAddr::V6(v6) => v6.is_loopback() || v6.is_unspecified(),
        };
        inherent || this_machine.contains(&ip)
    };
    reaches_self(ip) || embedded_v4(ip).is_some_and(|(_, v4)| reaches_self(IpAddr::V4(v4)))
}

/// Why an address is blocked: its kind and, for an IPv6 address that embeds an IPv4 one, how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Blocked {
    kind: &'static str,
    embedded: Option<&'static str>,
}

impl std::fmt::Display for Blocked {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(embedded) = self.embedded {
            write!(formatter, "{embedded} ")?;
        }
        formatter.write_str(self.kind)
    }
}

/// The IANA IPv4 Special-Purpose Address Registry, plus multicast and the limited broadcast
/// address: (network, prefix length, kind). The first match names the kind.
const SPECIAL_V4: &[(Ipv4Addr, u8, &str)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8, "\"this network\" (0.0.0.0/8)"),
    (Ipv4Addr::new(10, 0, 0, 0), 8, "private"),
    (Ipv4Addr::new(100, 64, 0, 0), 10, "shared (CGNAT, 100.64.0.0/10)"),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback"),
    (Ipv4Addr::new(169, 254, 0, 0), 16, "link-local"),
    (Ipv4Addr::new(172, 16, 0, 0), 12, "private"),
    (
        Ipv4Addr::new(192, 0, 0, 0),
        24,
        "IETF protocol assignment (192.0.0.0/24)",
    ),
    (Ipv4Addr::new(192, 0, 2, 0), 24, "documentation (192.0.2.0/24)"),
    (Ipv4Addr::new(192, 31, 196, 0), 24, "AS112 (192.31.196.0/24)"),
    (Ipv4Addr::new(192, 52, 193, 0), 24, "AMT (192.52.193.0/24)"),
    (Ipv4Addr::new(192, 88, 99, 0), 24, "6to4 relay anycast (192.88.99.0/24)"),
    (Ipv4Addr::new(192, 168, 0, 0), 16, "private"),
    (
        Ipv4Addr::new(192, 175, 48, 0),
        24,
        "AS112 direct delegation (192.175.48.0/24)",
    ),
    (Ipv4Addr::new(198, 18, 0, 0), 15, "benchmarking (198.18.0.0/15)"),
    (Ipv4Addr::new(198, 51, 100, 0), 24, "documentation (198.51.100.0/24)"),
    (Ipv4Addr::new(203, 0, 113, 0), 24, "documentation (203.0.113.0/24)"),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast"),
    (Ipv4Addr::new(255, 255, 255, 255), 32, "broadcast"),
    (Ipv4Addr::new(240, 0, 0, 0), 4, "reserved (240.0.0.0/4)"),
];

/// The IANA IPv6 Special-Purpose Address Registry and the other non-global blocks (multicast,
/// unique local, link-local, the deprecated site-local). `::ffff:0:0/96` and `64:ff9b::/96` are
/// judged by the IPv4 address they embed, and anything else outside global unicast (2000::/3)
/// is refused too (see [`blocked_v6`]).
const SPECIAL_V6: &[(Ipv6Addr, u8, &str)] = &[
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0), 128, "unspecified"),
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 1), 128, "loopback"),
    (
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        "local-use NAT64 (64:ff9b:1::/48)",
    ),
    (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64, "discard-only (100::/64)"),
    (
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        23,
        "IETF protocol assignment (2001::/23)",
    ),
    (
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        32,
        "documentation (2001:db8::/32)",
    ),
    (Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16, "6to4 (2002::/16)"),
    (
        Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0),
        20,
        "documentation (3fff::/20)",
    ),
    (
        Ipv6Addr::new(0x5f00, 0, 0, 0, 0, 0, 0, 0),
        16,
        "segment routing SIDs (5f00::/16)",
    ),
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7, "unique local (private)"),
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, "link-local"),
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10, "site-local"),
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8, "multicast"),
];

/// Global unicast, the only IPv6 space IANA allocates from (2000::/3).
const GLOBAL_UNICAST_V6: (Ipv6Addr, u8) = (Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0), 3);

/// The reason `ip` must not be fetched without an allow rule, or `None` if it is a public address.
fn blocked_kind(ip: IpAddr) -> Option<Blocked> {
    match ip {
        IpAddr::V4(v4) => blocked_v4(v4).map(|kind| Blocked { kind, embedded: None }),
        IpAddr::V6(v6) => blocked_v6(v6),
    }
}

fn blocked_v4(ip: Ipv4Addr) -> Option<&'static str> {
    SPECIAL_V4
        .iter()
        .find(|(network, prefix_len, _)| in_v4_network(ip, *network, *prefix_len))
        .map(|(_, _, kind)| *kind)
}

fn blocked_v6(ip: Ipv6Addr) -> Option<Blocked> {
    // IPv4-mapped addresses reach the IPv4 host; NAT64 (RFC 6052) ones reach it through the
    // translator. Both are as good as the IPv4 address they carry.
    if let Some((how, v4)) = embedded_v4(IpAddr::V6(ip)) {
        return blocked_v4(v4).map(|kind| Blocked {
            kind,
            embedded: Some(how),
        });
    }
    let plain = |kind| Blocked { kind, embedded: None };
    if let Some((_, _, kind)) = SPECIAL_V6
        .iter()
        .find(|(network, prefix_len, _)| in_v6_network(ip, *network, *prefix_len))
    {
        return Some(plain(kind));
    }
    let (global, global_len) = GLOBAL_UNICAST_V6;
    if !in_v6_network(ip, global, global_len) {
        // Including the deprecated IPv4-compatible form (::a.b.c.d).
        return Some(plain("reserved (outside global unicast 2000::/3)"));
    }
    None
}

/// The IPv4 address an IPv6 one stands for, and the form: IPv4-mapped (`::ffff:0:0/96`) or NAT64
/// well-known prefix (`64:ff9b::/96`).
fn embedded_v4(ip: IpAddr) -> Option<(&'static str, Ipv4Addr)> {
    let IpAddr::V6(v6) = ip else { return None };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(("IPv4-mapped", v4));
    }
    let nat64 = Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0);
    if in_v6_network(v6, nat64, 96) {
        let [.., a, b, c, d] = v6.octets();
        return Some(("NAT64", Ipv4Addr::new(a, b, c, d)));
    }
    None
}

fn in_v4_network(ip: Ipv4Addr, network: Ipv4Addr, prefix_len: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix_len)).unwrap_or(0);
    ip.to_bits() & mask == network.to_bits() & mask
}

fn in_v6_network(ip: Ipv6Addr, network: Ipv6Addr, prefix_len: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(prefix_len)).unwrap_or(0);
    ip.to_bits() & mask == network.to_bits() & mask
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

    /// Every special-purpose block the tool must refuse, written out independently of the tables
    /// (IANA IPv4 and IPv6 Special-Purpose Address Registries, multicast, broadcast).
    const REFUSED_RANGES: &[&str] = &[
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.31.196.0/24",
        "192.52.193.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "192.175.48.0/24",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "255.255.255.255/32",
        "::/128",
        "::1/128",
        "::ffff:0:0/96",
        "64:ff9b::/96",
        "64:ff9b:1::/48",
        "100::/64",
        "2001::/23",
        "2001:db8::/32",
        "2002::/16",
        "3fff::/20",
        "5f00::/16",
        "fc00::/7",
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
        // Outside global unicast: IPv4-compatible (deprecated) and unassigned space.
        "::/96",
        "4000::/3",
    ];

    #[test]
    fn every_special_purpose_range_is_refused_from_first_to_last_address() {
        for range in REFUSED_RANGES {
            let network: IpNet = range.parse().unwrap();
            for address in [network.network(), network.broadcast()] {
                assert!(blocked_kind(address).is_some(), "{address} ({range}) is not refused");
            }
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "9.9.9.9",
            "172.15.255.255",
            "172.32.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "192.0.1.255",
            "192.0.3.0",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2001:4860:4860::8888",
            "2001:200::",
            "2a00:1450:4001::1",
            "3fff:1000::1",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
        ] {
            assert_eq!(kind(public), None, "{public}");
        }
    }

    #[test]
    fn kinds_are_named() {
        assert_eq!(kind("127.0.0.1").as_deref(), Some("loopback"));
        assert_eq!(kind("10.1.2.3").as_deref(), Some("private"));
        assert_eq!(kind("169.254.169.254").as_deref(), Some("link-local"));
        assert_eq!(kind("255.255.255.255").as_deref(), Some("broadcast"));
        assert_eq!(kind("192.0.2.7").as_deref(), Some("documentation (192.0.2.0/24)"));
        assert_eq!(kind("fd12:3456::1").as_deref(), Some("unique local (private)"));
        assert_eq!(kind("::ffff:127.0.0.1").as_deref(), Some("IPv4-mapped loopback"));
        assert_eq!(kind("64:ff9b::10.0.0.1").as_deref(), Some("NAT64 private"));
        assert_eq!(
            kind("::127.0.0.1").as_deref(),
            Some("reserved (outside global unicast 2000::/3)")
        );
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
        let vet = |host: &str, is_literal: bool, list: &[&str]| tool.vet(host, is_literal, &addresses(list), &[]);
        // Host names match exactly and case-insensitively, and allow every address they resolve to.
        assert!(vet("intranet.example", false, &["127.0.0.1"]).is_ok());
        assert!(vet("INTRANET.example.", false, &["127.0.0.1"]).is_ok());
        assert!(vet("other.intranet.example", false, &["127.0.0.1"]).is_err());
        // Networks allow the addresses inside them, also in IPv4-mapped and NAT64 form.
        assert!(vet("a.example", false, &["10.9.8.7", "fd00::5"]).is_ok());
        assert!(vet("a.example", false, &["::ffff:10.9.8.7"]).is_ok());
        assert!(vet("a.example", false, &["64:ff9b::10.9.8.7"]).is_ok());
        assert!(vet("192.168.1.5", true, &["192.168.1.5"]).is_ok());
        // One blocked address among public ones refuses the whole host.
        let error = vet("b.example", false, &["8.8.8.8", "192.168.1.6"]).unwrap_err();
        assert!(error.contains("b.example (192.168.1.6): private"), "{error}");
        let error = vet("c.example", false, &["8.8.8.8", "2001:db8::1"]).unwrap_err();
        assert!(error.contains("documentation"), "{error}");
        assert!(vet("d.example", false, &["8.8.8.8", "2606:4700::1"]).is_ok());
    }

    #[test]
    fn this_machine_is_refused_even_inside_an_allowed_network() {
        let this_machine: Vec<IpAddr> = ["93.184.215.14", "10.1.2.3", "2a01:4f8::9", "127.0.0.1", "::1"]
            .iter()
            .map(|address| address.parse().unwrap())
            .collect();
        let vet = |tool: &HttpGet, list: &[&str]| tool.vet("host.example", false, &addresses(list), &this_machine);

        // The machine's own public address is refused though it is public, in every form.
        let none = tool(false, &[], 1024);
        for own in [
            "93.184.215.14",
            "::ffff:93.184.215.14",
            "64:ff9b::93.184.215.14",
            "2a01:4f8::9",
        ] {
            let error = vet(&none, &[own]).unwrap_err();
            assert!(error.contains("this machine"), "{own}: {error}");
        }
        // Loopback and "this network" reach the machine whatever the interfaces say.
        for own in ["127.0.0.2", "0.0.0.0", "::1", "::"] {
            assert!(vet(&none, &[own]).is_err(), "{own}");
        }
        assert!(
            vet(&none, &["203.0.113.10", "2a01:4f8::10"]).is_err(),
            "documentation range"
        );
        assert!(vet(&none, &["93.184.215.15", "2a01:4f8::10"]).is_ok());

        // An allowed network opens its other addresses, never this machine's ...
        let networks = tool(false, &["10.0.0.0/8", "0.0.0.0/0", "::/0", "127.0.0.0/8"], 1024);
        assert!(vet(&networks, &["10.1.2.4"]).is_ok());
        for own in ["10.1.2.3", "93.184.215.14", "2a01:4f8::9", "127.0.0.1", "::1"] {
            assert!(vet(&networks, &[own]).is_err(), "{own}");
        }
        // ... but an entry naming the very address or the host does.
        let exact = tool(false, &["10.1.2.3", "127.0.0.1/32", "[::1]"], 1024);
        for own in ["10.1.2.3", "::ffff:10.1.2.3", "127.0.0.1", "::1"] {
            assert!(vet(&exact, &[own]).is_ok(), "{own}");
        }
        let host = tool(false, &["host.example"], 1024);
        assert!(vet(&host, &["10.1.2.3", "127.0.0.1"]).is_ok());
    }

    #[test]
    fn this_machines_interface_addresses_are_listed() {
        let addresses = local_addresses().unwrap();
        assert!(addresses.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)), "{addresses:?}");
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
            refused.content.starts_with(&format!(
                "http_get could not fetch http://127.0.0.1:{port}/page: no response"
            )),
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
        let port = silent_server().await;
        let mut tool = tool(true, &["127.0.0.1/32"], 1024);
        tool.timeout = Duration::from_millis(300);
        let started = std::time::Instant::now();
        let output = tool.call(&json!({"url": format!("http://127.0.0.1:{port}/")})).await;
        assert!(output.is_error);
        assert!(output.content.contains("could not fetch"), "{}", output.content);
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    /// Accepts and holds connections on 127.0.0.1 without ever answering; returns the port.
    async fn silent_server() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        port
    }

    #[tokio::test]
    async fn failures_before_a_response_all_read_the_same() {
        // A closed port: bound for a moment, then released.
        let closed_port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let silent_port = silent_server().await;
        let (open_port, _) = serve(response("200 OK", "", "hello")).await;
        let mut allowed = tool(true, &["127.0.0.1"], 1024);
        allowed.timeout = Duration::from_millis(300);
        let mut blocked = tool(true, &[], 1024);
        blocked.timeout = Duration::from_millis(300);

        let message = |output: ToolOutput, port: u16| {
            assert!(output.is_error, "{}", output.content);
            output.content.replace(&port.to_string(), "PORT")
        };
        let get = |port: u16| json!({"url": format!("http://127.0.0.1:{port}/")});
        let refused_connection = message(allowed.call(&get(closed_port)).await, closed_port);
        let timed_out = message(allowed.call(&get(silent_port)).await, silent_port);
        let blocked_open = message(blocked.call(&get(open_port)).await, open_port);
        let blocked_closed = message(blocked.call(&get(closed_port)).await, closed_port);
        let unresolvable = blocked
            .call(&json!({"url": "http://no-such-host.invalid:9/"}))
            .await
            .content
            .replace("no-such-host.invalid:9", "127.0.0.1:PORT");
        assert!(refused_connection.contains("could not fetch"), "{refused_connection}");
        for other in [&timed_out, &blocked_open, &blocked_closed, &unresolvable] {
            assert_eq!(other, &refused_connection);
        }
    }
}
