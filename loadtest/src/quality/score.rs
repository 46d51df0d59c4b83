//! Scoring: each channel's backup files, read back frame by frame, against the script and
//! the ground truth (docs/quality.md), and the report.

use std::collections::{BTreeMap, BTreeSet};

use cctv_common::events::BackupEvent;
use serde::{Deserialize, Serialize};

use super::{FPS, GOP_SECS};
use crate::quality::SceneClips;

/// One backup file, mapped back to the clip.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScoredFile {
    pub file: String,
    pub recording: String,
    pub part: u32,
    pub first_frame: Option<u32>,
    pub last_frame: Option<u32>,
    pub frames: usize,
    pub unreadable_frames: usize,
}

/// A stretch of activity (runs closer than pre-roll + post-roll merged, as the recordings do).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Activity {
    pub from_s: usize,
    pub to_s: usize,
    pub recordings: usize,
    pub files: usize,
}

/// One channel's scores.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChannelScore {
    pub channel: u32,
    pub scene: String,
    pub policy: String,
    pub clip_secs: usize,
    /// Seconds YOLO saw a wanted object in, and how many of them are in a backup file.
    pub present_secs: usize,
    pub present_backed_secs: usize,
    pub recall_percent: f64,
    /// Present seconds not in any backup (clip seconds).
    pub missed_present: Vec<usize>,
    /// Present or scripted activity, and how much of it is backed up.
    pub activity_secs: usize,
    pub activity_backed_secs: usize,
    pub activity_recall_percent: f64,
    /// Distinct clip seconds in backup files.
    pub backup_secs: usize,
    /// 1.3 × activity seconds + (pre-roll + post-roll) per activity.
    pub backup_allowance_secs: f64,
    /// Backed-up seconds with no activity within post-roll before or pre-roll after (plus one
    /// GOP, where files are cut, and 1 s of rounding).
    pub quiet_backed_beyond_roll: Vec<usize>,
    /// Clip seconds of which some frame is in more than one file.
    pub duplicated_secs: Vec<usize>,
    /// A continuous channel: seconds after its first recorded one in no file (a gap).
    #[serde(default)]
    pub gap_secs: Vec<usize>,
    pub files: Vec<ScoredFile>,
    pub activities: Vec<Activity>,
    /// Quiet seconds (no activity within 3 s) and those inside a motion event.
    pub quiet_secs: usize,
    pub quiet_motion_secs: usize,
    pub quiet_motion_percent: f64,
    /// The channel's motion reader at the end of the run: frames analysed, and frames the
    /// gate (`motion.gate`) left undecoded.
    #[serde(default)]
    pub frames_analysed: u64,
    #[serde(default)]
    pub frames_gated: u64,
    /// YOLO frames sampling by need kept back (`yolo.confirmed_fps`): a confirmed object
    /// explained the motion.
    #[serde(default)]
    pub yolo_frames_skipped: u64,
    /// Per onset (activity after at least [`ONSET_QUIET_SECS`] of none): seconds from its start
    /// to the start of the motion event that covers it (0 when one was already open); `None`:
    /// no motion event began during that activity. The start is the first frame of the
    /// script's step that brings someone into view where one begins in the onset's second (an
    /// upper bound on the lag: the step may show nobody for a few frames), else the second.
    #[serde(default)]
    pub onset_lags_s: Vec<Option<f64>>,
    pub problems: Vec<String>,
}

/// An onset is activity after at least this many seconds of none.
pub const ONSET_QUIET_SECS: usize = 3;
/// Reported against: p95 of the onset lags of a run (issue 17). Not a pass/fail target of the
/// harness: a lag is timed from the first frame of the step that brings someone into view, an
/// upper bound (the person may appear a few frames later), and on a busy machine it grows with
/// the machine's load; the gate's onset is held to its bound by
/// `worker-motion/tests/it/motion.rs` instead, on frame-exact footage.
pub const ONSET_TARGET_SECS: f64 = 1.0;

