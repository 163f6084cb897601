//! Forwarding: header hygiene on the way out and back
//! (hop-by-hop headers dropped, `x-forwarded-*` set; `traceparent` per attempt, in `trace`).

use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tower_http::request_id::{MakeRequestId, RequestId};

/// The body sent upstream: the inspected bytes, or the client's body streamed through.
pub type UpstreamBody = Either<Full<Bytes>, Incoming>;

/// The address of the client on the other end of the connection (a request extension).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most requests and responses carry none: one pass over the names finds that, where a
    // removal of each of the nine hashes its name and probes the map (2k instructions a
    // request, both ways).
    if !headers
        .keys()
        .any(|k| *k == header::UPGRADE || HOP_BY_HOP.contains(k))
    {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        strip_named_by_connection(headers);
    }
    for n in HOP_BY_HOP.iter() {
        headers.remove(n);
    }
    headers.remove(header::UPGRADE);
}

/// Removes the headers the `Connection` header names (rare: most clients send none).
fn strip_named_by_connection(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in &named {
        headers.remove(n);
    }
}

/// Prepares a client's request headers for the backend; `trace` is the context the backend's
/// own spans are to be children of (the CLIENT span).
pub fn upstream_headers(
    headers: &mut HeaderMap,
    client: Option<SocketAddr>,
    body_len: Option<usize>,
) {
    strip_hop_by_hop(headers);
    if let Some(host) = headers.remove(header::HOST) {
        headers.insert(HeaderName::from_static("x-forwarded-host"), host);
    }
    // Each name is hashed once: an entry, not a look-up and then an insert.
    if let Some(addr) = client {
        let ip = IpText::of(addr.ip());
        match headers.entry(HeaderName::from_static("x-forwarded-for")) {
            header::Entry::Occupied(mut e) => {
                let value = match e.get().to_str() {
                    Ok(prev) => HeaderValue::from_str(&format!("{prev}, {}", ip.as_str())),
                    Err(_) => HeaderValue::from_str(ip.as_str()),
                };
                if let Ok(v) = value {
                    e.insert(v);
                }
            }
            header::Entry::Vacant(e) => {
                if let Ok(v) = HeaderValue::from_str(ip.as_str()) {
                    e.insert(v);
                }
            }
        }
    }
    headers
        .entry(HeaderName::from_static("x-forwarded-proto"))
        .or_insert(HeaderValue::from_static("http"));
    if let Some(len) = body_len {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
}

/// A random (version 4) UUID for each request without an `x-request-id`, from the thread's
/// fast generator rather than the operating system's: no system call before the request goes
/// upstream. The id correlates logs and traces; nothing relies on it being unpredictable.
#[derive(Clone, Copy)]
pub struct RandomRequestId;

impl RandomRequestId {
    /// A new id, as a header value.
    pub fn header_value() -> HeaderValue {
        let id = uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid();
        let mut buf = uuid::Uuid::encode_buffer();
        let text = id.hyphenated().encode_lower(&mut buf);
        HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("-"))
    }
}

impl MakeRequestId for RandomRequestId {
    fn make_request_id<B>(&mut self, _: &http::Request<B>) -> Option<RequestId> {
        Some(RequestId::new(RandomRequestId::header_value()))
    }
}

/// An IP address as text, without the formatting machinery for the common IPv4 case (its
/// `Display` pads and checks widths: a fortieth of a short request's instructions).
struct IpText {
    buf: [u8; 45],
    len: usize,
}

impl IpText {
    fn of(ip: std::net::IpAddr) -> IpText {
        let mut t = IpText {
            buf: [0; 45],
            len: 0,
        };
        match ip {
            std::net::IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        t.push(b'.');
                    }
                    if octet >= 100 {
                        t.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        t.push(b'0' + octet / 10 % 10);
                    }
                    t.push(b'0' + octet % 10);
                }
            }
            std::net::IpAddr::V6(v6) => {
                let s = v6.to_string();
                t.len = s.len().min(t.buf.len());
                t.buf[..t.len].copy_from_slice(&s.as_bytes()[..t.len]);
            }
        }
        t
    }

    fn push(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_text_is_the_display_of_the_address() {
        for o in 0..=255u8 {
            for ip in [
                [o, 0, 10, 255],
                [127, o, 1, 99],
                [1, 2, o, 100],
                [9, 99, 100, o],
            ] {
                let ip = std::net::IpAddr::from(ip);
                assert_eq!(IpText::of(ip).as_str(), ip.to_string());
            }
        }
        for ip in [
            "::1",
            "2001:db8::8a2e:370:7334",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(IpText::of(ip).as_str(), ip.to_string());
        }
    }

    #[test]
    fn forwarded_for_is_one_value_and_forwarded_proto_is_kept() {
        let client = Some("127.0.0.2:5000".parse().unwrap());
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("10.1.1.1"));
        h.append("x-forwarded-for", HeaderValue::from_static("10.2.2.2"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        upstream_headers(&mut h, client, None);
        let all: Vec<_> = h.get_all("x-forwarded-for").iter().collect();
        assert_eq!(all, ["10.1.1.1, 127.0.0.2"]);
        assert_eq!(h["x-forwarded-proto"], "https");
        // Not text: replaced by the client's address.
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_bytes(b"\xff").unwrap());
        upstream_headers(&mut h, client, None);
        assert_eq!(h["x-forwarded-for"], "127.0.0.2");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(!h.contains_key(header::CONTENT_LENGTH));
    }

    #[test]
    fn each_hop_by_hop_header_alone_is_removed() {
        for name in HOP_BY_HOP.iter().chain([&header::UPGRADE]) {
            let mut h = HeaderMap::new();
            h.insert(name.clone(), HeaderValue::from_static("x"));
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            strip_hop_by_hop(&mut h);
            assert!(!h.contains_key(name), "{name} must be removed");
            assert_eq!(h.len(), 1, "{name}: the others stay");
        }
        // Names in another case are the same header.
        let mut h = HeaderMap::new();
        h.insert(
            HeaderName::from_bytes(b"Keep-Alive").unwrap(),
            HeaderValue::from_static("timeout=5"),
        );
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn hop_by_hop_and_forwarded_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::HOST, HeaderValue::from_static("weir.example"));
        h.insert("x-forwarded-for", HeaderValue::from_static("10.1.1.1"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer k"));
        upstream_headers(&mut h, Some("127.0.0.2:5000".parse().unwrap()), Some(42));
        for gone in ["connection", "x-secret-hop", "keep-alive", "te", "host"] {
            assert!(!h.contains_key(gone), "{gone} must be removed");
        }
        assert_eq!(h["x-forwarded-for"], "10.1.1.1, 127.0.0.2");
        assert_eq!(h["x-forwarded-host"], "weir.example");
        assert_eq!(h["content-length"], "42");
        assert_eq!(h["authorization"], "Bearer k");
    }

    #[test]
    fn made_request_ids_are_distinct_version_4_uuids() {
        let req = http::Request::new(());
        let mut make = RandomRequestId;
        let ids: Vec<String> = (0..64)
            .map(|_| {
                let id = make.make_request_id(&req).expect("an id");
                id.header_value().to_str().unwrap().to_string()
            })
            .collect();
        for id in &ids {
            let u = uuid::Uuid::parse_str(id).expect("a UUID");
            assert_eq!(u.get_version(), Some(uuid::Version::Random), "{id}");
            assert_eq!(u.get_variant(), uuid::Variant::RFC4122, "{id}");
            assert_eq!(id.len(), 36);
        }
        let unique: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
    }
}
