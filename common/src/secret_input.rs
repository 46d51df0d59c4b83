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
//! 0700, files 0600), one per (URL, options), written once and reused across restarts. The
//! process removes it when it stops ([`Lists`]); a process that was killed leaves its directory
//! behind, and the next one to create its own removes every such directory whose process is
//! gone ([`sweep_stale`]), so a camera password does not outlive its relay on disk.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

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

/// This process's directory of lists, once made; a lock, not a `OnceLock`, so that relays
/// starting together make one directory (not one each, the others never removed).
static DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

/// This process's private directory of lists (created 0700 on first use).
fn dir() -> std::io::Result<PathBuf> {
    let mut made = DIR.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(d) = made.as_ref() {
        return Ok(d.clone());
    }
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    sweep_stale(&std::env::temp_dir());
    let d = std::env::temp_dir().join(format!("cctv-inputs-{}-{suffix}", std::process::id()));
    std::fs::DirBuilder::new().mode(0o700).create(&d).map_err(|e| in_dir(&d, e))?;
    *made = Some(d.clone());
    Ok(d)
}

fn in_dir(d: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("private camera input directory {}: {e}", d.display()))
}

/// Writes (once) and returns the list of `url` with `options`, mode 0600.
fn list_file(url: &str, options: &[(&str, String)]) -> std::io::Result<PathBuf> {
    let text = list_text(url, options);
    let name: String = Sha256::digest(text.as_bytes()).iter().take(8).map(|b| format!("{b:02x}")).collect();
    let d = &dir()?;
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

/// Removes this process's lists when dropped: held by a process for as long as its ffmpeg
/// children may (re)open them.
#[must_use = "the lists are removed when this is dropped"]
pub struct Lists;

impl Drop for Lists {
    fn drop(&mut self) {
        cleanup();
    }
}

/// Removes this process's lists, if it wrote any.
pub fn cleanup() {
    if let Some(d) = DIR.lock().unwrap_or_else(|e| e.into_inner()).take() {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// Removes the list directories under `tmp` left by processes that are gone (killed before
/// they could remove their own). Only this user's directories, named as [`dir`] names them,
/// whose process id is not running (or is this process's, which sweeps before it makes its own);
/// a pid reused by another process keeps its directory until a later sweep (nothing of a live
/// relay is ever removed).
pub fn sweep_stale(tmp: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(tmp) else { return };
    let uid = nix::unistd::Uid::current().as_raw();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(stale_pid) else { continue };
        let Ok(meta) = std::fs::symlink_metadata(entry.path()) else { continue };
        // This process's own id on a directory it has not made yet: an earlier process's.
        let running = pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists();
        if !meta.is_dir() || meta.uid() != uid || running {
            continue;
        }
        match std::fs::remove_dir_all(entry.path()) {
            Ok(()) => {
                tracing::info!(path = %entry.path().display(), pid, "removed the camera input lists of a process that is gone")
            }
            Err(e) => {
                tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove stale camera input lists")
            }
        }
    }
}

/// The pid in a list directory's name, `cctv-inputs-<pid>-<8 hex>`.
fn stale_pid(name: &str) -> Option<u32> {
    let (pid, suffix) = name.strip_prefix("cctv-inputs-")?.split_once('-')?;
    (suffix.len() == 8 && suffix.bytes().all(|b| b.is_ascii_hexdigit())).then_some(())?;
    pid.parse().ok()
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
    fn the_lists_of_a_process_that_is_gone_are_swept_and_a_live_ones_kept() {
        let tmp = tempfile::tempdir().unwrap();
        // pid_max is at most 2^22: this process cannot exist.
        let gone = tmp.path().join("cctv-inputs-99999999-0123abcd");
        let live = tmp.path().join(format!("cctv-inputs-{}-0123abcd", std::os::unix::process::parent_id()));
        let reused = tmp.path().join(format!("cctv-inputs-{}-0123abcd", std::process::id()));
        let other = tmp.path().join("cctv-inputs-99999999-not-ours");
        for d in [&gone, &live, &reused, &other] {
            std::fs::create_dir(d).unwrap();
            std::fs::write(d.join("x.ffconcat"), "file 'rtsp://u:pw@cam/1'\n").unwrap();
        }
        sweep_stale(tmp.path());
        assert!(!gone.exists(), "the directory of a process that is gone is removed");
        assert!(!reused.exists(), "a directory of this pid made before this process is removed");
        assert!(live.join("x.ffconcat").exists(), "a running process keeps its lists");
        assert!(other.exists(), "a name this module does not make is left alone");
        assert_eq!(stale_pid("cctv-inputs-42-deadbeef"), Some(42));
        assert_eq!(stale_pid("cctv-inputs-42-deadbee"), None);
    }

    #[test]
    fn a_url_without_a_secret_is_passed_as_before() {
        let args = input_args("rtsp://cam/1", &[("rtsp_transport", "tcp".into())]).unwrap();
        assert_eq!(args, ["-rtsp_transport", "tcp", "-i", "rtsp://cam/1"]);
    }
}
