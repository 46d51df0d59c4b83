//! The one redaction function: camera credentials never reach logs, events, errors or status.
//!
//! Every place that prints a camera URL, an ffmpeg command line or ffmpeg's stderr goes through
//! [`redact_text`] (or [`redact_url`] for a single URL).

use std::borrow::Cow;

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
}
