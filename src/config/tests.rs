//! The config's own tests: the shipped file, field names in errors, overrides.

use super::*;

#[test]
fn shipped_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/weir.toml");
    let c = Config::load(&path).expect("config/weir.toml must validate");
    let d = Config::default();
    // The shipped file documents every option at its default.
    assert_eq!(c.listen, d.listen);
    assert_eq!(c.admin_listen, d.admin_listen);
    assert_eq!(c.timeouts.connect, d.timeouts.connect);
    assert_eq!(c.timeouts.pool_idle, d.timeouts.pool_idle);
    assert_eq!(c.timeouts.first_token, d.timeouts.first_token);
    assert_eq!(c.timeouts.idle, d.timeouts.idle);
    assert_eq!(c.timeouts.total, d.timeouts.total);
    assert_eq!(c.balance, d.balance);
    assert_eq!(c.slo, d.slo);
    assert_eq!(c.health.interval, d.health.interval);
    assert_eq!(c.health.timeout, d.health.timeout);
    assert_eq!(c.health.unhealthy_threshold, d.health.unhealthy_threshold);
    assert_eq!(c.health.healthy_threshold, d.health.healthy_threshold);
    assert_eq!(c.health.passive_failures, d.health.passive_failures);
    assert_eq!(c.health.ejection_base, d.health.ejection_base);
    assert_eq!(c.health.ejection_max, d.health.ejection_max);
    assert_eq!(c.retries.enabled, d.retries.enabled);
    assert_eq!(c.discovery, d.discovery);
    assert_eq!(c.limits.max_request_body, d.limits.max_request_body);
    assert_eq!(c.limits.header_read_timeout, d.limits.header_read_timeout);
    assert_eq!(c.limits.max_head_bytes, d.limits.max_head_bytes);
    assert_eq!(c.limits.body_read_timeout, d.limits.body_read_timeout);
    assert_eq!(c.limits.max_connections, d.limits.max_connections);
    assert_eq!(c.limits.max_in_flight, d.limits.max_in_flight);
    assert_eq!(c.limits.max_buffered_bytes, d.limits.max_buffered_bytes);
    assert_eq!(c.limits.max_sse_line, d.limits.max_sse_line);
    assert_eq!(c.proxy, d.proxy);
    assert!(c.auth.keys.is_empty() && c.admin.token_sha256.is_empty());
    assert_eq!(c.shutdown_grace, d.shutdown_grace);
    assert_eq!(c.telemetry, d.telemetry);
}

#[test]
fn errors_name_the_field() {
    let bad = r#"
        [[backends]]
        url = "http://127.0.0.1:8000"
        [[backends]]
        url = "ftp://x"
    "#;
    let mut c = Config::parse(bad).unwrap();
    c.normalise();
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("backends[1].url"), "{err}");

    let err = Config::parse("listen = \"127.0.0.1:1\"\nlisten_typo = 1").unwrap_err();
    assert!(err.contains("listen_typo"), "{err}");

    let err = Config::parse("[timeouts]\nconnect = \"three seconds\"").unwrap_err();
    assert!(err.contains("connect"), "{err}");
}

#[test]
fn per_backend_overrides_and_strategy() {
    let text = r#"
        balance = "queue-aware"
        [timeouts]
        idle = "5s"
        [[backends]]
        url = "http://127.0.0.1:8000"
        weight = 3
        timeouts = { first_token = "250ms" }
    "#;
    let mut c = Config::parse(text).unwrap();
    c.normalise();
    c.validate().unwrap();
    assert_eq!(c.balance, Strategy::QueueAware);
    let t = c.timeouts.with(&c.backends[0].timeouts);
    assert_eq!(t.first_token, Duration::from_millis(250));
    assert_eq!(t.idle, Duration::from_secs(5));
    assert_eq!(c.backends[0].weight, 3);
    c.backends[0].timeouts.total = Some(Duration::ZERO);
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("backends[0].timeouts.total"), "{err}");
}

#[test]
fn backend_name_defaults_to_authority() {
    let mut c = Config::parse("[[backends]]\nurl = \"http://10.0.0.1:8000/\"").unwrap();
    c.normalise();
    assert_eq!(c.backends[0].name, "10.0.0.1:8000");
}

#[test]
fn tenant_limits_prices_and_redis_are_checked_and_named() {
    let parse = |text: &str| -> Config {
        let mut c = Config::parse(&format!(
            "[[backends]]\nurl = \"http://127.0.0.1:8000\"\n{text}"
        ))
        .unwrap();
        c.normalise();
        c
    };
    let c = parse(
        "[auth.default_limits]\nrequests_per_minute = 10\nbudget_usd_per_day = 1.5\n\
         [[auth.keys]]\nname = \"a\"\nsha256 = \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"\n\
         limits = { requests_per_minute = 100 }\n\
         [costs.models.\"m\"]\ninput = 1.0\noutput = 2.0\n\
         [limits.redis]\nurl = \"redis://127.0.0.1:6379\"\non_error = \"closed\"\n",
    );
    c.validate().unwrap();
    let l = c.auth.limits_of("a");
    assert_eq!(l.requests_per_minute, Some(100), "the key's own");
    assert_eq!(l.budget_usd_per_day, Some(1.5), "the default's");
    assert_eq!(
        c.limits.redis.as_ref().unwrap().on_error,
        OnStoreError::Closed
    );
    // 1M input tokens, half of them cached at the input price, and 1M output.
    assert_eq!(c.costs.models["m"].cost(1_000_000, 500_000, 1_000_000), 3.0);
    let field = |text: &str| {
        parse(text)
            .validate()
            .unwrap_err()
            .field()
            .map(str::to_string)
    };
    assert_eq!(
        field("[auth.default_limits]\ntokens_per_minute = 0\n").as_deref(),
        Some("auth.default_limits.tokens_per_minute")
    );
    assert_eq!(
        field("[costs.models.\"m\"]\ninput = -1.0\n").as_deref(),
        Some("costs.models.\"m\".input")
    );
    assert_eq!(
        field("[limits.redis]\nurl = \"localhost:6379\"\n").as_deref(),
        Some("limits.redis.url")
    );
    assert_eq!(
        field("[limits.redis]\nurl = \"redis://r\"\ntimeout = \"10s\"\n").as_deref(),
        Some("limits.redis.timeout")
    );
}

#[test]
fn dns_discovery_needs_a_host_name() {
    let text = "[[backends]]\nurl = \"http://vllm.ns.svc.cluster.local:8000\"\ndiscovery = \"dns\"\n\n[discovery]\ninterval = \"2s\"\nnameservers = [\"127.0.0.1:5353\"]\n";
    let mut c = Config::parse(text).unwrap();
    c.normalise();
    c.validate().unwrap();
    assert_eq!(c.backends[0].discovery, DiscoveryKind::Dns);
    assert_eq!(c.backends[0].name, "vllm.ns.svc.cluster.local:8000");
    assert_eq!(c.discovery.interval, Duration::from_secs(2));
    let mut ip = Config::parse(&text.replace("vllm.ns.svc.cluster.local", "10.0.0.1")).unwrap();
    ip.normalise();
    let e = ip.validate().unwrap_err();
    assert_eq!(e.field(), Some("backends[0].discovery"));
    assert!(Config::parse(&text.replace("\"dns\"", "\"srv\"")).is_err());
    assert!(
        Config::parse(&format!("{text}ttl = \"1s\"\n")).is_err(),
        "unknown keys are errors"
    );
}
