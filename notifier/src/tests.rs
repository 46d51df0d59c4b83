use super::*;

fn config(public_url: Option<&str>) -> Config {
    let mut c = Config::parse(
        "[[channel]]\nid = 3\nname = \"Gate\"\nsource = \"rtsp://127.0.0.1:8554/gate\"\npriority = true\n",
    )
    .unwrap();
    c.notify.public_url = public_url.map(str::to_owned);
    c
}

#[test]
fn an_object_event_gets_its_labels_snapshot_link_and_channel_name() {
    let data = r#"{"channel":3,"frame_ts_ms":5,"motion_event":"m1","detections":[
        {"label":"person","score":0.9,"bbox":[0,0,1,1]},{"label":"car","score":0.6,"bbox":[0,0,1,1]},
        {"label":"person","score":0.5,"bbox":[0,0,1,1]}],"snapshot":"/var/snap/ch3_123.jpg"}"#;
    let n = notification(&config(Some("http://nvr.lan:8088/")), EventCategory::Objects, "7-0", data).unwrap();
    assert_eq!(n.channel, 3);
    assert_eq!(n.body["labels"], serde_json::json!(["car", "person"]));
    assert_eq!(n.body["snapshot_url"], "http://nvr.lan:8088/api/snapshots/3/ch3_123.jpg");
    assert_eq!(n.body["channel_name"], "Gate");
    assert_eq!(n.body["category"], "objects");
    assert_eq!(n.body["stream_id"], "7-0");
    assert_eq!(n.motion_on(), None);
}

#[test]
fn an_object_frame_without_detections_is_not_sent_and_motion_says_on_or_off() {
    let c = config(None);
    assert!(notification(&c, EventCategory::Objects, "1-0", r#"{"channel":3,"detections":[]}"#).is_none());
    assert!(notification(&c, EventCategory::Motion, "1-0", "not json").is_none());
    let start = notification(&c, EventCategory::Motion, "1-0", r#"{"channel":3,"kind":"start"}"#).unwrap();
    let end = notification(&c, EventCategory::Motion, "2-0", r#"{"channel":3,"kind":"end"}"#).unwrap();
    let zone = notification(&c, EventCategory::Motion, "1-1", r#"{"channel":3,"kind":"zone"}"#).unwrap();
    assert_eq!((start.motion_on(), zone.motion_on(), end.motion_on()), (Some(true), Some(true), Some(false)));
    // A channel no longer configured still goes out, without a name.
    let gone = notification(&c, EventCategory::Backup, "3-0", r#"{"channel":9,"kind":"file"}"#).unwrap();
    assert_eq!(gone.body["channel_name"], Value::Null);
}

#[test]
fn the_signature_is_hmac_sha256_of_the_timestamp_a_dot_and_the_body() {
    // As docs/notifications.md's receiver computes it (Python's hmac, the same key and message).
    assert_eq!(
        signature("Jefe", "1700000000", b"what do ya want for nothing?"),
        "sha256=1cdd0650c8be1cb0974b1788d458b1e781206cfef59b85faafc582d2e182c57e"
    );
    // Another time, another signature: a replay cannot move the timestamp.
    assert_ne!(
        signature("Jefe", "1700000300", b"what do ya want for nothing?"),
        signature("Jefe", "1700000000", b"what do ya want for nothing?")
    );
}
