//! Covered components and signature parameters (RFC 9421 §2, §2.3), and the `Signature-Input` and
//! `Signature` dictionaries that carry them (§4.1, §4.2).
//!
//! Every structured field is parsed and serialized with `sfv` (RFC 8941 rules, which RFC 9421 is
//! built on); this module must never split, quote or unquote header text by hand, and must never
//! panic, whatever the input.

use std::fmt;

use sfv::{BareItem, Dictionary, InnerList, Item, KeyRef, List, ListEntry, Parameters, Parser};

use super::SignatureError;

/// One covered component (RFC 9421 §2): a derived component or an HTTP field.
///
/// Component parameters (`;sf`, `;key`, `;bs`, `;req`, `;tr`, `;name`) are not supported, nor are
/// derived components that only make sense for responses or need parameters (`@status`,
/// `@query-param`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Component {
    /// `@method`: the request method, case-sensitive as sent (§2.2.1).
    Method,
    /// `@target-uri`: `scheme://authority/path?query` (§2.2.2).
    TargetUri,
    /// `@authority`: lower-cased `host[:port]`, default port removed (§2.2.3).
    Authority,
    /// `@scheme`: lower-cased `http` or `https` (§2.2.4).
    Scheme,
    /// `@request-target`: `path?query` as in the request line (§2.2.5).
    RequestTarget,
    /// `@path`: the absolute path, `/` when empty (§2.2.6).
    Path,
    /// `@query`: `?` followed by the query, or just `?` without one (§2.2.7).
    Query,
    /// An HTTP header field, by its lower-case name (§2.1).
    Field(String),
}

impl Component {
    /// Parses a component identifier's name (the content of the string, without quotes).
    pub fn parse(name: &str) -> Result<Self, SignatureError> {
        let unsupported = |reason| SignatureError::UnsupportedComponent {
            component: name.to_owned(),
            reason,
        };
        match name {
            "@method" => Ok(Self::Method),
            "@target-uri" => Ok(Self::TargetUri),
            "@authority" => Ok(Self::Authority),
            "@scheme" => Ok(Self::Scheme),
            "@request-target" => Ok(Self::RequestTarget),
            "@path" => Ok(Self::Path),
            "@query" => Ok(Self::Query),
            "@signature-params" => Err(unsupported("the signature parameters cannot be a covered component")),
            "@status" => Err(unsupported("`@status` exists only in responses")),
            "@query-param" => Err(unsupported(
                "`@query-param` needs a `name` parameter, which is not supported",
            )),
            _ if name.starts_with('@') => Err(unsupported("unknown derived component")),
            _ => {
                let header = http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| unsupported("not a valid HTTP field name"))?;
                // `HeaderName` lower-cases what it parses; RFC 9421 §2.1 requires the identifier to be
                // lower-case already, and accepting both spellings would allow two identifiers for
                // one field.
                if header.as_str() != name {
                    return Err(unsupported("field names must be lower-case"));
                }
                Ok(Self::Field(name.to_owned()))
            }
        }
    }

    /// The component identifier's name as it appears (quoted) in `Signature-Input`.
    pub fn name(&self) -> &str {
        match self {
            Self::Method => "@method",
            Self::TargetUri => "@target-uri",
            Self::Authority => "@authority",
            Self::Scheme => "@scheme",
            Self::RequestTarget => "@request-target",
            Self::Path => "@path",
            Self::Query => "@query",
            Self::Field(name) => name,
        }
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The covered components and metadata parameters of one signature (RFC 9421 §2.3).
///
/// [`SignatureParams::serialize`] writes the parameters in the order of RFC 9421 §2.3 (`created`,
/// `expires`, `nonce`, `alg`, `keyid`, `tag`). For a received signature the exact order and any
/// unknown parameters are kept in [`ParsedSignature::params_serialized`], which is what the
/// signature base is built from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignatureParams {
    /// The covered components, in signing order.
    pub components: Vec<Component>,
    /// `created`: when the signature was made, in Unix seconds.
    pub created: Option<i64>,
    /// `expires`: when the signature stops being valid, in Unix seconds.
    pub expires: Option<i64>,
    /// `nonce`: a unique value that lets the verifier detect replays.
    pub nonce: Option<String>,
    /// `keyid`: which key signed (blufio uses the key's [`super::key_fingerprint`]).
    pub keyid: Option<String>,
    /// `alg`: the algorithm; only `ed25519` is accepted.
    pub alg: Option<String>,
    /// `tag`: an application-specific tag.
    pub tag: Option<String>,
}

