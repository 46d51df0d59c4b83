//! The zones overlay: masks and zones drawn on the camera's picture in the dashboard, kept
//! beside the config file as `<name>.zones.toml` (`cctv.toml` → `cctv.zones.toml`), or where
//! `scheduler.zones_overlay` says (a read-only config directory). For each
//! channel it lists, it replaces that channel's `[[channel.mask]]` and `[[channel.zone]]`.
//!
//! [`Config::load`] applies it before validating, so every process and `check-config` see the
//! same masks; the API writes it only after the config with it applied validates (a bad zone is
//! refused with the reason, never saved); the scheduler notices a new overlay
//! ([`OverlayWatch`]) and re-plans, so motion workers take the new masks without a restart.
//! The config file itself is never rewritten: its comments and layout stay the operator's.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::{Config, ConfigProblem, MaskConfig, ZoneConfig};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZonesOverlay {
    #[serde(default)]
    pub channel: Vec<ChannelZones>,
}

/// One channel's drawn masks and zones.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelZones {
    pub id: u32,
    #[serde(default)]
    pub mask: Vec<MaskConfig>,
    #[serde(default)]
    pub zone: Vec<ZoneConfig>,
}

/// Why the overlay could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("zones overlay {path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("zones overlay {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
}

/// `cctv.toml` → `cctv.zones.toml`, beside it.
pub fn overlay_path(config_path: &Path) -> PathBuf {
    let stem = config_path.file_stem().and_then(|s| s.to_str()).unwrap_or("cctv");
    config_path.with_file_name(format!("{stem}.zones.toml"))
}

impl ZonesOverlay {
    /// The overlay at `path`; `None` when there is none.
    pub fn read(path: &Path) -> Result<Option<Self>, OverlayError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(OverlayError::Io { path: path.to_owned(), error }),
        };
        toml::from_str(&text)
            .map(Some)
            .map_err(|e| OverlayError::Parse { path: path.to_owned(), message: e.to_string() })
    }

    /// Replaces the masks and zones of every channel it lists; a channel not in the config is
    /// a problem (its camera was removed: the drawing has nothing to apply to).
    pub fn apply(&self, config: &mut Config) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        for (i, z) in self.channel.iter().enumerate() {
            match config.channels.iter_mut().find(|c| c.id == z.id) {
                Some(ch) => {
                    ch.mask = z.mask.clone();
                    ch.zone = z.zone.clone();
                }
                None => problems.push(ConfigProblem {
                    field: format!("zones overlay channel[{i}].id"),
                    message: format!("channel {} is not in the config", z.id),
                }),
            }
        }
        problems
    }

    /// This channel's drawing, replacing what it had.
    pub fn set(&mut self, zones: ChannelZones) {
        self.channel.retain(|c| c.id != zones.id);
        self.channel.push(zones);
        self.channel.sort_by_key(|c| c.id);
    }

    /// Written whole under a temporary name, then renamed: a reader never sees half a file.
    pub fn write(&self, path: &Path) -> Result<(), OverlayError> {
        let io = |error| OverlayError::Io { path: path.to_owned(), error };
        let text = format!(
            "# Masks and zones drawn in the dashboard; they replace the channel's own in the config.\n{}",
            toml::to_string(self).map_err(|e| OverlayError::Parse { path: path.to_owned(), message: e.to_string() })?
        );
        let tmp = path.with_extension("toml.part");
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}

/// Notices a changed overlay file (by modification time and size) without reading it.
#[derive(Debug)]
pub struct OverlayWatch {
    path: PathBuf,
    seen: Option<(SystemTime, u64)>,
}

impl OverlayWatch {
    /// Watching the overlay at `path` from how it is now.
    pub fn new(path: &Path) -> Self {
        let path = path.to_owned();
        let seen = Self::stamp(&path);
        Self { path, seen }
    }

    fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
        let m = std::fs::metadata(path).ok()?;
        Some((m.modified().ok()?, m.len()))
    }

    /// Whether the file changed (appeared, went, or was rewritten) since the last call.
    pub fn changed(&mut self) -> bool {
        let now = Self::stamp(&self.path);
        let changed = now != self.seen;
        self.seen = now;
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(name: &str) -> ZoneConfig {
        ZoneConfig { name: name.into(), points: vec![[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]] }
    }

    #[test]
    fn an_overlay_replaces_the_masks_and_zones_of_the_channels_it_lists() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("site.toml");
        std::fs::write(
            &cfg,
            "[[channel]]\nid = 1\nname = \"a\"\nsource = \"rtsp://127.0.0.1/a\"\n\
             [[channel.zone]]\nname = \"old\"\npoints = [[0.0, 0.0], [0.5, 0.0], [0.5, 0.5]]\n\
             [[channel]]\nid = 2\nname = \"b\"\nsource = \"rtsp://127.0.0.1/b\"\n",
        )
        .unwrap();
        assert_eq!(overlay_path(&cfg), dir.path().join("site.zones.toml"));
        let mut watch = OverlayWatch::new(&overlay_path(&cfg));
        assert!(!watch.changed());
        let mut overlay = ZonesOverlay::default();
        overlay.set(ChannelZones { id: 1, mask: vec![], zone: vec![zone("door")] });
        overlay.write(&overlay_path(&cfg)).unwrap();
        assert!(watch.changed());
        assert!(!watch.changed());
        let loaded = Config::load(&cfg).unwrap();
        assert_eq!(loaded.channels[0].zone, vec![zone("door")]);
        assert!(loaded.channels[1].zone.is_empty());
        // A drawing for a camera no longer in the config, and a bad zone: load says both.
        overlay.set(ChannelZones { id: 9, mask: vec![], zone: vec![] });
        overlay.set(ChannelZones { id: 2, mask: vec![], zone: vec![zone("bad name!")] });
        overlay.write(&overlay_path(&cfg)).unwrap();
        let err = Config::load(&cfg).unwrap_err().to_string();
        assert!(err.contains("channel 9 is not in the config") && err.contains("\"bad name!\""), "{err}");
    }
}
