//! Splitting the configured channels into batches, one motion job each.

use cctv_common::config::Config;
use cctv_common::jobs::{MotionChannel, MotionJob, YoloFrames};
use sha2::{Digest, Sha256};

/// The batches of one configuration. Its `hash` changes whenever anything a motion job carries
/// changes (channels, batch size, motion parameters, play URL). Each job carries its own batch's
/// hash as `plan`: a batch whose channels and settings did not change keeps its job, its worker
/// and its readers when cameras are added or removed elsewhere; a changed batch is re-planned.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub hash: String,
    pub jobs: Vec<MotionJob>,
}

fn short_hash(value: &serde_json::Value) -> String {
    let mut hasher = Sha256::new();
    hasher.update(value.to_string().as_bytes());
    hasher.finalize().iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// Batches of `scheduler.batch_size` channels, in config order.
pub fn plan(config: &Config) -> Plan {
    let size = config.scheduler.batch_size.max(1);
    let batches: Vec<Vec<MotionChannel>> =
        config.channels.chunks(size).map(|chunk| chunk.iter().map(MotionChannel::from_config).collect()).collect();
    let yolo = YoloFrames::from_config(&config.yolo);
    let jobs: Vec<MotionJob> = batches
        .into_iter()
        .enumerate()
        .map(|(i, channels)| {
            let batch = format!("b{i}");
            let identity = serde_json::json!({
                "batch": batch,
                "channels": channels,
                "motion": config.motion,
                "play_url": config.rtmp.play_url,
                "yolo": yolo,
            });
            MotionJob {
                batch,
                plan: short_hash(&identity),
                play_url: config.rtmp.play_url.clone(),
                channels,
                motion: config.motion.clone(),
                yolo: yolo.clone(),
            }
        })
        .collect();
    let hash = short_hash(&serde_json::json!(jobs.iter().map(|j| &j.plan).collect::<Vec<_>>()));
    Plan { hash, jobs }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(channels: u32, batch: usize) -> Config {
        let mut text = format!("[scheduler]\nbatch_size = {batch}\n");
        for id in 1..=channels {
            text += &format!("[[channel]]\nid = {id}\nname = \"c{id}\"\nsource = \"rtsp://u:p@cam{id}/s\"\n");
        }
        Config::parse(&text).unwrap()
    }

    #[test]
    fn batches_of_batch_size_cover_every_channel_once() {
        let p = plan(&config(20, 8));
        let sizes: Vec<_> = p.jobs.iter().map(|j| j.channels.len()).collect();
        assert_eq!(sizes, [8, 8, 4]);
        let ids: Vec<u32> = p.jobs.iter().flat_map(|j| j.channels.iter().map(|c| c.id)).collect();
        assert_eq!(ids, (1..=20).collect::<Vec<_>>());
        assert_eq!(p.jobs[2].batch, "b2");
    }

    #[test]
    fn hash_is_stable_and_follows_changes() {
        assert_eq!(plan(&config(9, 8)).hash, plan(&config(9, 8)).hash);
        assert_ne!(plan(&config(9, 8)).hash, plan(&config(10, 8)).hash);
        assert_ne!(plan(&config(9, 8)).hash, plan(&config(9, 4)).hash);
        let mut c = config(9, 8);
        c.motion.fps = 2.0;
        assert_ne!(plan(&c).hash, plan(&config(9, 8)).hash);
    }

    #[test]
    fn a_changed_mask_or_channel_motion_setting_is_a_new_plan() {
        let base = config(9, 8);
        let mut masked = base.clone();
        masked.channels[0]
            .mask
            .push(cctv_common::config::MaskConfig { name: None, points: vec![[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]] });
        let mut tuned = base.clone();
        tuned.channels[0].motion.pixel_threshold = Some(40.0);
        let hashes = [plan(&base).hash, plan(&masked).hash, plan(&tuned).hash];
        assert!(hashes[0] != hashes[1] && hashes[0] != hashes[2] && hashes[1] != hashes[2], "{hashes:?}");
        assert_eq!(plan(&tuned).jobs[0].channels[0].motion.pixel_threshold, Some(40.0));
    }

    #[test]
    fn jobs_carry_no_camera_credentials() {
        let p = plan(&config(3, 8));
        let json = serde_json::to_string(&p.jobs).unwrap();
        assert!(!json.contains("u:p@") && !json.contains("rtsp"), "{json}");
    }

    #[test]
    fn an_unchanged_batch_keeps_its_identity_when_channels_are_added() {
        let (p20, p30) = (plan(&config(20, 8)), plan(&config(30, 8)));
        assert_ne!(p20.hash, p30.hash);
        assert_eq!(p20.jobs[0].plan, p30.jobs[0].plan, "b0 (1-8) did not change");
        assert_eq!(p20.jobs[1].plan, p30.jobs[1].plan, "b1 (9-16) did not change");
        assert_ne!(p20.jobs[2].plan, p30.jobs[2].plan, "b2 grew from 17-20 to 17-24");
        assert_ne!(p20.jobs[0].plan, p20.jobs[1].plan, "batches differ from each other");
    }
}