/// p50 and p95 (nearest rank) of the onset lags seen; `None` when there were none. Onsets with
/// no motion event count as infinitely late.
pub fn onset_percentiles(lags: &[Option<f64>]) -> Option<(f64, f64)> {
    let mut v: Vec<f64> = lags.iter().map(|l| l.unwrap_or(f64::INFINITY)).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    Some((rank(0.5), rank(0.95)))
}

/// Onset lags (see [`ChannelScore::onset_lags_s`]): `activity` per clip second, `starts` the
/// clip times where the script brings someone into view, `motion` as (start, last motion) clip
/// seconds.
pub fn onset_lags(activity: &[bool], starts: &[f64], motion: &[(f64, f64)]) -> Vec<Option<f64>> {
    let mut lags = Vec::new();
    for s in 0..activity.len() {
        let quiet_before = (s.saturating_sub(ONSET_QUIET_SECS)..s).all(|t| !activity[t]) && s >= ONSET_QUIET_SECS;
        if !activity[s] || !quiet_before {
            continue;
        }
        let a = s as f64;
        // When in its second the activity began, as exactly as the script knows it.
        let begun = starts.iter().copied().find(|&t| t >= a && t < a + 1.0).unwrap_or(a);
        let end = (s..activity.len()).find(|&t| !activity[t]).unwrap_or(activity.len()) as f64;
        // An event already open (started before, still moving at or after the onset): no lag.
        if motion.iter().any(|&(m0, m1)| m0 <= begun && m1 >= begun) {
            lags.push(Some(0.0));
            continue;
        }
        // The first event to start from a second before the onset (the activity's first frames
        // can fall in the previous clip second) to the activity's end.
        let first = motion
            .iter()
            .map(|&(m0, _)| m0)
            .filter(|&m0| m0 >= a - 1.0 && m0 < end)
            .fold(None, |acc: Option<f64>, m0| Some(acc.map_or(m0, |x| x.min(m0))));
        lags.push(first.map(|m0| ((m0 - begun).max(0.0) * 100.0).round() / 100.0));
    }
    lags
}

/// The harness' result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QualityReport {
    pub started: String,
    pub machine: String,
    pub pre_roll_secs: f64,
    pub post_roll_secs: f64,
    /// The `[motion]` settings that differ from the defaults, as given (`[]`: defaults).
    #[serde(default)]
    pub motion_settings: Vec<String>,
    /// The cameras' keyframe interval, seconds (older reports: 2).
    #[serde(default = "crate::default_gop_secs")]
    pub gop_secs: f64,
    pub scenes: BTreeMap<String, String>,
    pub channels: Vec<ChannelScore>,
    pub targets_met: bool,
}

/// Inputs of [`score`] for one channel.
pub(crate) struct ChannelRun<'a> {
    pub(crate) channel: u32,
    pub(crate) scene: &'a str,
    pub(crate) policy: &'a str,
    pub(crate) wanted: &'a [String],
    pub(crate) clips: &'a SceneClips,
    pub(crate) files: Vec<(BackupEvent, Vec<Option<u32>>)>,
    /// Motion events as clip-time spans (seconds), from the pusher's start.
    pub(crate) motion: Vec<(f64, f64)>,
    pub(crate) pre_roll: f64,
    pub(crate) post_roll: f64,
}

pub(crate) fn percent(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        100.0
    } else {
        (1000.0 * part as f64 / whole as f64).round() / 10.0
    }
}

