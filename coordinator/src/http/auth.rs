//! Bearer-token authentication and role checks.
//!
//! Two kinds of token are accepted: the bootstrap `DATA_DIR/admin.token` (role `admin`, compared
//! in constant time) and API tokens made through `POST /v1/tokens` (`wrn_` and 64 hex digits),
//! which are looked up by the SHA-256 of the presented secret, so the store never holds a
//! secret and a lookup's timing tells nothing about any stored one. Each route's entry in
//! [`super::routes`] says what it needs: no token, `read` or `admin`. No token, an unknown or a
//! revoked one answers 401 `unauthorized`; a `read` token on an `admin` route answers 403
//! `forbidden`. Tokens are never logged.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::error::{ApiError, Code};
use super::routes::Access;
use crate::mesh::Mesh;
use crate::store::Role;

/// Prefix of API token secrets (tells them apart from the admin token, and makes them easy for
/// secret scanners to spot).
pub const TOKEN_PREFIX: &str = "wrn_";

/// A fresh API token secret: [`TOKEN_PREFIX`] and 32 random bytes in hex.
pub fn new_secret() -> String {
    format!("{TOKEN_PREFIX}{}", hex::encode(rand::random::<[u8; 32]>()))
}

/// What the store keeps of an API token.
pub fn hash_token(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Constant-time comparison, so the admin token cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The bearer token of a request, if any.
fn bearer(req: &Request) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The role of a presented token, if it is valid.
async fn role_of(mesh: &Arc<Mesh>, token: &str) -> Result<Option<Role>, ApiError> {
    if same(token.as_bytes(), mesh.admin_token.as_bytes()) {
        return Ok(Some(Role::Admin));
    }
    if !token.starts_with(TOKEN_PREFIX) {
        return Ok(None);
    }
    let hash = hash_token(token);
    let row = mesh.with_store(move |s| s.token_by_hash(&hash)).await?;
    Ok(row.filter(|r| !r.revoked).map(|r| r.role))
}

/// Middleware: lets the request through if its token allows `access`.
pub async fn check(
    State((mesh, access)): State<(Arc<Mesh>, Access)>,
    req: Request,
    next: Next,
) -> Response {
    if access == Access::Public {
        return next.run(req).await;
    }
    let role = match bearer(&req) {
        Some(token) => match role_of(&mesh, token).await {
            Ok(role) => role,
            Err(e) => return e.into_response(),
        },
        None => None,
    };
    match (role, access) {
        (None, _) => ApiError::new(
            Code::Unauthorized,
            "missing, unknown or revoked bearer token",
        )
        .into_response(),
        (Some(Role::Read), Access::Admin) => ApiError::new(
            Code::Forbidden,
            "this token is read-only; this route needs an admin token",
        )
        .into_response(),
        _ => next.run(req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_prefixed_random_and_hashed() {
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 64);
        assert_eq!(hash_token(&a), hash_token(&a));
        assert_ne!(hash_token(&a), hash_token(&b));
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
    }
}
