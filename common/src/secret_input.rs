//! Camera URLs that hold a secret never go on a command line (`ps` and `/proc/<pid>/cmdline`
//! show every process's arguments to every local user).
//!
//! ffmpeg and ffprobe then open the camera through a one-entry ffconcat list written to a file
//! only the process's user can read: `-f concat -i <list>`, the list naming the URL and the
//! camera input's options (`option rtsp_transport tcp`, ...). The concat demuxer opens the URL
//! with those options and hands its packets on unchanged: the same streams, codecs, rates and
//! failures as a direct input (checked against a password-protected RTSP camera, and by
//! `relay/tests/relay.rs`). A URL without a secret is passed as before.
//!
//! The lists live in a directory of this process (`$TMPDIR/cctv-inputs-<pid>-<random>`, mode
//! 0700, files 0600), one per (URL, options), written once and reused across restarts.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

/// Query parameters that carry a secret in camera URLs (`?user=admin&password=…`).
pub const SECRET_PARAMS: &[&str] = &[
    "password",
    "passwd",
    "pass",
    "pwd",
    "pw",
    "psw",
    "auth",
    "authorization",
    "token",
    "access_token",
    "apikey",
    "api_key",
    "key",
    "secret",
    "signature",
    "sig",
];

/// Protocols the concat demuxer may open for a camera: what a direct input could use.
const PROTOCOLS: &str = "file,rtsp,rtsps,rtp,srtp,tcp,udp,tls,http,https,httpproxy,crypto,rtmp,rtmps,srt";

/// Whether `url` carries a secret: user-info, or a query parameter of [`SECRET_PARAMS`].
pub fn has_secret(url: &str) -> bool {
    let Some((scheme, rest)) = url.split_once("://") else { return false };
    if scheme.eq_ignore_ascii_case("file") {
        return false;
    }
    if user_info(url).is_some() {
        return true;
    }
    // `?k=v&k=v`, and the `;k=v` some cameras take in the path.
    rest.split(['?', '&', ';']).skip(1).filter_map(|kv| kv.split_once('=').map(|(k, _)| k)).any(is_secret_param)
}

/// The user-info of a URL (`user:pass`, or a user): up to the last `@`, when that part reads as
/// one (it has a `:`, or no `/`), since a password may hold `/`, `?` or `@` unencoded.
pub fn user_info(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    rest.rsplit_once('@').map(|(u, _)| u).filter(|u| !u.is_empty() && (u.contains(':') || !u.contains('/')))
}

/// `name` (any case) is one of [`SECRET_PARAMS`].
pub fn is_secret_param(name: &str) -> bool {
    SECRET_PARAMS.iter().any(|p| p.eq_ignore_ascii_case(name))
}

/// The arguments that open `url` with the demuxer/protocol `options` (name, value; without the
/// leading `-`), ending with `-i <input>`. For a URL with a secret the input is a private
/// ffconcat list (see the module documentation); an error names the directory that could not
/// be written, never the URL.
pub fn input_args(url: &str, options: &[(&str, String)]) -> std::io::Result<Vec<String>> {
    if !has_secret(url) {
        let mut args: Vec<String> = options.iter().flat_map(|(k, v)| [format!("-{k}"), v.clone()]).collect();
        args.extend(["-i".to_string(), url.to_string()]);
        return Ok(args);
    }
    let list = list_file(url, options)?;
    Ok(vec![
        "-f".into(),
        "concat".into(),
        "-safe".into(),
        "0".into(),
        "-protocol_whitelist".into(),
        PROTOCOLS.into(),
        "-i".into(),
        list.display().to_string(),
    ])
}

/// The ffconcat list of `url` with `options`.
fn list_text(url: &str, options: &[(&str, String)]) -> String {
    let mut text = format!("ffconcat version 1.0\nfile {}\n", quote(url));
    for (k, v) in options {
        text.push_str(&format!("option {k} {}\n", quote(v)));
    }
    text
}