/// Scores one channel against the targets of `docs/quality.md`. Only the clip's first play
/// counts (frames are numbered within one play).
pub(crate) fn score(r: ChannelRun<'_>) -> ChannelScore {
    let secs = r.clips.scripted.len();
    let present: Vec<bool> = r.clips.seen.iter().map(|s| s.iter().any(|l| r.wanted.contains(l))).collect();
    let activity: Vec<bool> = (0..secs).map(|s| present[s] || r.clips.scripted[s]).collect();
    let mut covered = vec![0usize; secs];
    let mut frame_files: BTreeMap<u32, usize> = BTreeMap::new();
    let mut files = Vec::new();
    let mut recording_of_file = Vec::new();
    for (ev, codes) in &r.files {
        let frames: BTreeSet<u32> = codes.iter().flatten().copied().collect();
        let mut secs_here = BTreeSet::new();
        for &f in &frames {
            *frame_files.entry(f).or_default() += 1;
            secs_here.insert((f / FPS) as usize);
        }
        for s in secs_here {
            if s < secs {
                covered[s] += 1;
            }
        }
        files.push(ScoredFile {
            file: ev.file.clone().unwrap_or_default(),
            recording: ev.recording.clone(),
            part: ev.part,
            first_frame: frames.first().copied(),
            last_frame: frames.last().copied(),
            frames: codes.len(),
            unreadable_frames: codes.iter().filter(|c| c.is_none()).count(),
        });
        recording_of_file.push((ev.recording.clone(), frames));
    }
    let duplicated_secs: BTreeSet<usize> =
        frame_files.iter().filter(|(_, &n)| n > 1).map(|(&f, _)| (f / FPS) as usize).collect();
    let near = |s: usize, before: f64, after: f64| {
        let (before, after) = (before + GOP_SECS, after + GOP_SECS);
        let lo = s.saturating_sub(before.ceil() as usize + 1);
        let hi = (s + after.ceil() as usize + 1).min(secs - 1);
        (lo..=hi).any(|t| activity[t])
    };
    let quiet_backed_beyond_roll: Vec<usize> =
        (0..secs).filter(|&s| covered[s] > 0 && !near(s, r.post_roll, r.pre_roll)).collect();
    let missed_present: Vec<usize> = (0..secs).filter(|&s| present[s] && covered[s] == 0).collect();
    let present_secs = present.iter().filter(|p| **p).count();
    let activity_secs = activity.iter().filter(|a| **a).count();
    let activity_backed_secs = (0..secs).filter(|&s| activity[s] && covered[s] > 0).count();
    // Activities: runs of activity, merged across gaps up to pre-roll + post-roll.
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let join = (r.pre_roll + r.post_roll).ceil() as usize;
    for s in (0..secs).filter(|&s| activity[s]) {
        match runs.last_mut() {
            Some((_, to)) if s <= *to + join + 1 => *to = s,
            _ => runs.push((s, s)),
        }
    }
    let activities: Vec<Activity> = runs
        .iter()
        .map(|&(from, to)| {
            let in_run = |frames: &BTreeSet<u32>| frames.iter().any(|&f| (from..=to).contains(&((f / FPS) as usize)));
            let hits: Vec<&String> = recording_of_file.iter().filter(|(_, f)| in_run(f)).map(|(id, _)| id).collect();
            let recordings: BTreeSet<&String> = hits.iter().copied().collect();
            Activity { from_s: from, to_s: to, recordings: recordings.len(), files: hits.len() }
        })
        .collect();
    let backup_secs = covered.iter().filter(|c| **c > 0).count();
    // Over activity rather than YOLO-present seconds: YOLOv5n misses people half out of view
    // (walking through a door), whom the script knows are there.
    let backup_allowance_secs = 1.3 * activity_secs as f64 + (r.pre_roll + r.post_roll) * activities.len() as f64;
    let quiet: Vec<usize> = (0..secs).filter(|&s| !near(s, 0.0, 0.0)).collect();
    let in_motion = |s: usize| r.motion.iter().any(|&(a, b)| (s as f64) < b && (s as f64 + 1.0) > a);
    let quiet_motion_secs = quiet.iter().filter(|&&s| in_motion(s)).count();
    let onset_lags_s = onset_lags(&activity, &r.clips.activity_starts_s, &r.motion);

    let mut problems = Vec::new();
    let recall_percent = percent(present_secs - missed_present.len(), present_secs);
    // A continuous channel keeps every second from its first one on, exactly once; the
    // selective targets (quiet, allowance, one recording per activity) are not its own.
    let continuous = r.policy == "continuous";
    let first_covered = covered.iter().position(|c| *c > 0);
    let gap_secs: Vec<usize> = match first_covered {
        Some(first) if continuous => (first..secs).filter(|&s| covered[s] == 0).collect(),
        _ => Vec::new(),
    };
    if continuous {
        if first_covered.is_none() {
            problems.push("nothing recorded".into());
        }
        if !gap_secs.is_empty() {
            problems.push(format!("seconds in no file after recording began: {gap_secs:?}"));
        }
    } else if recall_percent < 99.0 {
        problems.push(format!("recall {recall_percent} % < 99 % (missed seconds {missed_present:?})"));
    }
    if !duplicated_secs.is_empty() {
        problems.push(format!("seconds in two files: {duplicated_secs:?}"));
    }
    if let Some(a) = activities.iter().find(|a| a.recordings > 1).filter(|_| !continuous) {
        problems.push(format!("activity {}–{} s cut into {} recordings", a.from_s, a.to_s, a.recordings));
    }
    if !quiet_backed_beyond_roll.is_empty() && !continuous {
        problems.push(format!("quiet seconds backed up beyond pre/post-roll: {quiet_backed_beyond_roll:?}"));
    }
    let quiet_motion_percent = percent(quiet_motion_secs, quiet.len());
    if quiet_motion_percent > 2.0 {
        problems.push(format!("motion in {quiet_motion_percent} % of quiet seconds"));
    }
    if backup_secs as f64 > backup_allowance_secs && !continuous {
        problems.push(format!("{backup_secs} s backed up > allowance {backup_allowance_secs:.0} s"));
    }
    if files.iter().any(|f| f.unreadable_frames > 0) {
        problems.push("unreadable frames in a backup file".into());
    }
    ChannelScore {
        channel: r.channel,
        scene: r.scene.to_string(),
        policy: r.policy.to_string(),
        clip_secs: secs,
        present_secs,
        present_backed_secs: present_secs - missed_present.len(),
        recall_percent,
        missed_present,
        activity_secs,
        activity_backed_secs,
        activity_recall_percent: percent(activity_backed_secs, activity_secs),
        backup_secs,
        backup_allowance_secs,
        quiet_backed_beyond_roll,
        duplicated_secs: duplicated_secs.into_iter().collect(),
        gap_secs,
        files,
        activities,
        quiet_secs: quiet.len(),
        quiet_motion_secs,
        quiet_motion_percent,
        frames_analysed: 0,
        frames_gated: 0,
        yolo_frames_skipped: 0,
        onset_lags_s,
        problems,
    }
}

