//! The tenants' series, registered in the gateway's registry beside the others. The `tenant`
//! label takes API key names from the config only (empty when auth is off), never a value a
//! client sends.

use prometheus::{CounterVec, GaugeVec, IntCounterVec, Opts, Registry};

use super::Limit;
use crate::config::{AuthConfig, Costs};

/// `weir_rate_limited_total`, `weir_cost_usd_total`, `weir_limit_store_errors_total`, and the
/// configured budgets and spend ceiling the alerts compare with.
#[derive(Clone)]
pub struct TenantMetrics {
    rate_limited: IntCounterVec,
    cost: CounterVec,
    store_errors: IntCounterVec,
    budget: GaugeVec,
    ceiling: GaugeVec,
}

fn register<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    r.register(Box::new(c.clone()))
        .expect("unique metric names");
    c
}

impl TenantMetrics {
    pub fn new(r: &Registry) -> TenantMetrics {
        let opts = Opts::new;
        let store_errors = IntCounterVec::new(
            opts(
                "weir_limit_store_errors_total",
                "Checks and charges the limit store (Redis) failed (kind: error) or did not answer in time (kind: timeout).",
            ),
            &["kind"],
        )
        .expect("static counter definition");
        for kind in ["error", "timeout"] {
            store_errors.with_label_values(&[kind]);
        }
        TenantMetrics {
            rate_limited: register(r, IntCounterVec::new(
                opts("weir_rate_limited_total", "Requests refused with 429 by a tenant's limit (limit: requests, tokens, concurrency, budget)."),
                &["tenant", "limit"],
            ).expect("static counter definition")),
            cost: register(r, CounterVec::new(
                opts("weir_cost_usd_total", "What finished requests cost in USD, priced with [costs]."),
                &["gen_ai_request_model", "tenant"],
            ).expect("static counter definition")),
            store_errors: register(r, store_errors),
            budget: register(r, GaugeVec::new(
                opts("weir_tenant_budget_usd", "A tenant's configured spend budget in USD (period: day, month)."),
                &["tenant", "period"],
            ).expect("static gauge definition")),
            ceiling: register(r, GaugeVec::new(
                opts("weir_cost_ceiling_usd_per_hour", "[costs] hourly_ceiling_usd: the spend per hour the alert compares with."),
                &[],
            ).expect("static gauge definition")),
        }
    }

    pub fn rate_limited(&self, tenant: &str, limit: Limit) {
        self.rate_limited
            .with_label_values(&[tenant, limit.as_str()])
            .inc();
    }

    pub fn cost(&self, model: &str, tenant: &str, usd: f64) {
        self.cost.with_label_values(&[model, tenant]).inc_by(usd);
    }

    pub fn store_error(&self, kind: &str) {
        self.store_errors.with_label_values(&[kind]).inc();
    }

    /// The budgets and the ceiling of a (new) config.
    pub fn publish(&self, auth: &AuthConfig, costs: &Costs) {
        self.budget.reset();
        for k in &auth.keys {
            let l = auth.limits_of(&k.name);
            let periods = [
                ("day", l.budget_usd_per_day),
                ("month", l.budget_usd_per_month),
            ];
            for (period, usd) in periods {
                if let Some(usd) = usd {
                    self.budget.with_label_values(&[&k.name, period]).set(usd);
                }
            }
        }
        self.ceiling.reset();
        if let Some(c) = costs.hourly_ceiling_usd {
            self.ceiling.with_label_values::<&str>(&[]).set(c);
        }
    }
}
