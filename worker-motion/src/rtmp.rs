//! The gate's packet source for an `rtmp://` detect stream: plays the stream from nginx-rtmp
//! in this process and hands on its video messages as FLV tags (an RTMP video message's payload
//! is an FLV video tag's body). It replaces an ffmpeg that only copied the stream to FLV on a
//! pipe: each Debian ffmpeg costs ~9 MiB of private library pages and a wake-up per packet, and
//! the gate needs no more than packet sizes and keyframe flags.
//!
//! Ends: `Ok(None)` when the server ends the stream (its publisher left, or it closed the
//! connection); an error naming the cause when the stream is not published, the server refuses,
//! nothing arrives for the stall timeout, or the reader is stopped ([`RtmpStop`]).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult};

use crate::flv::FlvTag;

/// `rtmp://host[:port]/app/stream` split into address, application and stream key.
#[derive(Debug, Clone, PartialEq)]
pub struct RtmpUrl {
    pub host: String,
    pub port: u16,
    pub app: String,
    pub stream: String,
}

impl RtmpUrl {
    pub fn parse(url: &str) -> Option<Self> {
        let rest = url.strip_prefix("rtmp://")?;
        let (authority, path) = rest.split_once('/')?;
        // Credentials are not part of RTMP URLs nginx-rtmp serves; refuse rather than leak them.
        if authority.contains('@') {
            return None;
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().ok()?),
            None => (authority.to_string(), 1935),
        };
        let (app, stream) = path.split_once('/')?;
        if host.is_empty() || app.is_empty() || stream.is_empty() {
            return None;
        }
        Some(Self { host, port, app: app.to_string(), stream: stream.to_string() })
    }
}

/// Stops a [`RtmpPlayer`] from another thread: its socket is shut down, so a blocked read
/// returns at once.
#[derive(Debug)]
pub struct RtmpStop(TcpStream);

impl RtmpStop {
    pub fn stop(&self) {
        let _ = self.0.shutdown(Shutdown::Both);
    }
}

/// A playing RTMP stream: [`next_tag`](Self::next_tag) gives its video, tag by tag.
pub struct RtmpPlayer {
    socket: TcpStream,
    session: ClientSession,
    stream_key: String,
    tags: VecDeque<FlvTag>,
    ended: bool,
    /// The server accepted the play request (`NetStream.Play.Start`).
    playing: bool,
    buf: Vec<u8>,
    stall: Duration,
}

fn io_err(kind: io::ErrorKind, message: impl Into<String>) -> io::Error {
    io::Error::new(kind, message.into())
}

impl RtmpPlayer {
    /// Connects, hand-shakes and asks to play `url`'s stream; `stall`: the most time without a
    /// byte from the server (connecting included).
    pub fn connect(url: &str, stall: Duration) -> io::Result<Self> {
        let u = RtmpUrl::parse(url)
            .ok_or_else(|| io_err(io::ErrorKind::InvalidInput, "not an rtmp://host[:port]/app/stream URL"))?;
        let addr = (u.host.as_str(), u.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io_err(io::ErrorKind::NotFound, format!("{}: no address", u.host)))?;
        let mut socket = TcpStream::connect_timeout(&addr, stall)?;
        socket.set_nodelay(true)?;
        socket.set_read_timeout(Some(stall))?;
        socket.set_write_timeout(Some(stall))?;
        let mut handshake = Handshake::new(PeerType::Client);
        let hello = handshake
            .generate_outbound_p0_and_p1()
            .map_err(|e| io_err(io::ErrorKind::InvalidData, format!("RTMP handshake: {e:?}")))?;
        socket.write_all(&hello)?;
        let mut buf = vec![0u8; 64 << 10];
        let remaining = loop {
            let n = read_some(&mut socket, &mut buf, stall)?;
            if n == 0 {
                return Err(io_err(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection during the RTMP handshake",
                ));
            }
            match handshake
                .process_bytes(&buf[..n])
                .map_err(|e| io_err(io::ErrorKind::InvalidData, format!("RTMP handshake: {e:?}")))?
            {
                HandshakeProcessResult::InProgress { response_bytes } => socket.write_all(&response_bytes)?,
                HandshakeProcessResult::Completed { response_bytes, remaining_bytes } => {
                    socket.write_all(&response_bytes)?;
                    break remaining_bytes;
                }
            }
        };
        let mut config = ClientSessionConfig::new();
        config.tc_url = Some(format!("rtmp://{}:{}/{}", u.host, u.port, u.app));
        let (session, initial) = ClientSession::new(config).map_err(session_err)?;
        let mut player = Self {
            socket,
            session,
            stream_key: u.stream.clone(),
            tags: VecDeque::new(),
            ended: false,
            playing: false,
            buf,
            stall,
        };
        player.handle(initial)?;
        let results = player.session.handle_input(&remaining).map_err(session_err)?;
        player.handle(results)?;
        let connect = player.session.request_connection(u.app).map_err(session_err)?;
        player.handle(vec![connect])?;
        // Until the server says it plays (or why not): a stream nobody publishes fails here, before
        // the caller starts a decoder for it.
        while !player.playing && player.tags.is_empty() {
            if player.ended || !player.receive()? {
                return Err(io_err(
                    io::ErrorKind::UnexpectedEof,
                    "the RTMP server closed the connection before playing",
                ));
            }
        }
        Ok(player)
    }

