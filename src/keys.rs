//! API keys: a client's key is checked by its SHA-256 against the configured ones (the key
//! itself is never kept), giving the request's tenant; the admin listener's optional token
//! is checked the same way. Used by the auth gate (`gate.rs`) and the admin listener.

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderMap, header};
use sha2::{Digest, Sha256};

use crate::config::{AuthConfig, parse_hash};

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
            keys: vec![crate::config::KeyConfig {
                name: "team-a".into(),
                sha256: sha("sk-a"),
                ..Default::default()
            }],
            ..Default::default()
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
            keys: vec![crate::config::KeyConfig {
                name: "a".into(),
                sha256: "abc".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            bad.validate().unwrap_err().field(),
            Some("auth.keys[0].sha256")
        );
        let dup = AuthConfig {
            keys: vec![
                crate::config::KeyConfig {
                    name: "a".into(),
                    sha256: sha("1"),
                    ..Default::default()
                },
                crate::config::KeyConfig {
                    name: "a".into(),
                    sha256: sha("2"),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert_eq!(
            dup.validate().unwrap_err().field(),
            Some("auth.keys[1].name")
        );
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
