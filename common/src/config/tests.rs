//! The config's tests: parsing, validation (every problem at once, named by field), secrets.

use super::*;

/// What `validate()` lists for the config `text`, as the messages users read.
fn problems_of(text: &str) -> Vec<String> {
    Config::parse(text).unwrap().validate().iter().map(ToString::to_string).collect()
}

/// Each of `expected` begins one of `problems`.
fn assert_listed(problems: &[String], expected: &[&str]) {
    for e in expected {
        assert!(problems.iter().any(|p| p.starts_with(e)), "{e:?} not in {problems:?}");
    }
}

const GOOD: &str = r#"
    [cluster]
    namespace = "t1"
    [[channel]]
    id = 1
    name = "Gate"
    source = "rtsp://admin:hunter2@10.0.0.5:554/s1"
    detect_source = "rtsp://admin:hunter2@10.0.0.5:554/s2"
    priority = true
    record = "objects"
"#;

#[test]
fn good_config_validates_with_defaults() {
    let c = Config::parse(GOOD).unwrap();
    assert!(c.validate().is_empty(), "{:?}", c.validate());
    assert_eq!(c.scheduler.batch_size, 8);
    assert_eq!(c.motion.fps, 5.0);
    assert_eq!(c.channels[0].record, RecordPolicy::Objects);
    assert_eq!(c.channels[0].detect_stream_name(), "ch1_sub");
    // One thread per inference where the decoders need the other core.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(c.yolo.intra_threads, if cores <= 2 { 1 } else { 2 }, "{cores} cores");
}

#[test]
fn zones_are_named_polygons_and_record_zones_must_name_them() {
    let text = r#"
        [[channel]]
        id = 1
        name = "A"
        source = "rtsp://cam/1"
        record_zones = ["drive", "lawn"]
        [[channel.zone]]
        name = "drive"
        points = [[0, 0.5], [1, 0.5], [1, 1]]
        [[channel.zone]]
        name = "drive"
        points = [[0, 0], [1, 0], [1, 1]]
        [[channel.zone]]
        name = "front door"
        points = [[0, 0], [1, 0]]
    "#;
    let c = Config::parse(text).unwrap();
    let problems: Vec<String> = c.validate().iter().map(ToString::to_string).collect();
    assert_listed(
        &problems,
        &[
            "channel[0] (id 1).zone[1].name: duplicate zone name \"drive\"",
            "channel[0] (id 1).zone[2].points: 2 corners",
            "channel[0] (id 1).zone[2].name: \"front door\" must be letters, digits, - or _",
            "channel[0] (id 1).record_zones: \"lawn\" is not a [[channel.zone]] of this channel",
        ],
    );
    assert_eq!(problems.len(), 4, "{problems:?}");
    let ch = &c.channels[0];
    assert!(ch.records_in(&["drive".into()]) && !ch.records_in(&["pool".into()]) && !ch.records_in(&[]));
    let anywhere = Config::parse(&text.replace("record_zones = [\"drive\", \"lawn\"]", "")).unwrap();
    assert!(anywhere.channels[0].records_in(&[]), "without record_zones activity anywhere counts");
}

