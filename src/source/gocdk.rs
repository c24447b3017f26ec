//! What the Go CDK (gocloud.dev v0.46, which `weed` 4.48's `[notification.gocdk_pub_sub]`
//! publishes with) puts on the wire, and how it is read back into an event.
//!
//! - **NATS** (`nats://`): without `natsv2`, no headers: the message data is a fresh Go gob
//!   stream of the metadata (`map[string]string`, holding `key`) followed by the body
//!   (`[]byte`); a message without metadata is the body alone, and data that does not
//!   decode as that stream is taken as a plain body. With `natsv2`, NATS headers carry the
//!   metadata, names and values `url.QueryEscape`d.
//! - **SQS** (`awssqs://`, and the native `[notification.aws_sqs]` body): attribute names hex-escaped (`__0x20__`), values
//!   `url.PathEscape`d (read back with a fallback to the raw value when they do not
//!   unescape); a body that is not UTF-8 goes as base64 with the attribute
//!   `base64encoded`; a message published to SNS and delivered to the queue without raw
//!   delivery is an SNS JSON envelope, unwrapped (its `Message` and `MessageAttributes`)
//!   when the message has no attributes of its own and the JSON has a `TopicArn`.

use crate::event::RawEvent;
use crate::go::unescape;
use base64::Engine;

