//! The store shared by every replica: Redis. Each check is one round trip — one Lua script
//! (EVALSHA; the script is loaded on first use and again after a Redis restart), atomic in
//! Redis, over a multiplexed connection that reconnects by itself. The script runs the
//! sliding window of `window.rs` on Redis's own clock (`TIME`), so replicas whose clocks
//! differ still count in the same seconds; days and months are named by the replica's clock
//! (`calendar.rs`), which only matters within a clock skew of midnight.
//!
//! Keys, per tenant, all in one hash slot (`{prefix:tenant}`): `:rpm` and `:tpm` (hashes of
//! second → count, expiring a minute after their last write), `:conc` (a sorted set of the
//! leases of requests in flight, scored by when each lapses, so a replica that dies does not
//! hold its slots for ever), `:d:<day>` and `:m:<month>` (nano-USD spent).

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisResult, Script};

use super::calendar::Period;
use super::window::Room;
use super::{Ask, Charge, Limit, RateHeaders, Verdict, nano_usd};
use crate::config::RedisConfig;

/// KEYS: rpm, tpm, conc, day, month. ARGV: rpm limit, tpm limit, tokens, concurrency limit,
/// lease, lease ttl (ms), day budget, month budget (nano-USD); 0 (-1 for budgets): none.
/// Returns {refused (0, or Limit's code), wait ms, second, rpm remaining, rpm reset ms,
/// tpm remaining, tpm reset ms}.
const ADMIT: &str = r#"
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec * 1000 + math.floor(tonumber(t[2]) / 1000)
local function window(key)
  local all = redis.call('HGETALL', key)
  local used, b, stale = 0, {}, {}
  for i = 1, #all, 2 do
    local s, n = tonumber(all[i]), tonumber(all[i + 1])
    if s + 60 <= sec then stale[#stale + 1] = all[i] else used = used + n; b[#b + 1] = {s, n} end
  end
  if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
  table.sort(b, function(x, y) return x[1] < y[1] end)
  return used, b
end
local function wait(used, b, cost, limit)
  local freed = 0
  for _, x in ipairs(b) do
    freed = freed + x[2]
    if used - freed + cost <= limit then return (x[1] + 60) * 1000 - now end
  end
  return 60000
end
local function reset(b) if #b == 0 then return 0 end return (b[1][1] + 60) * 1000 - now end
local rpm, tpm, tokens, conc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local bday, bmonth = tonumber(ARGV[7]), tonumber(ARGV[8])
local rused, rb = window(KEYS[1])
local tused, tb = window(KEYS[2])
local refused, ms = 0, 0
if bday >= 0 and tonumber(redis.call('GET', KEYS[4]) or '0') >= bday then refused = 4
elseif bmonth >= 0 and tonumber(redis.call('GET', KEYS[5]) or '0') >= bmonth then refused = 5
else
  if conc > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
    if redis.call('ZCARD', KEYS[3]) >= conc then refused, ms = 3, 1000 end
  end
  if refused == 0 and rpm > 0 and rused + 1 > rpm then refused, ms = 1, wait(rused, rb, 1, rpm) end
  if refused == 0 and tpm > 0 and tused + tokens > tpm then refused, ms = 2, wait(tused, tb, tokens, tpm) end
end
if refused == 0 then
  if rpm > 0 then
    redis.call('HINCRBY', KEYS[1], sec, 1); redis.call('EXPIRE', KEYS[1], 61)
    rused = rused + 1; if #rb == 0 then rb = {{sec, 1}} end
  end
  if tpm > 0 then
    redis.call('HINCRBY', KEYS[2], sec, tokens); redis.call('EXPIRE', KEYS[2], 61)
    tused = tused + tokens; if #tb == 0 then tb = {{sec, tokens}} end
  end
  if conc > 0 then
    redis.call('ZADD', KEYS[3], now + tonumber(ARGV[6]), ARGV[5])
    redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[6]))
  end
end
return {refused, ms, sec, math.max(rpm - rused, 0), reset(rb), math.max(tpm - tused, 0), reset(tb)}
"#;

/// KEYS: tpm, conc, day, month. ARGV: second of admission, token correction, lease (or ''),
/// nano-USD, day ttl (s), month ttl (s).
const SETTLE: &str = r#"
local sec = tonumber(redis.call('TIME')[1])
local at, delta = tonumber(ARGV[1]), tonumber(ARGV[2])
if delta ~= 0 then
  if at + 60 > sec then
    if redis.call('HINCRBY', KEYS[1], at, delta) < 0 then redis.call('HSET', KEYS[1], at, 0) end
  elseif delta > 0 then
    redis.call('HINCRBY', KEYS[1], sec, delta)
  end
  redis.call('EXPIRE', KEYS[1], 61)
