//! What a reload cannot change: the fields read once, when the gateway starts (its
//! listeners, the connection limits of its servers, the histogram buckets the SLO thresholds
//! add, the histograms' labels, the trace and metric pipelines). A reload keeps their running
//! values and names them.

use super::Config;

impl Config {
    /// Puts back `running`'s value of every field fixed at start and returns the names of
    /// those this config had changed: the reload applies the rest, and says which need a
    /// restart.
    pub fn keep_fixed_at_start(&mut self, running: &Config) -> Vec<&'static str> {
        let mut changed = Vec::new();
        macro_rules! keep {
            ($($name:literal => $($field:ident).+),* $(,)?) => {$(
                if self.$($field).+ != running.$($field).+ {
                    changed.push($name);
                    self.$($field).+ = running.$($field).+.clone();
                }
            )*};
        }
        keep! {
            "listen" => listen,
            "admin_listen" => admin_listen,
            "shutdown_grace" => shutdown_grace,
            "scheduler" => scheduler,
            "workers" => workers,
            "limits.max_connections" => limits.max_connections,
            "limits.max_head_bytes" => limits.max_head_bytes,
            "limits.header_read_timeout" => limits.header_read_timeout,
            "limits.redis" => limits.redis,
            "slo" => slo,
            "telemetry" => telemetry,
            "metrics.histogram_backend" => metrics.histogram_backend,
        }
        // A listener's certificate and key are read again on every reload; whether it speaks
        // TLS at all is fixed at start.
        if self.tls.is_some() != running.tls.is_some() {
            changed.push("tls");
            self.tls = running.tls.clone();
        }
        if self.admin.tls.is_some() != running.admin.tls.is_some() {
            changed.push("admin.tls");
            self.admin.tls = running.admin.tls.clone();
        }
        changed
    }
}
