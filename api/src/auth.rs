//! Who may read and who may change: the bearer token of mutating endpoints (`api.token`) and,
//! when `api.viewer_token` is set, the sign-in every read needs — a bearer token (viewer or
//! admin) from clients, a session cookie from browsers (`/login`). The cookie holds a digest
//! of the token, never the token; `/api/health` and the sign-in pages stay open.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::Form;
use sha2::{Digest, Sha256};

use crate::state::{ApiError, ApiResult, ApiState};

const COOKIE: &str = "cctv_session";
pub(crate) const LOGIN_PAGE: &str = include_str!("login.html");

/// Equal secrets, compared without an early exit (timing says nothing about the token).
pub fn same_secret(given: &str, expected: &str) -> bool {
    given.len() == expected.len() && given.bytes().zip(expected.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "))
}

/// The session cookie's value for a token: a digest, so the cookie never carries the token.
fn session_of(token: &str) -> String {
    let digest = Sha256::new().chain_update(b"cctv-session\0").chain_update(token.as_bytes()).finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| kv.trim().strip_prefix(name)?.strip_prefix('='))
}

/// The tokens that let someone read: the viewer token and the admin one.
fn reading_tokens(s: &ApiState) -> impl Iterator<Item = &str> {
    s.config.api.viewer_token.as_deref().into_iter().chain(s.config.api.token.as_deref())
}

/// Mutating endpoints: the admin bearer token.
pub fn require_token(state: &ApiState, headers: &HeaderMap) -> ApiResult<()> {
    let Some(expected) = state.config.api.token.as_deref() else {
        return Err(ApiError(StatusCode::FORBIDDEN, "mutating endpoints are disabled: no api.token configured".into()));
    };
    if bearer(headers).is_some_and(|g| same_secret(g, expected)) {
        Ok(())
    } else {
        Err(ApiError(StatusCode::UNAUTHORIZED, "missing or wrong bearer token".into()))
    }
}

/// The API is reachable from the network only with its reads protected: an address other than
/// loopback without `api.viewer_token` is refused at start (anyone who reaches it would watch
/// every camera and download every backup).
pub fn check_exposure(api: &cctv_common::config::ApiConfig) -> Result<(), String> {
    let addr: std::net::SocketAddr =
        api.listen.parse().map_err(|_| format!("api.listen: {:?} is not an address:port", api.listen))?;
    if addr.ip().is_loopback() || api.viewer_token.is_some() {
        return Ok(());
    }
    Err(format!(
        "api.listen {} is reachable from the network but api.viewer_token is not set: anyone who reaches it \
         could watch every camera and download every backup. Set api.viewer_token (and api.token), or listen \
         on 127.0.0.1 behind a TLS reverse proxy (docs/security.md)",
        api.listen
    ))
}

/// A host name a loopback-only API answers to: `localhost`, a 127.x address or `[::1]`, with
/// any port. A page of another site that a DNS name pointed at 127.0.0.1 (DNS rebinding) sends
/// its own name, and is refused.
fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host
            .rsplit_once(':')
            .map_or(host, |(h, port)| if port.chars().all(|c| c.is_ascii_digit()) { h } else { host }),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Every request but the open ones, when reads are protected: a reading token as bearer or a
/// session cookie; else browsers go to `/login`, clients get 401. An API that listens on
/// loopback only answers only requests addressed to a loopback name (see [`loopback_host`]).
pub async fn require_viewer(State(s): State<ApiState>, req: Request, next: Next) -> Response {
    let loopback_only = s.config.api.listen.parse::<std::net::SocketAddr>().is_ok_and(|a| a.ip().is_loopback());
    if loopback_only {
        let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
        if !loopback_host(host) {
            return ApiError(
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "Host {host:?} is not this loopback-only API's (DNS rebinding guard; use 127.0.0.1 or localhost)"
                ),
            )
            .into_response();
        }
    }
    if s.config.api.viewer_token.is_none() || matches!(req.uri().path(), "/login" | "/logout" | "/api/health") {
        return next.run(req).await;
    }
    let headers = req.headers();
    let by_bearer = bearer(headers).is_some_and(|g| reading_tokens(&s).any(|t| same_secret(g, t)));
    let by_cookie = cookie(headers, COOKIE).is_some_and(|c| reading_tokens(&s).any(|t| same_secret(c, &session_of(t))));
    if by_bearer || by_cookie {
        return next.run(req).await;
    }
    let browser = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/html"));
    if browser && req.method() == axum::http::Method::GET {
        let next_path = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let to = format!("/login?next={}", encode(next_path));
        return (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response();
    }
    ApiError(
        StatusCode::UNAUTHORIZED,
        "sign in: reading needs the viewer token (Authorization: Bearer, or /login)".into(),
    )
    .into_response()
}