const CREATED: &KeyRef = sfv::key_ref("created");
const EXPIRES: &KeyRef = sfv::key_ref("expires");
const NONCE: &KeyRef = sfv::key_ref("nonce");
const ALG: &KeyRef = sfv::key_ref("alg");
const KEYID: &KeyRef = sfv::key_ref("keyid");
const TAG: &KeyRef = sfv::key_ref("tag");

impl SignatureParams {
    /// Serializes to the inner-list form used in `Signature-Input` and as the value of
    /// `@signature-params`, e.g. `("@method" "@path");created=1618884473;keyid="k"`.
    pub fn serialize(&self) -> Result<String, SignatureError> {
        Ok(serialize_inner_list(&self.to_inner_list()?))
    }

    /// Parses the inner-list form that [`SignatureParams::serialize`] writes.
    pub fn parse(serialized: &str) -> Result<Self, SignatureError> {
        Self::from_inner_list(&parse_inner_list(serialized)?)
    }

    pub(crate) fn to_inner_list(&self) -> Result<InnerList, SignatureError> {
        let mut items = Vec::with_capacity(self.components.len());
        for component in &self.components {
            // Round-trip through the parser so that a hand-built `Field("Bad Name")` is rejected
            // before it is signed rather than when the verifier parses it.
            let checked = Component::parse(component.name())?;
            if items
                .iter()
                .any(|item: &Item| item.bare_item.as_string().map(|s| s.as_str()) == Some(checked.name()))
            {
                return Err(SignatureError::DuplicateComponent {
                    component: checked.name().to_owned(),
                });
            }
            let name = sfv::String::from_string(checked.name().to_owned()).map_err(|(_, _)| {
                SignatureError::UnsupportedComponent {
                    component: checked.name().to_owned(),
                    reason: "not a valid structured-field string",
                }
            })?;
            items.push(Item::new(name));
        }

        let mut params = Parameters::new();
        let integer = |param: &'static str, value: i64| {
            sfv::Integer::try_from(value)
                .map(BareItem::Integer)
                .map_err(|source| SignatureError::SerializeParameter { param, source })
        };
        let string = |param: &'static str, value: &str| {
            sfv::String::from_string(value.to_owned())
                .map(BareItem::String)
                .map_err(|(source, _)| SignatureError::SerializeParameter { param, source })
        };
        if let Some(created) = self.created {
            params.insert(CREATED.to_owned(), integer("created", created)?);
        }
        if let Some(expires) = self.expires {
            params.insert(EXPIRES.to_owned(), integer("expires", expires)?);
        }
        if let Some(nonce) = &self.nonce {
            params.insert(NONCE.to_owned(), string("nonce", nonce)?);
        }
        if let Some(alg) = &self.alg {
            params.insert(ALG.to_owned(), string("alg", alg)?);
        }
        if let Some(keyid) = &self.keyid {
            params.insert(KEYID.to_owned(), string("keyid", keyid)?);
        }
        if let Some(tag) = &self.tag {
            params.insert(TAG.to_owned(), string("tag", tag)?);
        }
        Ok(InnerList::with_params(items, params))
    }

    pub(crate) fn from_inner_list(list: &InnerList) -> Result<Self, SignatureError> {
        let mut components: Vec<Component> = Vec::with_capacity(list.items.len());
        for item in &list.items {
            let name = item
                .bare_item
                .as_string()
                .ok_or(SignatureError::ComponentNotString)?
                .as_str();
            if !item.params.is_empty() {
                return Err(SignatureError::UnsupportedComponent {
                    component: name.to_owned(),
                    reason: "component parameters such as `;sf`, `;key`, `;bs` or `;req` are not supported",
                });
            }
            let component = Component::parse(name)?;
            if components.contains(&component) {
                return Err(SignatureError::DuplicateComponent {
                    component: name.to_owned(),
                });
            }
            components.push(component);
        }

        let integer = |param: &'static str, key: &KeyRef| -> Result<Option<i64>, SignatureError> {
            list.params
                .get(key)
                .map(|value| {
                    value.as_integer().map(i64::from).ok_or(SignatureError::ParameterType {
                        param,
                        expected: "an integer",
                    })
                })
                .transpose()
        };
        let string = |param: &'static str, key: &KeyRef| -> Result<Option<String>, SignatureError> {
            list.params
                .get(key)
                .map(|value| {
                    value
                        .as_string()
                        .map(|s| s.as_str().to_owned())
                        .ok_or(SignatureError::ParameterType {
                            param,
                            expected: "a string",
                        })
                })
                .transpose()
        };
        // Unknown parameters are ignored here, but they stay in the re-serialized inner list and so
        // are covered by the signature (RFC 9421 §2.3 lets the registry grow).
        Ok(Self {
            components,
            created: integer("created", CREATED)?,
            expires: integer("expires", EXPIRES)?,
            nonce: string("nonce", NONCE)?,
            keyid: string("keyid", KEYID)?,
            alg: string("alg", ALG)?,
            tag: string("tag", TAG)?,
        })
    }
}

