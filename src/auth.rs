//! Auth: optional API keys on the proxy listener. Keys are configured as SHA-256 hashes with
//! a name; a request with a known key goes on with its `Tenant`, and the key itself is
//! removed so it never reaches a backend, a log or a span. Anything else gets a 401.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body_util::{Either, Full};
use pin_project_lite::pin_project;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tower::{Layer, Service};

use crate::error::openai_error_body;
use crate::metrics::{ErrorKind, Metrics};

/// `[[auth.keys]]`: a client key, by name and hash.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Shown as the `tenant` label and in logs.
    pub name: String,
    /// Hex SHA-256 of the key (`printf %s "$KEY" | sha256sum`).
    pub sha256: String,
}

/// `[auth]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Empty: no auth on the proxy listener.
    pub keys: Vec<KeyConfig>,
}

impl AuthConfig {
    /// Checks the hashes; the error names the bad entry.
    pub fn validate(&self) -> Result<(), (String, &'static str)> {
        let mut names = std::collections::HashSet::new();
        for (i, k) in self.keys.iter().enumerate() {
            if parse_hash(&k.sha256).is_none() {
                return Err((format!("auth.keys[{i}].sha256"), "must be 64 hex digits"));
            }
            if k.name.is_empty() || k.name.len() > 64 || !names.insert(&k.name) {
                return Err((
                    format!("auth.keys[{i}].name"),
                    "must be unique and 1 to 64 bytes",
                ));
            }
        }
        Ok(())
    }
}

/// Hex SHA-256 → bytes.
pub fn parse_hash(hex_digest: &str) -> Option<[u8; 32]> {
    let v = hex::decode(hex_digest.trim()).ok()?;
    v.try_into().ok()
}

/// The name of the key a request came with.
#[derive(Debug, Clone)]
pub struct Tenant(pub Arc<str>);

/// The key presented in `Authorization: Bearer …` (or `x-api-key`).
fn presented(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v.as_bytes();
        return v
            .get(..7)
            .filter(|p| p.eq_ignore_ascii_case(b"bearer "))
            .map(|_| v[7..].trim_ascii());
    }
    headers.get("x-api-key").map(|v| v.as_bytes().trim_ascii())
}

/// Known key hashes → tenant names.
#[derive(Clone)]
pub struct Keys(Arc<HashMap<[u8; 32], Arc<str>>>);

impl Keys {
    pub fn new(cfg: &AuthConfig) -> Keys {
        Keys(Arc::new(
            cfg.keys
                .iter()
                .filter_map(|k| Some((parse_hash(&k.sha256)?, k.name.as_str().into())))
                .collect(),
        ))
    }

    /// The tenant of a presented key.
    pub fn check(&self, headers: &HeaderMap) -> Option<Arc<str>> {
        let key = presented(headers)?;
        let digest: [u8; 32] = Sha256::digest(key).into();
        self.0.get(&digest).cloned()
    }
}

/// Adds [`Auth`] to a service; no keys: requests pass untouched.
#[derive(Clone)]
pub struct AuthLayer {
    keys: Option<Keys>,
    metrics: Metrics,
}

impl AuthLayer {
    pub fn new(cfg: &AuthConfig, metrics: Metrics) -> AuthLayer {
        AuthLayer {
            keys: (!cfg.keys.is_empty()).then(|| Keys::new(cfg)),
            metrics,
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            keys: self.keys.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// Checks the client's key before the request goes on.
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    keys: Option<Keys>,
    metrics: Metrics,
}

impl<S, B, RB> Service<Request<B>> for Auth<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<Either<RB, Full<Bytes>>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if let Some(keys) = &self.keys {
            let Some(tenant) = keys.check(req.headers()) else {
                self.metrics.error(ErrorKind::Unauthorized);
                return ResponseFuture::Refused {
                    response: Some(unauthorized()),
                };
            };
            req.headers_mut().remove(header::AUTHORIZATION);
            req.headers_mut().remove("x-api-key");
            req.extensions_mut().insert(Tenant(tenant));
        }
        ResponseFuture::Inner {
            fut: self.inner.call(req),
        }
    }
}

