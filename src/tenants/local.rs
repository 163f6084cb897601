//! The store of a single process: each tenant's windows, requests in flight and spend in
//! memory, under one lock held for a few comparisons. Exact for this process; with N
//! replicas each holds its own, so a tenant gets up to N times its limits
//! (`[limits.redis]` shares them).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::calendar::Period;
use super::window::Window;
use super::{Ask, Charge, Limit, RateHeaders, Verdict, nano_usd};

/// One tenant's counts.
#[derive(Debug, Default)]
struct Account {
    requests: Window,
    tokens: Window,
    in_flight: u64,
    /// (day, nano-USD spent that day), and the same per month.
    day: (u64, u64),
    month: (u64, u64),
}

impl Account {
    fn spent(&self, p: &Period) -> (u64, u64) {
        let of = |(at, n): (u64, u64), now: u64| if at == now { n } else { 0 };
        (of(self.day, p.day), of(self.month, p.month))
    }

    /// The first limit `ask` is over, and how long until it would not be.
    fn over(&mut self, ask: &Ask, now_ms: u64, p: &Period) -> Option<(Limit, std::time::Duration)> {
        let l = &ask.limits;
        let (day, month) = self.spent(p);
        if l.budget_usd_per_day.is_some_and(|b| day >= nano_usd(b)) {
            return Some((Limit::BudgetDay, p.until_day_end));
        }
        if l.budget_usd_per_month.is_some_and(|b| month >= nano_usd(b)) {
            return Some((Limit::BudgetMonth, p.until_month_end));
        }
        if l.max_concurrent.is_some_and(|m| self.in_flight >= m) {
            return Some((Limit::Concurrent, std::time::Duration::from_secs(1)));
        }
        if let Some(rpm) = l.requests_per_minute {
            if let Err(wait) = self.requests.check(now_ms, 1, rpm) {
                return Some((Limit::Requests, wait));
            }
        }
        if let Some(tpm) = l.tokens_per_minute {
            if let Err(wait) = self.tokens.check(now_ms, ask.tokens, tpm) {
                return Some((Limit::Tokens, wait));
            }
        }
        None
    }
}

/// Every tenant's account (keys are configured names only: bounded by the config).
#[derive(Debug, Default)]
pub struct Local(Mutex<HashMap<Arc<str>, Account>>);

impl Local {
    pub fn admit(&self, ask: &Ask, now_ms: u64) -> Verdict {
        let p = Period::at(now_ms);
        let Ok(mut all) = self.0.lock() else {
            return Verdict::unchecked(now_ms);
        };
        let a = all.entry(ask.tenant.clone()).or_default();
        let refused = a.over(ask, now_ms, &p);
        if refused.is_none() {
            a.requests.add(now_ms, 1);
            a.tokens.add(now_ms, ask.tokens);
            a.in_flight += 1;
        }
        let l = &ask.limits;
        Verdict {
            refused,
            headers: RateHeaders {
                requests: l.requests_per_minute.map(|n| a.requests.room(now_ms, n)),
                tokens: l.tokens_per_minute.map(|n| a.tokens.room(now_ms, n)),
            },
            at: now_ms / 1000,
        }
    }

    pub fn settle(&self, c: &Charge, now_ms: u64) {
        let p = Period::at(now_ms);
        let Ok(mut all) = self.0.lock() else { return };
        let Some(a) = all.get_mut(&c.tenant) else {
            return;
        };
        a.tokens.correct(now_ms, c.at, c.tokens_delta);
        if c.release {
            a.in_flight = a.in_flight.saturating_sub(1);
        }
        let (day, month) = a.spent(&p);
        a.day = (p.day, day + c.nano_usd);
        a.month = (p.month, month + c.nano_usd);
    }
}