end
if ARGV[3] ~= '' then redis.call('ZREM', KEYS[2], ARGV[3]) end
local n = tonumber(ARGV[4])
if n > 0 then
  redis.call('INCRBY', KEYS[3], n); redis.call('EXPIRE', KEYS[3], tonumber(ARGV[5]))
  redis.call('INCRBY', KEYS[4], n); redis.call('EXPIRE', KEYS[4], tonumber(ARGV[6]))
end
return 1
"#;

/// The shared store.
pub struct Redis {
    conn: ConnectionManager,
    prefix: String,
    admit: Script,
    settle: Script,
}

impl Redis {
    /// Connects lazily (the first request does), so that weir starts while Redis is down.
    pub fn new(cfg: &RedisConfig) -> RedisResult<Redis> {
        let client = redis::Client::open(cfg.url.as_str())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.timeout))
            .set_response_timeout(Some(cfg.timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        Ok(Redis {
            conn: ConnectionManager::new_lazy_with_config(client, config)?,
            prefix: cfg.key_prefix.clone(),
            admit: Script::new(ADMIT),
            settle: Script::new(SETTLE),
        })
    }

    fn key(&self, tenant: &str, what: &str) -> String {
        format!("{{{}:{tenant}}}:{what}", self.prefix)
    }

    fn periods(&self, tenant: &str, p: &Period) -> [String; 2] {
        [
            self.key(tenant, &format!("d:{}", p.day)),
            self.key(tenant, &format!("m:{}", p.month)),
        ]
    }

    pub async fn admit(&self, ask: &Ask, p: &Period) -> RedisResult<Verdict> {
        let l = &ask.limits;
        let t = &*ask.tenant;
        let [day, month] = self.periods(t, p);
        let budget = |b: Option<f64>| b.map_or(-1, |b| nano_usd(b) as i64);
        let (refused, wait, sec, rrem, rreset, trem, treset): (i64, u64, u64, u64, u64, u64, u64) =
            self.admit
                .key(self.key(t, "rpm"))
                .key(self.key(t, "tpm"))
                .key(self.key(t, "conc"))
                .key(day)
                .key(month)
                .arg(l.requests_per_minute.unwrap_or(0))
                .arg(l.tokens_per_minute.unwrap_or(0))
                .arg(ask.tokens)
                .arg(l.max_concurrent.unwrap_or(0))
                .arg(ask.lease)
                .arg(ask.lease_ttl.as_millis() as u64)
                .arg(budget(l.budget_usd_per_day))
                .arg(budget(l.budget_usd_per_month))
                .invoke_async(&mut self.conn.clone())
                .await?;
        let room = |limit: Option<u64>, remaining, reset| {
            limit.map(|limit| Room {
                limit,
                remaining,
                reset: Duration::from_millis(reset),
            })
        };
        let refused = Limit::from_code(refused).map(|limit| match limit {
            Limit::BudgetDay => (limit, p.until_day_end),
            Limit::BudgetMonth => (limit, p.until_month_end),
            _ => (limit, Duration::from_millis(wait)),
        });
        Ok(Verdict {
            refused,
            headers: RateHeaders {
                requests: room(l.requests_per_minute, rrem, rreset),
                tokens: room(l.tokens_per_minute, trem, treset),
            },
            at: sec,
        })
    }

    pub async fn settle(&self, c: &Charge, p: &Period) -> RedisResult<()> {
        let t = &*c.tenant;
        let [day, month] = self.periods(t, p);
        let lease = c.lease.map(|l| l.to_string()).unwrap_or_default();
        let ttl = |d: Duration| d.as_secs() + 86_400;
        self.settle
            .key(self.key(t, "tpm"))
            .key(self.key(t, "conc"))
            .key(day)
            .key(month)
            .arg(c.at)
            .arg(c.tokens_delta)
            .arg(lease)
            .arg(c.nano_usd)
            .arg(ttl(p.until_day_end))
            .arg(ttl(p.until_month_end))
            .invoke_async::<i64>(&mut self.conn.clone())
            .await?;
        Ok(())
    }
}
