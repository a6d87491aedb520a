//! blufio's own requirements on a request signature, stricter than RFC 9421 itself: what must be
//! covered, which parameters must be present, and how old a signature may be.
//!
//! The daemon runs these checks in this order and reports the first that fails, each with its own
//! [`SignatureError`] variant: [`require_keyid`] (to look the key up), then [`check_components`],
//! [`check_params`], [`check_time`]; then its replay cache (nonce), the `Content-Digest`, and
//! finally [`super::verify`]. [`check`] runs the three checks of this module in order.
//!
//! These functions never look at the request or the signature bytes; they judge only the parsed
//! parameters, so they are cheap enough to run before any cryptography.

use super::{ALGORITHM, ParsedSignature, SignatureError};

/// What the daemon knows about the request and its clock when it checks a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    /// The verifier's clock, in Unix seconds.
    pub now: i64,
    /// How far `created` may lie from `now`, in either direction, in seconds.
    pub max_skew_secs: i64,
    /// Whether the request has a body (which must then be covered through `content-digest`).
    pub has_body: bool,
    /// Whether the request target has a query (which must then be covered through `@query`).
    pub has_query: bool,
}

/// Runs [`check_components`], [`check_params`] and [`check_time`], in that order.
pub fn check(signature: &ParsedSignature, context: &Context) -> Result<(), SignatureError> {
    check_components(signature, context.has_body, context.has_query)?;
    check_params(signature)?;
    check_time(signature, context.now, context.max_skew_secs)
}

/// The `keyid` to look the key up by, or [`SignatureError::MissingParameter`] without one.
pub fn require_keyid(signature: &ParsedSignature) -> Result<&str, SignatureError> {
    signature
        .params()
        .keyid
        .as_deref()
        .ok_or_else(|| missing_parameter(signature, "keyid"))
}

/// Policy (1): `@method`, `@authority` and `@path` are covered, `@query` too when the request has a
/// query, and `content-digest` when it has a body. Together they pin down what the request does;
/// a signature that left one out could be replayed against another resource or with another body.
pub fn check_components(signature: &ParsedSignature, has_body: bool, has_query: bool) -> Result<(), SignatureError> {
    let components = &signature.params().components;
    let required: [(&'static str, bool, &'static str); 5] = [
        ("@method", true, "on every request"),
        ("@authority", true, "on every request"),
        ("@path", true, "on every request"),
        ("@query", has_query, "when the request has a query"),
        ("content-digest", has_body, "when the request has a body"),
    ];
    for (component, needed, why) in required {
        if needed && !components.iter().any(|covered| covered.name() == component) {
            return Err(SignatureError::MissingRequiredComponent {
                label: signature.label().to_owned(),
                component,
                why,
            });
        }
    }
    Ok(())
}

/// Policy (2): `created`, `keyid` and `nonce` are present, and `alg`, if present, is `ed25519`.
pub fn check_params(signature: &ParsedSignature) -> Result<(), SignatureError> {
    let params = signature.params();
    if params.created.is_none() {
        return Err(missing_parameter(signature, "created"));
    }
    if params.keyid.is_none() {
        return Err(missing_parameter(signature, "keyid"));
    }
    if params.nonce.is_none() {
        return Err(missing_parameter(signature, "nonce"));
    }
    if let Some(alg) = params.alg.as_deref()
        && alg != ALGORITHM
    {
        return Err(SignatureError::UnsupportedAlgorithm {
            label: signature.label().to_owned(),
            alg: alg.to_owned(),
        });
    }
    Ok(())
}

/// Policy (3) and (4): `created` lies within `now ± max_skew_secs` (boundaries included), and
/// `expires`, if present, is not before `now` (a signature is still valid in its `expires` second).
pub fn check_time(signature: &ParsedSignature, now: i64, max_skew_secs: i64) -> Result<(), SignatureError> {
    let params = signature.params();
    let created = params.created.ok_or_else(|| missing_parameter(signature, "created"))?;
    // Widen to i128 so that no pair of i64 values can overflow the difference.
    if (i128::from(created) - i128::from(now)).abs() > i128::from(max_skew_secs) {
        return Err(SignatureError::CreatedOutsideSkew {
            label: signature.label().to_owned(),
            created,
            now,
            max_skew_secs,
        });
    }
    if let Some(expires) = params.expires
        && expires < now
    {
        return Err(SignatureError::Expired {
            label: signature.label().to_owned(),
            expires,
            now,
        });
    }
    Ok(())
}

