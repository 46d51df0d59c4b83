//! The config record jobs are checked against. A job for a channel this worker's config lacks
//! is most often a camera added since the worker started (the scheduler, restarted or
//! reloaded, already plans it): the file is read again before the job is refused, so the new
//! camera's first backups are not lost to a worker nobody restarted.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cctv_common::config::Config;
use cctv_common::jobs::{RecordJob, RecordJobError};

pub struct JobConfig {
    current: Mutex<Arc<Config>>,
    /// The file `current` came from; `None`: never re-read (tests, embedded use).
    path: Option<PathBuf>,
}

impl JobConfig {
    pub fn new(config: Config, path: Option<PathBuf>) -> Self {
        Self { current: Mutex::new(Arc::new(config)), path }
    }

    /// `job` checked against the config ([`RecordJob::checked`]); on an unknown channel, against
    /// the config file as it is now, which then replaces the one held. The error names the
    /// channel and, when the file could not be read again, why.
    pub fn check(&self, job: RecordJob) -> Result<RecordJob, String> {
        let held = self.current.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let channel = match job.clone().checked(&held) {
            Err(RecordJobError::UnknownChannel(channel)) => channel,
            checked => return checked.map_err(|e| e.to_string()),
        };
        let Some(path) = &self.path else { return Err(RecordJobError::UnknownChannel(channel).to_string()) };
        let reread = Config::load(path).map_err(|e| {
            format!("{}; reading {} again: {e}", RecordJobError::UnknownChannel(channel), path.display())
        })?;
        let reread = Arc::new(reread);
        if reread.channel(channel).is_some() {
            tracing::info!(channel, path = %path.display(), "config read again: a record job names a channel added since start");
        }
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = reread.clone();
        job.checked(&reread).map_err(|e| format!("{e} (nor in {} read again)", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cctv_common::jobs::{RecordTrigger, TriggerKind};

    fn config_text(channels: &[u32]) -> String {
        let mut t = "[rtmp]\nhls_url = \"http://127.0.0.1:8080/hls\"\n".to_string();
        for id in channels {
            t += &format!("[[channel]]\nid = {id}\nname = \"cam {id}\"\nsource = \"rtsp://127.0.0.1/{id}\"\n");
        }
        t
    }

    fn job(channel: u32) -> RecordJob {
        RecordJob {
            recording: format!("ch{channel}-e1"),
            channel,
            playlist_url: format!("http://127.0.0.1:8080/hls/ch{channel}/index.m3u8"),
            start_ms: 0,
            trigger: RecordTrigger { kind: TriggerKind::Motion, motion_event: "e1".into(), ts_ms: 0, labels: vec![] },
        }
    }

    #[test]
    fn a_channel_added_to_the_file_since_start_is_recorded_an_unknown_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cctv.toml");
        std::fs::write(&path, config_text(&[1])).unwrap();
        let view = JobConfig::new(Config::load(&path).unwrap(), Some(path.clone()));
        assert!(view.check(job(1)).is_ok());
        let refused = view.check(job(2)).unwrap_err();
        assert!(refused.contains("channel 2 is not in the config"), "{refused}");
        // A camera added to the file: the worker's next job for it goes through.
        std::fs::write(&path, config_text(&[1, 2])).unwrap();
        assert_eq!(view.check(job(2)).unwrap().channel, 2);
        // A file broken while being edited: refused, naming the file and the channel.
        std::fs::write(&path, "[[channel]\n").unwrap();
        let e = view.check(job(3)).unwrap_err();
        assert!(e.contains("channel 3") && e.contains("cctv.toml"), "{e}");
        // What was read before is still held.
        assert!(view.check(job(2)).is_ok());
        // Without a file nothing is read again.
        let fixed = JobConfig::new(Config::parse(&config_text(&[1])).unwrap(), None);
        assert!(fixed.check(job(2)).unwrap_err().contains("channel 2"));
    }
}
