//! How a camera's streams travel ([`CameraPlan`], a pure function of their probes) and what
//! audio its relay writes ([`audio_for`], [`AudioGuard`]).

use std::time::Duration;

use cctv_common::config::RelayAudio;
use cctv_common::probe::StreamProbe;

use crate::CLEAN_RUN;

/// How one stream of a camera travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Stream copy into nginx-rtmp (H.264).
    Nginx,
    /// Stream copy into the relay's own rolling buffer (a main stream nginx-rtmp cannot carry).
    Buffer,
    /// Transcoded to H.264 into nginx-rtmp (a detect stream nginx-rtmp cannot carry).
    Transcode,
}

impl Route {
    pub fn describe(self) -> &'static str {
        match self {
            Route::Nginx => "nginx-rtmp, stream copy",
            Route::Buffer => "relay buffer, stream copy (nginx-rtmp cannot carry this codec)",
            Route::Transcode => "nginx-rtmp, transcoded to H.264 for detection",
        }
    }
}

/// How a camera's streams travel, from their probes (`None`: not probed yet or the probe
/// failed: treated as H.264, as every camera was before probing, and probed again at the
/// next restart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CameraPlan {
    pub main: Route,
    /// The sub-stream's route, for a camera with one.
    pub sub: Option<Route>,
    /// A camera without sub-stream whose main stream goes to the buffer: its main stream is
    /// also transcoded into nginx-rtmp (as `ch<id>`) for detection and live view.
    pub detect_transcode: bool,
}

pub(crate) fn carried(probe: Option<&StreamProbe>) -> bool {
    probe.and_then(|p| p.video.as_ref()).is_none_or(|v| v.nginx_carries())
}

impl CameraPlan {
    pub fn of(main: Option<&StreamProbe>, sub: Option<Option<&StreamProbe>>) -> Self {
        let main_route = if carried(main) { Route::Nginx } else { Route::Buffer };
        let sub_route = sub.map(|p| if carried(p) { Route::Nginx } else { Route::Transcode });
        CameraPlan { main: main_route, sub: sub_route, detect_transcode: sub.is_none() && main_route == Route::Buffer }
    }

    /// Every stream is copied into nginx-rtmp (the case one shared process may relay).
    pub fn all_nginx(&self) -> bool {
        self.main == Route::Nginx && self.sub.is_none_or(|r| r == Route::Nginx)
    }
}

/// The audio a relay writes for `setting` and what the camera sends: AAC and MP3 are copied
/// (FLV and MPEG-TS carry them), anything else is transcoded to AAC; unknown audio is copied.
pub fn audio_for(setting: RelayAudio, probe: Option<&StreamProbe>) -> RelayAudio {
    match (setting, probe.and_then(|p| p.audio.as_ref())) {
        (RelayAudio::Copy, Some(a)) if !a.copyable() => RelayAudio::Aac,
        (s, _) => s,
    }
}

/// An audio codec never stops the video: a relay with audio that fails at once twice in a row
/// is tried without it; if that fails at once too, the audio was not the cause and comes back.
#[derive(Debug, Default)]
pub(crate) struct AudioGuard {
    /// Runs with audio that ended within [`CLEAN_RUN`], in a row.
    pub(crate) quick_failures: u32,
    /// Audio dropped because it stopped the video.
    pub(crate) dropped: bool,
    /// The last run had audio.
    pub(crate) had_audio: bool,
}

impl AudioGuard {
    /// The audio of the next run.
    pub(crate) fn audio(&mut self, setting: RelayAudio, probe: Option<&StreamProbe>) -> RelayAudio {
        let wanted = audio_for(setting, probe);
        let audio = if self.dropped { RelayAudio::Drop } else { wanted };
        self.had_audio = audio != RelayAudio::Drop;
        audio
    }

    /// Takes a run's end (`reason` after `ran`; `suspect`: the failure may be the stream's own,
    /// not the camera's, the network's or nginx-rtmp's); the reason to report.
    pub(crate) fn ended(&mut self, reason: String, ran: Duration, suspect: bool) -> String {
        let quick = ran < CLEAN_RUN && reason != "stream ended" && suspect;
        match (quick, self.had_audio, self.dropped) {
            (true, true, _) => self.quick_failures += 1,
            // Without audio it failed as fast: the audio was not the cause.
            (true, false, true) => *self = AudioGuard::default(),
            (false, _, _) => self.quick_failures = 0,
            _ => {}
        }
        if self.quick_failures >= 2 && !self.dropped {
            self.dropped = true;
            tracing::warn!(reason = %reason, "the relay fails at once with the camera's audio: trying without it");
            return format!("{reason} (the camera's audio stopped the video: relaying without audio)");
        }
        if self.dropped && !quick {
            return format!("{reason} (relaying without the camera's audio, which stopped the video)");
        }
        reason
    }
}