/// One signature from a request, after [`parse`].
///
/// The fields are private so that the parameters that [`super::policy`] checks and the serialized
/// parameters that [`super::verify`] signs over always come from the same input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedSignature {
    label: String,
    params: SignatureParams,
    params_serialized: String,
    signature: Vec<u8>,
}

impl ParsedSignature {
    /// The dictionary key shared by the `Signature-Input` and `Signature` members, e.g. `sig1`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The covered components and parameters.
    pub fn params(&self) -> &SignatureParams {
        &self.params
    }

    /// The inner list as re-serialized by `sfv`: the value of `@signature-params` (RFC 9421 §2.3),
    /// with parameters in the order received, unknown ones included.
    pub fn params_serialized(&self) -> &str {
        &self.params_serialized
    }

    /// The raw signature bytes.
    pub fn signature(&self) -> &[u8] {
        &self.signature
    }
}

/// Parses the values of the `Signature-Input` and `Signature` headers and pairs their members by
/// label. Every member of either header must have a partner in the other.
///
/// Accepts `&str`, `&[u8]` or `&http::HeaderValue`. Fails on any malformed input with a short
/// reason, never panics.
pub fn parse(
    signature_input: impl AsRef<[u8]>,
    signature: impl AsRef<[u8]>,
) -> Result<Vec<ParsedSignature>, SignatureError> {
    let inputs: Dictionary = Parser::new(signature_input.as_ref())
        .with_version(sfv::Version::Rfc8941)
        .parse()
        .map_err(SignatureError::ParseSignatureInput)?;
    let values: Dictionary = Parser::new(signature.as_ref())
        .with_version(sfv::Version::Rfc8941)
        .parse()
        .map_err(SignatureError::ParseSignatureHeader)?;
    if inputs.is_empty() && values.is_empty() {
        return Err(SignatureError::NoSignatures);
    }
    if let Some(label) = values.keys().find(|label| !inputs.contains_key(*label)) {
        return Err(SignatureError::MissingSignatureInput {
            label: label.as_str().to_owned(),
        });
    }

    let mut parsed = Vec::with_capacity(inputs.len());
    for (label, entry) in &inputs {
        let label_text = label.as_str().to_owned();
        let ListEntry::InnerList(list) = entry else {
            return Err(SignatureError::InputNotInnerList { label: label_text });
        };
        let signature = match values.get(label) {
            None => return Err(SignatureError::MissingSignatureValue { label: label_text }),
            Some(ListEntry::Item(item)) => match item.bare_item.as_byte_sequence() {
                Some(bytes) => bytes.to_vec(),
                None => return Err(SignatureError::SignatureNotBytes { label: label_text }),
            },
            Some(ListEntry::InnerList(_)) => return Err(SignatureError::SignatureNotBytes { label: label_text }),
        };
        parsed.push(ParsedSignature {
            params: SignatureParams::from_inner_list(list)?,
            params_serialized: serialize_inner_list(list),
            signature,
            label: label_text,
        });
    }
    Ok(parsed)
}