/// ffconcat's quoting: in single quotes, a quote is closed, escaped and reopened.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// This process's private directory of lists (created 0700 on first use).
fn dir() -> std::io::Result<&'static Path> {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    if let Some(d) = DIR.get() {
        return Ok(d);
    }
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let d = std::env::temp_dir().join(format!("cctv-inputs-{}-{suffix}", std::process::id()));
    std::fs::DirBuilder::new().mode(0o700).create(&d).map_err(|e| in_dir(&d, e))?;
    Ok(DIR.get_or_init(|| d))
}

fn in_dir(d: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("private camera input directory {}: {e}", d.display()))
}

/// Writes (once) and returns the list of `url` with `options`, mode 0600.
fn list_file(url: &str, options: &[(&str, String)]) -> std::io::Result<PathBuf> {
    let text = list_text(url, options);
    let name: String = Sha256::digest(text.as_bytes()).iter().take(8).map(|b| format!("{b:02x}")).collect();
    let d = dir()?;
    let path = d.join(format!("{name}.ffconcat"));
    if path.exists() {
        return Ok(path);
    }
    let tmp = d.join(format!(".{name}.{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
    let mut f =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(|e| in_dir(d, e))?;
    f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).map_err(|e| in_dir(d, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| in_dir(d, e))?;
    Ok(path)
}

/// Removes this process's lists (at a clean exit; a killed process leaves a 0700 directory
/// behind, which a private `/tmp` of systemd or Docker clears).
pub fn cleanup() {
    if let Ok(d) = dir() {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn secrets_are_found_in_user_info_and_in_query_parameters_of_any_case() {
        for url in [
            "rtsp://admin:pw@cam/1",
            "rtsp://admin@cam/1",
            "rtsp://admin:p%2Fw@cam:554/stream",
            "rtsp://cam/live?user=admin&password=pw",
            "rtsp://cam/live?channel=1&PWD=pw",
            "http://cam/video.mjpg?token=abc",
            "rtsp://cam/live;auth=abc",
            "rtsp://admin:a?b/c@cam/1",
        ] {
            assert!(has_secret(url), "{url}");
        }
        for url in
            ["rtsp://cam/1", "rtsp://cam/live?channel=1&subtype=0", "rtmp://127.0.0.1/live/ch1", "file:///a@b.mp4"]
        {
            assert!(!has_secret(url), "{url}");
        }
    }

    #[test]
    fn a_url_with_a_secret_goes_through_a_private_list_and_never_on_the_command_line() {
        let url = "rtsp://admin:s3cr'et/x@cam:554/live?password=pw2";
        let args = input_args(url, &[("rtsp_transport", "tcp".into()), ("timeout", "5000000".into())]).unwrap();
        let line = args.join(" ");
        assert!(!line.contains("s3cr") && !line.contains("pw2") && !line.contains("cam:554"), "{line}");
        assert_eq!(&args[..4], ["-f", "concat", "-safe", "0"]);
        let list = PathBuf::from(args.last().unwrap());
        let text = std::fs::read_to_string(&list).unwrap();
        assert_eq!(
            text,
            "ffconcat version 1.0\nfile 'rtsp://admin:s3cr'\\''et/x@cam:554/live?password=pw2'\n\
             option rtsp_transport 'tcp'\noption timeout '5000000'\n"
        );
        assert_eq!(std::fs::metadata(&list).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(list.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
        // The same input again: the same list, not a second file.
        let again = input_args(url, &[("rtsp_transport", "tcp".into()), ("timeout", "5000000".into())]).unwrap();
        assert_eq!(again, args);
    }

    #[test]
    fn a_url_without_a_secret_is_passed_as_before() {
        let args = input_args("rtsp://cam/1", &[("rtsp_transport", "tcp".into())]).unwrap();
        assert_eq!(args, ["-rtsp_transport", "tcp", "-i", "rtsp://cam/1"]);
    }
}
