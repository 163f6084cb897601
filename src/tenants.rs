//! Tenants' limits: requests and tokens per minute, requests in flight and a spend budget
//! per day and per month, for each API key. The [`Limiter`] lives as long as the process
//! (its counts survive a reload; the limits themselves are read from each request's config)
//! and checks a request in one step against one store: this process's memory (`local.rs`),
//! or Redis shared by every replica (`redis.rs`). A request that passes holds a [`Ticket`]
//! until it is recorded; the ticket then corrects the tokens charged at admission with those
//! the response really used, gives back the concurrency slot and charges the spend.
//!
//! The windows are sliding, in one-second buckets (`window.rs`: why, and how exact).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod calendar;
mod headers;
mod local;
mod metrics;
mod redis;
mod window;

pub use headers::{RateHeaders, openai_duration};
pub use metrics::TenantMetrics;
pub use window::Room;

use crate::config::{OnStoreError, RedisConfig, TenantLimits};
use calendar::Period;

/// The limit a request was over: the `limit` label of `weir_rate_limited_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Requests,
    Tokens,
    Concurrent,
    BudgetDay,
    BudgetMonth,
}

impl Limit {
    /// The `limit` label of `weir_rate_limited_total`, as the metrics contract names it: a
    /// day's and a month's budget are both `budget` (the client's error says which).
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Requests => "requests",
            Limit::Tokens => "tokens",
            Limit::Concurrent => "concurrency",
            Limit::BudgetDay | Limit::BudgetMonth => "budget",
        }
    }

    /// What the client is told it ran into.
    pub fn describe(self) -> &'static str {
        match self {
            Limit::Requests => "requests per minute",
            Limit::Tokens => "tokens per minute",
            Limit::Concurrent => "concurrent requests",
            Limit::BudgetDay => "daily spend budget",
            Limit::BudgetMonth => "monthly spend budget",
        }
    }

    /// The Redis script's number for it (0: none).
    fn from_code(code: i64) -> Option<Limit> {
        Some(match code {
            1 => Limit::Requests,
            2 => Limit::Tokens,
            3 => Limit::Concurrent,
            4 => Limit::BudgetDay,
            5 => Limit::BudgetMonth,
            _ => return None,
        })
    }
}

/// USD → nano-USD, the unit spend is counted in (integers add up exactly in Redis).
fn nano_usd(usd: f64) -> u64 {
    (usd * 1e9).round() as u64
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A request asking to be admitted.
#[derive(Debug, Clone)]
pub struct Ask {
    pub tenant: Arc<str>,
    pub limits: TenantLimits,
    /// Estimated tokens (prompt and output), charged now and corrected at the end.
    pub tokens: u64,
    /// Names its concurrency slot in Redis.
    pub lease: u64,
    /// A slot whose request never ends (a replica died) lapses after this long.
    pub lease_ttl: Duration,
}

/// How the limit store failed: the `kind` label of `weir_limit_store_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StoreFailure {
    /// No answer within `[limits.redis] timeout`.
    Timeout,
    /// Refused, unreachable, or an error answer.
    Error,
}

impl StoreFailure {
    fn of(e: &::redis::RedisError) -> StoreFailure {
        if e.is_timeout() {
            StoreFailure::Timeout
        } else {
            StoreFailure::Error
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            StoreFailure::Timeout => "timeout",
            StoreFailure::Error => "error",
        }
    }
}

/// A store's answer.
#[derive(Debug, Clone, Copy)]
struct Verdict {
    refused: Option<(Limit, Duration)>,
    headers: RateHeaders,
    /// The second the tokens were counted in (on the store's clock).
    at: u64,
}

impl Verdict {
    fn unchecked(now_ms: u64) -> Verdict {
        Verdict {
            refused: None,
            headers: RateHeaders::default(),
            at: now_ms / 1000,
        }
    }
}

