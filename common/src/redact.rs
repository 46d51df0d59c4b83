//! The one redaction function: camera credentials never reach logs, events, errors or status.
//!
//! Every place that prints a camera URL, an ffmpeg command line or ffmpeg's stderr goes through
//! [`redact_text`] (or [`redact_url`] for a single URL), and so does every log line
//! (`telemetry`). Two lines of defence:
//! 1. the configured secrets themselves ([`register`], done by `Config::load`): each camera URL
//!    is replaced wholesale by its redacted form, and each password, token and secret value
//!    (as written, and percent-decoded) by [`MASK`], wherever it appears: also a password with
//!    characters no pattern can delimit;
//! 2. patterns: the user-info of every `scheme://user:pass@host`, and the value of every query
//!    parameter named like a secret (`password`, `pwd`, `token`, ...:
//!    [`crate::secret_input::SECRET_PARAMS`]).

use std::borrow::Cow;
use std::sync::RwLock;

/// What replaces `user:password` (or a bare user) in a URL.
pub const MASK: &str = "***";

/// Redacts the user-info part of one URL: `rtsp://admin:pw@cam/1` → `rtsp://***@cam/1`.
pub fn redact_url(url: &str) -> String {
    redact_text(url).into_owned()
}

/// Redacts the user-info of every `scheme://user[:pass]@host` found anywhere in `text`.
///
/// Works on free text (ffmpeg logs, error chains) without parsing: after each `://`, if an `@`
/// comes before the next `/`, whitespace or quote, everything between is credentials.
pub fn redact_text(text: &str) -> Cow<'_, str> {
    let known = redact_known(text);
    let users = redact_user_info(&known);
    match redact_params(&users) {
        Cow::Borrowed(_) => match users {
            Cow::Borrowed(_) => known,
            Cow::Owned(u) => Cow::Owned(u),
        },
        Cow::Owned(p) => Cow::Owned(p),
    }
}

/// Secrets shorter than this are not replaced on their own (a two-letter password would mask
/// every such pair of letters in a log); the URLs that hold them are, and the patterns apply.
const MIN_SECRET_LEN: usize = 4;

/// Registered (secret, replacement) pairs, longest first.
static KNOWN: RwLock<Vec<(String, String)>> = RwLock::new(Vec::new());

/// Registers the configured secrets: each of `urls` (camera sources, Redis and MQTT URLs) is
/// replaced wholesale by its pattern-redacted form, and its password and secret query values,
/// like each of `secrets` (tokens, passwords), by [`MASK`].
pub fn register<'a>(urls: impl IntoIterator<Item = &'a str>, secrets: impl IntoIterator<Item = &'a str>) {
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut values: Vec<String> = secrets.into_iter().map(str::to_string).collect();
    for url in urls {
        values.extend(url_secrets(url));
        let redacted = redact_params(&redact_user_info(url)).into_owned();
        if redacted != url {
            pairs.push((url.to_string(), redacted));
        }
    }
    for s in &values {
        for form in [s.clone(), percent_decode(s)] {
            if form.len() >= MIN_SECRET_LEN && form != MASK {
                pairs.push((form, MASK.to_string()));
            }
        }
    }
    let mut known = KNOWN.write().unwrap_or_else(|e| e.into_inner());
    known.extend(pairs);
    known.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
    known.dedup();
}

/// The secret parts of a configured URL: its user-info and password, and the values of its
/// secret-named parameters.
fn url_secrets(url: &str) -> Vec<String> {
    let mut out = Vec::new();
    let Some((_, rest)) = url.split_once("://") else { return out };
    if let Some(user_info) = crate::secret_input::user_info(url) {
        out.push(user_info.to_string());
        if let Some((_, password)) = user_info.split_once(':') {
            out.push(password.to_string());
        }
    }
    for kv in rest.split(['?', '&', ';']).skip(1) {
        if let Some((k, v)) = kv.split_once('=') {
            if crate::secret_input::is_secret_param(k) {
                out.push(v.split('#').next().unwrap_or(v).to_string());
            }
        }
    }
    out
}

/// `%XX` sequences decoded (lossy); the text as is when it has none.
fn percent_decode(s: &str) -> String {
    if !s.contains('%') {
        return s.to_string();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The registered secrets replaced.
fn redact_known(text: &str) -> Cow<'_, str> {
    let known = KNOWN.read().unwrap_or_else(|e| e.into_inner());
    if known.is_empty() || !known.iter().any(|(s, _)| text.contains(s.as_str())) {
        return Cow::Borrowed(text);
    }
    let mut out = text.to_string();
    for (secret, replacement) in known.iter() {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), replacement);
        }
    }
    Cow::Owned(out)
}

