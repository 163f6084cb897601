//! Reading a gateway's admin listener: `/metrics` (Prometheus text) and `/backends` (JSON:
//! each backend's state, requests in flight and the vLLM queue the gateway scraped).

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use tokio::time::Instant;

use crate::expo::{self, Sample};
use crate::table;

/// The most bytes read from one answer: a gateway with 256 models and a few backends writes
/// a few MiB of `/metrics`; anything far beyond is not a weir to watch.
const MAX_BODY: usize = 64 << 20;

pub type HttpClient = Client<HttpConnector, Empty<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// One gateway's admin listener.
#[derive(Debug, Clone)]
pub struct Target {
    /// As shown in the header: the base URL, without a path.
    pub base: String,
    metrics: Uri,
    backends: Uri,
    /// `Authorization: Bearer ...` for an admin listener that wants a token.
    auth: Option<String>,
}

impl Target {
    /// The admin listener at `url` (`http://host:port`, `host:port`, or either with
    /// `/metrics` on the end).
    pub fn parse(url: &str, token: Option<&str>) -> Result<Target, String> {
        let bad = |why: &dyn std::fmt::Display| format!("--admin {url:?}: {why}");
        let url = url.trim();
        let full = if url.contains("://") {
            url.to_owned()
        } else {
            format!("http://{url}")
        };
        let uri: Uri = full.parse().map_err(|e| bad(&e))?;
        let host = uri.host().unwrap_or_default();
        if uri.scheme_str() != Some("http") || host.is_empty() {
            return Err(bad(&"an http:// URL of weir's admin listener is needed"));
        }
        let path = uri.path().trim_end_matches('/');
        let path = path.strip_suffix("/metrics").unwrap_or(path);
        let authority = uri.authority().map_or(host, |a| a.as_str());
        let base = format!("http://{authority}{path}");
        let at = |p: &str| format!("{base}{p}").parse::<Uri>().map_err(|e| bad(&e));
        Ok(Target {
            metrics: at("/metrics")?,
            backends: at("/backends")?,
            base,
            auth: token.map(|t| format!("Bearer {t}")),
        })
    }
}

/// What one scrape of a gateway read.
#[derive(Debug, Clone)]
pub struct Scrape {
    /// When `/metrics` was read: rates divide by the time between two of these.
    pub at: Instant,
    pub samples: Vec<Sample>,
    /// `None` when `/backends` could not be read (a weir without it, say): the view then
    /// takes backend health from `weir_backend_up` and has no queue to show.
    pub backends: Option<Vec<BackendState>>,
}

/// One backend in `/backends`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct BackendState {
    pub name: String,
    /// `up`, `down` (failed its health checks) or `ejected` (passive ejection).
    pub state: String,
    /// Requests sent to it whose response has not ended.
    pub outstanding: u64,
    /// vLLM's queue as last scraped by the gateway (queue-aware balancing scrapes it).
    pub queue: Option<Queue>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Queue {
    pub waiting: u64,
    pub running: u64,
    pub kv_cache_usage: f64,
}

#[derive(Deserialize)]
struct BackendsDoc {
    backends: Vec<BackendState>,
}

/// Reads `/metrics` and `/backends` of `target` together, within `timeout`. An error is a
/// line for the header: what failed and why.
pub async fn scrape(
    client: &HttpClient,
    target: &Target,
    timeout: Duration,
) -> Result<Scrape, String> {
    let work = async {
        let (metrics, backends) = tokio::join!(
            get(client, target, &target.metrics),
            get(client, target, &target.backends)
        );
        let at = Instant::now();
        let samples = expo::parse_keeping(&metrics?, |name| table::READ.contains(&name))?;
        let backends = backends
            .ok()
            .and_then(|text| serde_json::from_str::<BackendsDoc>(&text).ok())
            .map(|d| d.backends);
        Ok(Scrape {
            at,
            samples,
            backends,
        })
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no answer within {}",
                humantime::format_duration(timeout)
            ))
        })
}

/// GET `uri` as text; an answer other than 200 is an error naming its status.
async fn get(client: &HttpClient, target: &Target, uri: &Uri) -> Result<String, String> {
    let mut req = Request::get(uri.clone());
    if let Some(auth) = &target.auth {
        req = req.header(header::AUTHORIZATION, auth);
    }
    let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
    let res = client.request(req).await.map_err(|e| describe(&e))?;
    let status = res.status();
    let body = Limited::new(res.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("reading {}: {e}", uri.path()))?
        .to_bytes();
    match status {
        StatusCode::OK => {
            String::from_utf8(body.to_vec()).map_err(|_| format!("{} is not UTF-8", uri.path()))
        }
        StatusCode::UNAUTHORIZED => Err(format!(
            "{}: 401, the admin listener wants a token (--token or WEIR_ADMIN_TOKEN)",
            uri.path()
        )),
        s => Err(format!("{}: {s}", uri.path())),
    }
}

/// A client error with its cause ("connection refused"), which hyper-util's own message
/// leaves out.
fn describe(e: &hyper_util::client::legacy::Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg = format!("{msg}: {s}");
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_take_a_base_url_an_address_or_the_metrics_url() {
        for url in [
            "http://127.0.0.1:9464",
            "127.0.0.1:9464",
            "http://127.0.0.1:9464/metrics/",
        ] {
            let t = Target::parse(url, None).unwrap();
            assert_eq!(t.base, "http://127.0.0.1:9464");
            assert_eq!(t.metrics, "http://127.0.0.1:9464/metrics");
            assert_eq!(t.backends, "http://127.0.0.1:9464/backends");
        }
    }

    #[test]
    fn bad_targets_are_refused_with_the_url() {
        for url in ["https://gw:9464", "http://", "ht tp://x", ""] {
            let e = Target::parse(url, None).unwrap_err();
            assert!(e.contains("--admin"), "{url}: {e}");
        }
    }

    #[test]
    fn backends_read_from_the_gateway_json() {
        let doc = r#"{"strategy":"p2c","backends":[{"name":"a","url":"http://x","up":true,
            "state":"up","weight":1,"outstanding":3,"max_concurrency":0,"models":null,
            "queue":{"waiting":2,"running":5,"kv_cache_usage":0.25},"ejections":0,"last_error":null}]}"#;
        let d: BackendsDoc = serde_json::from_str(doc).unwrap();
        assert_eq!(d.backends[0].outstanding, 3);
        assert_eq!(d.backends[0].queue.as_ref().unwrap().waiting, 2);
    }
}