/// Serializes one inner list on its own, as `@signature-params` needs it: a structured-field list
/// with a single member serializes to exactly that member.
pub(crate) fn serialize_inner_list(list: &InnerList) -> String {
    let mut serializer = sfv::ListSerializer::new();
    {
        let mut inner = serializer.inner_list();
        inner.items(&list.items);
        inner.finish().parameters(&list.params);
    }
    // The list has one member, so `finish` cannot return `None`.
    serializer.finish().unwrap_or_default()
}

/// Parses a serialized inner list (the value of `@signature-params`).
pub(crate) fn parse_inner_list(serialized: &str) -> Result<InnerList, SignatureError> {
    let mut list: List = Parser::new(serialized)
        .with_version(sfv::Version::Rfc8941)
        .parse()
        .map_err(|error| SignatureError::MalformedSignatureParams(Some(error)))?;
    match (list.pop(), list.is_empty()) {
        (Some(ListEntry::InnerList(inner)), true) => Ok(inner),
        _ => Err(SignatureError::MalformedSignatureParams(None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_parse_and_print() {
        for name in [
            "@method",
            "@target-uri",
            "@authority",
            "@scheme",
            "@request-target",
            "@path",
            "@query",
            "content-digest",
            "x-custom",
        ] {
            assert_eq!(Component::parse(name).unwrap().name(), name);
        }
        for name in [
            "@status",
            "@query-param",
            "@signature-params",
            "@nope",
            "Content-Type",
            "bad name",
            "",
        ] {
            let error = Component::parse(name).unwrap_err();
            assert!(
                matches!(error, SignatureError::UnsupportedComponent { .. }),
                "{name}: {error}"
            );
        }
    }

    #[test]
    fn params_round_trip_in_rfc_order() {
        let params = SignatureParams {
            components: vec![Component::Method, Component::Field("content-digest".to_owned())],
            created: Some(1),
            expires: Some(2),
            nonce: Some("n".to_owned()),
            keyid: Some("k".to_owned()),
            alg: Some("ed25519".to_owned()),
            tag: Some("t \"quoted\"".to_owned()),
        };
        let serialized = params.serialize().unwrap();
        assert_eq!(
            serialized,
            r#"("@method" "content-digest");created=1;expires=2;nonce="n";alg="ed25519";keyid="k";tag="t \"quoted\"""#
        );
        assert_eq!(SignatureParams::parse(&serialized).unwrap(), params);
        assert_eq!(SignatureParams::default().serialize().unwrap(), "()");
    }

    #[test]
    fn unserializable_params_are_errors() {
        let bad_keyid = SignatureParams {
            keyid: Some("schlüssel".to_owned()),
            ..SignatureParams::default()
        };
        assert!(matches!(
            bad_keyid.serialize(),
            Err(SignatureError::SerializeParameter { param: "keyid", .. })
        ));
        let huge = SignatureParams {
            created: Some(i64::MAX),
            ..SignatureParams::default()
        };
        assert!(matches!(
            huge.serialize(),
            Err(SignatureError::SerializeParameter { param: "created", .. })
        ));
        let duplicate = SignatureParams {
            components: vec![Component::Path, Component::Path],
            ..SignatureParams::default()
        };
        assert!(matches!(
            duplicate.serialize(),
            Err(SignatureError::DuplicateComponent { .. })
        ));
        let bad_field = SignatureParams {
            components: vec![Component::Field("Host".to_owned())],
            ..SignatureParams::default()
        };
        assert!(matches!(
            bad_field.serialize(),
            Err(SignatureError::UnsupportedComponent { .. })
        ));
    }

    #[test]
    fn received_parameter_order_and_unknown_parameters_are_kept() {
        let parsed = parse(
            r#"sig1=("@method");keyid="k";created=5;x-extension=?1, sig2=()"#,
            "sig2=:AA==:, sig1=:AQI=:",
        )
        .unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].label(), "sig1");
        assert_eq!(
            parsed[0].params_serialized(),
            r#"("@method");keyid="k";created=5;x-extension"#
        );
        assert_eq!(parsed[0].params().created, Some(5));
        assert_eq!(parsed[0].signature(), &[1, 2]);
        assert_eq!(parsed[1].params_serialized(), "()");
    }

    #[test]
    fn malformed_headers_are_specific_errors() {
        type Case = (&'static str, &'static str, fn(&SignatureError) -> bool);
        let cases: &[Case] = &[
            ("sig1=(", "sig1=:AA==:", |e| {
                matches!(e, SignatureError::ParseSignatureInput(_))
            }),
            ("sig1=()", "sig1=AA", |e| {
                matches!(e, SignatureError::SignatureNotBytes { .. })
            }),
            ("sig1=()", "sig1=:AA", |e| {
                matches!(e, SignatureError::ParseSignatureHeader(_))
            }),
            ("", "", |e| matches!(e, SignatureError::NoSignatures)),
            ("sig1=()", "sig2=:AA==:", |e| {
                matches!(e, SignatureError::MissingSignatureInput { .. })
            }),
            ("sig1=(), sig2=()", "sig1=:AA==:", |e| {
                matches!(e, SignatureError::MissingSignatureValue { .. })
            }),
            ("sig1=\"@method\"", "sig1=:AA==:", |e| {
                matches!(e, SignatureError::InputNotInnerList { .. })
            }),
            ("sig1=(\"@method\" \"@method\")", "sig1=:AA==:", |e| {
                matches!(e, SignatureError::DuplicateComponent { .. })
            }),
            ("sig1=(@method)", "sig1=:AA==:", |e| {
                matches!(e, SignatureError::ParseSignatureInput(_))
            }),
            ("sig1=(method)", "sig1=:AA==:", |e| {
                matches!(e, SignatureError::ComponentNotString)
            }),
            ("sig1=(\"content-type\";sf)", "sig1=:AA==:", |e| {
                matches!(e, SignatureError::UnsupportedComponent { .. })
            }),
            ("sig1=();created=\"1\"", "sig1=:AA==:", |e| {
                matches!(e, SignatureError::ParameterType { param: "created", .. })
            }),
            ("sig1=();keyid=k", "sig1=:AA==:", |e| {
                matches!(e, SignatureError::ParameterType { param: "keyid", .. })
            }),
            ("sig1=();created=1.5", "sig1=:AA==:", |e| {
                matches!(e, SignatureError::ParameterType { param: "created", .. })
            }),
        ];
        for (input, signature, expected) in cases {
            let error = parse(input, signature).unwrap_err();
            assert!(expected(&error), "{input} / {signature}: {error}");
        }
        assert!(matches!(
            SignatureParams::parse("(), ()"),
            Err(SignatureError::MalformedSignatureParams(None))
        ));
        assert!(matches!(
            SignatureParams::parse("\"x\""),
            Err(SignatureError::MalformedSignatureParams(None))
        ));
    }
}
