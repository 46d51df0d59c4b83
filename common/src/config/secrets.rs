//! Secrets kept out of the config file: `{env:NAME}` and `{file:PATH}` references in the fields
//! that hold them, resolved at load.

use super::{Config, ConfigProblem, Problems};

impl Config {
    /// Hands every configured secret to the redaction ([`crate::redact::register`]): camera
    /// sources, the Redis, MQTT and webhook URLs wholesale with their passwords and tokens, and
    /// the API tokens, the sentinel password and the webhook keys. Done by [`Config::load`].
    pub fn register_secrets(&self) {
        let mut urls: Vec<&str> = vec![self.cluster.redis_url.as_str()];
        for ch in &self.channels {
            urls.push(&ch.source);
            urls.extend(ch.detect_source.as_deref());
        }
        urls.extend(self.notify.mqtt.as_ref().map(|m| m.url.as_str()));
        urls.extend(self.notify.webhooks.iter().map(|w| w.url.as_str()));
        let mut secrets: Vec<&str> = Vec::new();
        secrets.extend(self.api.token.as_deref());
        secrets.extend(self.api.viewer_token.as_deref());
        secrets.extend(self.cluster.sentinel.as_ref().and_then(|s| s.password.as_deref()));
        secrets.extend(self.notify.webhooks.iter().filter_map(|w| w.secret.as_deref()));
        crate::redact::register(urls, secrets);
    }

    /// Replaces secret references in the fields that hold secrets — `cluster.redis_url`,
    /// `api.token`, each channel's `source` and `detect_source` — so they need not be written in
    /// the file: `{env:NAME}` becomes the variable's value, `{file:/path}` the file's content
    /// without its trailing newline (systemd credentials, Docker secrets). Returns one problem per
    /// reference that cannot be resolved, naming the field and the variable or file, never a value.
    pub fn expand_secrets(
        &mut self,
        env: &dyn Fn(&str) -> Option<String>,
        read: &dyn Fn(&str) -> std::io::Result<String>,
    ) -> Vec<ConfigProblem> {
        let mut p = Problems::default();
        let mut expand = |field: String, value: &mut String| match expand_secret_refs(value, env, read) {
            Ok(v) => *value = v,
            Err(e) => p.add(&field, e),
        };
        expand("cluster.redis_url".into(), &mut self.cluster.redis_url);
        if let Some(pw) = self.cluster.sentinel.as_mut().and_then(|s| s.password.as_mut()) {
            expand("cluster.sentinel.password".into(), pw);
        }
        if let Some(t) = self.api.viewer_token.as_mut() {
            expand("api.viewer_token".into(), t);
        }
        if let Some(t) = self.api.token.as_mut() {
            expand("api.token".into(), t);
        }
        if let Some(m) = self.notify.mqtt.as_mut() {
            expand("notify.mqtt.url".into(), &mut m.url);
        }
        for (i, w) in self.notify.webhooks.iter_mut().enumerate() {
            if let Some(secret) = w.secret.as_mut() {
                expand(format!("notify.webhook[{i}].secret"), secret);
            }
        }
        for (i, ch) in self.channels.iter_mut().enumerate() {
            expand(format!("channel[{i}] (id {}).source", ch.id), &mut ch.source);
            if let Some(d) = ch.detect_source.as_mut() {
                expand(format!("channel[{i}] (id {}).detect_source", ch.id), d);
            }
        }
        p.0
    }
}

/// `{env:NAME}` and `{file:PATH}` in `value` replaced (see [`Config::expand_secrets`]).
pub fn expand_secret_refs(
    value: &str,
    env: &dyn Fn(&str) -> Option<String>,
    read: &dyn Fn(&str) -> std::io::Result<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find('{') {
        let (before, from) = rest.split_at(at);
        out.push_str(before);
        let Some(end) = from.find('}') else {
            out.push_str(from);
            return Ok(out);
        };
        let reference = &from[1..end];
        match reference.split_once(':') {
            Some(("env", name)) => match env(name) {
                Some(v) => out.push_str(&v),
                None => return Err(format!("environment variable {name} (from {{env:{name}}}) is not set")),
            },
            Some(("file", path)) => match read(path) {
                Ok(v) => out.push_str(v.trim_end_matches(['\n', '\r'])),
                Err(e) => return Err(format!("cannot read secret file {path} (from {{file:...}}): {e}")),
            },
            _ => out.push_str(&from[..=end]),
        }
        rest = &from[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}