#[test]
fn schedules_choose_the_policy_by_local_time_and_bad_windows_are_named() {
    let text = r#"
        [record]
        timezone = "Asia/Tokyo"
        [[channel]]
        id = 1
        name = "Shop"
        source = "rtsp://cam/1"
        record = "motion"
        # Open hours: nothing backed up; nights (over midnight) and the weekend: motion.
        [[channel.schedule]]
        days = ["mon", "tue", "wed", "thu", "fri"]
        from = "09:00"
        to = "18:00"
        record = "off"
    "#;
    let c = Config::parse(text).unwrap();
    assert!(c.validate().is_empty(), "{:?}", c.validate());
    let tz = crate::timefmt::zone("Asia/Tokyo").unwrap();
    let ch = &c.channels[0];
    // 2026-12-01 is a Tuesday. 10:00 and 17:59 Tokyo: off; 18:00 and 08:59: motion.
    let at = |s: &str| jiff::civil::DateTime::strptime("%Y-%m-%d %H:%M", s).unwrap().to_zoned(tz.clone()).unwrap();
    let ms = |s: &str| at(s).timestamp().as_millisecond();
    assert_eq!(ch.record_at(ms("2026-12-01 10:00"), &tz), RecordPolicy::Off);
    assert_eq!(ch.record_at(ms("2026-12-01 17:59"), &tz), RecordPolicy::Off);
    assert_eq!(ch.record_at(ms("2026-12-01 18:00"), &tz), RecordPolicy::Motion);
    assert_eq!(ch.record_at(ms("2026-12-01 08:59"), &tz), RecordPolicy::Motion);
    assert_eq!(ch.record_at(ms("2026-12-05 10:00"), &tz), RecordPolicy::Motion, "Saturday");
    // A window over midnight belongs to the day it starts on.
    let night = ScheduleWindow {
        days: vec!["fri".into()],
        from: "22:00".into(),
        to: "06:00".into(),
        record: RecordPolicy::Off,
    };
    assert!(night.holds(4, 23 * 60) && night.holds(5, 5 * 60) && !night.holds(5, 23 * 60) && !night.holds(4, 5 * 60));

    let bad = text
        .replace("\"09:00\"", "\"9h\"")
        .replace("\"fri\"]", "\"fri\", \"holiday\"]")
        .replace("\"off\"", "\"objects\"");
    let problems: Vec<String> = problems_of(&bad);
    assert_listed(
        &problems,
        &[
            "channel[0] (id 1).schedule[0].from: \"9h\" is not a time HH:MM",
            "channel[0] (id 1).schedule[0].days: \"holiday\" is not one of mon",
            "channel[0] (id 1).schedule[0].record: \"objects\" needs priority = true",
        ],
    );
}

#[test]
fn masks_need_three_corners_inside_the_picture() {
    let text = r#"
        [[channel]]
        id = 1
        name = "A"
        source = "rtsp://cam/1"
        [[channel.mask]]
        points = [[0, 0], [1, 0]]
        [[channel.mask]]
        name = "street"
        points = [[0, 0], [1.2, 0], [1, 1]]
        [[channel.mask]]
        points = [[0, 0], [1, 0], [1, 1]]
    "#;
    let c = Config::parse(text).unwrap();
    let problems: Vec<String> = c.validate().iter().map(ToString::to_string).collect();
    assert!(problems.iter().any(|p| p.starts_with("channel[0] (id 1).mask[0].points: 2 corners")), "{problems:?}");
    assert!(problems.iter().any(|p| p.contains("mask[1].points: [1.2, 0] is outside")), "{problems:?}");
    assert!(!problems.iter().any(|p| p.contains("mask[2]")), "{problems:?}");
    assert_eq!(c.channels[0].mask[1].name.as_deref(), Some("street"));
    let unknown = Config::parse(&text.replace("name = \"street\"", "nmae = \"street\"")).unwrap_err();
    assert!(unknown.contains("nmae"), "{unknown}");
}

#[test]
fn secrets_come_from_the_environment_or_files_and_missing_ones_are_named() {
    let env = |name: &str| (name == "CAM_PASS").then(|| "s3cret".to_string());
    let read = |path: &str| match path {
        "/run/secrets/token" => Ok("tok-en\n".to_string()),
        _ => Err(std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory")),
    };
    let mut c = Config::parse(
        r#"
        [api]
        token = "{file:/run/secrets/token}"
        [[channel]]
        id = 1
        name = "A"
        source = "rtsp://admin:{env:CAM_PASS}@cam/1"
        detect_source = "rtsp://admin:{env:SUB_PASS}@cam/2"
        [[channel]]
        id = 2
        name = "B"
        source = "rtsp://cam/{file:/nope}"
        "#,
    )
    .unwrap();
    let problems: Vec<String> = c.expand_secrets(&env, &read).iter().map(ToString::to_string).collect();
    assert_eq!(c.channels[0].source, "rtsp://admin:s3cret@cam/1");
    assert_eq!(c.api.token.as_deref(), Some("tok-en"));
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].starts_with("channel[0] (id 1).detect_source: environment variable SUB_PASS"), "{problems:?}");
    assert!(problems[1].starts_with("channel[1] (id 2).source: cannot read secret file /nope"), "{problems:?}");
    assert!(!problems.iter().any(|p| p.contains("s3cret")));
    // Braces that are no reference stay as they are.
    assert_eq!(expand_secret_refs("a{b}c{", &env, &read).unwrap(), "a{b}c{");
}

