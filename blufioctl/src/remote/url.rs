//! Gateway URLs: `--url` parsed and checked ([`BaseUrl`]), and the URL of each API path under it
//! ([`Endpoint`]), every path segment percent-encoded.
//!
//! Parsing is `http::Uri`'s, so a URL is what hyper will send. Host names are ASCII: an
//! internationalized name is given in its `xn--` form.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

/// `http` or `https`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Https,
    Http,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Https => "https",
            Scheme::Http => "http",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Https => 443,
            Scheme::Http => 80,
        }
    }
}

/// A gateway's host: a (lower-case) name or an IP address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    Name(String),
    Ip(IpAddr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(name) => f.write_str(name),
            Host::Ip(IpAddr::V4(address)) => write!(f, "{address}"),
            Host::Ip(IpAddr::V6(address)) => write!(f, "[{address}]"),
        }
    }
}

/// `--url`: an `http` or `https` URL with a host, and without credentials, query or fragment.
/// Its path is kept as a prefix (for a gateway behind a reverse proxy under a path).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseUrl {
    scheme: Scheme,
    host: Host,
    /// `None` for the scheme's default port.
    port: Option<u16>,
    /// The path without its trailing `/` (empty for the root), as given (already encoded).
    prefix: String,
}

impl BaseUrl {
    /// Parses and checks `--url`; the error says what is wrong.
    pub fn parse(text: &str) -> Result<BaseUrl, String> {
        let (base, query) = parse_uri(text)?;
        if query.is_some() {
            return Err("the URL must not have a query or fragment".to_owned());
        }
        Ok(base)
    }

    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The port to connect to.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(self.scheme.default_port())
    }

    /// `host[:port]` as sent in `Host` (HTTP/1.1) and `:authority` (HTTP/2) and covered by the
    /// signature: the port only when it is not the scheme's default, IPv6 addresses in brackets.
    pub fn authority(&self) -> String {
        match self.port {
            Some(port) => format!("{}:{port}", self.host),
            None => self.host.to_string(),
        }
    }

    /// `scheme://host[:port]`, for messages.
    pub fn origin(&self) -> String {
        format!("{}://{}", self.scheme.as_str(), self.authority())
    }

    /// The URL of the API path made of `segments` (each percent-encoded) under the prefix, with
    /// `query` (already encoded).
    pub fn endpoint(&self, segments: &[&str], query: Option<&str>) -> Endpoint {
        let mut path = self.prefix.clone();
        for segment in segments {
            path.push('/');
            encode_segment(segment, &mut path);
        }
        if path.is_empty() {
            path.push('/');
        }
        Endpoint {
            base: self.clone(),
            path,
            query: query.map(str::to_owned),
        }
    }
}

impl fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}/", self.origin(), self.prefix)
    }
}

/// The URL of one request.
#[derive(Clone, Debug)]
pub struct Endpoint {
    base: BaseUrl,
    path: String,
    query: Option<String>,
}

impl Endpoint {
    /// A whole URL taken as it is (path and query), for tests.
    #[cfg(test)]
    pub fn parse(text: &str) -> Endpoint {
        let (base, query) = parse_uri(text).expect("a URL");
        Endpoint {
            path: if base.prefix.is_empty() {
                "/".to_owned()
            } else if text.split('?').next().is_some_and(|url| url.ends_with('/')) {
                format!("{}/", base.prefix)
            } else {
                base.prefix.clone()
            },
            base,
            query,
        }
    }

    pub fn scheme(&self) -> Scheme {
        self.base.scheme
    }

    pub fn authority(&self) -> String {
        self.base.authority()
    }

    pub fn origin(&self) -> String {
        self.base.origin()
    }

    /// The path, percent-encoded, starting with `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    /// The path and query, as HTTP/1.1 sends them.
    pub fn target(&self) -> String {
        match &self.query {
            Some(query) => format!("{}?{query}", self.path),
            None => self.path.clone(),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.base.origin(), self.target())
    }
}

