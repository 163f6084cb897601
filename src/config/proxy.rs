//! `[proxy]`: which paths the proxy listener passes on to the backends. By default the API
//! surface vLLM serves to clients and nothing else: not its `/metrics`, not its
//! administrative endpoints.

use serde::Deserialize;

use super::ConfigError;

/// The OpenAI, Anthropic and pooling routes, model listing, tokenization, version, health.
pub const API_PATHS: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/responses/*",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/audio/transcriptions",
    "/v1/audio/translations",
    "/pooling",
    "/classify",
    "/score",
    "/v1/score",
    "/rerank",
    "/v1/rerank",
    "/v2/rerank",
    "/v1/models",
    "/v1/models/*",
    "/tokenize",
    "/detokenize",
    "/version",
    "/health",
];

/// `[proxy]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Paths passed on: exact (`/v1/chat/completions`), or a prefix ending in `/*` (any
    /// path below it). `["/*"]` passes every path. Any other path gets a 404 from weir.
    pub paths: Vec<String>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            paths: API_PATHS.iter().map(|p| p.to_string()).collect(),
        }
    }
}

impl ProxyConfig {
    /// Whether `path` (without its query; a trailing `/` does not count) is passed on.
    pub fn allows(&self, path: &str) -> bool {
        let path = match path.trim_end_matches('/') {
            "" => "/",
            p => p,
        };
        self.paths.iter().any(|p| match p.strip_suffix("/*") {
            Some(prefix) => path
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/') && rest.len() > 1),
            None => p == path,
        })
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (i, p) in self.paths.iter().enumerate() {
            let wild = p.strip_suffix("/*").unwrap_or(p);
            if !p.starts_with('/') || wild.contains('*') || p.contains(['?', '#', ' ']) {
                return Err(ConfigError::invalid(
                    format!("proxy.paths[{i}]"),
                    "not a path: one path, or a path ending in /* for every path below it",
                )
                .value(super::error::quoted(p))
                .example("paths = [\"/v1/chat/completions\", \"/v1/models/*\"]"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_surface_passes_and_nothing_else() {
        let c = ProxyConfig::default();
        for ok in [
            "/v1/chat/completions",
            "/v1/chat/completions/",
            "/v1/models/tiny-llama",
            "/v1/responses/resp_1/cancel",
            "/health",
        ] {
            assert!(c.allows(ok), "{ok}");
        }
        for no in [
            "/metrics",
            "/v1/chat/completionsx",
            "/",
            "/reset_prefix_cache",
            "/v1/load_lora_adapter",
            "/server_info",
        ] {
            assert!(!c.allows(no), "{no}");
        }
        let all = ProxyConfig {
            paths: vec!["/*".into()],
        };
        assert!(all.allows("/metrics") && all.allows("/anything/at/all") && !all.allows("/"));
    }

    #[test]
    fn bad_paths_are_named() {
        let c = ProxyConfig {
            paths: vec!["/v1/*/x".into()],
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("proxy.paths[0]")
        );
        let c = ProxyConfig {
            paths: vec!["v1/models".into()],
        };
        assert!(c.validate().is_err());
    }
}
