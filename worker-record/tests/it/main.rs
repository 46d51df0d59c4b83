//! Integration tests of selective backups on real servers (redis-server, nginx-rtmp with its
//! HLS buffer, ffmpeg), each on random loopback ports with its own temp dir.

/// Recordings follow activity whole: standing still, pauses, continuous activity (issue 12).
mod activity;
/// Exactly one playable, stream-copied backup with pre- and post-roll (issue 4, test 1);
/// 8 channels at once (test 3).
mod backup;
/// kill -9 of the record worker mid-event (issue 4, test 4).
mod crash;
/// Unusable backup directory: reported, then nothing lost once fixed (issue 4, test 5).
mod dir;
/// `worker-record health`: the container health check, against a real Redis.
mod health;
/// `objects` / `off` policies (issue 4, test 2).
mod policy;
/// Rotation on a real filling filesystem; ENOSPC (issue 5).
mod storage;
/// Shared helpers.
mod util;
/// Zones: events name them, `record_zones` choose what is backed up; schedules (issue 16).
mod zones;
