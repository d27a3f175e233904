//! The OpenAPI 3 document of the API, generated from the route table ([`super::routes`]) so
//! that every routed (method, path) is documented and nothing else is. Schemas of the bodies
//! are written here by hand; tests check real answers against their required fields.

use serde_json::{json, Map, Value};

use super::error::Code;
use super::routes::{Access, Body, Route};
use super::MAX_BODY;

/// The document for `routes`.
pub fn document(routes: &[Route]) -> Value {
    let mut paths = Map::new();
    for r in routes {
        let entry = paths.entry(r.path.to_string()).or_insert_with(|| json!({}));
        entry[r.verb.as_str().to_ascii_lowercase()] = operation(r);
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Warren coordinator API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": format!(
                "Manage a Warren mesh. Every route but /openapi.json needs \
                 `Authorization: Bearer <token>`: the bootstrap DATA_DIR/admin.token (admin) or \
                 an API token from POST /v1/tokens (role read: GET routes only; role admin: \
                 everything). Errors are {{\"error\": {{\"code\", \"message\"}}}} with a stable \
                 code. Request bodies are JSON of at most {MAX_BODY} bytes; unknown fields are \
                 refused. Every client has a rate limit (429 with Retry-After)."
            ),
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas(),
        },
        "paths": paths,
    })
}

