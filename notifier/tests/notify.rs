//! The notifier as a real process between a real Redis, a real mosquitto broker (with a real
//! MQTT client subscribing) and a local HTTP receiver for webhooks: every event arrives, in
//! order, signed; through a receiver that fails, a broker restart and a notifier restart.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use cctv_common::events::{
    now_ms, BackupEvent, ChannelState, ChannelStatus, Detection, MotionEvent, MotionEventKind, ObjectEvent,
};
use cctv_common::keys::Keys;
use cctv_testkit::{KillOnDrop, Mosquitto, Redis};
use redis::Commands;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::sync::mpsc;

const NS: &str = "nt";
const SECRET: &str = "hook-secret-0123456789";

/// One request the webhook receiver got.
#[derive(Debug, Clone)]
struct Received {
    event: String,
    delivery: String,
    signature_ok: bool,
    body: Value,
}

#[derive(Default)]
struct Receiver {
    /// Requests answered 503 before the receiver starts accepting.
    refuse_first: usize,
    seen: usize,
    got: Vec<Received>,
}

/// The webhook receiver: answers 503 to its first requests, then 200, and keeps what it got.
async fn start_receiver(refuse_first: usize) -> (String, Arc<Mutex<Receiver>>) {
    let state = Arc::new(Mutex::new(Receiver { refuse_first, ..Default::default() }));
    let s = state.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let s = s.clone();
            async move {
                let mut r = s.lock().unwrap();
                r.seen += 1;
                if r.seen <= r.refuse_first {
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                // Signed over `<timestamp>.<body>`, sent just now.
                let sent = h("x-cctv-timestamp");
                let fresh = sent.parse::<i64>().is_ok_and(|t| (cctv_common::events::now_ms() / 1000 - t).abs() <= 300);
                let signature_ok =
                    fresh && h("x-cctv-signature") == notifier::signature(SECRET, &sent, body.as_bytes());
                r.got.push(Received {
                    event: h("x-cctv-event"),
                    delivery: h("x-cctv-delivery"),
                    signature_ok,
                    body: serde_json::from_str(&body).unwrap_or(Value::Null),
                });
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, state)
}

/// A real MQTT client subscribed to everything; (re)subscribes on every connect.
fn subscribe(broker: &Mosquitto, id: &str) -> Mailbox {
    let mut options = MqttOptions::new(id, "127.0.0.1", broker.port);
    options.set_credentials(Mosquitto::USER, Mosquitto::PASSWORD);
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut events) = AsyncClient::new(options, 100);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    client.subscribe("#", QoS::AtLeastOnce).await.unwrap();
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let payload = String::from_utf8_lossy(&p.payload).into_owned();
                    if tx.send((p.topic.clone(), payload, p.retain)).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    Mailbox { rx, seen: Vec::new() }
}

/// Everything a subscriber received, searched from the start on each [`Mailbox::expect`], so
/// the order in which things are awaited need not be the order they were sent in.
struct Mailbox {
    rx: mpsc::UnboundedReceiver<(String, String, bool)>,
    seen: Vec<(String, String)>,
}

impl Mailbox {
    /// Waits for a message on `topic` whose payload satisfies `ok`; returns the payload.
    async fn expect(&mut self, topic: &str, ok: impl Fn(&str) -> bool, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut checked = 0;
        loop {
            if let Some((_, p)) = self.seen[checked..].iter().find(|(t, p)| t == topic && ok(p)) {
                return p.clone();
            }
            checked = self.seen.len();
            if Instant::now() >= deadline {
                let seen: Vec<String> =
                    self.seen.iter().map(|(t, p)| format!("{t} {}", p.chars().take(80).collect::<String>())).collect();
                panic!("no {what} on {topic} within 30 s; got:\n{}", seen.join("\n"));
            }
            if let Ok(Some((t, p, _))) = tokio::time::timeout(Duration::from_millis(500), self.rx.recv()).await {
                self.seen.push((t, p));
            }
        }
    }
}

async fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "{what} did not happen within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn motion(id: &str, kind: MotionEventKind) -> MotionEvent {
    let ts = now_ms();
    MotionEvent {
        event_id: id.into(),
        channel: 1,
        kind,
        ts_ms: ts,
        started_ms: ts,
        area: 0.1,
        boxes: Vec::new(),
        zones: Vec::new(),
        last_motion_ms: None,
        worker: "motion-test".into(),
        job: "job".into(),
        seq: 1,
    }
}

