//! `allowed_outbound_hosts`, parsed and matched the way Spin does it.
//!
//! An entry is `scheme://host[:port]`. Each part may be `*`; a host may be
//! `*.example.com` (any subdomain, not the bare domain); a missing port means
//! the scheme's well-known port (so `http://example.com` allows port 80 only);
//! a port may be a range `4000..5000` (end excluded). The host `self` (or
//! `self.alt`) grants *self requests*: a relative URL or one whose host is
//! `self.alt`. Surprisingly, it does not allow an absolute `http://self/...`
//! URL: that one is checked like any host, and no entry matches a host
//! literally named `self`.

use anyhow::{Context, bail};
use std::ops::Range;

/// One parsed `allowed_outbound_hosts` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    scheme: Option<String>,
    host: HostPattern,
    port: PortPattern,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    /// `*.example.com`, stored as `.example.com`.
    Subdomain(String),
    /// `self` / `self.alt`: only grants relative (self) requests.
    ToSelf,
    Literal(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PortPattern {
    Any,
    Port(u16),
    Range(Range<u16>),
}

/// The ports Spin fills in for a scheme when an entry or a URL has none.
fn well_known_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        "postgres" => Some(5432),
        "mysql" => Some(3306),
        "redis" => Some(6379),
        "mqtt" => Some(1883),
        _ => None,
    }
}

impl AllowedHost {
    /// Parses one entry such as `https://*.example.com:8443` or `http://self`.
    pub fn parse(entry: &str) -> anyhow::Result<AllowedHost> {
        let url = entry.trim();
        let Some((scheme, rest)) = url.split_once("://") else {
            bail!("{url:?} does not contain a scheme (e.g., 'http://' or '*://')");
        };
        // Split the port off the right: hosts here are names or IPv4 (no bare IPv6).
        let (host, port) = rest.rsplit_once(':').unwrap_or((rest, ""));
        let port = match port.split_once('/') {
            Some((_, path)) if !path.is_empty() => {
                bail!("{url:?} has a path but is not allowed to")
            }
            Some((port, _)) => port,
            None => port,
        };
        let host = host.trim().trim_end_matches('/');
        if host.contains('/') {
            bail!("{url:?} has a path but is not allowed to");
        }
        let scheme = match scheme {
            "*" => None,
            s if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphabetic()) => Some(s.to_string()),
            s => bail!("invalid allowed host scheme {s:?}"),
        };
        let port = match port {
            "" => {
                let s = scheme.as_deref().unwrap_or("*");
                PortPattern::Port(well_known_port(s).with_context(|| {
                    format!("{url:?}: no port was provided and the scheme {s:?} has no known default port")
                })?)
            }
            "*" => PortPattern::Any,
            p => match p.split_once("..") {
                Some((a, b)) => PortPattern::Range(a.parse()?..b.parse()?),
                None => PortPattern::Port(
                    p.parse()
                        .with_context(|| format!("port {p:?} is not a number"))?,
                ),
            },
        };
        let host = match host {
            "*" => HostPattern::Any,
            "self" | "self.alt" => HostPattern::ToSelf,
            h => match h.strip_prefix("*.") {
                Some(domain) if !domain.contains('*') => {
                    HostPattern::Subdomain(format!(".{domain}"))
                }
                _ if h.contains('*') => bail!("{url:?}: wildcards are allowed only as subdomains"),
                _ if h.is_empty() => bail!("{url:?} has no host"),
                _ => HostPattern::Literal(h.to_ascii_lowercase()),
            },
        };
        Ok(AllowedHost { scheme, host, port })
    }

    fn allows(&self, scheme: &str, host: &str, port: Option<u16>) -> bool {
        let scheme_ok = self.scheme.as_deref().is_none_or(|s| s == scheme);
        let host = host.to_ascii_lowercase();
        let host_ok = match &self.host {
            HostPattern::Any => true,
            HostPattern::Subdomain(suffix) => host.ends_with(suffix.as_str()),
            HostPattern::ToSelf => false,
            HostPattern::Literal(h) => *h == host,
        };
        let port_ok = match (&self.port, port.or_else(|| well_known_port(scheme))) {
            (PortPattern::Any, _) => true,
            (_, None) => false,
            (PortPattern::Port(p), Some(port)) => *p == port,
            (PortPattern::Range(r), Some(port)) => r.contains(&port),
        };
        scheme_ok && host_ok && port_ok
    }
}

