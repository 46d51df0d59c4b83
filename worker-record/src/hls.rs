//! nginx-rtmp's HLS output as a rolling buffer: the playlist of a stream and its fragments,
//! fetched over HTTP. With `hls_fragment_naming system` each fragment is named by the wall-clock
//! time (ms) at which nginx started it, so a time maps to fragments without decoding anything.

use std::time::Duration;

use cctv_common::playlist::Playlist;

/// One complete fragment listed in a playlist.
#[derive(Debug, Clone, PartialEq)]
pub struct Fragment {
    /// Wall-clock time of its first frame, ms since epoch (from its name).
    pub start_ms: i64,
    pub duration_ms: i64,
    /// Absolute URL.
    pub url: String,
    /// Follows a discontinuity (the camera reconnected).
    pub discontinuity: bool,
}

impl Fragment {
    pub fn end_ms(&self) -> i64 {
        self.start_ms + self.duration_ms
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HlsError {
    #[error("{url}: {message}")]
    Http { url: String, message: String },
    #[error("{url}: not found (stream not published, or fragment already rotated out)")]
    NotFound { url: String },
    #[error("{url}: not an HLS playlist")]
    NotPlaylist { url: String },
}

/// The fragments of a buffer's playlist (see [`cctv_common::playlist`]), with absolute URLs,
/// oldest first.
pub fn parse_playlist(playlist_url: &str, text: &str) -> Result<Vec<Fragment>, HlsError> {
    let list = Playlist::parse(text).ok_or_else(|| HlsError::NotPlaylist { url: playlist_url.to_string() })?;
    let base = playlist_url.rsplit_once('/').map_or("", |(b, _)| b);
    let mut out: Vec<Fragment> = list
        .entries
        .into_iter()
        .map(|e| Fragment {
            start_ms: e.start_ms,
            duration_ms: e.duration_ms,
            url: if e.uri.contains("://") { e.uri } else { format!("{base}/{}", e.uri) },
            discontinuity: e.discontinuity,
        })
        .collect();
    out.sort_by_key(|f| f.start_ms);
    Ok(out)
}

/// An HTTP client for playlists and fragments (plain HTTP on the LAN; short timeouts).
#[derive(Clone)]
pub struct HlsClient {
    agent: ureq::Agent,
}

impl Default for HlsClient {
    fn default() -> Self {
        let agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(10))).build().into();
        Self { agent }
    }
}

impl HlsClient {
    fn get(&self, url: &str) -> Result<Vec<u8>, HlsError> {
        match self.agent.get(url).call() {
            Ok(mut resp) => resp
                .body_mut()
                .with_config()
                .limit(256 * 1024 * 1024)
                .read_to_vec()
                .map_err(|e| HlsError::Http { url: url.to_string(), message: e.to_string() }),
            Err(ureq::Error::StatusCode(404)) => Err(HlsError::NotFound { url: url.to_string() }),
            Err(e) => Err(HlsError::Http { url: url.to_string(), message: e.to_string() }),
        }
    }

    pub fn playlist(&self, url: &str) -> Result<Vec<Fragment>, HlsError> {
        let body = self.get(url)?;
        parse_playlist(url, &String::from_utf8_lossy(&body))
    }

    pub fn fragment(&self, f: &Fragment) -> Result<Vec<u8>, HlsError> {
        self.get(&f.url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAYLIST: &str = "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-MEDIA-SEQUENCE:7\n#EXT-X-TARGETDURATION:3\n\
        #EXTINF:2.040,\n1732444440000.ts\n#EXT-X-DISCONTINUITY\n#EXTINF:1.960,\n1732444442100.ts\n";

    #[test]
    fn fragments_carry_their_wall_clock_time() {
        let f = parse_playlist("http://h:8080/hls/ch1/index.m3u8", PLAYLIST).unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].start_ms, 1_732_444_440_000);
        assert_eq!(f[0].duration_ms, 2040);
        assert_eq!(f[0].url, "http://h:8080/hls/ch1/1732444440000.ts");
        assert!(!f[0].discontinuity && f[1].discontinuity);
        assert_eq!(f[1].end_ms(), 1_732_444_444_060);
    }

    #[test]
    fn not_a_playlist_is_an_error() {
        assert!(matches!(parse_playlist("http://h/x.m3u8", "<html>"), Err(HlsError::NotPlaylist { .. })));
    }
}
