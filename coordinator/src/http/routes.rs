//! The one table of the API's routes. [`super::app`] builds the router from it (each route with
//! the access check its entry names) and [`super::openapi`] documents exactly these entries, so
//! the router and its documentation cannot drift apart; the metrics label requests with the
//! table's path templates ([`template`]).

use axum::routing::{on, MethodFilter, MethodRouter};

use super::{invites, nodes, observe, tokens, Api};

/// An HTTP method the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// Reads.
    Get,
    /// Creates.
    Post,
    /// Changes.
    Patch,
    /// Removes.
    Delete,
}

impl Verb {
    /// The axum filter.
    pub fn filter(self) -> MethodFilter {
        match self {
            Verb::Get => MethodFilter::GET,
            Verb::Post => MethodFilter::POST,
            Verb::Patch => MethodFilter::PATCH,
            Verb::Delete => MethodFilter::DELETE,
        }
    }

    /// Upper-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "GET",
            Verb::Post => "POST",
            Verb::Patch => "PATCH",
            Verb::Delete => "DELETE",
        }
    }
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Anyone (the document holds no secrets).
    Public,
    /// A token with the `read` or `admin` role.
    Read,
    /// A token with the `admin` role (or the bootstrap `admin.token`).
    Admin,
}

/// What a successful answer carries, for the documentation.
#[derive(Debug, Clone, Copy)]
pub enum Body {
    /// Nothing (204).
    Empty,
    /// JSON of the named schema.
    Json(&'static str),
    /// A JSON array of the named schema.
    JsonList(&'static str),
    /// The Prometheus text format.
    Prometheus,
    /// The OpenAPI document itself.
    OpenApi,
}

/// One route.
pub struct Route {
    /// Method.
    pub verb: Verb,
    /// Path template (`{id}` is a non-negative integer).
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
    /// One line for the documentation.
    pub summary: &'static str,
    /// Schema name of the JSON request body, if it takes one.
    pub request: Option<&'static str>,
    /// Success status.
    pub status: u16,
    /// Success body.
    pub response: Body,
    /// Whether it can answer 409 (a name or address taken).
    pub conflicts: bool,
    /// The handler for `verb`.
    pub handler: fn(MethodFilter) -> MethodRouter<Api>,
}

/// Every route of the API.
pub fn all() -> Vec<Route> {
    use Access::*;
    use Verb::*;
    let r = |verb,
             path,
             access,
             summary,
             request,
             status,
             response,
             handler: fn(MethodFilter) -> MethodRouter<Api>| Route {
        verb,
        path,
        access,
        summary,
        request,
        status,
        response,
        conflicts: false,
        handler,
    };
    let conflicting = |route: Route| Route {
        conflicts: true,
        ..route
    };
    vec![
        r(
            Get,
            "/openapi.json",
            Public,
            "This document.",
            None,
            200,
            Body::OpenApi,
            |f| on(f, observe::openapi),
        ),
        r(
            Get,
            "/metrics",
            Read,
            "Coordinator metrics in the Prometheus text format.",
            None,
            200,
            Body::Prometheus,
            |f| on(f, observe::metrics),
        ),
        r(
            Get,
            "/v1/health",
            Read,
            "Liveness, version, nodes online and relay counters.",
            None,
            200,
            Body::Json("Health"),
            |f| on(f, observe::health),
        ),
        r(
            Get,
            "/v1/peers",
            Read,
            "The mesh's nodes with their live state (same as GET /v1/nodes).",
            None,
            200,
            Body::JsonList("Node"),
            |f| on(f, nodes::list),
        ),
        r(
            Get,
            "/v1/nodes",
            Read,
            "The mesh's nodes with their live state.",
            None,
            200,
            Body::JsonList("Node"),
            |f| on(f, nodes::list),
        ),
        r(
            Get,
            "/v1/nodes/{id}",
            Read,
            "One node.",
            None,
            200,
            Body::Json("Node"),
            |f| on(f, nodes::get),
        ),
        conflicting(r(
            Patch,
            "/v1/nodes/{id}",
            Admin,
            "Renames a node; the other nodes learn the new name at once.",
            Some("RenameNode"),
            200,
            Body::Json("Node"),
            |f| on(f, nodes::rename),
        )),
        r(
            Delete,
            "/v1/nodes/{id}",
            Admin,
            "Removes a node: its connection is closed, it cannot log in again, its peers drop it.",
            None,
            204,
            Body::Empty,
            |f| on(f, nodes::remove),
        ),
        r(
            Get,
            "/v1/invites",
            Read,
            "Invites, newest first (their secrets are never stored).",
            None,
            200,
            Body::JsonList("Invite"),
            |f| on(f, invites::list),
        ),
        conflicting(r(
            Post,
            "/v1/invites",
            Admin,
            "Creates an invite; the token is in the answer only.",
            Some("CreateInvite"),
            201,
            Body::Json("InviteCreated"),
            |f| on(f, invites::create),
        )),
        r(
            Delete,
            "/v1/invites/{id}",
            Admin,
            "Revokes an invite.",
            None,
            204,
            Body::Empty,
            |f| on(f, invites::revoke),
        ),
        r(
            Get,
            "/v1/tokens",
            Read,
            "API tokens, newest first (their secrets are never stored).",
            None,
            200,
            Body::JsonList("Token"),
            |f| on(f, tokens::list),
        ),
        r(
            Post,
            "/v1/tokens",
            Admin,
            "Creates an API token; the secret is in the answer only.",
            Some("CreateToken"),
            201,
            Body::Json("TokenCreated"),
            |f| on(f, tokens::create),
        ),
        r(
            Delete,
            "/v1/tokens/{id}",
            Admin,
            "Revokes an API token.",
            None,
            204,
            Body::Empty,
            |f| on(f, tokens::revoke),
        ),
    ]
}

/// The path template of `routes` that `path` matches, if any.
pub fn template(routes: &[Route], path: &str) -> Option<&'static str> {
    routes.iter().map(|r| r.path).find(|t| matches(t, path))
}

/// Whether `path` fits `template` (`{...}` segments match any non-empty segment).
fn matches(template: &str, path: &str) -> bool {
    let mut t = template.split('/');
    let mut p = path.split('/');
    loop {
        match (t.next(), p.next()) {
            (None, None) => return true,
            (Some(ts), Some(ps)) => {
                let wildcard = ts.starts_with('{') && ts.ends_with('}');
                if !(wildcard && !ps.is_empty() || ts == ps) {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_match_whole_segments() {
        let routes = all();
        assert_eq!(template(&routes, "/v1/nodes/12"), Some("/v1/nodes/{id}"));
        assert_eq!(template(&routes, "/v1/nodes"), Some("/v1/nodes"));
        assert_eq!(template(&routes, "/v1/nodes/"), None);
        assert_eq!(template(&routes, "/v1/nodes/1/x"), None);
        assert_eq!(template(&routes, "/v1/nodesx"), None);
        assert_eq!(template(&routes, "/metrics"), Some("/metrics"));
    }

    #[test]
    fn every_write_route_needs_admin() {
        for r in all() {
            if r.verb != Verb::Get {
                assert_eq!(r.access, Access::Admin, "{} {}", r.verb.as_str(), r.path);
            }
        }
    }
}