fn objects(motion_event: &str, labels: &[&str]) -> ObjectEvent {
    ObjectEvent {
        channel: 1,
        frame_ts_ms: now_ms(),
        motion_event: motion_event.into(),
        detections: labels
            .iter()
            .map(|l| Detection { label: (*l).into(), score: 0.8, bbox: [1.0, 2.0, 30.0, 40.0], zones: vec![] })
            .collect(),
        frame_width: 640,
        frame_height: 360,
        latency_ms: 120,
        batch_size: 1,
        snapshot: (!labels.is_empty()).then(|| "/snap/ch1_0001764000000123.jpg".into()),
        job: "job".into(),
        worker: "yolo-test".into(),
        ts_ms: now_ms(),
    }
}

/// Publishes an event as the workers do: its JSON in the `data` field of a stream entry. A few
/// milliseconds apart, as real events are: events of different streams are ordered by the
/// millisecond Redis stamped them with.
fn publish<T: serde::Serialize>(redis: &mut redis::Connection, stream: &str, event: &T) -> String {
    std::thread::sleep(Duration::from_millis(3));
    let data = serde_json::to_string(event).unwrap();
    redis.xadd(stream, "*", &[("data", data)]).unwrap()
}

fn config(redis: &Redis, broker: &Mosquitto, hook: &str) -> String {
    format!(
        "[cluster]\nredis_url = \"{}\"\nnamespace = \"{NS}\"\n\
         [notify]\npublic_url = \"http://nvr.test:8088\"\n\
         [notify.mqtt]\nurl = \"{}\"\n\
         [[notify.webhook]]\nname = \"hook\"\nurl = \"{hook}\"\nsecret = \"{{env:TEST_HOOK_SECRET}}\"\nevents = [\"motion\", \"objects\"]\n\
         [[channel]]\nid = 1\nname = \"Gate\"\nsource = \"rtsp://127.0.0.1:1/gate\"\n",
        redis.url(),
        broker.url()
    )
}

