//! Integration tests of the motion path on real servers (redis-server, nginx-rtmp, ffmpeg),
//! each on random loopback ports with its own temp dir.

/// Broken config: every error listed, non-zero exit (issue 2, test 4).
mod config;
/// The gate's in-process decoder against ffmpeg's own pictures.
mod decode;
/// kill -9 of a worker: its batch resumes on another worker (issue 2, test 2).
mod failover;
/// Motion start/end timing, a still stream, a missing stream (issue 2, tests 1 and 3);
/// keyframe-only decoding.
mod motion;
/// The gate's in-process RTMP packet source against nginx-rtmp.
mod rtmp;