fn unauthorized() -> Response<Full<Bytes>> {
    let body = openai_error_body(
        "Incorrect or missing API key. Send it as `Authorization: Bearer <key>`.",
        "AuthenticationError",
        StatusCode::UNAUTHORIZED,
    );
    let mut res = Response::new(Full::new(body));
    *res.status_mut() = StatusCode::UNAUTHORIZED;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    res.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    res
}

pin_project! {
    /// The inner service's future, or the 401 given without calling it.
    #[project = Proj]
    pub enum ResponseFuture<F> {
        Inner { #[pin] fut: F },
        Refused { response: Option<Response<Full<Bytes>>> },
    }
}

impl<F, RB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<Either<RB, Full<Bytes>>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Proj::Inner { fut } => fut.poll(cx).map(|r| r.map(|res| res.map(Either::Left))),
            Proj::Refused { response } => {
                let res = response.take().unwrap_or_else(unauthorized);
                Poll::Ready(Ok(res.map(Either::Right)))
            }
        }
    }
}

/// The admin listener's optional bearer token (for `/metrics` and `/backends`).
pub fn admin_allowed(token_sha256: Option<&[u8; 32]>, headers: &HeaderMap) -> bool {
    let Some(want) = token_sha256 else {
        return true;
    };
    let Some(key) = presented(headers) else {
        return false;
    };
    let got: [u8; 32] = Sha256::digest(key).into();
    // Compare every byte: no early exit on the first difference.
    got.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(key: &str) -> String {
        hex::encode(Sha256::digest(key.as_bytes()))
    }

    #[test]
    fn keys_are_checked_by_hash() {
        let cfg = AuthConfig {
            keys: vec![KeyConfig {
                name: "team-a".into(),
                sha256: sha("sk-a"),
            }],
        };
        cfg.validate().unwrap();
        let keys = Keys::new(&cfg);
        let mut h = HeaderMap::new();
        assert!(keys.check(&h).is_none());
        h.insert(header::AUTHORIZATION, "Bearer sk-a".parse().unwrap());
        assert_eq!(keys.check(&h).as_deref(), Some("team-a"));
        h.insert(header::AUTHORIZATION, "bearer  sk-a ".parse().unwrap());
        assert_eq!(keys.check(&h).as_deref(), Some("team-a"));
        h.insert(header::AUTHORIZATION, "Bearer sk-b".parse().unwrap());
        assert!(keys.check(&h).is_none());
        h.insert(header::AUTHORIZATION, "Basic c2stYQ==".parse().unwrap());
        assert!(keys.check(&h).is_none());
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "sk-a".parse().unwrap());
        assert_eq!(keys.check(&h).as_deref(), Some("team-a"));
    }

    #[test]
    fn bad_hashes_and_names_are_named() {
        let bad = AuthConfig {
            keys: vec![KeyConfig {
                name: "a".into(),
                sha256: "abc".into(),
            }],
        };
        assert_eq!(bad.validate().unwrap_err().0, "auth.keys[0].sha256");
        let dup = AuthConfig {
            keys: vec![
                KeyConfig {
                    name: "a".into(),
                    sha256: sha("1"),
                },
                KeyConfig {
                    name: "a".into(),
                    sha256: sha("2"),
                },
            ],
        };
        assert_eq!(dup.validate().unwrap_err().0, "auth.keys[1].name");
    }

    #[test]
    fn admin_token() {
        let want = parse_hash(&sha("admin-secret")).unwrap();
        let mut h = HeaderMap::new();
        assert!(admin_allowed(None, &h));
        assert!(!admin_allowed(Some(&want), &h));
        h.insert(
            header::AUTHORIZATION,
            "Bearer admin-secret".parse().unwrap(),
        );
        assert!(admin_allowed(Some(&want), &h));
        h.insert(
            header::AUTHORIZATION,
            "Bearer admin-secreT".parse().unwrap(),
        );
        assert!(!admin_allowed(Some(&want), &h));
    }
}
