//! Who may read and who may change: the bearer token of mutating endpoints (`api.token`) and,
//! when `api.viewer_token` is set, the sign-in every read needs — a bearer token (viewer or
//! admin) from clients, a session cookie from browsers (`/login`, sessions in Redis: see
//! [`crate::session`]); `/api/health` and the sign-in pages stay open.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::{Extension, Form};

use crate::session::{Session, SignInThrottle, SESSION_TTL_SECS};
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
    if by_bearer {
        return next.run(req).await;
    }
    if let Some(id) = cookie(headers, COOKIE) {
        match Session::find(&mut s.conn.clone(), &s.keys, id, reading_tokens(&s)).await {
            Ok(Some(_)) => return next.run(req).await,
            Ok(None) => {}
            Err(e) => return ApiError::from(e).into_response(),
        }
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

/// The cookie's attributes: `Secure` when the site is reached over HTTPS (`notify.public_url`
/// starts with `https://`, e.g. behind a TLS reverse proxy), so the cookie never goes out in
/// clear text once the site has TLS.
fn cookie_attributes(config: &cctv_common::config::Config) -> &'static str {
    let https = config.notify.public_url.as_deref().is_some_and(|u| u.to_ascii_lowercase().starts_with("https://"));
    if https {
        "Path=/; HttpOnly; SameSite=Strict; Secure"
    } else {
        "Path=/; HttpOnly; SameSite=Strict"
    }
}

/// Signs a browser in: the viewer (or admin) token opens a session (a random id in an
/// HttpOnly, SameSite=Strict cookie that lasts 12 h) and redirects back to where it was going.
/// A client that gave 10 wrong tokens in 5 minutes is answered 429 until the window ends.
#[utoipa::path(post, path = "/login", tag = "pages",
    request_body(content = LoginForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 303, description = "signed in: a session cookie and a redirect"),
        (status = 401, content_type = "text/html", body = String, description = "wrong token: the form again"),
        (status = 429, content_type = "text/html", body = String, description = "too many wrong tokens from this client: wait (Retry-After)")))]
pub async fn login(
    State(s): State<ApiState>,
    client: Option<Extension<ConnectInfo<SocketAddr>>>,
    Form(form): Form<LoginForm>,
) -> Response {
    let mut conn = s.conn.clone();
    // By address, not port; behind a reverse proxy every client is the proxy (one budget).
    let client = client.map_or_else(|| "unknown".to_string(), |c| c.0 .0.ip().to_string());
    match SignInThrottle::check(&mut conn, &s.keys, &client).await {
        Ok(None) => {}
        Ok(Some(wait)) => {
            tracing::warn!(client = %client, wait_s = wait, "dashboard sign-in refused: too many wrong tokens");
            let page = LOGIN_PAGE.replace("{message}", "Too many wrong tokens from here: wait a few minutes.");
            let retry = [(header::RETRY_AFTER, wait.to_string())];
            return (StatusCode::TOO_MANY_REQUESTS, retry, Html(page)).into_response();
        }
        Err(e) => return ApiError::from(e).into_response(),
    }
    let Some(token) = reading_tokens(&s).find(|t| same_secret(&form.token, t)) else {
        tracing::warn!(client = %client, "dashboard sign-in refused: wrong token");
        if let Err(e) = SignInThrottle::failed(&mut conn, &s.keys, &client).await {
            return ApiError::from(e).into_response();
        }
        let page = LOGIN_PAGE.replace("{message}", "That token is not right.");
        return (StatusCode::UNAUTHORIZED, Html(page)).into_response();
    };
    match Session::open(&mut conn, &s.keys, token).await {
        Ok(id) => {
            let set = format!("{COOKIE}={id}; {}; Max-Age={SESSION_TTL_SECS}", cookie_attributes(&s.config));
            let to = local_path(form.next.as_deref());
            tracing::info!(client = %client, "dashboard sign-in");
            (StatusCode::SEE_OTHER, [(header::SET_COOKIE, set), (header::LOCATION, to)]).into_response()
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// Signs a browser out: the session ends on the server (the cookie is worthless from then on,
/// wherever a copy of it is) and the cookie is cleared.
#[utoipa::path(get, path = "/logout", tag = "pages", responses((status = 303, description = "signed out: to /login")))]
pub async fn logout(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    if let Some(id) = cookie(&headers, COOKIE) {
        if let Err(e) = Session::close(&mut s.conn.clone(), &s.keys, id).await {
            return ApiError::from(e).into_response();
        }
    }
    let clear = format!("{COOKIE}=; {}; Max-Age=0", cookie_attributes(&s.config));
    (StatusCode::SEE_OTHER, [(header::SET_COOKIE, clear), (header::LOCATION, "/login".to_string())]).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_in_goes_back_only_to_this_site_and_loopback_answers_loopback_names_only() {
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
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, "a=1; cctv_session=abc; b=2".parse().unwrap());
        assert_eq!(cookie(&h, COOKIE), Some("abc"));
        assert_eq!(encode("/?play=a b"), "/%3Fplay%3Da%20b");
    }

    #[test]
    fn the_session_cookie_is_secure_once_the_site_is_reached_over_https() {
        let mut config = cctv_common::config::Config::parse("").unwrap();
        assert!(!cookie_attributes(&config).contains("Secure"));
        config.notify.public_url = Some("HTTPS://nvr.example.org".into());
        assert!(cookie_attributes(&config).ends_with("; Secure"));
        config.notify.public_url = Some("http://nvr.lan:8088".into());
        assert!(!cookie_attributes(&config).contains("Secure"));
    }
}