/// One operation.
fn operation(r: &Route) -> Value {
    let mut responses = Map::new();
    let success = match r.response {
        Body::Empty => json!({"description": "Done."}),
        Body::Json(s) => json!({"description": "OK.", "content": {"application/json": {
            "schema": {"$ref": format!("#/components/schemas/{s}")}}}}),
        Body::JsonList(s) => json!({"description": "OK.", "content": {"application/json": {
            "schema": {"type": "array", "items": {"$ref": format!("#/components/schemas/{s}")}}}}}),
        Body::Prometheus => json!({"description": "Prometheus text exposition format 0.0.4.",
            "content": {"text/plain": {"schema": {"type": "string"}}}}),
        Body::OpenApi => json!({"description": "This document.",
            "content": {"application/json": {"schema": {"type": "object"}}}}),
    };
    responses.insert(r.status.to_string(), success);
    let mut errors = vec![Code::RateLimited, Code::Internal];
    let has_id = r.path.contains("{id}");
    if r.request.is_some() || has_id {
        errors.push(Code::BadRequest);
    }
    if r.request.is_some() {
        errors.extend([Code::BodyTooLarge, Code::UnsupportedMediaType]);
    }
    if r.access >= Access::Read {
        errors.push(Code::Unauthorized);
    }
    if r.access == Access::Admin {
        errors.push(Code::Forbidden);
    }
    if has_id {
        errors.push(Code::NotFound);
    }
    if r.conflicts {
        errors.push(Code::Conflict);
    }
    for code in errors {
        responses.insert(
            code.status().as_u16().to_string(),
            json!({"description": format!("Error, code `{}`.", code.as_str()), "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
        );
    }
    let (security, role) = match r.access {
        Access::Public => (json!([]), "none"),
        Access::Read => (json!([{"bearer": []}]), "read"),
        Access::Admin => (json!([{"bearer": []}]), "admin"),
    };
    let mut op = json!({
        "summary": r.summary,
        "operationId": operation_id(r),
        "security": security,
        "x-warren-role": role,
        "responses": responses,
    });
    if has_id {
        op["parameters"] = json!([{"name": "id", "in": "path", "required": true,
            "schema": {"type": "integer", "format": "int64", "minimum": 0}}]);
    }
    if let Some(s) = r.request {
        op["requestBody"] = json!({"required": true, "content": {"application/json": {
            "schema": {"$ref": format!("#/components/schemas/{s}")}}}});
    }
    op
}

/// A unique identifier-like name, e.g. `patch_v1_nodes_id` for `PATCH /v1/nodes/{id}`.
fn operation_id(r: &Route) -> String {
    let path: String = r
        .path
        .chars()
        .filter_map(|c| match c {
            '/' | '.' => Some('_'),
            '{' | '}' => None,
            c => Some(c),
        })
        .collect();
    format!("{}{path}", r.verb.as_str().to_ascii_lowercase())
}

/// A nullable string property.
fn opt_str(description: &str) -> Value {
    json!({"type": "string", "nullable": true, "description": description})
}

/// The component schemas.
fn schemas() -> Value {
    let codes: Vec<&str> = Code::ALL.iter().map(|c| c.as_str()).collect();
    let time = |d: &str| json!({"type": "string", "format": "date-time", "description": d});
    json!({
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["code", "message"], "properties": {
                "code": {"type": "string", "enum": codes},
                "message": {"type": "string"}}}}},
        "Health": {"type": "object", "required": ["status", "version", "nodes_online", "relay"],
            "properties": {
                "status": {"type": "string", "enum": ["ok"]},
                "version": {"type": "string"},
                "nodes_online": {"type": "integer"},
                "relay": {"type": "object", "description": "Relay counters and limits."}}},
        "Node": {"type": "object",
            "required": ["id", "name", "ip", "public_key", "online", "endpoints", "last_seen",
                         "created_at", "paths"],
            "properties": {
                "id": {"type": "integer"},
                "name": {"type": "string"},
                "ip": {"type": "string", "format": "ipv4"},
                "public_key": {"type": "string", "description": "Static X25519 key, base64."},
                "online": {"type": "boolean"},
                "endpoints": {"type": "array", "items": {"type": "string"}},
                "last_seen": time("Now while online, else the last connection."),
                "created_at": time("Registration time."),
                "paths": {"type": "array", "items": {"type": "object",
                    "required": ["peer_id", "path"], "properties": {
                        "peer_id": {"type": "integer"},
                        "peer": opt_str("The peer's name."),
                        "path": {"type": "string", "enum": ["direct", "relay", "connecting"]},
                        "reason": opt_str("Why this path."),
                        "endpoint": opt_str("The peer's address on a direct path.")}}}}},
        "RenameNode": {"type": "object", "additionalProperties": false, "required": ["name"],
            "properties": {"name": {"type": "string", "pattern": "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$",
                "maxLength": 63}}},
        "Invite": {"type": "object",
            "required": ["id", "uses_left", "expires_at", "created_at", "revoked", "state",
                         "name", "ip"],
            "properties": {
                "id": {"type": "integer"},
                "uses_left": {"type": "integer"},
                "expires_at": {"type": "string", "format": "date-time", "nullable": true},
                "created_at": time("Creation time."),
                "revoked": {"type": "boolean"},
                "state": {"type": "string", "enum": ["pending", "used", "expired", "revoked"]},
                "name": opt_str("Fixed name of the node that redeems it."),
                "ip": opt_str("Fixed mesh address of the node that redeems it.")}},
        "CreateInvite": {"type": "object", "additionalProperties": false, "properties": {
            "uses": {"type": "integer", "minimum": 1, "default": 1,
                     "description": "Must be 1 with a fixed name or ip."},
            "expires": {"type": "string", "description": "Lifetime, e.g. 30m, 1h, 7d."},
            "name": {"type": "string", "description": "Fixed node name (not suffixed)."},
            "ip": {"type": "string", "format": "ipv4",
                   "description": "Fixed mesh address: a free host address of the network."}}},
        "InviteCreated": {"type": "object",
            "required": ["id", "token", "uses", "expires_at", "name", "ip"],
            "properties": {
                "id": {"type": "integer"},
                "token": {"type": "string", "description": "For `warren join`; shown once."},
                "uses": {"type": "integer"},
                "expires_at": {"type": "string", "format": "date-time", "nullable": true},
                "name": opt_str("Fixed name."),
                "ip": opt_str("Fixed mesh address.")}},
        "Token": {"type": "object", "required": ["id", "name", "role", "created_at", "revoked"],
            "properties": {
                "id": {"type": "integer"},
                "name": {"type": "string"},
                "role": {"type": "string", "enum": ["read", "admin"]},
                "created_at": time("Creation time."),
                "revoked": {"type": "boolean"}}},
        "CreateToken": {"type": "object", "additionalProperties": false, "required": ["name"],
            "properties": {
                "name": {"type": "string", "maxLength": 64},
                "role": {"type": "string", "enum": ["read", "admin"], "default": "read"}}},
        "TokenCreated": {"allOf": [{"$ref": "#/components/schemas/Token"}, {"type": "object",
            "required": ["token"], "properties": {"token": {"type": "string",
                "description": "The bearer secret; shown once, stored hashed."}}}]},
    })
}
