//! `[auth]`: the client API keys of the proxy listener, by name and SHA-256 hash.

use serde::Deserialize;

use super::error::{ConfigError, quoted};
use super::tenants::TenantLimits;
use super::{HASH_EXAMPLE, HASH_REASON};

/// `[[auth.keys]]`: a client key, by name and hash.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Shown as the `tenant` label and in logs.
    pub name: String,
    /// Hex SHA-256 of the key (`printf %s "$KEY" | sha256sum`).
    pub sha256: String,
    /// What this key may spend (`limits = { requests_per_minute = 100 }`); what it leaves
    /// out comes from `[auth.default_limits]`.
    #[serde(default)]
    pub limits: TenantLimits,
}

/// `[auth]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Empty: no auth on the proxy listener.
    pub keys: Vec<KeyConfig>,
    /// The limits of every key, where its own `limits` leave one out.
    pub default_limits: TenantLimits,
}

impl AuthConfig {
    /// Checks the hashes; the error names the bad entry.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.default_limits.validate("auth.default_limits")?;
        let mut names = std::collections::HashSet::new();
        for (i, k) in self.keys.iter().enumerate() {
            if parse_hash(&k.sha256).is_none() {
                return Err(
                    ConfigError::invalid(format!("auth.keys[{i}].sha256"), HASH_REASON)
                        .value(quoted(&k.sha256))
                        .example(HASH_EXAMPLE),
                );
            }
            k.limits.validate(&format!("auth.keys[{i}].limits"))?;
            let reason = if k.name.is_empty() || k.name.len() > 64 {
                "must be 1 to 64 bytes"
            } else if !names.insert(&k.name) {
                "another key has this name: each key's name must be its own"
            } else {
                continue;
            };
            return Err(ConfigError::invalid(format!("auth.keys[{i}].name"), reason)
                .value(quoted(&k.name))
                .example("name = \"team-search\""));
        }
        Ok(())
    }
}

/// Hex SHA-256 → bytes.
pub fn parse_hash(hex_digest: &str) -> Option<[u8; 32]> {
    let v = hex::decode(hex_digest.trim()).ok()?;
    v.try_into().ok()
}

impl AuthConfig {
    /// The limits of the key named `name`: its own, completed with the defaults.
    pub fn limits_of(&self, name: &str) -> TenantLimits {
        let own = self.keys.iter().find(|k| k.name == name);
        own.map_or(self.default_limits, |k| k.limits.or(&self.default_limits))
    }
}
