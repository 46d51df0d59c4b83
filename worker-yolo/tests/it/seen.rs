use cctv_common::events::NormBox;
use cctv_common::seen::{self, ObjectsSeen};
use cctv_common::Keys;

fn seen(channel: u32, frame_ts_ms: i64, people: usize) -> ObjectsSeen {
    let boxes = vec![NormBox { x: 0.4, y: 0.2, w: 0.1, h: 0.4 }; people];
    ObjectsSeen { channel, motion_event: "e1".into(), frame_ts_ms, boxes }
}

/// What YOLO saw on a channel is kept per channel, and a result that comes back late (another
/// YOLO worker, a paired input) never overwrites a newer frame's: the motion worker's sampler
/// would otherwise slow down on an object that already left.
#[tokio::test]
async fn the_newest_frames_result_wins_per_channel() {
    let redis = cctv_testkit::Redis::start();
    let mut conn = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let keys = Keys::new("seen-test");
    let newer_nothing = seen(3, 2_000, 0);
    seen::store(&mut conn, &keys, &newer_nothing).await.unwrap();
    seen::store(&mut conn, &keys, &seen(3, 1_000, 1)).await.unwrap();
    seen::store(&mut conn, &keys, &seen(4, 1_000, 2)).await.unwrap();
    let got = seen::load(&mut conn, &keys, &[3, 4, 5]).await.unwrap();
    assert_eq!(got[0].as_ref(), Some(&newer_nothing), "the late, older result must not win");
    assert_eq!(got[1].as_ref().map(|s| s.boxes.len()), Some(2));
    assert_eq!(got[2], None);
    // One channel alone (MGET of one key).
    assert_eq!(seen::load(&mut conn, &keys, &[4]).await.unwrap()[0].as_ref().map(|s| s.frame_ts_ms), Some(1_000));
    // A newer result replaces it, and the key expires on its own.
    seen::store(&mut conn, &keys, &seen(3, 3_000, 1)).await.unwrap();
    assert_eq!(seen::load(&mut conn, &keys, &[3]).await.unwrap()[0].as_ref().map(|s| s.frame_ts_ms), Some(3_000));
    let ttl: i64 = redis::cmd("PTTL").arg(keys.yolo_seen(3)).query_async(&mut conn).await.unwrap();
    assert!(ttl > 0 && ttl <= 60_000, "TTL {ttl}");
}