/// What a finished request charges.
#[derive(Debug, Clone)]
struct Charge {
    tenant: Arc<str>,
    at: u64,
    tokens_delta: i64,
    /// The Redis concurrency slot to give back.
    lease: Option<u64>,
    /// Whether a local concurrency slot was taken.
    release: bool,
    nano_usd: u64,
}

enum Store {
    Local(local::Local),
    Redis(redis::Redis),
}

/// What became of a request's check.
pub enum Decision {
    Admitted(Ticket),
    Refused {
        limit: Limit,
        retry_after: Duration,
        headers: RateHeaders,
    },
    /// The store failed and `on_error = "closed"`.
    StoreDown,
}

/// Checks tenants against their limits, for the life of the process.
pub struct Limiter {
    store: Store,
    on_error: OnStoreError,
    timeout: Duration,
    pub metrics: TenantMetrics,
    /// No store error is logged before this (ms since the epoch): one line per interval.
    quiet_until: AtomicU64,
}

/// How often a failing store is logged.
const LOG_EVERY: Duration = Duration::from_secs(10);

impl Limiter {
    /// A local limiter, or one on Redis when configured (an unusable URL is a config error,
    /// caught by `validate()` before this).
    pub fn new(redis: Option<&RedisConfig>, metrics: TenantMetrics) -> Limiter {
        let shared = redis.and_then(|cfg| match redis::Redis::new(cfg) {
            Ok(r) => Some((r, cfg)),
            Err(e) => {
                tracing::error!(error = %e, "cannot use [limits.redis]: limits are local");
                None
            }
        });
        let (store, on_error, timeout) = match shared {
            Some((r, cfg)) => (Store::Redis(r), cfg.on_error, cfg.timeout),
            None => (
                Store::Local(local::Local::default()),
                OnStoreError::Open,
                Duration::ZERO,
            ),
        };
        Limiter {
            store,
            on_error,
            timeout,
            metrics,
            quiet_until: AtomicU64::new(0),
        }
    }

    /// Whether the limits are held in Redis.
    pub fn shared(&self) -> bool {
        matches!(self.store, Store::Redis(_))
    }

    /// Checks and, when it passes, counts one request of `ask.tenant`; never waits longer
    /// than the store's timeout.
    pub async fn admit(self: &Arc<Self>, ask: Ask) -> Decision {
        let now = now_ms();
        let verdict = match &self.store {
            Store::Local(l) => Ok(l.admit(&ask, now)),
            Store::Redis(r) => {
                match tokio::time::timeout(self.timeout, r.admit(&ask, &Period::at(now))).await {
                    Ok(Ok(v)) => Ok(v),
                    Ok(Err(e)) => Err((StoreFailure::of(&e), e.to_string())),
                    Err(_) => Err((StoreFailure::Timeout, self.no_answer())),
                }
            }
        };
        let (verdict, checked) = match verdict {
            Ok(v) => (v, true),
            Err((kind, e)) => {
                self.store_failed("admit", kind, &e);
                if self.on_error == OnStoreError::Closed {
                    return Decision::StoreDown;
                }
                (Verdict::unchecked(now), false)
            }
        };
        if let Some((limit, retry_after)) = verdict.refused {
            self.metrics.rate_limited(&ask.tenant, limit);
            return Decision::Refused {
                limit,
                retry_after,
                headers: verdict.headers,
            };
        }
        let shared = self.shared();
        Decision::Admitted(Ticket {
            limiter: self.clone(),
            charge: Some(Charge {
                tenant: ask.tenant,
                at: verdict.at,
                tokens_delta: -(ask.tokens as i64),
                lease: (checked && shared).then_some(ask.lease),
                release: checked && !shared,
                nano_usd: 0,
            }),
            headers: verdict.headers,
            estimate: if checked { ask.tokens } else { 0 },
        })
    }

    fn no_answer(&self) -> String {
        format!("no answer within {:?}", self.timeout)
    }

