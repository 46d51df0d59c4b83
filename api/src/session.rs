//! Browser sessions and the sign-in throttle, kept in Redis so that every API process (one per
//! scheduler) knows them and a restart keeps them.
//!
//! A session is a random id (256 bits) in the cookie; Redis holds only its digest as the key,
//! so a copy of Redis gives no cookie. It ends after [`SESSION_TTL_SECS`], at sign-out (the key
//! deleted: revoked everywhere), or when the token it was opened with is no longer configured
//! (the session remembers the token's digest, never the token).

use cctv_common::events::now_ms;
use cctv_common::keys::Keys;
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use sha2::{Digest, Sha256};

/// How long a sign-in lasts: a working day and a night shift, then the token again.
pub const SESSION_TTL_SECS: u64 = 12 * 3600;
/// Wrong tokens one client may try in [`FAILURE_WINDOW_SECS`] before sign-in answers 429.
pub const MAX_FAILURES: u64 = 10;
/// The window of [`MAX_FAILURES`], from the client's first wrong token.
pub const FAILURE_WINDOW_SECS: u64 = 300;

/// Hex of a domain-separated SHA-256.
fn digest(domain: &str, value: &str) -> String {
    let d = Sha256::new().chain_update(domain.as_bytes()).chain_update(b"\0").chain_update(value.as_bytes()).finalize();
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a session remembers (JSON at `Keys::session`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Session {
    /// Digest of the token signed in with: the session ends when that token is replaced.
    pub token_digest: String,
    pub created_ms: i64,
}

impl Session {
    /// The digest a session keeps of `token`.
    pub fn token_digest(token: &str) -> String {
        digest("cctv-session-token", token)
    }

    /// Opens a session for `token`: its id, for the cookie.
    pub async fn open(conn: &mut ConnectionManager, keys: &Keys, token: &str) -> redis::RedisResult<String> {
        let id: String = (0..2).map(|_| uuid::Uuid::new_v4().simple().to_string()).collect();
        let session = Session { token_digest: Self::token_digest(token), created_ms: now_ms() };
        let json = serde_json::to_string(&session).expect("a session serialises");
        let () = conn.set_ex(keys.session(&digest("cctv-session-id", &id)), json, SESSION_TTL_SECS).await?;
        Ok(id)
    }

    /// The session of cookie value `id`, if it is open and was opened with one of `tokens`.
    pub async fn find<'a>(
        conn: &mut ConnectionManager,
        keys: &Keys,
        id: &str,
        mut tokens: impl Iterator<Item = &'a str>,
    ) -> redis::RedisResult<Option<Session>> {
        // Ids this module makes are 64 hex digits; anything else is not looked up.
        if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let json: Option<String> = conn.get(keys.session(&digest("cctv-session-id", id))).await?;
        let session = json.and_then(|j| serde_json::from_str::<Session>(&j).ok());
        Ok(session.filter(|s| tokens.any(|t| crate::auth::same_secret(&s.token_digest, &Self::token_digest(t)))))
    }

    /// Ends the session of cookie value `id` (sign-out).
    pub async fn close(conn: &mut ConnectionManager, keys: &Keys, id: &str) -> redis::RedisResult<()> {
        conn.del(keys.session(&digest("cctv-session-id", id))).await
    }
}

/// Sign-in attempts per client: wrong tokens are counted in Redis for [`FAILURE_WINDOW_SECS`].
pub struct SignInThrottle;

impl SignInThrottle {
    fn key(keys: &Keys, client: &str) -> String {
        keys.sign_in_failures(&digest("cctv-client", client)[..32])
    }

    /// `Some(seconds to wait)` when `client` has used up its wrong tokens.
    pub async fn check(conn: &mut ConnectionManager, keys: &Keys, client: &str) -> redis::RedisResult<Option<u64>> {
        let key = Self::key(keys, client);
        let (failures, ttl): (Option<u64>, i64) = redis::pipe().get(&key).ttl(&key).query_async(conn).await?;
        Ok(refusal(failures.unwrap_or(0), ttl))
    }

    /// Counts a wrong token of `client`; the window starts at its first one.
    pub async fn failed(conn: &mut ConnectionManager, keys: &Keys, client: &str) -> redis::RedisResult<()> {
        let key = Self::key(keys, client);
        redis::pipe()
            .incr(&key, 1)
            .ignore()
            .cmd("EXPIRE")
            .arg(&key)
            .arg(FAILURE_WINDOW_SECS)
            .arg("NX")
            .ignore()
            .query_async(conn)
            .await
    }
}

/// Whether a client with `failures` wrong tokens in a window with `ttl` seconds left must wait,
/// and how long.
pub fn refusal(failures: u64, ttl: i64) -> Option<u64> {
    (failures >= MAX_FAILURES).then(|| u64::try_from(ttl).unwrap_or(FAILURE_WINDOW_SECS).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_in_is_refused_from_the_tenth_wrong_token_until_the_window_ends() {
        assert_eq!(refusal(0, -2), None);
        assert_eq!(refusal(MAX_FAILURES - 1, 30), None);
        assert_eq!(refusal(MAX_FAILURES, 30), Some(30));
        assert_eq!(refusal(MAX_FAILURES + 5, 1), Some(1));
        // A count without a window (cannot happen with the pipeline, but never "wait 0 s").
        assert_eq!(refusal(MAX_FAILURES, -1), Some(FAILURE_WINDOW_SECS));
    }

    #[test]
    fn token_digests_differ_by_token_and_never_contain_it() {
        let a = Session::token_digest("viewer-token");
        assert_ne!(a, Session::token_digest("viewer-tokem"));
        assert!(!a.contains("viewer") && a.len() == 64);
        assert_ne!(digest("cctv-session-id", "x"), digest("cctv-session-token", "x"));
    }
}