/// Percent-encodes everything but unreserved characters (a path for `next=`).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Where to go after signing in: a path on this site only. `next` is parsed as a browser would
/// resolve it against this site, and kept only if it stays on it; it is never pattern-matched
/// (a tab or a backslash in `/\t/evil.example` is a host to a browser). The answer is the
/// parsed path and query, re-serialised.
fn local_path(next: Option<&str>) -> String {
    let base = url::Url::parse("http://this.site.invalid/").expect("a valid base URL");
    let Some(next) = next.filter(|n| n.starts_with('/')) else { return "/".into() };
    // Browsers drop tabs and newlines from URLs and read `\` as `/`: refuse them outright.
    if next.chars().any(|c| c.is_control() || c.is_whitespace() || c == '\\') {
        return "/".into();
    }
    match base.join(next) {
        Ok(u) if u.origin() == base.origin() => u[url::Position::BeforePath..].to_string(),
        _ => "/".into(),
    }
}

/// The sign-in page.
#[utoipa::path(get, path = "/login", tag = "pages",
    responses((status = 200, content_type = "text/html", body = String, description = "the sign-in form")))]
pub async fn login_page() -> Html<String> {
    Html(LOGIN_PAGE.replace("{message}", ""))
}

/// `POST /login`'s form.
#[derive(serde::Deserialize, utoipa::ToSchema)]
pub struct LoginForm {
    token: String,
    #[serde(default)]
    next: Option<String>,
}

/// Signs a browser in: the viewer (or admin) token gives a session cookie (HttpOnly,
/// SameSite=Strict, a digest of the token) and a redirect back to where it was going.
#[utoipa::path(post, path = "/login", tag = "pages",
    request_body(content = LoginForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 303, description = "signed in: a session cookie and a redirect"),
        (status = 401, content_type = "text/html", body = String, description = "wrong token: the form again")))]
pub async fn login(State(s): State<ApiState>, Form(form): Form<LoginForm>) -> Response {
    match reading_tokens(&s).find(|t| same_secret(&form.token, t)) {
        Some(t) => {
            let set = format!("{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict", session_of(t));
            let to = local_path(form.next.as_deref());
            tracing::info!("dashboard sign-in");
            (StatusCode::SEE_OTHER, [(header::SET_COOKIE, set), (header::LOCATION, to)]).into_response()
        }
        None => {
            tracing::warn!("dashboard sign-in refused: wrong token");
            let page = LOGIN_PAGE.replace("{message}", "That token is not right.");
            (StatusCode::UNAUTHORIZED, Html(page)).into_response()
        }
    }
}

/// Signs a browser out (the session cookie cleared).
#[utoipa::path(get, path = "/logout", tag = "pages", responses((status = 303, description = "signed out: to /login")))]
pub async fn logout() -> Response {
    let clear = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    (StatusCode::SEE_OTHER, [(header::SET_COOKIE, clear), (header::LOCATION, "/login".to_string())]).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_in_goes_back_only_to_this_site_and_the_cookie_is_no_token() {
        assert_eq!(local_path(Some("/?play=x.mp4")), "/?play=x.mp4");
        for evil in [
            "//evil.example/",
            "https://evil.example/",
            "/\\evil.example",
            "",
            "/\t/evil.example",
            "/\n/evil.example",
            "///evil.example",
        ] {
            assert_eq!(local_path(Some(evil)), "/", "{evil}");
        }
        for ok in ["127.0.0.1:8088", "localhost", "LOCALHOST:80", "[::1]:8088", "127.0.0.2"] {
            assert!(loopback_host(ok), "{ok}");
        }
        for refused in ["evil.example", "evil.example:8088", "10.0.0.5:8088", "", "127.0.0.1.evil.example"] {
            assert!(!loopback_host(refused), "{refused}");
        }
        let mut api = cctv_common::config::ApiConfig { listen: "0.0.0.0:8088".into(), ..Default::default() };
        assert!(check_exposure(&api).unwrap_err().contains("api.viewer_token is not set"));
        api.viewer_token = Some("viewer-token-0123456789".into());
        assert!(check_exposure(&api).is_ok());
        api.listen = "127.0.0.1:8088".into();
        api.viewer_token = None;
        assert!(check_exposure(&api).is_ok());
        // An encoded tab stays encoded in a path: a page of this site.
        assert_eq!(local_path(Some("/%09/evil.example/x")), "/%09/evil.example/x");
        let token = "viewer-token-0123456789";
        assert!(!session_of(token).contains(token) && session_of(token).len() == 64);
        assert_ne!(session_of(token), session_of("another-token-0123456789"));
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, "a=1; cctv_session=abc; b=2".parse().unwrap());
        assert_eq!(cookie(&h, COOKIE), Some("abc"));
        assert_eq!(encode("/?play=a b"), "/%3Fplay%3Da%20b");
    }
}