    /// A handle that stops this player from another thread.
    pub fn stopper(&self) -> io::Result<RtmpStop> {
        Ok(RtmpStop(self.socket.try_clone()?))
    }

    /// The next video tag; `None` when the server ended the stream.
    pub fn next_tag(&mut self) -> io::Result<Option<FlvTag>> {
        loop {
            if let Some(tag) = self.tags.pop_front() {
                return Ok(Some(tag));
            }
            if self.ended {
                return Ok(None);
            }
            if !self.receive()? {
                return Ok(None);
            }
        }
    }

    /// Reads what the server sent and acts on it; false when it closed the connection.
    fn receive(&mut self) -> io::Result<bool> {
        let n = read_some(&mut self.socket, &mut self.buf, self.stall)?;
        if n == 0 {
            return Ok(false);
        }
        let results = self.session.handle_input(&self.buf[..n]).map_err(session_err)?;
        self.handle(results)?;
        Ok(true)
    }

    fn handle(&mut self, results: Vec<ClientSessionResult>) -> io::Result<()> {
        for r in results {
            match r {
                ClientSessionResult::OutboundResponse(packet) => self.socket.write_all(&packet.bytes)?,
                ClientSessionResult::RaisedEvent(event) => self.event(event)?,
                ClientSessionResult::UnhandleableMessageReceived(_) => {}
            }
        }
        Ok(())
    }

    fn event(&mut self, event: ClientSessionEvent) -> io::Result<()> {
        match event {
            ClientSessionEvent::ConnectionRequestAccepted => {
                let play = self.session.request_playback(self.stream_key.clone()).map_err(session_err)?;
                self.handle(vec![play])?;
            }
            ClientSessionEvent::ConnectionRequestRejected { description } => {
                return Err(io_err(
                    io::ErrorKind::PermissionDenied,
                    format!("the RTMP server refused the connection: {description}"),
                ));
            }
            ClientSessionEvent::PlaybackRequestAccepted => self.playing = true,
            ClientSessionEvent::VideoDataReceived { timestamp, data } => {
                self.tags.push_back(FlvTag { kind: 9, ts: timestamp.value, body: data.to_vec() });
            }
            ClientSessionEvent::UnhandleableOnStatusCode { code } => match code.as_str() {
                "NetStream.Play.StreamNotFound" => {
                    return Err(io_err(io::ErrorKind::NotFound, "stream not found: is it published?"));
                }
                "NetStream.Play.UnpublishNotify" | "NetStream.Play.Stop" | "NetStream.Play.Complete" => {
                    self.ended = true;
                }
                c if c.contains("Failed") || c.contains("Rejected") || c.contains("BadName") => {
                    return Err(io_err(io::ErrorKind::Other, format!("the RTMP server said {c}")));
                }
                _ => {}
            },
            _ => {}
        }
        Ok(())
    }
}

/// One read; a timeout becomes an error naming the stall.
fn read_some(socket: &mut TcpStream, buf: &mut [u8], stall: Duration) -> io::Result<usize> {
    let started = Instant::now();
    loop {
        match socket.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(io_err(
                    io::ErrorKind::TimedOut,
                    format!("no data from the RTMP server for {:.0} s", started.elapsed().max(stall).as_secs_f64()),
                ));
            }
            Err(e) => return Err(e),
        }
    }
}

fn session_err(e: rml_rtmp::sessions::ClientSessionError) -> io::Error {
    io_err(io::ErrorKind::InvalidData, format!("RTMP session: {e:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtmp_urls_split_into_host_port_app_and_stream() {
        assert_eq!(
            RtmpUrl::parse("rtmp://127.0.0.1:19350/live/ch1_sub"),
            Some(RtmpUrl { host: "127.0.0.1".into(), port: 19350, app: "live".into(), stream: "ch1_sub".into() })
        );
        assert_eq!(RtmpUrl::parse("rtmp://nginx/live/ch2").map(|u| u.port), Some(1935));
        for bad in ["rtmp://nginx/live", "rtmp://nginx", "rtsp://x/live/a", "rtmp://u:p@x/live/a", "rtmp://:1/live/a"] {
            assert_eq!(RtmpUrl::parse(bad), None, "{bad}");
        }
    }
}
