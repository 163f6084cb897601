//! The tenant's limits, checked once the body is read (its size and `max_tokens` give the
//! tokens to charge) and before the request takes a slot in flight: admitted (the ticket
//! goes on the record, settled when it is recorded) or refused with a 429 that says which
//! limit and when to retry. The model's price goes on the record here too.

use crate::error::GatewayError;
use crate::record::Exchange;
use crate::state::{AppState, Shared};
use crate::tenants::{Ask, Decision};

use super::UpBody;

/// Bytes of a prompt per token, for the estimate charged at admission (corrected later).
const BYTES_PER_TOKEN: usize = 4;

pub(super) async fn check(
    state: &AppState,
    shared: &Shared,
    body: &UpBody,
    ex: &mut Exchange,
) -> Result<(), GatewayError> {
    let config = &shared.config;
    let billing = &mut ex.billing;
    billing.price = ex
        .model
        .as_deref()
        .and_then(|m| config.costs.models.get(m))
        .copied();
    if let UpBody::Bytes(b) = body {
        billing.prompt_estimate = b.len().div_ceil(BYTES_PER_TOKEN) as u64;
    }
    let Some(tenant) = ex.tenant.clone() else {
        return Ok(());
    };
    let limits = config.auth.limits_of(&tenant);
    if limits.is_empty() {
        return Ok(());
    }
    let output = ex
        .max_tokens
        .unwrap_or(0)
        .saturating_mul(u64::from(ex.watch.n.max(1)));
    let ask = Ask {
        tenant,
        limits,
        tokens: billing.prompt_estimate.saturating_add(output),
        lease: fastrand::u64(..),
        lease_ttl: config.timeouts.total + std::time::Duration::from_secs(60),
    };
    // Boxed: the store's round trip is only made for a limited tenant; every request's
    // future would carry its state otherwise.
    match Box::pin(state.limiter.admit(ask)).await {
        Decision::Admitted(ticket) => {
            ex.billing.headers = Some(ticket.headers);
            ex.billing.ticket = Some(ticket);
            Ok(())
        }
        Decision::Refused {
            limit,
            retry_after,
            headers,
        } => {
            ex.billing.headers = Some(headers);
            Err(GatewayError::RateLimited { limit, retry_after })
        }
        Decision::StoreDown => Err(GatewayError::LimitStore),
    }
}
