//! Integration tests of object detection: the model against the reference result, the whole
//! path on real servers (redis-server, nginx-rtmp, ffmpeg), and start-up errors.

/// deploy/yolo/any_size.sh's model runs a lone frame at its own size, with the same
/// detections (issue 33).
mod any_size;
/// Priority channels get object events, others none; stale and corrupt jobs (issue 3, test 2).
mod flow;
/// The int8 model from deploy/yolo/quantize.sh loads and detects (issue 33).
mod int8;
/// bus.jpg reproduces the reference detections, alone and in a batch (issue 3, test 1).
mod reference;
/// What YOLO saw, per channel, newest frame first (sampling by need's feedback, issue 33).
mod seen;
/// Missing model or library: clear error, non-zero exit (issue 3, test 3).
mod startup;