    /// Counts a failure of the store by kind and logs it (once per interval) with the step
    /// that failed (`admit` or `settle`).
    fn store_failed(&self, op: &str, kind: StoreFailure, error: &str) {
        self.metrics.store_error(kind.as_str());
        let now = now_ms();
        let quiet = self.quiet_until.load(Ordering::Relaxed);
        let next = now + LOG_EVERY.as_millis() as u64;
        if now >= quiet
            && self
                .quiet_until
                .compare_exchange(quiet, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let on_error = match self.on_error {
                OnStoreError::Open => "serving unchecked",
                OnStoreError::Closed => "refusing with 503",
            };
            tracing::warn!(
                op,
                error,
                on_error,
                "the limit store (Redis) failed; logged once per 10s"
            );
        }
    }

    /// Charges a finished request, off the request's path.
    fn settle(self: &Arc<Self>, c: Charge) {
        match &self.store {
            Store::Local(l) => l.settle(&c, now_ms()),
            Store::Redis(_) => {
                let Ok(rt) = tokio::runtime::Handle::try_current() else {
                    return;
                };
                let me = self.clone();
                rt.spawn(async move {
                    let Store::Redis(r) = &me.store else { return };
                    let p = Period::at(now_ms());
                    let result = tokio::time::timeout(me.timeout, r.settle(&c, &p)).await;
                    match result {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            me.store_failed("settle", StoreFailure::of(&e), &e.to_string())
                        }
                        Err(_) => me.store_failed("settle", StoreFailure::Timeout, &me.no_answer()),
                    }
                });
            }
        }
    }
}

/// An admitted request's hold on its tenant's limits, until it is recorded.
pub struct Ticket {
    limiter: Arc<Limiter>,
    charge: Option<Charge>,
    pub headers: RateHeaders,
    /// Tokens charged at admission.
    estimate: u64,
}

impl Ticket {
    /// Tokens charged at admission.
    pub fn estimate(&self) -> u64 {
        self.estimate
    }

    /// The request used `tokens` and cost `usd`: the charge is corrected to that.
    pub fn settle(mut self, tokens: u64, usd: f64) {
        self.settle_with(tokens, usd);
    }

    fn settle_with(&mut self, tokens: u64, usd: f64) {
        if let Some(mut c) = self.charge.take() {
            c.tokens_delta = tokens as i64 - self.estimate as i64;
            c.nano_usd = nano_usd(usd.max(0.0));
            self.limiter.settle(c);
        }
    }
}

impl Drop for Ticket {
    /// A ticket dropped unsettled gave its tenant nothing: all of it is given back.
    fn drop(&mut self) {
        self.settle_with(0, 0.0);
    }
}

/// What a request runs up with its tenant and its model's price, carried on its record
/// and closed when it is recorded.
#[derive(Default)]
pub struct Billing {
    /// Held while the request is admitted.
    pub ticket: Option<Ticket>,
    /// Written on every response of a tenant with a per-minute limit.
    pub headers: Option<RateHeaders>,
    /// The requested model's price, when `[costs]` has one.
    pub price: Option<crate::config::Price>,
    /// Prompt tokens estimated from the body: charged when no usage says otherwise.
    pub prompt_estimate: u64,
}

/// The tokens a finished request used, as its record has them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Used {
    pub input: Option<u64>,
    pub cached: Option<u64>,
    pub output: Option<u64>,
    /// Whether a backend got the request (else it used nothing).
    pub sent: bool,
}

impl Billing {
    /// The request's cost in USD (None without a price), its tenant's charge corrected to
    /// what it used.
    pub fn close(&mut self, used: Used) -> Option<f64> {
        let input = used
            .input
            .unwrap_or(if used.sent { self.prompt_estimate } else { 0 });
        let output = used.output.unwrap_or(0);
        let cost = self
            .price
            .map(|p| p.cost(input, used.cached.unwrap_or(0), output))
            .filter(|_| used.sent);
        if let Some(t) = self.ticket.take() {
            t.settle(input + output, cost.unwrap_or(0.0));
        }
        cost
    }
}