#[test]
fn notify_sinks_are_checked_and_their_secrets_may_be_references() {
    let good = r#"
        [notify]
        public_url = "http://nvr.lan:8088"
        [notify.mqtt]
        url = "mqtt://cctv:{env:MQTT_PASS}@broker.lan"
        [[notify.webhook]]
        url = "http://hooks.lan/cctv"
        secret = "{file:/run/credentials/hook}"
        [[notify.webhook]]
        name = "alarm"
        url = "http://alarm.lan/in"
        events = ["objects"]
        [[channel]]
        id = 1
        name = "Gate"
        source = "rtsp://cam/1"
    "#;
    let env = |name: &str| Some(format!("{name}-value"));
    let read = |_: &str| Ok("0123456789abcdef0123\n".to_string());
    let mut c = Config::parse(good).unwrap();
    assert!(c.expand_secrets(&env, &read).is_empty());
    assert!(c.validate().is_empty(), "{:?}", c.validate());
    let m = c.notify.mqtt.as_ref().unwrap();
    assert_eq!(m.url, "mqtt://cctv:MQTT_PASS-value@broker.lan");
    assert_eq!((m.topic_prefix.as_str(), m.discovery_prefix.as_str()), ("cctv", "homeassistant"));
    assert_eq!(c.notify.webhooks[0].secret.as_deref(), Some("0123456789abcdef0123"));
    assert_eq!(c.notify.webhooks[0].events, EventCategory::ALL);
    assert_eq!(c.notify.webhooks[0].name_or_default(0), "webhook1");
    assert!(!format!("{:?}", c.notify.webhooks[0]).contains("0123456789"), "a webhook secret in Debug output");

    let bad = r#"
        [notify.mqtt]
        url = "http://broker.lan"
        topic_prefix = "cctv/#"
        [[notify.webhook]]
        name = "a"
        url = "ftp://hooks.lan/x"
        secret = "short"
        events = []
        [[notify.webhook]]
        name = "a"
        url = "http://hooks.lan/y"
        ca_file = "/etc/hostname"
        [[notify.webhook]]
        name = "c"
        url = "https://hooks.lan/z"
        ca_file = "/etc/hostname"
        [[notify.webhook]]
        name = "d"
        url = "https://hooks.lan/z"
        ca_file = "/nonexistent/ca.pem"
        [[channel]]
        id = 1
        name = "Gate"
        source = "rtsp://cam/1"
    "#;
    let problems: Vec<String> = problems_of(bad);
    assert_listed(
        &problems,
        &[
            "notify.mqtt.url: \"http://broker.lan\" has scheme \"http\"",
            "notify.mqtt.topic_prefix: \"cctv/#\" must be non-empty",
            "notify.webhook[0].url: \"ftp://hooks.lan/x\" has scheme \"ftp\"",
            "notify.webhook[0].secret: must be at least 16 characters",
            "notify.webhook[0].events: must name at least one",
            "notify.webhook[1].name: duplicate webhook name \"a\"",
            "notify.webhook[1].ca_file: is for https:// URLs only",
            "notify.webhook[2].ca_file: /etc/hostname holds no PEM certificate",
            "notify.webhook[3].ca_file: cannot read /nonexistent/ca.pem",
        ],
    );
    assert_eq!(problems.len(), 9, "{problems:?}");
    // TLS sinks: https webhooks and mqtts brokers validate.
    let tls = r#"
        [notify.mqtt]
        url = "mqtts://user:{env:MQTT_PW}@broker.lan"
        [[notify.webhook]]
        url = "https://hooks.example.org/cctv"
        [[channel]]
        id = 1
        name = "Gate"
        source = "rtsp://cam/1"
    "#;
    assert_eq!(problems_of(tls), Vec::<String>::new());
}