fn missing_parameter(signature: &ParsedSignature, param: &'static str) -> SignatureError {
    SignatureError::MissingParameter {
        label: signature.label().to_owned(),
        param,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::httpsig::parse;

    const NOW: i64 = 1_700_000_000;
    const SKEW: i64 = 300;
    const FULL: &str =
        r#"("@method" "@authority" "@path" "@query" "content-digest");created=1700000000;keyid="k";nonce="n""#;

    fn parsed(input: &str) -> ParsedSignature {
        parse(format!("sig1={input}"), "sig1=:AA==:").unwrap().remove(0)
    }

    fn context() -> Context {
        Context {
            now: NOW,
            max_skew_secs: SKEW,
            has_body: true,
            has_query: true,
        }
    }

    #[test]
    fn complete_signature_passes() {
        check(&parsed(FULL), &context()).unwrap();
        assert_eq!(require_keyid(&parsed(FULL)).unwrap(), "k");
    }

    #[test]
    fn each_missing_component_has_its_own_error() {
        for component in ["@method", "@authority", "@path", "@query", "content-digest"] {
            let input = FULL
                .replace(&format!("\"{component}\""), "")
                .replace("( ", "(")
                .replace("  ", " ");
            let error = check(&parsed(&input), &context()).unwrap_err();
            match &error {
                SignatureError::MissingRequiredComponent { component: missing, .. } => {
                    assert_eq!(*missing, component, "{error}")
                }
                _ => panic!("{input}: unexpected {error}"),
            }
        }
        let message = check(&parsed(&FULL.replace(" \"content-digest\"", "")), &context())
            .unwrap_err()
            .to_string();
        assert_eq!(
            message,
            "signature input `sig1` does not cover `content-digest`, which is required when the request has a body"
        );

        // Without a query or body, `@query` and `content-digest` are not required.
        let minimal = r#"("@method" "@authority" "@path");created=1700000000;keyid="k";nonce="n""#;
        let bodiless = Context {
            has_body: false,
            has_query: false,
            ..context()
        };
        check(&parsed(minimal), &bodiless).unwrap();
    }

    #[test]
    fn components_are_checked_before_params() {
        let error = check(&parsed(r#"("@method")"#), &context()).unwrap_err();
        assert!(
            matches!(error, SignatureError::MissingRequiredComponent { .. }),
            "{error}"
        );
    }

    #[test]
    fn each_missing_parameter_has_its_own_error() {
        for param in ["created", "keyid", "nonce"] {
            let input = FULL
                .split(';')
                .filter(|part| !part.starts_with(param))
                .collect::<Vec<_>>()
                .join(";");
            let signature = parsed(&input);
            let error = check(&signature, &context()).unwrap_err();
            assert!(
                matches!(&error, SignatureError::MissingParameter { param: missing, .. } if *missing == param),
                "{input}: {error}"
            );
            if param == "keyid" {
                assert!(matches!(
                    require_keyid(&signature),
                    Err(SignatureError::MissingParameter { .. })
                ));
            }
            if param == "created" {
                assert!(matches!(
                    check_time(&signature, NOW, SKEW),
                    Err(SignatureError::MissingParameter { .. })
                ));
            }
        }
    }

    #[test]
    fn alg_must_be_ed25519_when_present() {
        check(&parsed(&format!("{FULL};alg=\"ed25519\"")), &context()).unwrap();
        let error = check(&parsed(&format!("{FULL};alg=\"hmac-sha256\"")), &context()).unwrap_err();
        assert!(matches!(error, SignatureError::UnsupportedAlgorithm { .. }), "{error}");
    }

    #[test]
    fn skew_boundaries() {
        let at = |created: i64| parsed(&FULL.replace("created=1700000000", &format!("created={created}")));
        for ok in [NOW - SKEW, NOW, NOW + SKEW] {
            check_time(&at(ok), NOW, SKEW).unwrap();
        }
        for bad in [
            NOW - SKEW - 1,
            NOW + SKEW + 1,
            -999_999_999_999_999,
            999_999_999_999_999,
        ] {
            let error = check(&at(bad), &context()).unwrap_err();
            assert!(
                matches!(error, SignatureError::CreatedOutsideSkew { .. }),
                "{bad}: {error}"
            );
        }
        // Extreme clocks and skews do not overflow.
        check_time(&at(0), i64::MIN, i64::MAX).unwrap_err();
        check_time(&at(0), 0, i64::MAX).unwrap();
    }

    #[test]
    fn expiry_boundaries() {
        let expiring = |expires: i64| parsed(&format!("{FULL};expires={expires}"));
        check_time(&expiring(NOW), NOW, SKEW).unwrap();
        check_time(&expiring(NOW + 1), NOW, SKEW).unwrap();
        let error = check(&expiring(NOW - 1), &context()).unwrap_err();
        assert!(
            matches!(error, SignatureError::Expired { expires, .. } if expires == NOW - 1),
            "{error}"
        );
    }
}
