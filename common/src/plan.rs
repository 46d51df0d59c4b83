//! Splitting the configured channels into batches, one motion job each.

use crate::config::Config;
use crate::jobs::{MotionChannel, MotionJob, YoloFrames};
use crate::keys::Keys;
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

/// Fields of `<ns>:motion:plan` (a hash), written only by [`Plan::publish`].
mod field {
    pub const HASH: &str = "hash";
    pub const BATCHES: &str = "batches";
    pub const PUBLISHED_MS: &str = "published_ms";
    pub fn batch(batch: &str) -> String {
        format!("batch:{batch}")
    }
}

/// The plan as published: what workers and the CLI read back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PublishedPlan {
    /// `None`: no plan published (scheduler not yet up, or Redis flushed).
    pub hash: Option<String>,
    pub jobs: Vec<MotionJob>,
}

/// Why the published plan cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("reading the plan: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("the published plan's batches do not decode: {0}")]
    Decode(#[from] serde_json::Error),
}

impl Plan {
    /// Publishes the plan to `<ns>:motion:plan` unless it is there already. Returns the hash it
    /// replaced (`Some(None)`: there was none), or `None` when it was current.
    pub async fn publish<C: redis::aio::ConnectionLike + Send>(
        &self,
        conn: &mut C,
        keys: &Keys,
        now_ms: i64,
    ) -> Result<Option<Option<String>>, PlanError> {
        let key = keys.motion_plan();
        let current: Option<String> = redis::cmd("HGET").arg(&key).arg(field::HASH).query_async(conn).await?;
        if current.as_deref() == Some(self.hash.as_str()) {
            return Ok(None);
        }
        let batches = serde_json::to_string(&self.jobs)?;
        let mut pipe = redis::pipe();
        pipe.atomic().del(&key).hset(&key, field::HASH, &self.hash).hset(&key, field::BATCHES, batches).hset(
            &key,
            field::PUBLISHED_MS,
            now_ms,
        );
        for job in &self.jobs {
            pipe.hset(&key, field::batch(&job.batch), &job.plan);
        }
        let _: () = pipe.query_async(conn).await?;
        Ok(Some(current))
    }
}

impl PublishedPlan {
    pub async fn read<C: redis::aio::ConnectionLike + Send>(conn: &mut C, keys: &Keys) -> Result<Self, PlanError> {
        let (hash, batches): (Option<String>, Option<String>) =
            redis::cmd("HMGET").arg(keys.motion_plan()).arg(field::HASH).arg(field::BATCHES).query_async(conn).await?;
        let jobs = batches.map(|b| serde_json::from_str(&b)).transpose()?.unwrap_or_default();
        Ok(Self { hash, jobs })
    }

    /// Is `plan` (a job's batch hash) still the published plan of `batch`? With no plan
    /// published, yes (keep working); a plan without per-batch hashes (an older scheduler) is
    /// compared whole.
    pub async fn batch_is_current<C: redis::aio::ConnectionLike + Send>(
        conn: &mut C,
        keys: &Keys,
        batch: &str,
        plan: &str,
    ) -> redis::RedisResult<bool> {
        let (whole, of_batch): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(keys.motion_plan())
            .arg(field::HASH)
            .arg(field::batch(batch))
            .query_async(conn)
            .await?;
        Ok(match (whole, of_batch) {
            (None, _) => true,
            (Some(_), Some(b)) => b == plan,
            (Some(whole), None) => whole == plan,
        })
    }
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
            .push(crate::config::MaskConfig { name: None, points: vec![[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]] });
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
