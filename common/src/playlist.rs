//! The rolling buffer's playlist: nginx-rtmp's HLS form with `hls_fragment_naming system`,
//! each fragment named by the wall-clock ms at which it starts (`<ms>.ts`), so a time maps to
//! fragments without decoding anything. The relay's own buffer (H.265 main streams) writes the
//! same form, so worker-record reads both with one parser: this one.

/// One fragment as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Wall-clock time of its first frame, ms since the epoch (from its name).
    pub start_ms: i64,
    pub duration_ms: i64,
    /// Follows a discontinuity (the camera or the relay restarted).
    pub discontinuity: bool,
    /// As listed: a bare name, a path, or an absolute URL.
    pub uri: String,
}

impl Entry {
    pub fn end_ms(&self) -> i64 {
        self.start_ms + self.duration_ms
    }
}

/// A media playlist of the buffer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Playlist {
    /// `#EXT-X-MEDIA-SEQUENCE`: how many fragments left the playlist's front so far.
    pub sequence: u64,
    pub entries: Vec<Entry>,
}

impl Playlist {
    /// Parses `text`; `None` when it is not an HLS playlist. Fragments whose names are not ms
    /// timestamps are left out (not from a buffer named by wall-clock time), and so is a
    /// fragment without its `#EXTINF` duration.
    pub fn parse(text: &str) -> Option<Self> {
        if !text.trim_start().starts_with("#EXTM3U") {
            return None;
        }
        let mut out = Playlist::default();
        let mut duration_ms = None;
        let mut discontinuity = false;
        for line in text.lines().map(str::trim) {
            if let Some(s) = line.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
                out.sequence = s.trim().parse().unwrap_or(0);
            } else if let Some(d) = line.strip_prefix("#EXTINF:") {
                // Three decimals are written: rounding gives the ms back exactly.
                duration_ms =
                    d.split(',').next().and_then(|v| v.trim().parse::<f64>().ok()).map(|s| (s * 1000.0).round() as i64);
            } else if line == "#EXT-X-DISCONTINUITY" {
                discontinuity = true;
            } else if !line.is_empty() && !line.starts_with('#') {
                let name = line.rsplit('/').next().unwrap_or(line);
                let stem = name.strip_suffix(".ts").unwrap_or(name);
                if let (Ok(start_ms), Some(d)) = (stem.parse::<i64>(), duration_ms.take()) {
                    out.entries.push(Entry { start_ms, duration_ms: d, discontinuity, uri: line.to_string() });
                }
                duration_ms = None;
                discontinuity = false;
            }
        }
        Some(out)
    }

    /// The playlist text, as nginx-rtmp writes it; `#EXT-X-TARGETDURATION` is the longest
    /// fragment rounded up, `default_target_secs` while there is none.
    pub fn render(&self, default_target_secs: u32) -> String {
        let target =
            self.entries.iter().map(|f| (f.duration_ms + 999) / 1000).max().unwrap_or(i64::from(default_target_secs));
        let mut s = format!(
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-MEDIA-SEQUENCE:{}\n#EXT-X-TARGETDURATION:{target}\n",
            self.sequence
        );
        for f in &self.entries {
            if f.discontinuity {
                s.push_str("#EXT-X-DISCONTINUITY\n");
            }
            s.push_str(&format!("#EXTINF:{:.3},\n{}\n", f.duration_ms as f64 / 1000.0, f.uri));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NGINX: &str = "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-MEDIA-SEQUENCE:7\n#EXT-X-TARGETDURATION:3\n\
        #EXTINF:2.040,\n1732444440000.ts\n#EXT-X-DISCONTINUITY\n#EXTINF:1.960,\n1732444442100.ts\n";

    #[test]
    fn fragments_carry_their_wall_clock_time_and_render_back_the_same() {
        let p = Playlist::parse(NGINX).unwrap();
        assert_eq!(p.sequence, 7);
        assert_eq!(p.entries.len(), 2);
        assert_eq!((p.entries[0].start_ms, p.entries[0].duration_ms), (1_732_444_440_000, 2040));
        assert!(!p.entries[0].discontinuity && p.entries[1].discontinuity);
        assert_eq!(p.entries[1].end_ms(), 1_732_444_444_060);
        assert_eq!(p.render(2), NGINX);
    }

    #[test]
    fn names_that_are_not_times_and_entries_without_duration_are_left_out() {
        let text = "#EXTM3U\n#EXTINF:2.000,\nseg-1.ts\n1000.ts\n#EXTINF:2.000,\nhls/ch1/3000.ts\n";
        let p = Playlist::parse(text).unwrap();
        assert_eq!(p.entries.len(), 1);
        assert_eq!((p.entries[0].start_ms, p.entries[0].uri.as_str()), (3000, "hls/ch1/3000.ts"));
        assert!(Playlist::parse("<html>").is_none());
        assert_eq!(
            Playlist::default().render(2),
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-TARGETDURATION:2\n"
        );
    }
}