/// A component's whole `allowed_outbound_hosts` list.
#[derive(Debug, Clone, Default)]
pub struct AllowedHosts(Vec<AllowedHost>);

impl AllowedHosts {
    /// Parses every entry; one bad entry refuses the whole list, as Spin refuses to start.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> anyhow::Result<AllowedHosts> {
        if entries.iter().any(|e| e.as_ref() == "insecure:allow-all") {
            bail!("'insecure:allow-all' is not allowed - use '*://*:*' instead");
        }
        let hosts = entries
            .iter()
            .map(|e| {
                AllowedHost::parse(e.as_ref()).with_context(|| {
                    format!("invalid allowed_outbound_hosts entry {:?}", e.as_ref())
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(AllowedHosts(hosts))
    }

    /// May the component send to this absolute URL's scheme, host and port?
    pub fn allows_url(&self, scheme: &str, host: &str, port: Option<u16>) -> bool {
        self.0.iter().any(|h| h.allows(scheme, host, port))
    }

    /// May the component make self requests (relative URLs or host `self.alt`)?
    /// Granted by a `self` host or a `*` host, for scheme http or https (or `*`).
    pub fn allows_self(&self) -> bool {
        self.0.iter().any(|h| {
            matches!(h.host, HostPattern::Any | HostPattern::ToSelf)
                && h.scheme
                    .as_deref()
                    .is_none_or(|s| s == "http" || s == "https")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(entries: &[&str]) -> AllowedHosts {
        AllowedHosts::parse(entries).unwrap()
    }

    #[test]
    fn default_ports_come_from_the_scheme() {
        let h = hosts(&["http://example.com", "https://api.example.com"]);
        assert!(h.allows_url("http", "example.com", None));
        assert!(h.allows_url("http", "example.com", Some(80)));
        assert!(!h.allows_url("http", "example.com", Some(8080)));
        assert!(!h.allows_url("https", "example.com", None));
        assert!(h.allows_url("https", "api.example.com", Some(443)));
        assert!(!h.allows_url("http", "api.example.com", None));
    }

    #[test]
    fn wildcards() {
        let h = hosts(&[
            "*://*.example.com:*",
            "http://127.0.0.1:*",
            "https://x.test:4000..4002",
        ]);
        assert!(h.allows_url("https", "a.example.com", Some(1)));
        assert!(h.allows_url("http", "a.b.example.com", None));
        assert!(
            !h.allows_url("http", "example.com", None),
            "subdomain wildcard excludes the bare domain"
        );
        assert!(h.allows_url("http", "127.0.0.1", Some(3000)));
        assert!(!h.allows_url("https", "127.0.0.1", Some(3000)));
        assert!(h.allows_url("https", "x.test", Some(4001)));
        assert!(
            !h.allows_url("https", "x.test", Some(4002)),
            "ranges exclude their end"
        );
        assert!(hosts(&["*://*:*"]).allows_url("ftp", "anything", Some(21)));
    }

    #[test]
    fn self_permission_grants_relative_urls_only() {
        let h = hosts(&["http://self"]);
        assert!(h.allows_self());
        assert!(
            !h.allows_url("http", "self", None),
            "absolute http://self is refused"
        );
        assert!(hosts(&["https://self.alt"]).allows_self());
        assert!(hosts(&["*://*:*"]).allows_self());
        assert!(!hosts(&["http://127.0.0.1:*"]).allows_self());
        assert!(!hosts(&[]).allows_self());
    }

    #[test]
    fn bad_entries_are_refused() {
        for bad in [
            "example.com",
            "example.com:80",
            "*",
            "http://example.com/path",
            "http://ex*ample.com",
            "ftp://example.com",
            "http://example.com:port",
            "insecure:allow-all",
        ] {
            assert!(AllowedHosts::parse(&[bad]).is_err(), "{bad}");
        }
        assert!(
            AllowedHosts::parse(&["http://example.com/"]).is_ok(),
            "an empty path is fine"
        );
    }
}