/// `report.md` from the report.
pub fn render(r: &QualityReport) -> String {
    let mut md = String::from("# Selective-backup quality\n\n");
    md += &format!(
        "Machine: {}. Pre-roll {} s, post-roll {} s. Ground truth: YOLOv5n at 2 frames per second; \
         backed-up seconds read from the files' frame bar codes. See docs/quality.md.\n\n",
        r.machine, r.pre_roll_secs, r.post_roll_secs
    );
    if r.gop_secs != crate::DEFAULT_GOP_SECS {
        md += &format!("Cameras' keyframe interval (GOP): {} s.\n\n", r.gop_secs);
    }
    if !r.motion_settings.is_empty() {
        md += &format!("Motion settings: `{}`.\n\n", r.motion_settings.join("`, `"));
    }
    for (name, what) in &r.scenes {
        md += &format!("- **{name}**: {what}\n");
    }
    md += "\n| ch | scene | policy | recall (present s) | activity backed | backup s / allowance | quiet beyond roll | duplicated s | recordings per activity | quiet s with motion | motion start after onset, s |\n";
    md += "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n";
    for c in &r.channels {
        let per_activity: Vec<String> = c.activities.iter().map(|a| a.recordings.to_string()).collect();
        let onsets: Vec<String> =
            c.onset_lags_s.iter().map(|l| l.map_or("none".into(), |l| format!("{l:.2}"))).collect();
        md += &format!(
            "| {} | {} | {} | {} % ({} of {}) | {} % ({} of {}) | {} / {:.0} | {} | {} | {} | {} % ({} of {}) | {} |\n",
            c.channel,
            c.scene,
            c.policy,
            c.recall_percent,
            c.present_backed_secs,
            c.present_secs,
            c.activity_recall_percent,
            c.activity_backed_secs,
            c.activity_secs,
            c.backup_secs,
            c.backup_allowance_secs,
            c.quiet_backed_beyond_roll.len(),
            c.duplicated_secs.len(),
            per_activity.join(", "),
            c.quiet_motion_percent,
            c.quiet_motion_secs,
            c.quiet_secs,
            onsets.join(", "),
        );
    }
    for c in r.channels.iter().filter(|c| c.policy == "continuous") {
        let recorded: Vec<u32> = c.files.iter().filter_map(|f| f.first_frame).collect();
        md += &format!(
            "\nContinuous channel {} ({}): {} files, {} clip seconds recorded from second {}; seconds in no file \
             after that: {}; seconds in two files: {}.\n",
            c.channel,
            c.scene,
            c.files.len(),
            c.backup_secs,
            recorded.iter().min().map_or("none".into(), |f| (f / super::FPS).to_string()),
            c.gap_secs.len(),
            c.duplicated_secs.len(),
        );
    }
    md += &format!("\nTargets met: **{}**\n", if r.targets_met { "yes" } else { "no" });
    let all: Vec<Option<f64>> = r.channels.iter().flat_map(|c| c.onset_lags_s.iter().copied()).collect();
    if let Some((p50, p95)) = onset_percentiles(&all) {
        md += &format!(
            "\nMotion start after onset (activity after at least {ONSET_QUIET_SECS} s of none; timed from the first \
             frame of the script's step that brings someone into view, an upper bound): p50 {p50:.2} s, p95 {p95:.2} s over {} onsets (issue 17 asks p95 ≤ \
             {ONSET_TARGET_SECS} s).\n",
            all.len()
        );
    }
    if r.channels.iter().any(|c| c.frames_gated > 0) {
        md += "\nFrames of each channel's motion reader (5 per second): analysed, and left undecoded by the gate:";
        for c in &r.channels {
            md += &format!(" ch{} {} + {};", c.channel, c.frames_analysed, c.frames_gated);
        }
        md.pop();
        md += ".\n";
    }
    if r.channels.iter().any(|c| c.yolo_frames_skipped > 0) {
        md += "\nYOLO frames sampling by need kept back (a confirmed object explained the motion):";
        for c in &r.channels {
            md += &format!(" ch{} {};", c.channel, c.yolo_frames_skipped);
        }
        md.pop();
        md += ".\n";
    }
    for c in r.channels.iter().filter(|c| !c.problems.is_empty()) {
        md += &format!("\nChannel {} ({} / {}):\n", c.channel, c.scene, c.policy);
        for p in &c.problems {
            md += &format!("- {p}\n");
        }
    }
    md += "\n## Files\n\n| ch | file | recording | part | clip frames | frames |\n| --- | --- | --- | --- | --- | --- |\n";
    for c in &r.channels {
        for f in &c.files {
            md += &format!(
                "| {} | {} | {} | {} | {}–{} | {} |\n",
                c.channel,
                f.file,
                f.recording,
                f.part,
                f.first_frame.map_or("?".into(), |v| v.to_string()),
                f.last_frame.map_or("?".into(), |v| v.to_string()),
                f.frames
            );
        }
    }
    md
}
