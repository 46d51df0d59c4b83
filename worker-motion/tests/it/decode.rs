use std::path::Path;
use std::process::Command;

use worker_motion::decode::{AvcDecoder, PictureFormat};
use worker_motion::flv::FlvReader;

/// Real footage as an FLV stream of H.264 at 640x360, `bframes` B-frames at most (0: none).
fn footage_flv(dir: &Path, bframes: u32) -> std::path::PathBuf {
    let out = dir.join(format!("clip-bf{bframes}.flv"));
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-i"])
        .arg(cctv_testkit::media("car-detection.mp4"))
        .args(["-t", "4", "-an", "-vf", "scale=640:360", "-c:v", "libx264", "-preset", "veryfast"])
        .args(["-g", "25", "-bf", &bframes.to_string(), "-pix_fmt", "yuv420p", "-f", "flv"])
        .arg(&out)
        .status()
        .expect("running ffmpeg");
    assert!(status.success(), "ffmpeg could not make the test stream");
    out
}

/// What ffmpeg itself gives a reader for `format`: raw pictures, all of them.
fn ffmpeg_pictures(flv: &Path, format: PictureFormat) -> Vec<u8> {
    let (vf, pix) = match format {
        PictureFormat::Grey { height } => (format!("scale=-2:{height}"), "gray"),
        PictureFormat::Colour { max_height } => (format!("scale=w=-2:h=min(ih\\,{max_height})"), "bgr24"),
    };
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-threads", "1", "-f", "flv", "-i"])
        .arg(flv)
        .args(["-an", "-fps_mode", "passthrough", "-vf", &vf, "-pix_fmt", pix, "-f", "rawvideo", "pipe:1"])
        .output()
        .expect("running ffmpeg");
    assert!(out.status.success(), "ffmpeg could not decode the test stream");
    out.stdout
}

/// Every picture of `flv` decoded in process, in the order they come out, with their tags
/// (the packet's index) and the decoder's lag at the end.
fn in_process_pictures(flv: &Path, format: PictureFormat) -> (Vec<Vec<u8>>, Vec<u64>, usize) {
    let mut reader = FlvReader::new(std::fs::File::open(flv).unwrap());
    let (mut decoder, mut pictures, mut tags, mut n) = (None::<AvcDecoder<u64>>, Vec::new(), Vec::new(), 0u64);
    while let Some(tag) = reader.next_tag().expect("reading the FLV") {
        if tag.is_avc_config() {
            decoder = Some(AvcDecoder::new(tag.avc_payload(), format, 1).expect("a decoder for the stream"));
        } else if tag.is_avc_picture() {
            let d = decoder.as_mut().expect("the sequence header comes first");
            d.decode(tag.avc_payload(), tag.is_keyframe(), n, &mut |p| {
                pictures.push(p.pixels.to_vec());
                tags.push(p.tag);
            })
            .expect("decoding");
            n += 1;
        }
    }
    (pictures, tags, decoder.and_then(|d| d.lag()).unwrap_or(usize::MAX))
}

/// The gate's in-process decoder gives the detector the very pictures an ungated reader's
/// ffmpeg gives it (same decoder, same swscale conversion and width rounding), grey and colour,
/// with and without B-frames; each picture carries its own packet's tag (presentation order),
/// and the lag it reports is what the gate's pushers need: none without B-frames.
#[test]
fn in_process_pictures_are_ffmpegs_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    for bframes in [0, 3] {
        let flv = footage_flv(dir.path(), bframes);
        for format in [PictureFormat::Grey { height: 180 }, PictureFormat::Colour { max_height: 240 }] {
            let (ours, tags, lag) = in_process_pictures(&flv, format);
            let theirs = ffmpeg_pictures(&flv, format);
            let (w, h) = format.output_size(640, 360);
            let size = (w * h) as usize * format.bytes_per_pixel();
            assert_eq!(theirs.len() % size, 0, "ffmpeg's pictures are {w}x{h}");
            let total = theirs.len() / size;
            // At the end of the stream the decoder still holds its lag's pictures (ffmpeg drains).
            assert_eq!(ours.len() + lag, total, "bf={bframes} {format:?}: every picture but the held ones");
            for (i, picture) in ours.iter().enumerate() {
                assert!(
                    picture[..] == theirs[i * size..(i + 1) * size],
                    "bf={bframes} {format:?}: picture {i} differs from ffmpeg's"
                );
            }
            if bframes == 0 {
                assert_eq!(lag, 0, "without B-frames a picture comes out with its own packet");
                assert_eq!(tags, (0..ours.len() as u64).collect::<Vec<_>>());
            } else {
                assert!(lag >= 1, "B-frames hold pictures back");
                let mut sorted = tags.clone();
                sorted.sort_unstable();
                assert_ne!(tags, sorted, "tags follow the pictures out of decode order");
            }
        }
    }
}

/// Damaged packets are skipped as ffmpeg skips them (pictures go on coming after them, and from
/// the next keyframe on every one), and a stream of nothing but damage is an error that says so,
/// not a reader stuck without frames.
#[test]
fn damaged_packets_are_skipped_and_only_damage_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let flv = footage_flv(dir.path(), 0);
    let mut reader = FlvReader::new(std::fs::File::open(&flv).unwrap());
    let format = PictureFormat::Grey { height: 180 };
    let (mut decoder, mut tags, mut n, mut second_gop) = (None::<AvcDecoder<u64>>, Vec::new(), 0u64, None);
    while let Some(tag) = reader.next_tag().expect("reading the FLV") {
        if tag.is_avc_config() {
            decoder = Some(AvcDecoder::new(tag.avc_payload(), format, 1).expect("a decoder for the stream"));
            continue;
        }
        if !tag.is_avc_picture() {
            continue;
        }
        let d = decoder.as_mut().expect("the sequence header comes first");
        let mut body = tag.avc_payload().to_vec();
        n += 1;
        if tag.is_keyframe() && n > 1 {
            second_gop.get_or_insert(n);
        }
        // In the first GOP, every 7th P-frame cut short inside its NAL unit.
        if second_gop.is_none() && n % 7 == 0 && !tag.is_keyframe() {
            body.truncate(body.len() / 2);
        }
        d.decode(&body, tag.is_keyframe(), n, &mut |p| tags.push(p.tag)).expect("a damaged packet is skipped");
    }
    let key = second_gop.expect("the clip has a second keyframe");
    assert!(tags.iter().any(|t| (8..key).contains(t)), "pictures came after the first damage: {tags:?}");
    assert!(!tags.contains(&7), "a damaged packet has no picture");
    let after: Vec<u64> = tags.iter().copied().filter(|t| *t >= key).collect();
    assert_eq!(after, (key..=n).collect::<Vec<_>>(), "from the next keyframe on, every picture");

    let d = decoder.as_mut().unwrap();
    let garbage = [0u8, 0, 0, 200, 1, 2, 3];
    let mut result = Ok(());
    for i in 0..worker_motion::decode::MAX_REJECTED_IN_A_ROW {
        result = d.decode(&garbage, false, 10_000 + u64::from(i), &mut |_| {});
        if result.is_err() {
            break;
        }
    }
    let err = result.expect_err("only damage is an error").to_string();
    assert!(err.contains("could not be decoded") && err.contains("NAL unit"), "{err}");
}