/// The value of every query parameter named like a secret, in free text.
fn redact_params(text: &str) -> Cow<'_, str> {
    if !text.contains('=') {
        return Cow::Borrowed(text);
    }
    let is_name = |ch: char| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-';
    let ends_value =
        |ch: char| ch == '&' || ch == '#' || ch.is_whitespace() || matches!(ch, '"' | '\'' | '<' | '>' | '`');
    let mut out = String::new();
    let mut copied = 0;
    let mut search = 0;
    while let Some(rel) = text[search..].find(['?', '&', ';']) {
        let name_start = search + rel + 1;
        search = name_start;
        let name_end = text[name_start..].find(|ch: char| !is_name(ch)).map_or(text.len(), |n| name_start + n);
        if !text[name_end..].starts_with('=') || !crate::secret_input::is_secret_param(&text[name_start..name_end]) {
            continue;
        }
        let value_start = name_end + 1;
        let value_end = text[value_start..].find(ends_value).map_or(text.len(), |n| value_start + n);
        if value_end > value_start && &text[value_start..value_end] != MASK {
            out.push_str(&text[copied..value_start]);
            out.push_str(MASK);
            copied = value_end;
        }
        search = value_end;
    }
    if copied == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// The user-info of every `scheme://user[:pass]@host`.
fn redact_user_info(text: &str) -> Cow<'_, str> {
    if !text.contains("://") {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut changed = false;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        let authority_end = tail
            .find(|c: char| c == '/' || c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`'))
            .unwrap_or(tail.len());
        let authority = &tail[..authority_end];
        match authority.rfind('@') {
            Some(at) if !authority[..at].is_empty() && authority[..at] != *MASK => {
                out.push_str(MASK);
                out.push_str(&authority[at..]);
                changed = true;
            }
            _ => out.push_str(authority),
        }
        rest = &tail[authority_end..];
    }
    out.push_str(rest);
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_with_password() {
        assert_eq!(redact_url("rtsp://admin:s3cr%40t@10.0.0.5:554/s1"), "rtsp://***@10.0.0.5:554/s1");
    }

    #[test]
    fn password_containing_at_and_colon() {
        assert_eq!(redact_url("rtsp://admin:p@ss:w@cam/x"), "rtsp://***@cam/x");
    }

    #[test]
    fn url_without_credentials_is_untouched() {
        assert!(matches!(redact_text("rtmp://127.0.0.1:1935/live/ch1"), Cow::Borrowed(_)));
    }

    #[test]
    fn free_text_with_several_urls() {
        let s = "Input #0, rtsp, from 'rtsp://u:pw1@a/1':\n[tcp] rtsp://x:pw2@b:554 failed; see http://host/a@b";
        let r = redact_text(s);
        assert!(!r.contains("pw1") && !r.contains("pw2"), "{r}");
        assert!(r.contains("'rtsp://***@a/1'") && r.contains("rtsp://***@b:554 failed"), "{r}");
        assert!(r.contains("http://host/a@b"), "an @ in the path is not credentials: {r}");
    }

    #[test]
    fn idempotent() {
        let once = redact_url("rtsp://a:b@c/d");
        assert_eq!(redact_url(&once), once);
    }

    #[test]
    fn secret_query_parameters_are_masked_in_any_case_and_others_kept() {
        let s = "rtsp://cam:554/live?channel=1&user=admin&password=pw1 and http://x/a.cgi?PWD=pw2&x=1 → ;auth=pw3";
        let r = redact_text(s);
        for secret in ["pw1", "pw2", "pw3"] {
            assert!(!r.contains(secret), "{secret} in {r}");
        }
        assert!(r.contains("channel=1&user=admin&password=***") && r.contains("PWD=***&x=1") && r.contains("→"), "{r}");
        assert_eq!(redact_text(&r), r, "idempotent");
    }

    #[test]
    fn registered_secrets_are_replaced_wherever_they_appear_whatever_their_characters() {
        // A password with a `/` and a `?` no pattern can delimit, percent-encoded in the URL.
        let url = "rtsp://admin:aB%2F9?z@cam-17/live?token=tok-5566";
        register([url], ["api-token-0123456789"]);
        let text = format!(
            "{url} failed; ffmpeg said 'rtsp://admin:aB/9?z@cam-17/live' and tok-5566; header api-token-0123456789"
        );
        let r = redact_text(&text);
        for secret in ["aB%2F9?z", "aB/9?z", "tok-5566", "api-token-0123456789"] {
            assert!(!r.contains(secret), "{secret} in {r}");
        }
        assert!(r.contains("cam-17/live"), "the camera is still named: {r}");
    }
}
