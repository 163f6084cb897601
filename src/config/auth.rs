//! `[auth]`: the client API keys of the proxy listener, by name and SHA-256 hash.

use serde::Deserialize;

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
