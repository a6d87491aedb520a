//! The signature base (RFC 9421 §2.5): the exact bytes that are signed and verified, built from
//! the request and the serialized signature parameters.
//!
//! This module must never let a component value add or break lines of the base: values with
//! control characters or non-ASCII bytes are errors, not escaped or dropped.

use std::fmt::Write as _;

use super::SignatureError;
use super::params::{Component, SignatureParams, parse_inner_list, serialize_inner_list};

/// The parts of a request that derived components and header fields are taken from.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    /// The method as sent, e.g. `POST` (case-sensitive).
    pub method: &'a str,
    /// `http` or `https`; lower-cased for the base.
    pub scheme: &'a str,
    /// `host[:port]` as received (`Host` or `:authority`); lower-cased and stripped of the scheme's
    /// default port for the base (RFC 9421 §2.2.3).
    pub authority: &'a str,
    /// The path without the query; an empty path counts as `/`.
    pub path: &'a str,
    /// The query without the leading `?`, or `None` when the target has no `?` at all.
    pub query: Option<&'a str>,
    /// The request's header fields.
    pub headers: &'a http::HeaderMap,
}

/// Builds the signature base for a request: one `"name": value` line per covered component, then
/// `"@signature-params": <signature_params>`, separated by LF, without a trailing newline.
///
/// `signature_params` is the serialized inner list ([`SignatureParams::serialize`] or
/// [`super::ParsedSignature::params_serialized`]). The covered components are read from it, so the
/// lines of the base and the `@signature-params` line cannot disagree, and it is re-serialized with
/// `sfv`, as RFC 9421 §2.3 requires, so insignificant whitespace in it does not matter.
pub fn signature_base(parts: &RequestParts<'_>, signature_params: &str) -> Result<String, SignatureError> {
    let inner_list = parse_inner_list(signature_params)?;
    let params = SignatureParams::from_inner_list(&inner_list)?;
    let mut base = String::new();
    for component in &params.components {
        let value = component_value(parts, component)?;
        // Writing into a `String` cannot fail.
        let _ = writeln!(base, "\"{}\": {value}", component.name());
    }
    let _ = write!(base, "\"@signature-params\": {}", serialize_inner_list(&inner_list));
    Ok(base)
}

/// The value of one covered component, or an error if the request lacks it or it cannot be signed.
fn component_value(parts: &RequestParts<'_>, component: &Component) -> Result<String, SignatureError> {
    let value = match component {
        Component::Method => parts.method.to_owned(),
        Component::TargetUri => {
            format!(
                "{}://{}{}",
                parts.scheme.to_ascii_lowercase(),
                authority(parts),
                request_target(parts)
            )
        }
        Component::Authority => authority(parts),
        Component::Scheme => parts.scheme.to_ascii_lowercase(),
        Component::RequestTarget => request_target(parts),
        Component::Path => path(parts).to_owned(),
        Component::Query => format!("?{}", parts.query.unwrap_or_default()),
        Component::Field(name) => return field_value(parts.headers, name),
    };
    if value.is_empty() || !value.bytes().all(|byte| (0x20..0x7f).contains(&byte)) {
        // An empty method, scheme or authority means the caller did not fill the part in.
        return Err(if value.is_empty() {
            SignatureError::MissingComponentValue {
                component: component.name().to_owned(),
            }
        } else {
            SignatureError::InvalidComponentValue {
                component: component.name().to_owned(),
            }
        });
    }
    Ok(value)
}

/// `host[:port]` lower-cased, without the scheme's default port (RFC 9421 §2.2.3).
fn authority(parts: &RequestParts<'_>) -> String {
    let authority = parts.authority.to_ascii_lowercase();
    let default_port = match parts.scheme.to_ascii_lowercase().as_str() {
        "https" => ":443",
        "http" => ":80",
        _ => return authority,
    };
    match authority.strip_suffix(default_port) {
        Some(host) => host.to_owned(),
        None => authority,
    }
}

fn path<'a>(parts: &RequestParts<'a>) -> &'a str {
    if parts.path.is_empty() { "/" } else { parts.path }
}

fn request_target(parts: &RequestParts<'_>) -> String {
    match parts.query {
        Some(query) => format!("{}?{query}", path(parts)),
        None => path(parts).to_owned(),
    }
}

