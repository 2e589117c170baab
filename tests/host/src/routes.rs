//! Route matching for `[[trigger.http]]`, with Spin's precedence and `spin-*` headers.
//!
//! Spin hands its routes to the `routefinder` crate, so this does too: segments
//! compare exact > `:param` > wildcard, so the most specific route wins whatever
//! the manifest order, and a catch-all `/...` never steals a more specific route.
//! `/a/...` also matches `/a` itself (with an empty `spin-path-info`).

use anyhow::anyhow;

/// The routes of one application.
#[derive(Debug, Default)]
pub struct Router(routefinder::Router<Route>);

#[derive(Debug, Clone)]
struct Route {
    component: String,
    /// As written in the manifest, e.g. `/api/...`.
    raw: String,
}

/// The outcome of routing one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    /// The component that serves the request.
    pub component: String,
    /// The route as written in the manifest (`spin-matched-route`, `spin-raw-component-route`).
    pub raw_route: String,
    /// The route without its trailing `/...` (`spin-component-route`; empty for `/...`).
    pub component_route: String,
    /// The part the trailing wildcard matched (`spin-path-info`), `""` if none.
    pub path_info: String,
    /// Named `:param` captures (`spin-path-match-<name>`).
    pub params: Vec<(String, String)>,
}

impl Router {
    /// Builds the router; a later duplicate of the same route replaces the earlier, as in Spin.
    pub fn build<'a>(
        routes: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> anyhow::Result<Router> {
        let mut rf = routefinder::Router::new();
        for (route, component) in routes {
            // Spin's base is "/" and it strips one trailing slash: "/" itself becomes "".
            let route = if route.starts_with('/') {
                route.to_string()
            } else {
                format!("/{route}")
            };
            let based = route.strip_suffix('/').unwrap_or(&route);
            // `/...` is Spin's wildcard; routefinder spells it `/*`.
            let spec = match based.strip_suffix("/...") {
                Some(prefix) => format!("{prefix}/*"),
                None => based.to_string(),
            };
            let handler = Route {
                component: component.to_string(),
                raw: route.clone(),
            };
            rf.add(spec.as_str(), handler)
                .map_err(|e| anyhow!("invalid route {route:?} for component {component:?}: {e}"))?;
        }
        Ok(Router(rf))
    }

    /// Finds the component for `path` (no query), or `None` for Spin's plain 404.
    pub fn route(&self, path: &str) -> Option<RouteMatch> {
        let m = self.0.best_match(path)?;
        let route = m.handler();
        let captures = m.captures();
        // routefinder drops slashes around the wildcard; Spin puts them back.
        let path_info = match captures.wildcard() {
            None => String::new(),
            Some("") if path.ends_with('/') => "/".to_string(),
            Some("") => String::new(),
            Some(w) if path.ends_with('/') => format!("/{w}/"),
            Some(w) => format!("/{w}"),
        };
        Some(RouteMatch {
            component: route.component.clone(),
            raw_route: route.raw.clone(),
            component_route: route
                .raw
                .strip_suffix("/...")
                .unwrap_or(&route.raw)
                .to_string(),
            path_info,
            params: captures
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        Router::build([
            ("/...", "catchall"),
            ("/healthz", "health"),
            ("/api/v1/workflows/...", "wf-wild"),
            ("/api/v1/workflows/:id/execute", "wf-exec"),
            ("/api/v1/workflows/templates", "wf-exact"),
            ("/one/...", "one"),
            ("/one/two/...", "two"),
        ])
        .unwrap()
    }

    #[test]
    fn most_specific_route_wins() {
        let r = router();
        let c = |p: &str| r.route(p).unwrap().component;
        assert_eq!(c("/healthz"), "health");
        assert_eq!(c("/healthz/x"), "catchall");
        assert_eq!(c("/api/v1/workflows/abc/execute"), "wf-exec");
        assert_eq!(c("/api/v1/workflows/abc/execute/more"), "wf-wild");
        assert_eq!(c("/api/v1/workflows/templates"), "wf-exact");
        assert_eq!(c("/api/v1/workflows"), "wf-wild");
        assert_eq!(c("/api/v1/workflows/abc/versions/2"), "wf-wild");
        assert_eq!(c("/one/two/three"), "two");
        assert_eq!(c("/one/x"), "one");
        assert_eq!(c("/"), "catchall");
        assert_eq!(c("/elsewhere"), "catchall");
    }

    #[test]
    fn header_values_match_spin() {
        let r = router();
        let m = r.route("/api/v1/workflows/abc/execute").unwrap();
        assert_eq!(m.raw_route, "/api/v1/workflows/:id/execute");
        assert_eq!(m.component_route, "/api/v1/workflows/:id/execute");
        assert_eq!(m.path_info, "");
        assert_eq!(m.params, vec![("id".to_string(), "abc".to_string())]);

        let m = r.route("/api/v1/workflows/abc/versions/2").unwrap();
        assert_eq!(m.raw_route, "/api/v1/workflows/...");
        assert_eq!(m.component_route, "/api/v1/workflows");
        assert_eq!(m.path_info, "/abc/versions/2");
        assert!(m.params.is_empty());

        let m = r.route("/headers/x/").unwrap();
        assert_eq!(
            (m.raw_route.as_str(), m.component_route.as_str()),
            ("/...", "")
        );
        assert_eq!(m.path_info, "/headers/x/");
        assert_eq!(r.route("/api/v1/workflows").unwrap().path_info, "");
        assert_eq!(r.route("/api/v1/workflows/").unwrap().path_info, "/");
    }

    #[test]
    fn unmatched_is_none() {
        let r = Router::build([("/only", "c")]).unwrap();
        assert!(r.route("/other").is_none());
        assert!(r.route("/only/more").is_none());
    }
}
