//! Security headers on every answer: a Content Security Policy that allows this site's own
//! scripts only (the pages' inline scripts by their hash, computed from the compiled-in pages,
//! so the policy cannot drift from them), no framing by other sites, no MIME sniffing.

use std::sync::LazyLock;

use axum::http::{header, HeaderValue};
use axum::response::Response;
use base64::Engine;
use sha2::{Digest, Sha256};

/// `'sha256-…'` of every inline `<script>` of `pages`.
fn script_hashes(pages: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for page in pages {
        let mut rest = *page;
        while let Some(start) = rest.find("<script>") {
            let body = &rest[start + "<script>".len()..];
            let Some(end) = body.find("</script>") else { break };
            let digest = Sha256::digest(&body.as_bytes()[..end]);
            out.push(format!("'sha256-{}'", base64::engine::general_purpose::STANDARD.encode(digest)));
            rest = &body[end..];
        }
    }
    out
}

/// The policy of every answer.
pub(crate) fn content_security_policy(pages: &[&str]) -> String {
    format!(
        "default-src 'self'; script-src 'self' {}; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; \
         media-src 'self' blob:; worker-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
         form-action 'self'; frame-ancestors 'none'",
        script_hashes(pages).join(" ")
    )
}

static CSP: LazyLock<HeaderValue> = LazyLock::new(|| {
    let policy = content_security_policy(&[crate::DASHBOARD, crate::API_DOCS, crate::auth::LOGIN_PAGE]);
    HeaderValue::from_str(&policy).expect("the policy is ASCII")
});

/// Adds the security headers to an answer (those it set itself stay).
pub(crate) async fn add(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.entry(header::CONTENT_SECURITY_POLICY).or_insert_with(|| CSP.clone());
    h.entry(header::X_CONTENT_TYPE_OPTIONS).or_insert(HeaderValue::from_static("nosniff"));
    h.entry(header::X_FRAME_OPTIONS).or_insert(HeaderValue::from_static("DENY"));
    h.entry(header::REFERRER_POLICY).or_insert(HeaderValue::from_static("same-origin"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_pages_inline_script_is_allowed_by_its_hash_and_nothing_else_inline() {
        let csp = content_security_policy(&["<p><script>alert(1)</script></p>", "<script>b()</script>"]);
        assert!(csp.contains("'sha256-bhHHL3z2vDgxUt0W3dWQOrprscmda2Y5pLsLg4GF+pI='"), "{csp}");
        assert_eq!(csp.matches("'sha256-").count(), 2, "{csp}");
        assert!(!csp.contains("script-src 'self' 'unsafe-inline'") && csp.contains("frame-ancestors 'none'"), "{csp}");
        // The real pages: one inline script each.
        assert_eq!(CSP.to_str().unwrap().matches("'sha256-").count(), 3);
    }
}