/// gocloud's `escape.HexUnescape`: every `__0x<hex>__` that names a rune becomes that
/// rune; anything else stays as it is.
fn hex_unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find("__0x") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 4..];
        let digits_end = after.find('_').unwrap_or(after.len());
        // Go parses the digits as an int32 (a sign allowed) and turns a value that is no
        // rune into U+FFFD.
        let rune = after[digits_end..]
            .starts_with("__")
            .then(|| i32::from_str_radix(&after[..digits_end], 16).ok())
            .flatten()
            .map(|n| {
                u32::try_from(n)
                    .ok()
                    .and_then(char::from_u32)
                    .unwrap_or(char::REPLACEMENT_CHARACTER)
            });
        match rune {
            Some(c) => {
                out.push(c);
                rest = &after[digits_end + 2..];
            }
            None => {
                // Not an escape: keep the first character and look again after it.
                out.push('_');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// One NATS message as gocloud's NATS subscriber reads it, whatever form it came in.
/// `natsv2` is the sub_url's parameter and says which form is tried first: with it,
/// query-escaped headers; without it, a gob stream. A message of the other form is read
/// too, so that a publisher and a subscriber that disagree on `natsv2` still agree on
/// keys (gocloud would drop the key there).
pub fn nats_event(
    headers: Option<&async_nats::HeaderMap>,
    data: &bytes::Bytes,
    natsv2: bool,
) -> RawEvent {
    let has_headers = headers.is_some_and(|h| h.iter().next().is_some());
    if !(natsv2 && has_headers)
        && let Some(decoded) = gob_message(data)
    {
        return match decoded {
            Ok((metadata, body)) => {
                RawEvent::new(metadata.get("key").cloned().unwrap_or_default(), body)
            }
            Err(e) => {
                let mut event = RawEvent::new(String::new(), data.clone());
                event.defect = Some(format!(
                    "the NATS message is a gob stream of metadata without a valid body: {e}"
                ));
                event
            }
        };
    }
    let mut event = RawEvent::new(String::new(), data.clone());
    for (name, values) in headers.into_iter().flat_map(|h| h.iter()) {
        let name: &str = name.as_ref();
        let Some(value) = values.first().map(|v| v.as_str()) else {
            continue;
        };
        match (unescape(name, true), unescape(value, true)) {
            (Some(n), Some(v)) if n == "key" => event.key = v,
            (Some(_), Some(_)) => {}
            // gocloud's natsv2 subscriber refuses such a message; here it is parked.
            _ if natsv2 => {
                event.defect = Some(format!(
                    "the NATS header {:?} = {:?} is not query-escaped as gocloud escapes metadata",
                    crate::text::cut(name),
                    crate::text::cut(value)
                ));
            }
            // Without natsv2 headers are a courtesy: one that does not unescape is taken
            // as it is.
            _ if name == "key" => event.key = value.to_string(),
            _ => {}
        }
    }
    event
}

/// The gob stream gocloud's `encodeMessage` writes: `None` when the data does not start
/// with a gob-encoded `map[string]string` (so it is a plain body), else the metadata and
/// the body, or why the body did not decode.
#[allow(clippy::type_complexity)]
fn gob_message(
    data: &[u8],
) -> Option<Result<(std::collections::HashMap<String, String>, Vec<u8>), String>> {
    let mut stream = gobwire::StreamDecoder::new(data);
    let metadata = match stream.decode::<std::collections::HashMap<String, String>>() {
        Ok(Some(m)) => m,
        _ => return None,
    };
    Some(match stream.decode::<Vec<u8>>() {
        Ok(Some(body)) => Ok((metadata, body)),
        Ok(None) => Err("the stream ends after the metadata".into()),
        Err(e) => Err(e.to_string()),
    })
}

/// One SQS message as gocloud's `awssqs` subscriber reads it: `attributes` are the
/// message's own string attributes, `raw` the sub_url's `raw` parameter (no SNS envelope).
pub fn sqs_event(body: &str, attributes: Vec<(String, String)>, raw: bool) -> RawEvent {
    let (body, attributes) = if raw || !attributes.is_empty() {
        (body.to_string(), attributes)
    } else {
        match sns_envelope(body) {
            Some(unwrapped) => unwrapped,
            None => (body.to_string(), attributes),
        }
    };
    let mut base64 = false;
    let mut key = String::new();
    for (name, value) in attributes {
        if name == "base64encoded" {
            base64 = true;
        } else if hex_unescape(&name) == "key" {
            key = unescape(&value, false).unwrap_or(value);
        }
    }
    RawEvent::new(key, sqs_body(&body, base64))
}

/// Raw protobuf (upstream's filer) or base64 (gocdk, or any publisher that wants bodies
/// SQS accepts). Raw protobuf of an event starts with a field tag (0x0a, 0x12, ...) that
/// base64 never contains, so trying base64 first cannot misread a raw body.
pub(crate) fn sqs_body(body: &str, flagged_base64: bool) -> bytes::Bytes {
    let b64 = base64::engine::general_purpose::STANDARD;
    if let Ok(decoded) = b64.decode(body.trim())
        && (flagged_base64 || crate::event::decode(&decoded).is_ok())
    {
        return decoded.into();
    }
    bytes::Bytes::copy_from_slice(body.as_bytes())
}

/// A JSON object's field as Go's `encoding/json` finds it for a struct field: the exact
/// name, else any that matches without regard to case; `null` counts as absent.
fn go_field<'a>(
    object: &'a serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Option<&'a serde_json::Value> {
    object
        .get(name)
        .or_else(|| {
            object
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        })
        .filter(|v| !v.is_null())
}

/// An SNS notification's JSON, as Go's `encoding/json` reads it into gocloud's struct
/// (field names matched without regard to case): `Some` only when it has a non-empty
/// `TopicArn` and every field that is there has the right type.
fn sns_envelope(body: &str) -> Option<(String, Vec<(String, String)>)> {
    let json: serde_json::Value = serde_json::from_str(body).ok()?;
    let object = json.as_object()?;
    let field = |name: &str| go_field(object, name);
    let string = |name: &str| match field(name) {
        None => Some(String::new()),
        Some(v) => v.as_str().map(String::from),
    };
    let topic = string("TopicArn")?;
    let message = string("Message")?;
    let mut attributes = Vec::new();
    if let Some(attrs) = field("MessageAttributes") {
        for (name, attr) in attrs.as_object()? {
            if attr.is_null() {
                attributes.push((name.clone(), String::new()));
                continue;
            }
            let value = match go_field(attr.as_object()?, "Value") {
                None => String::new(),
                Some(v) => v.as_str()?.to_string(),
            };
            attributes.push((name.clone(), value));
        }
    }
    (!topic.is_empty()).then_some((message, attributes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[test]
    fn bodies_raw_or_base64() {
        let ev = crate::pb::EventNotification {
            new_entry: Some(crate::pb::Entry {
                name: "a".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec();
        let raw = String::from_utf8(ev.clone()).expect("this small event is valid UTF-8");
        assert_eq!(sqs_body(&raw, false), ev);
        let b64 = base64::engine::general_purpose::STANDARD.encode(&ev);
        assert_eq!(sqs_body(&b64, false), ev, "unflagged base64 of an event");
        assert_eq!(sqs_body(&b64, true), ev);
        assert_eq!(sqs_body("not an event", false), "not an event".as_bytes());
    }

    #[test]
    fn hex_unescaping_as_gocloud_does() {
        assert_eq!(hex_unescape("key"), "key");
        assert_eq!(hex_unescape("my__0x20__key"), "my key");
        assert_eq!(hex_unescape("__0x2e__hidden"), ".hidden");
        assert_eq!(hex_unescape("__0x4e16__"), "世");
        // Not escapes: kept as they are.
        assert_eq!(hex_unescape("___0x20__x"), "_ x");
        assert_eq!(hex_unescape("__0xd800__|__0x-1__"), "\u{fffd}|\u{fffd}");
        for s in [
            "__0x__",
            "__0xzz__",
            "a__0x20_",
            "__0x20",
            "__0x100000000__",
        ] {
            assert_eq!(hex_unescape(s), s);
        }
    }

    #[test]
    fn sns_envelopes_as_gocloud_reads_them() {
        let env = r#"{"Type":"Notification","MessageId":"1","TopicArn":"arn:aws:sns:x:1:t","Message":"hi","MessageAttributes":{"key":{"Type":"String","Value":"%2Fa"}}}"#;
        let ev = sqs_event(env, vec![], false);
        assert_eq!((ev.key.as_str(), &ev.payload[..]), ("/a", &b"hi"[..]));
        // Field names match without regard to case.
        let ev = sqs_event(r#"{"topicarn":"t","message":"m"}"#, vec![], false);
        assert_eq!(&ev.payload[..], b"m");
        // Raw: the body stays as it is.
        for (body, attrs, raw) in [
            (env, vec![], true),
            (env, vec![("x".to_string(), "y".to_string())], false),
            (r#"{"TopicArn":"","Message":"m"}"#, vec![], false),
            (r#"{"TopicArn":1,"Message":"m"}"#, vec![], false),
            (r#"["TopicArn"]"#, vec![], false),
        ] {
            assert_eq!(&sqs_event(body, attrs, raw).payload[..], body.as_bytes());
        }
    }

    #[test]
    fn escaped_attributes_and_hostile_values() {
        let attrs = |v: &str| vec![("key".to_string(), v.to_string())];
        assert_eq!(sqs_event("x", attrs("%2Fa%20b"), false).key, "/a b");
        // A value that does not unescape is taken as it is, as gocloud does.
        assert_eq!(sqs_event("x", attrs("/100%"), false).key, "/100%");
        let ev = sqs_event("x", vec![("k__0x65__y".into(), "%2Fz".into())], false);
        assert_eq!(ev.key, "/z");
    }

    #[test]
    fn nats_data_that_is_not_gob_is_a_plain_body() {
        for data in [&b""[..], b"\x0a\x03abc", b"\xff\xff\xff", b"\x05\x0c\x00"] {
            let ev = nats_event(None, &bytes::Bytes::copy_from_slice(data), false);
            assert_eq!((ev.key.as_str(), &ev.payload[..]), ("", data));
            assert!(ev.defect.is_none());
        }
    }

    /// Bytes Go's encoding/gob wrote for gocloud's encodeMessage of metadata
    /// {"key": "/a/b"} and body "hi" (tests/fixtures/gowire, which the queue tests run).
    const GOB: &[u8] = b"\x0e\xff\x81\x04\x01\x02\xff\x82\x00\x01\x0c\x01\x0c\x00\x00\
        \x0d\xff\x82\x00\x01\x03key\x04/a/b\x05\x0a\x00\x02hi";

    #[test]
    fn nats_gob_streams() {
        let ev = nats_event(None, &bytes::Bytes::from_static(GOB), false);
        assert_eq!((ev.key.as_str(), &ev.payload[..]), ("/a/b", &b"hi"[..]));
        // With natsv2 and no headers (a publisher without natsv2), the gob stream too.
        let ev = nats_event(None, &bytes::Bytes::from_static(GOB), true);
        assert_eq!((ev.key.as_str(), &ev.payload[..]), ("/a/b", &b"hi"[..]));
        // With natsv2 and headers, the data is the body, whatever it looks like.
        let mut h = async_nats::HeaderMap::new();
        h.insert("key", "%2Fh");
        let ev = nats_event(Some(&h), &bytes::Bytes::from_static(GOB), true);
        assert_eq!((ev.key.as_str(), &ev.payload[..]), ("/h", GOB));
        // Metadata, then a body cut short or missing: a bad message, said why.
        for cut in [GOB.len() - 1, GOB.len() - 6] {
            let ev = nats_event(None, &bytes::Bytes::copy_from_slice(&GOB[..cut]), false);
            assert!(
                ev.defect
                    .as_deref()
                    .unwrap()
                    .contains("without a valid body"),
                "{cut}"
            );
        }
    }

    #[test]
    fn nats_headers_escaped_as_gocloud_escapes_them() {
        let data = bytes::Bytes::from_static(b"event");
        let mut h = async_nats::HeaderMap::new();
        h.insert("key", "%2Fa+b%2Bc");
        h.insert("other", "x");
        for natsv2 in [true, false] {
            let ev = nats_event(Some(&h), &data, natsv2);
            assert_eq!(
                (ev.key.as_str(), &ev.payload[..]),
                ("/a b+c", &b"event"[..])
            );
            assert!(ev.defect.is_none());
        }
        let mut bad = async_nats::HeaderMap::new();
        bad.insert("key", "/100%");
        let ev = nats_event(Some(&bad), &data, true);
        assert!(ev.defect.unwrap().contains(r#""key" = "/100%""#));
        // Without natsv2, taken as it is.
        let ev = nats_event(Some(&bad), &data, false);
        assert_eq!((ev.key.as_str(), ev.defect), ("/100%", None));
    }
}