/// All values of a header field, each trimmed, joined with `, ` (RFC 9421 §2.1).
fn field_value(headers: &http::HeaderMap, name: &str) -> Result<String, SignatureError> {
    let mut values = headers.get_all(name).iter().peekable();
    if values.peek().is_none() {
        return Err(SignatureError::MissingComponentValue {
            component: name.to_owned(),
        });
    }
    let mut joined = String::new();
    for (i, value) in values.enumerate() {
        // `to_str` accepts only visible ASCII, space and tab, so no value can break a line.
        let text = value.to_str().map_err(|_| SignatureError::InvalidComponentValue {
            component: name.to_owned(),
        })?;
        if i > 0 {
            joined.push_str(", ");
        }
        joined.push_str(text.trim_matches([' ', '\t']));
    }
    Ok(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    use http::{HeaderMap, HeaderValue};

    fn base_of(parts: &RequestParts<'_>, components: &[Component]) -> Result<String, SignatureError> {
        let params = SignatureParams {
            components: components.to_vec(),
            ..SignatureParams::default()
        };
        signature_base(parts, &params.serialize()?)
    }

    fn parts<'a>(headers: &'a HeaderMap, authority: &'a str, query: Option<&'a str>) -> RequestParts<'a> {
        RequestParts {
            method: "GET",
            scheme: "HTTPS",
            authority,
            path: "/v1/status",
            query,
            headers,
        }
    }

    #[test]
    fn derived_components_follow_the_rfc() {
        let headers = HeaderMap::new();
        let all = [
            Component::Method,
            Component::TargetUri,
            Component::Authority,
            Component::Scheme,
            Component::RequestTarget,
            Component::Path,
            Component::Query,
        ];
        let base = base_of(&parts(&headers, "Blufio.Example:443", Some("a=1&b=2")), &all).unwrap();
        assert_eq!(
            base,
            "\"@method\": GET\n\
             \"@target-uri\": https://blufio.example/v1/status?a=1&b=2\n\
             \"@authority\": blufio.example\n\
             \"@scheme\": https\n\
             \"@request-target\": /v1/status?a=1&b=2\n\
             \"@path\": /v1/status\n\
             \"@query\": ?a=1&b=2\n\
             \"@signature-params\": (\"@method\" \"@target-uri\" \"@authority\" \"@scheme\" \"@request-target\" \
             \"@path\" \"@query\")"
        );

        // Without a query, `@query` is a lone `?`; a non-default port stays.
        let base = base_of(&parts(&headers, "[::1]:8443", None), &all[..5]).unwrap();
        assert!(
            base.contains("\"@target-uri\": https://[::1]:8443/v1/status\n"),
            "{base}"
        );
        assert!(base.contains("\"@request-target\": /v1/status\n"), "{base}");
        let base = base_of(&parts(&headers, "h", None), &[Component::Query]).unwrap();
        assert!(base.starts_with("\"@query\": ?\n"), "{base}");
    }

    #[test]
    fn header_values_are_trimmed_and_joined() {
        let mut headers = HeaderMap::new();
        headers.append("x-list", HeaderValue::from_static("  a, b  "));
        headers.append("x-list", HeaderValue::from_static("\tc"));
        headers.insert("x-empty", HeaderValue::from_static(""));
        let base = base_of(
            &parts(&headers, "h", None),
            &[
                Component::Field("x-list".to_owned()),
                Component::Field("x-empty".to_owned()),
            ],
        )
        .unwrap();
        assert!(base.starts_with("\"x-list\": a, b, c\n\"x-empty\": \n"), "{base:?}");
    }

    #[test]
    fn absent_and_unsignable_components_are_errors() {
        let mut headers = HeaderMap::new();
        headers.insert("x-binary", HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap());
        let error = base_of(
            &parts(&headers, "h", None),
            &[Component::Field("content-digest".to_owned())],
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "covered component `content-digest` is absent from the request"
        );
        let error = base_of(&parts(&headers, "h", None), &[Component::Field("x-binary".to_owned())]).unwrap_err();
        assert!(matches!(error, SignatureError::InvalidComponentValue { .. }), "{error}");

        // A path with a newline would forge another line of the base.
        let mut injected = parts(&headers, "h", None);
        injected.path = "/a\n\"@method\": GET";
        let error = base_of(&injected, &[Component::Path]).unwrap_err();
        assert!(matches!(error, SignatureError::InvalidComponentValue { .. }), "{error}");
        let error = base_of(&parts(&headers, "", None), &[Component::Authority]).unwrap_err();
        assert!(matches!(error, SignatureError::MissingComponentValue { .. }), "{error}");
    }

    #[test]
    fn malformed_signature_params_are_rejected() {
        let headers = HeaderMap::new();
        for params in ["", "(", "(\"@method\"), ()", "\"@method\"", "(\"@method\";sf)"] {
            assert!(signature_base(&parts(&headers, "h", None), params).is_err(), "{params}");
        }
    }
}
