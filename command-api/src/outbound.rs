//! The guard on calls to addresses tenants choose (model URLs): only `http(s)`, and never to
//! loopback, private, link-local or otherwise internal addresses unless the operator's allow-list
//! (`OUTBOUND_ALLOW`) permits them, so that a tenant cannot use the platform to reach internal services.
//!
//! The check is made on the addresses a connection is actually opened to: the HTTP client resolves
//! names through [`GuardedResolver`], which drops refused addresses, so a name that resolves to an
//! internal address (or is changed to after a first check) is refused too. Literal IP hosts are
//! checked before the request ([`Guard::check_url`]), and redirects are not followed.

use std::error::Error;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Networks the operator allows besides public addresses.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    allowed: Vec<IpNet>,
}

/// Why an outbound call was refused before it was made.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

impl Guard {
    /// Reads `OUTBOUND_ALLOW`: comma-separated networks (`127.0.0.1/32`, `10.0.0.0/8`, `::1/128`) or
    /// single addresses.
    pub fn parse(list: &str) -> Result<Guard, String> {
        let allowed = list
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("OUTBOUND_ALLOW: {entry:?} is not an address or network"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Guard { allowed })
    }

    /// Whether a connection to `ip` may be opened.
    pub fn permits(&self, ip: IpAddr) -> bool {
        !is_internal(ip) || self.allowed.iter().any(|net| net.contains(&ip))
    }

    /// Checks what can be checked before resolving: the scheme, and a literal IP host.
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), Refused> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Refused(format!(
                "the model URL must be http or https, not {}",
                url.scheme()
            )));
        }
        let literal = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            Some(url::Host::Domain(_)) => None,
            None => return Err(Refused("the model URL has no host".into())),
        };
        match literal {
            Some(ip) if !self.permits(ip) => Err(refused(&ip.to_string())),
            _ => Ok(()),
        }
    }

    /// The HTTP client for calls under this guard: names resolve through it, redirects are not
    /// followed, and connecting takes at most `connect_timeout`.
    pub fn client(&self, connect_timeout: Duration) -> reqwest::Client {
        reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver(self.clone())))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(connect_timeout)
            .build()
            .expect("the TLS backend initialises")
    }
}

fn refused(host: &str) -> Refused {
    Refused(format!(
        "the model URL's host {host} is an internal address, which OUTBOUND_ALLOW does not allow"
    ))
}

/// Whether `error` (or what caused it) is the guard's refusal.
pub fn refusal<'a>(error: &'a (dyn Error + 'static)) -> Option<&'a Refused> {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(refused) = error.downcast_ref::<Refused>() {
            return Some(refused);
        }
        cause = error.source();
    }
    None
}

/// Resolves names with the system resolver and keeps only the addresses the guard permits.
struct GuardedResolver(Guard);

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let permitted: Vec<SocketAddr> = resolved
                .iter()
                .copied()
                .filter(|addr| guard.permits(addr.ip()))
                .collect();
            if permitted.is_empty() && !resolved.is_empty() {
                return Err(Box::new(refused(&host)) as Box<dyn Error + Send + Sync>);
            }
            Ok(Box::new(permitted.into_iter()) as Addrs)
        })
    }
}

/// Addresses no tenant may reach: loopback, private, link-local, shared (CGNAT), unspecified,
/// broadcast, multicast, documentation, benchmarking and reserved ranges, and IPv6 forms of them.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal_v4(v4);
            }
            let segments = v6.segments();
            // NAT64 (64:ff9b::/96) carries an IPv4 address in its last 32 bits.
            if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [.., a, b, c, d] = v6.octets();
                return is_internal_v4(Ipv4Addr::new(a, b, c, d));
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (segments[0] & 0xfe00) == 0xfc00 // unique local
                || (segments[0] & 0xffc0) == 0xfe80 // link-local
                || (segments[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
                || segments[0] == 0x2001 && segments[1] == 0x0db8 // documentation
        }
    }
}

fn is_internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (RFC 6598)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240 // reserved
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn internal_addresses_are_refused_unless_allowed() {
        let guard = Guard::parse("").unwrap();
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
        ] {
            assert!(!guard.permits(ip(internal)), "{internal}");
        }
        for public in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "64:ff9b::808:808",
        ] {
            assert!(guard.permits(ip(public)), "{public}");
        }
        let guard = Guard::parse("127.0.0.1/32, 10.0.0.0/8,::1").unwrap();
        assert!(guard.permits(ip("127.0.0.1")));
        assert!(guard.permits(ip("10.200.0.1")));
        assert!(guard.permits(ip("::1")));
        assert!(!guard.permits(ip("127.0.0.2")));
        assert!(Guard::parse("localhost").is_err());
    }

    #[test]
    fn urls_must_be_http_and_literal_hosts_are_checked_first() {
        let guard = Guard::parse("").unwrap();
        let url = |text: &str| reqwest::Url::parse(text).unwrap();
        assert!(guard.check_url(&url("https://api.openai.com/v1")).is_ok());
        assert!(guard.check_url(&url("ftp://example.com/x")).is_err());
        assert!(guard.check_url(&url("http://127.0.0.1:8080/v1")).is_err());
        assert!(guard.check_url(&url("http://[::1]/v1")).is_err());
        assert!(guard.check_url(&url("http://2130706433/v1")).is_err());
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_an_internal_address_is_refused() {
        let client = Guard::parse("").unwrap().client(Duration::from_secs(5));
        let error = client
            .get("http://localhost:9/")
            .send()
            .await
            .expect_err("localhost is loopback");
        assert!(refusal(&error).is_some(), "{error:?}");
    }
}