fn start_notifier(config: &std::path::Path) -> KillOnDrop {
    KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_notifier"))
            .args(["--config", config.to_str().unwrap(), "run"])
            .env("TEST_HOOK_SECRET", SECRET)
            .spawn()
            .expect("starting the notifier"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_reaches_mqtt_and_the_webhook_through_failures_and_restarts() {
    let redis = Redis::start();
    let mut broker = Mosquitto::start();
    let (hook, received) = start_receiver(2).await;
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("cctv.toml");
    std::fs::write(&config_path, config(&redis, &broker, &hook)).unwrap();
    let keys = Keys::new(NS);
    let mut r = redis::Client::open(redis.url()).unwrap().get_connection().unwrap();
    let status = ChannelStatus {
        channel: 1,
        online: true,
        state: ChannelState::Idle,
        reason: None,
        fps: 5.0,
        last_frame_ms: Some(now_ms()),
        last_motion_ms: None,
        analysing_since_ms: None,
        frames_total: 10,
        frames_gated: 0,
        yolo_frames_skipped: 0,
        worker: "motion-test".into(),
        batch: "b0".into(),
        updated_ms: now_ms(),
        active_event: None,
        seq: 0,
    };
    let _: () = r.set(keys.channel_status(1), serde_json::to_string(&status).unwrap()).unwrap();

    let mut mqtt = subscribe(&broker, "test-sub-1");
    let mut notifier = start_notifier(&config_path);

    // Announced: discovery for Home Assistant, the notifier and the channel online.
    let discovery = mqtt.expect("homeassistant/binary_sensor/nt_ch1/motion/config", |_| true, "discovery").await;
    let discovery: Value = serde_json::from_str(&discovery).unwrap();
    assert_eq!(discovery["state_topic"], "cctv/ch1/motion/state");
    assert_eq!(discovery["device_class"], "motion");
    assert_eq!(discovery["device"]["name"], "Gate");
    mqtt.expect("cctv/availability", |p| p == "online", "notifier availability").await;
    mqtt.expect("cctv/ch1/availability", |p| p == "online", "channel availability").await;
    // Both sinks have their stream positions (a new sink starts at the streams' ends).
    wait_until("the webhook's stream positions", || {
        r.exists::<_, bool>(keys.notify_cursor("webhook:hook")).unwrap()
            && r.exists::<_, bool>(keys.notify_cursor("mqtt")).unwrap()
    })
    .await;

    // 1. One event of each kind; the webhook receiver refuses the first two requests.
    let start1 = publish(&mut r, &keys.motion_events(), &motion("m1", MotionEventKind::Start));
    let empty = publish(&mut r, &keys.object_events(), &objects("m1", &[]));
    let seen = publish(&mut r, &keys.object_events(), &objects("m1", &["person", "dog"]));
    let backup =
        BackupEvent::deleted(std::path::Path::new("/b/Channel1_2026-12-01_10-00-00.mp4"), 10, "test".into(), "w");
    let backup = publish(&mut r, &keys.backup_events(), &backup);
    let end1 = publish(&mut r, &keys.motion_events(), &motion("m1", MotionEventKind::End));

    let m = mqtt.expect("cctv/ch1/motion", |p| p.contains(&start1), "motion start").await;
    let m: Value = serde_json::from_str(&m).unwrap();
    assert_eq!((m["kind"].as_str(), m["channel_name"].as_str()), (Some("start"), Some("Gate")));
    mqtt.expect("cctv/ch1/motion/state", |p| p == "ON", "motion ON").await;
    let o = mqtt.expect("cctv/ch1/objects", |_| true, "object event").await;
    let o: Value = serde_json::from_str(&o).unwrap();
    assert_eq!(o["stream_id"], seen.as_str(), "the frame without detections is not sent");
    assert_eq!(o["labels"], serde_json::json!(["dog", "person"]));
    assert_eq!(o["snapshot_url"], "http://nvr.test:8088/api/snapshots/1/ch1_0001764000000123.jpg");
    mqtt.expect("cctv/ch1/backup", |p| p.contains(&backup), "backup event").await;
    mqtt.expect("cctv/ch1/motion", |p| p.contains(&end1), "motion end").await;
    mqtt.expect("cctv/ch1/motion/state", |p| p == "OFF", "motion OFF").await;

    wait_until("three webhook deliveries", || received.lock().unwrap().got.len() >= 3).await;
    {
        let got = received.lock().unwrap();
        let ids: Vec<&str> = got.got.iter().map(|g| g.delivery.as_str()).collect();
        // In order, once each, the backup left out (not asked for), the empty frame not sent.
        assert_eq!(ids, [start1.as_str(), seen.as_str(), end1.as_str()]);
        assert!(!ids.contains(&empty.as_str()));
        assert!(got.got.iter().all(|g| g.signature_ok), "a signature does not match: {:?}", got.got);
        assert_eq!(got.got[1].event, "objects");
        assert_eq!(got.got[0].body["stream_id"], start1.as_str());
        assert!(got.seen >= 5, "the two refused requests were not retried: {} requests", got.seen);
    }

    // 2. The broker dies (and comes back without its retained messages) while motion starts:
    // the event waits and goes out when it is back; discovery is announced again.
    broker.kill();
    let start2 = publish(&mut r, &keys.motion_events(), &motion("m2", MotionEventKind::Start));
    tokio::time::sleep(Duration::from_secs(3)).await;
    broker.restart();
    let mut late = subscribe(&broker, "test-sub-2");
    late.expect("cctv/ch1/motion/state", |p| p == "ON", "retained motion ON of the event sent in the outage").await;
    late.expect("homeassistant/binary_sensor/nt_ch1/motion/config", |_| true, "discovery again").await;
    late.expect("cctv/ch1/availability", |p| p == "online", "channel availability again").await;
    wait_until("the webhook got the outage's event", || received.lock().unwrap().got.len() >= 4).await;

    // 3. The notifier stops; events published meanwhile are delivered when it is back.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(notifier.0.id() as i32), nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    let stopped = notifier.0.wait().unwrap();
    assert!(stopped.success(), "the notifier did not stop cleanly: {stopped}");
    let end2 = publish(&mut r, &keys.motion_events(), &motion("m2", MotionEventKind::End));
    let _notifier = start_notifier(&config_path);
    late.expect("cctv/ch1/motion", |p| p.contains(&end2), "the end published while the notifier was down").await;
    wait_until("the webhook got the end", || received.lock().unwrap().got.len() >= 5).await;
    {
        let got = received.lock().unwrap();
        let ids: Vec<&str> = got.got.iter().map(|g| g.delivery.as_str()).collect();
        assert_eq!(ids, [start1.as_str(), seen.as_str(), end1.as_str(), start2.as_str(), end2.as_str()]);
    }

    // 4. The channel goes offline: its availability follows.
    let _: () = r.del(keys.channel_status(1)).unwrap();
    late.expect("cctv/ch1/availability", |p| p == "offline", "channel offline").await;
}

/// An HTTPS webhook receiver (Python's http.server behind its ssl module, the CA's server
/// certificate): prints `<path> <X-CCTV-Event> <body>` per request to `log`.
const HTTPS_RECEIVER: &str = r#"
import http.server, ssl, sys
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with open(sys.argv[4], "a") as log:
            log.write("%s %s %s\n" % (self.path, self.headers.get("X-CCTV-Event", ""), body.decode()))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Hook)
tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
tls.load_cert_chain(sys.argv[2], sys.argv[3])
server.socket = tls.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"#;

/// TLS where secrets travel: an `https://` webhook and an `mqtts://` broker whose certificates a
/// private CA signed get the events when `ca_file` names that CA; a webhook without it (the
/// system's CA store, which does not know the CA) gets nothing, and the notifier says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_webhooks_and_mqtts_deliver_to_verified_servers_only() {
    let ca = cctv_testkit::tls::TestCa::new();
    let redis = Redis::start();
    let broker = Mosquitto::start_with_tls(&ca);
    let dir = tempfile::tempdir().unwrap();
    let (script, log) = (dir.path().join("receiver.py"), dir.path().join("received.log"));
    std::fs::write(&script, HTTPS_RECEIVER).unwrap();
    std::fs::write(&log, "").unwrap();
    let port = cctv_testkit::free_port();
    let _receiver = KillOnDrop(
        std::process::Command::new("python3")
            .arg(&script)
            .arg(port.to_string())
            .arg(ca.cert())
            .arg(ca.key())
            .arg(&log)
            .spawn()
            .expect("starting the HTTPS receiver"),
    );
    cctv_testkit::wait_for_port(port, Duration::from_secs(10), "HTTPS receiver");
    let config_path = dir.path().join("cctv.toml");
    let ca_file = ca.ca().display().to_string();
    std::fs::write(
        &config_path,
        format!(
            "[cluster]\nredis_url = \"{}\"\nnamespace = \"{NS}\"\n\
             [notify.mqtt]\nurl = \"{}\"\nca_file = \"{ca_file}\"\ndiscovery_prefix = \"\"\n\
             [[notify.webhook]]\nname = \"trusted\"\nurl = \"https://127.0.0.1:{port}/trusted\"\nca_file = \"{ca_file}\"\n\
             [[notify.webhook]]\nname = \"untrusted\"\nurl = \"https://127.0.0.1:{port}/untrusted\"\n\
             [[channel]]\nid = 1\nname = \"Gate\"\nsource = \"rtsp://127.0.0.1:1/gate\"\n",
            redis.url(),
            broker.tls_url()
        ),
    )
    .unwrap();
    let keys = Keys::new(NS);
    let mut r = redis::Client::open(redis.url()).unwrap().get_connection().unwrap();
    // Watched on the broker's plain listener; the notifier publishes on the TLS one.
    let mut mqtt = subscribe(&broker, "tls-watcher");
    let stderr = dir.path().join("notifier.log");
    let _notifier = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_notifier"))
            .args(["--config", config_path.to_str().unwrap(), "run"])
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("starting the notifier"),
    );
    mqtt.expect("cctv/availability", |p| p == "online", "the notifier online over TLS").await;
    wait_until("every sink's stream positions", || {
        ["webhook:trusted", "webhook:untrusted", "mqtt"]
            .iter()
            .all(|sink| r.exists::<_, bool>(keys.notify_cursor(sink)).unwrap())
    })
    .await;

    publish(&mut r, &keys.motion_events(), &motion("tls1", MotionEventKind::Start));
    mqtt.expect("cctv/ch1/motion", |p| p.contains("tls1"), "the motion event over mqtts").await;
    let received = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("the trusted webhook got the event over https", || {
        received().lines().any(|l| l.starts_with("/trusted motion ") && l.contains("tls1"))
    })
    .await;
    // The untrusted one retries with backoff; give it time to have tried a few times.
    let said = |needle: &str| std::fs::read_to_string(&stderr).unwrap_or_default().contains(needle);
    wait_until("the notifier reporting the certificate it refused", || said("certificate")).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !received().contains("/untrusted"),
        "a webhook got events from a server its CA store does not trust:\n{}",
        received()
    );
}