/// Parses an absolute `http`/`https` URL into its base (the path as the prefix) and its query.
fn parse_uri(text: &str) -> Result<(BaseUrl, Option<String>), String> {
    const EXPECTED: &str = "expected https://HOST:PORT";
    if !text.is_ascii() {
        return Err(format!(
            "the URL has characters that are not ASCII; give an international host name in its \
             xn-- form and percent-encode the path ({EXPECTED})"
        ));
    }
    // `http::Uri` drops a fragment silently.
    if text.contains('#') {
        return Err("the URL must not have a query or fragment".to_owned());
    }
    let uri: http::Uri = text
        .parse()
        .map_err(|error| format!("not a URL ({error}); {EXPECTED}"))?;
    let scheme = match uri.scheme_str() {
        None => return Err(format!("not a URL (no scheme); {EXPECTED}")),
        Some(scheme) if scheme.eq_ignore_ascii_case("https") => Scheme::Https,
        Some(scheme) if scheme.eq_ignore_ascii_case("http") => Scheme::Http,
        Some(scheme) => return Err(format!("the scheme must be https (or http), not {scheme:?}")),
    };
    let authority = uri.authority().map(http::uri::Authority::as_str).unwrap_or_default();
    if authority.contains('@') {
        return Err("the URL must not carry credentials; requests are signed with --key".to_owned());
    }
    let host = match uri.host().unwrap_or_default() {
        "" => return Err(format!("the URL has no host; {EXPECTED}")),
        bracketed if bracketed.starts_with('[') => {
            let address = bracketed
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<Ipv6Addr>()
                .map_err(|_| format!("{bracketed} is not an IPv6 address; {EXPECTED}"))?;
            Host::Ip(IpAddr::V6(address))
        }
        host => match host.parse::<IpAddr>() {
            Ok(address) => Host::Ip(address),
            Err(_) => {
                if !host
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_'))
                {
                    return Err(format!("{host:?} is not a host name; {EXPECTED}"));
                }
                Host::Name(host.to_ascii_lowercase())
            }
        },
    };
    // From the authority's text: `http::Uri` has no port for one over 65535.
    let port_text = authority
        .strip_prefix(uri.host().unwrap_or_default())
        .and_then(|rest| rest.strip_prefix(':'))
        .unwrap_or_default();
    let port = match port_text.parse::<u16>() {
        // "h:" is no port, as in `url`.
        _ if port_text.is_empty() => None,
        Ok(0) | Err(_) => return Err(format!("{port_text:?} is not a port number (1 to 65535)")),
        Ok(port) => Some(port).filter(|port| *port != scheme.default_port()),
    };
    let prefix = uri.path().trim_end_matches('/').to_owned();
    Ok((
        BaseUrl {
            scheme,
            host,
            port,
            prefix,
        },
        uri.query().map(str::to_owned),
    ))
}

/// Appends `segment` to `path`, percent-encoding all but RFC 3986's unreserved characters, and
/// the segments `.` and `..` whole, so that no value reaches another route.
fn encode_segment(segment: &str, path: &mut String) {
    use std::fmt::Write as _;
    if segment == "." || segment == ".." {
        path.push_str(&"%2E".repeat(segment.len()));
        return;
    }
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            path.push(char::from(byte));
        } else {
            let _ = write!(path, "%{byte:02X}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        for (good, shown, authority) in [
            (
                "https://gateway.example:8443",
                "https://gateway.example:8443/",
                "gateway.example:8443",
            ),
            (
                "HTTPS://Gateway.Example:443/",
                "https://gateway.example/",
                "gateway.example",
            ),
            (
                "http://127.0.0.1:8080/prefix/",
                "http://127.0.0.1:8080/prefix/",
                "127.0.0.1:8080",
            ),
            ("https://[::1]:8443", "https://[::1]:8443/", "[::1]:8443"),
            ("http://[::1]:80/", "http://[::1]/", "[::1]"),
        ] {
            let url = BaseUrl::parse(good).unwrap_or_else(|error| panic!("{good}: {error}"));
            assert_eq!(url.to_string(), shown, "{good}");
            assert_eq!(url.authority(), authority, "{good}");
        }
        assert_eq!(BaseUrl::parse("https://h").expect("url").port(), 443);
        assert_eq!(BaseUrl::parse("http://h").expect("url").port(), 80);
        for (bad, why) in [
            ("gateway.example:8443", "no scheme"),
            ("ftp://gateway.example", "scheme must be https"),
            ("https://user:secret@gateway.example", "credentials"),
            ("https://gateway.example/?x=1", "query or fragment"),
            ("https://gateway.example/#top", "query or fragment"),
            ("not a url", "not a URL"),
            ("https://:8443", "no host"),
            ("https://[zz]:8443", "not an IPv6 address"),
            ("https://gatéway.example", "xn-- form"),
            ("https://h:99999", "not a port number"),
            ("https://h:0", "not a port number"),
        ] {
            let error = BaseUrl::parse(bad).expect_err(bad);
            assert!(error.contains(why), "{bad}: {error}");
        }
    }

    #[test]
    fn endpoints_keep_the_prefix_and_encode_each_segment() {
        let plain = BaseUrl::parse("https://h:8443").expect("url");
        assert_eq!(
            plain.endpoint(&["v1", "sessions"], None).to_string(),
            "https://h:8443/v1/sessions"
        );
        assert_eq!(plain.endpoint(&[], None).path(), "/");
        let prefixed = BaseUrl::parse("https://h/blufio/").expect("url");
        let endpoint = prefixed.endpoint(&["v1", "sessions", "a/b?c d"], Some("days=7"));
        assert_eq!(
            endpoint.to_string(),
            "https://h/blufio/v1/sessions/a%2Fb%3Fc%20d?days=7"
        );
        assert_eq!(endpoint.path(), "/blufio/v1/sessions/a%2Fb%3Fc%20d");
        assert_eq!(endpoint.query(), Some("days=7"));
        assert_eq!(endpoint.target(), "/blufio/v1/sessions/a%2Fb%3Fc%20d?days=7");
        assert_eq!(
            prefixed.endpoint(&["v1", "sessions", ".."], None).path(),
            "/blufio/v1/sessions/%2E%2E",
            "a dot segment cannot climb to another route"
        );
        assert_eq!(
            prefixed.endpoint(&["v1", "sessions", "01_x-y.z~"], None).path(),
            "/blufio/v1/sessions/01_x-y.z~"
        );
    }
}