#[test]
fn a_short_viewer_token_is_a_problem_and_it_is_redacted() {
    let text = "[api]\nviewer_token = \"short\"\n[[channel]]\nid = 1\nname = \"Gate\"\nsource = \"rtsp://cam/1\"\n";
    assert_listed(&problems_of(text), &["api.viewer_token: must be at least 16 characters"]);
    let c: Config = toml::from_str(&text.replace("short", "viewer-token-0123456789")).unwrap();
    assert!(!format!("{c:?}").contains("viewer-token-0123456789"), "the viewer token is in Debug output");
}

#[test]
fn a_sentinel_setup_is_checked_and_its_password_may_be_a_secret_reference() {
    let good = r#"
        [cluster]
        redis_url = "redis://:{env:REDIS_PASS}@unused/2"
        [cluster.sentinel]
        master = "cctv"
        addresses = ["10.0.0.1:26379", "[fd00::2]:26379", "sentinel-3:26379"]
        password = "{env:SENTINEL_PASS}"
        [[channel]]
        id = 1
        name = "Gate"
        source = "rtsp://cam/1"
    "#;
    let env = |name: &str| Some(format!("{name}-value"));
    let read = |_: &str| Err(std::io::Error::other("unused"));
    let mut c = Config::parse(good).unwrap();
    assert!(c.expand_secrets(&env, &read).is_empty());
    assert!(c.validate().is_empty(), "{:?}", c.validate());
    assert_eq!(c.cluster.sentinel.as_ref().unwrap().password.as_deref(), Some("SENTINEL_PASS-value"));

    let bad = r#"
        [cluster]
        redis_url = "rediss://cache:6380"
        [cluster.sentinel]
        master = "my master"
        addresses = ["10.0.0.1", "10.0.0.2:26379"]
        [[channel]]
        id = 1
        name = "Gate"
        source = "rtsp://cam/1"
    "#;
    let problems: Vec<String> = problems_of(bad);
    assert_listed(
        &problems,
        &[
            "cluster.sentinel.master: \"my master\" must be a non-empty name",
            "cluster.sentinel.addresses[0]: \"10.0.0.1\" is not host:port",
            "cluster.redis_url: rediss://cache:6380 must be a redis:// URL when [cluster.sentinel] is set",
        ],
    );
    assert_eq!(problems.len(), 3, "{problems:?}");
    let none = Config::parse("[cluster.sentinel]\nmaster = \"m\"\naddresses = []\n").unwrap().validate();
    assert!(none.iter().any(|p| p.to_string().contains("at least one sentinel")), "{none:?}");
}

#[test]
fn a_channels_motion_settings_override_the_global_ones_within_the_same_limits() {
    let text = r#"
        [motion]
        pixel_threshold = 30
        [[channel]]
        id = 1
        name = "A"
        source = "rtsp://cam/1"
        [channel.motion]
        min_area = 0.01
        fps = 2
        [[channel]]
        id = 2
        name = "B"
        source = "rtsp://cam/2"
        [channel.motion]
        pixel_threshold = 300
    "#;
    let c = Config::parse(text).unwrap();
    let m = c.channels[0].motion.apply(&c.motion);
    assert_eq!((m.fps, m.min_area, m.pixel_threshold), (2.0, 0.01, 30.0));
    assert_eq!(m.end_quiet_secs, c.motion.end_quiet_secs);
    let problems: Vec<String> = c.validate().iter().map(ToString::to_string).collect();
    assert_eq!(problems, ["channel[1] (id 2).motion.pixel_threshold: 300 is out of range 1..=255"]);
    assert!(Config::parse(&text.replace("fps = 2", "fsp = 2")).unwrap_err().contains("fsp"));
}

