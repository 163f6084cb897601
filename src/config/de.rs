//! Reading durations and listen addresses from the file with errors that show a good value:
//! serde's own say `expected a duration` or `invalid socket address syntax` and stop there.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, de::Error as _};

/// The examples every duration error gives.
const DURATION_EXAMPLES: &str = "\"500ms\", \"30s\", \"2m\" or \"1h 30m\"";

/// `"30s"` → 30 s, with an example of the syntax when it is not a duration.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| {
        format!("{text:?} is not a duration ({e}): write a number and a unit, such as {DURATION_EXAMPLES}")
    })
}

/// `127.0.0.1:8080` → the address, or why not with an address that would do. A host name is
/// refused (the gateway binds one address; a name could mean several).
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = text.parse() {
        return Ok(a);
    }
    let port = text.rsplit_once(':').map(|(_, p)| p).unwrap_or("8080");
    let port = if port.parse::<u16>().is_ok() {
        port
    } else {
        "8080"
    };
    let host = text.rsplit_once(':').map_or(text, |(h, _)| h);
    let hint = if host == "localhost" {
        format!("use 127.0.0.1:{port} (or [::1]:{port})")
    } else if !host.is_empty() && host.parse::<std::net::IpAddr>().is_err() {
        format!(
            "a host name cannot be listened on: use an IP address, such as 0.0.0.0:{port} for every interface or 127.0.0.1:{port} for this machine"
        )
    } else {
        format!(
            "write an IP address and a port, such as 0.0.0.0:{port}, 127.0.0.1:{port} or [::]:{port}"
        )
    };
    Err(format!("{text:?} is not an IP address and port: {hint}"))
}

/// `#[serde(deserialize_with = "de::duration")]`
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(D::Error::custom)
}

/// `#[serde(default, deserialize_with = "de::opt_duration")]`: for a field that may be left out.
pub fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// `#[serde(deserialize_with = "de::listen")]`
pub fn listen<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    parse_listen(&text).map_err(D::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_name_is_refused_with_an_address_that_would_do() {
        let e = parse_listen("localhost:8080").unwrap_err();
        assert_eq!(
            e,
            "\"localhost:8080\" is not an IP address and port: use 127.0.0.1:8080 (or [::1]:8080)"
        );
        let e = parse_listen("gateway.internal:9000").unwrap_err();
        assert!(e.contains("use an IP address, such as 0.0.0.0:9000"), "{e}");
        let e = parse_listen("8080").unwrap_err();
        assert!(e.contains("such as 0.0.0.0:8080"), "{e}");
        assert_eq!(parse_listen("[::1]:80").unwrap().port(), 80);
    }

    #[test]
    fn a_bad_duration_shows_the_syntax() {
        let e = parse_duration("5").unwrap_err();
        assert!(e.starts_with("\"5\" is not a duration"), "{e}");
        assert!(
            e.ends_with("such as \"500ms\", \"30s\", \"2m\" or \"1h 30m\""),
            "{e}"
        );
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
    }
}
