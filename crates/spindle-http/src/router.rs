//! A small router: method plus a path pattern with `:param` segments.

use crate::error::ApiError;
use crate::message::{ApiRequest, ApiResponse, Method};

/// The values of a matched route's `:param` segments.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Params(Vec<(&'static str, String)>);

impl Params {
    /// The value of parameter `name`, if the route has it.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What handles a matched route, given the component's context `C`.
pub type Handler<C> = fn(&C, &ApiRequest, &Params) -> Result<ApiResponse, ApiError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Segment {
    Literal(&'static str),
    Param(&'static str),
}

struct Route<C: ?Sized> {
    method: Method,
    pattern: &'static str,
    segments: Vec<Segment>,
    handler: Handler<C>,
}

/// Routes requests to handlers. A path that matches a route under another
/// method answers 405 with `Allow`; a path that matches none answers 404.
pub struct Router<C: ?Sized> {
    routes: Vec<Route<C>>,
}

impl<C: ?Sized> Default for Router<C> {
    fn default() -> Self {
        Self { routes: Vec::new() }
    }
}

impl<C: ?Sized> Router<C> {
    /// A router with no routes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a route; `pattern` is a path such as `/api/v1/agents/:id`.
    pub fn route(mut self, method: Method, pattern: &'static str, handler: Handler<C>) -> Self {
        let segments = split(pattern)
            .map(|s| match s.strip_prefix(':') {
                Some(name) => Segment::Param(name),
                None => Segment::Literal(s),
            })
            .collect();
        self.routes.push(Route {
            method,
            pattern,
            segments,
            handler,
        });
        self
    }

    /// Every route's method and path pattern (`/api/v1/agents/:id`), in the
    /// order they were added: what the router answers, for checking a
    /// description of the API against it.
    pub fn routes(&self) -> impl Iterator<Item = (&Method, &'static str)> + '_ {
        self.routes
            .iter()
            .map(|route| (&route.method, route.pattern))
    }

    /// Runs the handler for `request`, turning any error into its JSON response.
    pub fn handle(&self, ctx: &C, request: &ApiRequest) -> ApiResponse {
        self.dispatch(ctx, request)
            .unwrap_or_else(ApiError::into_response)
    }

    fn dispatch(&self, ctx: &C, request: &ApiRequest) -> Result<ApiResponse, ApiError> {
        let path: Vec<&str> = split(&request.path).collect();
        let mut allowed = Vec::new();
        for route in &self.routes {
            let Some(params) = match_segments(&route.segments, &path) else {
                continue;
            };
            if route.method == request.method {
                return (route.handler)(ctx, request, &params);
            }
            if !allowed.contains(&route.method) {
                allowed.push(route.method.clone());
            }
        }
        if allowed.is_empty() {
            Err(ApiError::NotFound(format!(
                "no route for {} {}",
                request.method, request.path
            )))
        } else {
            Err(ApiError::MethodNotAllowed {
                method: request.method.clone(),
                allowed,
            })
        }
    }
}

/// Path segments; a trailing slash is not a segment of its own.
fn split(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

fn match_segments(pattern: &[Segment], path: &[&str]) -> Option<Params> {
    if pattern.len() != path.len() {
        return None;
    }
    let mut params = Params::default();
    for (segment, value) in pattern.iter().zip(path) {
        match segment {
            Segment::Literal(literal) if literal == value => {}
            Segment::Literal(_) => return None,
            Segment::Param(name) => params.0.push((name, (*value).to_string())),
        }
    }
    Some(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn echo(_: &(), request: &ApiRequest, params: &Params) -> Result<ApiResponse, ApiError> {
        Ok(ApiResponse::json(
            200,
            &json!({"method": request.method.as_str(), "id": params.get("id")}),
        ))
    }

    fn router() -> Router<()> {
        Router::new()
            .route(Method::Get, "/things", echo)
            .route(Method::Get, "/things/:id", echo)
            .route(Method::Delete, "/things/:id", echo)
    }

    fn call(method: Method, path: &str) -> ApiResponse {
        router().handle(&(), &ApiRequest::new(method, path))
    }

    #[test]
    fn params_are_extracted() {
        let response = call(Method::Get, "/things/abc?x=1");
        assert_eq!(response.status, 200);
        let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(body["id"], "abc");
    }

    #[test]
    fn trailing_slash_matches_the_same_route() {
        assert_eq!(call(Method::Get, "/things/").status, 200);
    }

    #[test]
    fn known_path_with_other_method_is_405_listing_methods() {
        let response = call(Method::Put, "/things/abc");
        assert_eq!(response.status, 405);
        assert_eq!(response.header("allow"), Some("GET, DELETE"));
    }

    #[test]
    fn routes_lists_method_and_pattern_in_order() {
        let routes: Vec<(String, &str)> = router()
            .routes()
            .map(|(method, pattern)| (method.to_string(), pattern))
            .collect();
        assert_eq!(
            routes,
            [
                ("GET".to_string(), "/things"),
                ("GET".to_string(), "/things/:id"),
                ("DELETE".to_string(), "/things/:id"),
            ]
        );
    }

    #[test]
    fn unknown_path_is_404() {
        assert_eq!(call(Method::Get, "/things/abc/more").status, 404);
        assert_eq!(call(Method::Get, "/other").status, 404);
    }
}