#[test]
fn gate_settings_are_checked() {
    let c = Config::parse(GOOD).unwrap();
    assert!(c.motion.gate && c.validate().is_empty(), "on by default: {:?}", c.validate());
    assert!(!Config::parse("[motion]\ngate = false\n").unwrap().motion.gate);
    let problems = problems_of(&format!("{GOOD}\n[motion]\ngate_rise = 0.5\ngate_hold_secs = 0\n"));
    assert_listed(
        &problems,
        &["motion.gate_rise: 0.5 is out of range 1..=20", "motion.gate_hold_secs: 0 is out of range 1..=3600"],
    );
    assert_eq!(c.motion.gate_keyframe_secs, 2.0);
    let problems = problems_of(&format!("{GOOD}\n[motion]\ngate_keyframe_secs = 11\n"));
    assert_listed(&problems, &["motion.gate_keyframe_secs: 11 is out of range 0..=10"]);
    let problems = problems_of(&format!("{GOOD}\n[motion]\ngate_keyframe_secs = 6\nstall_timeout_secs = 10\n"));
    assert_listed(&problems, &["motion.gate_keyframe_secs: 6 must be at most half of motion.stall_timeout_secs (10)"]);
    assert!(problems_of(&format!("{GOOD}\n[motion]\ngate_keyframe_secs = 0\n")).is_empty());
}

#[test]
fn unknown_field_is_an_error_naming_it() {
    let e = Config::parse("[scheduler]\nbatch_sise = 3\n").unwrap_err();
    assert!(e.contains("batch_sise"), "{e}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = r#"
        [scheduler]
        batch_size = 0
        [motion]
        blur_kernel = 4
        [[channel]]
        id = 3
        name = "A"
        source = "rtsp://u:topsecret@cam/1"
        [[channel]]
        id = 3
        name = "B"
        source = "not a url"
    "#;
    let problems = Config::parse(text).unwrap().validate();
    let fields: Vec<_> = problems.iter().map(|p| p.field.as_str()).collect();
    assert!(fields.contains(&"scheduler.batch_size"), "{fields:?}");
    assert!(fields.contains(&"motion.blur_kernel"), "{fields:?}");
    assert!(fields.contains(&"channel[1] (id 3).id"), "{fields:?}");
    assert!(fields.contains(&"channel[1] (id 3).source"), "{fields:?}");
    assert_eq!(problems.len(), 4, "{problems:?}");
}

#[test]
fn messages_and_debug_never_show_passwords() {
    let mut c = Config::parse(GOOD).unwrap();
    c.channels[0].source = "ftp://admin:hunter2@cam/1".into();
    let text = format!("{:?} {:?}", c.validate(), c);
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("ftp"), "{text}");
}

#[test]
fn a_toml_error_on_a_secret_line_does_not_show_the_secret() {
    let text = "[api]\ntoken = \"s3cret-token-0123456789\n[[channel]]\nid = 1\n";
    let e = Config::parse(text).unwrap_err();
    assert!(!e.contains("s3cret-token"), "{e}");
    assert!(e.contains("token = ***"), "the line is still named: {e}");
}

#[test]
fn config_types_holding_a_secret_print_it_redacted() {
    let c = Config::parse(
        "[cluster]\nredis_url = \"redis://:redis-pass-99@127.0.0.1:6379/0\"\n\
         [cluster.sentinel]\nmaster = \"m\"\naddresses = [\"127.0.0.1:26379\"]\npassword = \"sentinel-pass-99\"\n\
         [notify.mqtt]\nurl = \"mqtt://u:mqtt-pass-99@127.0.0.1:1883\"\n\
         [[channel]]\nid = 1\nname = \"a\"\nsource = \"rtsp://u:cam-pass-99@10.0.0.2/1\"\n",
    )
    .unwrap();
    let printed = format!("{c:?}");
    for secret in ["redis-pass-99", "sentinel-pass-99", "mqtt-pass-99", "cam-pass-99"] {
        assert!(!printed.contains(secret), "{secret} in {printed}");
    }
}
