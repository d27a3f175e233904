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

impl Route {
    /// A route answering 200 with no documented body yet; see the builder methods below.
    fn new(
        verb: Verb,
        path: &'static str,
        access: Access,
        handler: fn(MethodFilter) -> MethodRouter<Api>,
    ) -> Self {
        Self {
            verb,
            path,
            access,
            summary: "",
            request: None,
            status: 200,
            response: Body::Empty,
            conflicts: false,
            handler,
        }
    }

    /// Sets the summary.
    fn doc(self, summary: &'static str) -> Self {
        Self { summary, ..self }
    }

    /// Sets the JSON request body's schema.
    fn takes(self, schema: &'static str) -> Self {
        Self {
            request: Some(schema),
            ..self
        }
    }

    /// Sets the success status and body.
    fn answers(self, status: u16, response: Body) -> Self {
        Self {
            status,
            response,
            ..self
        }
    }

    /// Marks it as able to answer 409.
    fn may_conflict(self) -> Self {
        Self {
            conflicts: true,
            ..self
        }
    }
}

/// Every route of the API.
pub fn all() -> Vec<Route> {
    use Access::{Admin, Public, Read};
    use Verb::{Delete, Get, Patch, Post};
    vec![
        Route::new(Get, "/openapi.json", Public, |f| on(f, observe::openapi))
            .doc("This document.")
            .answers(200, Body::OpenApi),
        Route::new(Get, "/metrics", Read, |f| on(f, observe::metrics))
            .doc("Coordinator metrics in the Prometheus text format.")
            .answers(200, Body::Prometheus),
        Route::new(Get, "/v1/health", Read, |f| on(f, observe::health))
            .doc("Liveness, version, nodes online and relay counters.")
            .answers(200, Body::Json("Health")),
        Route::new(Get, "/v1/peers", Read, |f| on(f, nodes::list))
            .doc("The mesh's nodes with their live state (same as GET /v1/nodes).")
            .answers(200, Body::JsonList("Node")),
        Route::new(Get, "/v1/nodes", Read, |f| on(f, nodes::list))
            .doc("The mesh's nodes with their live state.")
            .answers(200, Body::JsonList("Node")),
        Route::new(Get, "/v1/nodes/{id}", Read, |f| on(f, nodes::get))
            .doc("One node.")
            .answers(200, Body::Json("Node")),
        Route::new(Patch, "/v1/nodes/{id}", Admin, |f| on(f, nodes::rename))
            .doc("Renames a node; the other nodes learn the new name at once.")
            .takes("RenameNode")
            .answers(200, Body::Json("Node"))
            .may_conflict(),
        Route::new(Delete, "/v1/nodes/{id}", Admin, |f| on(f, nodes::remove))
            .doc("Removes a node: its connection is closed, it cannot log in again, its peers drop it.")
            .answers(204, Body::Empty),
        Route::new(Get, "/v1/invites", Read, |f| on(f, invites::list))
            .doc("Invites, newest first (their secrets are never stored).")
            .answers(200, Body::JsonList("Invite")),
        Route::new(Post, "/v1/invites", Admin, |f| on(f, invites::create))
            .doc("Creates an invite; the token is in this answer only.")
            .takes("CreateInvite")
            .answers(201, Body::Json("InviteCreated"))
            .may_conflict(),
        Route::new(Delete, "/v1/invites/{id}", Admin, |f| on(f, invites::revoke))
            .doc("Revokes an invite.")
            .answers(204, Body::Empty),
        Route::new(Get, "/v1/tokens", Read, |f| on(f, tokens::list))
            .doc("API tokens, newest first (their secrets are never stored).")
            .answers(200, Body::JsonList("Token")),
        Route::new(Post, "/v1/tokens", Admin, |f| on(f, tokens::create))
            .doc("Creates an API token; the secret is in this answer only.")
            .takes("CreateToken")
            .answers(201, Body::Json("TokenCreated")),
        Route::new(Delete, "/v1/tokens/{id}", Admin, |f| on(f, tokens::revoke))
            .doc("Revokes an API token.")
            .answers(204, Body::Empty),
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
