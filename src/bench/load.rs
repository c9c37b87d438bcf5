//! The data phase: many set-up sessions driven by a few threads, each thread an epoll loop over
//! non-blocking sockets. Every message carries a run epoch, the sending flow, a sequence number and
//! a send timestamp, so the echo alone tells the RTT; nothing is looked up per message.
//!
//! Payload layout (big-endian): `epoch u32 | flow u32 | seq u64 | sent_ns u64 | kind u8 | zeros`.
//! `kind` 0 is an original message, 1 an echo made by a partner client (`-y`, client to client).
//!
//! Every loop is bounded: a flow stops sending after its message count or at the deadline, and a
//! thread stops waiting for echoes after the linger time.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::session::{Conn, Session};
use super::stats::Stats;
use crate::proto::{
    attr, channel_data, framing, ChannelData, ChannelNumber, Class, Message, MessageBuilder, Method,
};
use crate::sys::{Epoll, Events, Trigger};

/// Smallest payload that holds the harness's header.
pub const MIN_PAYLOAD: usize = 25;
const KIND_ORIGINAL: u8 = 0;
const KIND_ECHO: u8 = 1;
/// A TCP flow stops producing while this much is waiting to be written.
const TCP_BACKLOG: usize = 256 * 1024;
/// At most this many messages per flow per loop pass (catch-up after a late wake-up).
const MAX_BURST: u64 = 256;
/// Messages per flow per pass when flooding (no pacing).
const FLOOD_BURST: u64 = 8;

/// Counters the worker threads publish while running, for the progress bar.
#[derive(Debug, Default)]
pub struct Live {
    pub sent: AtomicU64,
    pub received: AtomicU64,
    pub sent_bytes: AtomicU64,
    pub received_bytes: AtomicU64,
}

/// What one data phase does.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Messages per flow (u64::MAX: until the deadline).
    pub messages: u64,
    /// Time between two messages of one flow; zero = as fast as the socket takes them.
    pub interval: Duration,
    /// Stop sending after this long.
    pub duration: Option<Duration>,
    /// After the last send, wait at most this long for echoes.
    pub linger: Duration,
    /// Payload length.
    pub length: usize,
    /// Told apart from earlier runs' late echoes.
    pub epoch: u32,
    /// Worker threads.
    pub threads: usize,
    /// Flows come in partner pairs (`-y`): keep each pair on one thread.
    pub pairs: bool,
}

/// A session in the data phase.
pub struct Flow {
    id: u32,
    conn: Conn,
    peer: SocketAddr,
    channel: Option<ChannelNumber>,
    rx: Vec<u8>,
    pending: Vec<u8>,
    out: Vec<u8>,
    payload: Vec<u8>,
    tid: u64,
    // per-run state
    sent: u64,
    next_due: Instant,
    prev_rtt: Option<u64>,
}

impl Flow {
    /// Turn a set-up session (with a peer bound) into a flow.
    pub fn new(id: u32, mut s: Session) -> io::Result<Flow> {
        let peer = s
            .peer
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "session has no peer"))?;
        s.conn.set_nonblocking(true)?;
        let rx = s.take_rx();
        Ok(Flow {
            id,
            conn: s.conn,
            peer,
            // The server accepted the ChannelBind, so the number is in range.
            channel: s.channel.and_then(ChannelNumber::new),
            rx,
            pending: Vec::new(),
            out: Vec::with_capacity(2048),
            payload: Vec::new(),
            tid: u64::from(id) << 32,
            sent: 0,
            next_due: Instant::now(),
            prev_rtt: None,
        })
    }

    /// Frame `payload` as ChannelData or a Send indication and send it. Ok(false): the socket is
    /// full, try later.
    fn send_payload(&mut self, payload: &[u8]) -> io::Result<bool> {
        if let Conn::Tcp(_) = self.conn {
            if self.pending.len() > TCP_BACKLOG {
                self.flush()?;
                if self.pending.len() > TCP_BACKLOG {
                    return Ok(false);
                }
            }
        }
        self.out.clear();
        match self.channel {
            Some(ch) => {
                self.out.resize(channel_data::HEADER_LEN + payload.len(), 0);
                channel_data::write_header(&mut self.out, ch, payload.len());
                self.out[channel_data::HEADER_LEN..].copy_from_slice(payload);
                if self.conn.is_tcp() {
                    let pad = channel_data::stream_padding(payload.len());
                    self.out.resize(self.out.len() + pad, 0);
                }
            }
            None => {
                self.tid += 1;
                let mut tid = [0u8; 12];
                tid[4..].copy_from_slice(&self.tid.to_be_bytes());
                MessageBuilder::new(&mut self.out, Method::SEND, Class::Indication, &tid)
                    .xor_address(attr::XOR_PEER_ADDRESS, &self.peer)
                    .attr(attr::DATA, payload);
            }
        }
        match &mut self.conn {
            Conn::Udp(s) => match s.send(&self.out) {
                Ok(_) => Ok(true),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::ConnectionRefused
                    ) || e.raw_os_error() == Some(libc::ENOBUFS) =>
                {
                    Ok(false)
                }
                Err(e) => Err(e),
            },
            Conn::Tcp(_) => {
                self.pending.extend_from_slice(&self.out);
                self.flush()?;
                Ok(true)
            }
        }
    }

    /// Write as much of the TCP backlog as the socket takes.
    fn flush(&mut self) -> io::Result<()> {
        let Conn::Tcp(s) = &mut self.conn else {
            return Ok(());
        };
        let mut done = 0;
        while done < self.pending.len() {
            match s.write(&self.pending[done..]) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        self.pending.drain(..done);
        Ok(())
    }

    fn send_next(&mut self, epoch: u32, length: usize, base: Instant) -> io::Result<bool> {
        let mut p = std::mem::take(&mut self.payload);
        if p.len() != length {
            p = vec![0u8; length];
        }
        p[0..4].copy_from_slice(&epoch.to_be_bytes());
        p[4..8].copy_from_slice(&self.id.to_be_bytes());
        p[8..16].copy_from_slice(&self.sent.to_be_bytes());
        let ns = base.elapsed().as_nanos() as u64;
        p[16..24].copy_from_slice(&ns.to_be_bytes());
        p[24] = KIND_ORIGINAL;
        let r = self.send_payload(&p);
        self.payload = p;
        r
    }
}

/// What a received payload means.
enum Seen {
    Echo {
        rtt_ns: u64,
    },
    /// A partner's original (`-y`): echo it back.
    Partner,
    Stray,
}

fn classify(p: &[u8], epoch: u32, id: u32, base: Instant) -> Seen {
    if p.len() < MIN_PAYLOAD {
        return Seen::Stray;
    }
    let be32 = |i: usize| u32::from_be_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
    if be32(0) != epoch {
        return Seen::Stray;
    }
    match p[24] {
        KIND_ORIGINAL if be32(4) != id => Seen::Partner,
        KIND_ORIGINAL | KIND_ECHO if be32(4) == id => {
            let mut t = [0u8; 8];
            t.copy_from_slice(&p[16..24]);
            let sent = u64::from_be_bytes(t);
            let now = base.elapsed().as_nanos() as u64;
            Seen::Echo {
                rtt_ns: now.saturating_sub(sent),
            }
        }
        _ => Seen::Stray,
    }
}

/// The application data of one packet from the server: ChannelData or a Data indication.
fn data_of(packet: &[u8]) -> Option<&[u8]> {
    match packet.first()? {
        0x40..=0x7F => ChannelData::decode(packet).ok().map(|c| c.data),
        0..=3 => {
            let m = Message::decode(packet).ok()?;
            if m.method() == Method::DATA && m.class() == Class::Indication {
                m.get(attr::DATA)
            } else {
                None
            }
        }
        _ => None,
    }
}

struct Worker<'a> {
    flows: &'a mut [Flow],
    plan: &'a Plan,
    base: Instant,
    start: Instant,
    stats: Stats,
    live: &'a Live,
    published: (u64, u64, u64, u64),
}

impl Worker<'_> {
    fn on_packet(&mut self, i: usize, packet: &[u8]) -> io::Result<()> {
        let Some(data) = data_of(packet) else {
            self.stats.stray += 1;
            return Ok(());
        };
        let f = &mut self.flows[i];
        match classify(data, self.plan.epoch, f.id, self.base) {
            Seen::Echo { rtt_ns } => {
                let rtt = rtt_ns / 1000;
                self.stats.record_rtt(rtt, f.prev_rtt);
                f.prev_rtt = Some(rtt);
                self.stats.received += 1;
                self.stats.received_bytes += data.len() as u64;
                self.stats.last_recv = self.start.elapsed();
            }
            Seen::Partner => {
                let mut echo = data.to_vec();
                echo[24] = KIND_ECHO;
                if f.send_payload(&echo)? {
                    self.stats.echoes_sent += 1;
                }
            }
            Seen::Stray => self.stats.stray += 1,
        }
        Ok(())
    }

    /// Read what flow `i`'s socket holds (at most a budget of packets, level-triggered epoll
    /// brings us back for the rest).
    fn drain(&mut self, i: usize, buf: &mut [u8]) -> io::Result<()> {
        for _ in 0..64 {
            let n = match &mut self.flows[i].conn {
                Conn::Udp(s) => s.recv(buf),
                Conn::Tcp(s) => s.read(buf),
            };
            let n = match n {
                Ok(0) if self.flows[i].conn.is_tcp() => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "server closed a TCP connection",
                    ))
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if self.flows[i].conn.is_tcp() {
                self.flows[i].rx.extend_from_slice(&buf[..n]);
                let mut rx = std::mem::take(&mut self.flows[i].rx);
                let mut at = 0;
                while let Ok(Some(len)) = framing::frame_len(&rx[at..]) {
                    self.on_packet(i, &rx[at..at + len])?;
                    at += len;
                }
                rx.drain(..at);
                if framing::frame_len(&rx).is_err() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "unframeable TCP stream",
                    ));
                }
                self.flows[i].rx = rx;
            } else {
                self.on_packet(i, &buf[..n])?;
            }
        }
        Ok(())
    }

    fn publish(&mut self) {
        let s = &self.stats;
        let now = (s.sent, s.received, s.sent_bytes, s.received_bytes);
        let p = self.published;
        self.live.sent.fetch_add(now.0 - p.0, Ordering::Relaxed);
        self.live.received.fetch_add(now.1 - p.1, Ordering::Relaxed);
        self.live
            .sent_bytes
            .fetch_add(now.2 - p.2, Ordering::Relaxed);
        self.live
            .received_bytes
            .fetch_add(now.3 - p.3, Ordering::Relaxed);
        self.published = now;
    }

    fn run(&mut self) -> io::Result<()> {
        let ep = Epoll::new()?;
        for (i, f) in self.flows.iter().enumerate() {
            ep.add(&f.conn, i as u64, Trigger::Level)?;
        }
        let n = self.flows.len().max(1) as u32;
        let interval = self.plan.interval;
        for (i, f) in self.flows.iter_mut().enumerate() {
            f.sent = 0;
            f.prev_rtt = None;
            // Spread the flows' first sends over one interval.
            f.next_due = self.start + interval * (i as u32) / n;
        }
        let stop_at = self.plan.duration.map(|d| self.start + d);
        let mut linger_until: Option<Instant> = None;
        let mut events = Events::with_capacity(256);
        let mut buf = vec![0u8; 65536];
        loop {
            let now = Instant::now();
            if linger_until.is_none() {
                let stop = stop_at.is_some_and(|t| now >= t);
                let mut all_done = true;
                if !stop {
                    for k in 0..self.flows.len() {
                        let f = &mut self.flows[k];
                        let mut burst = 0;
                        while f.sent < self.plan.messages {
                            if interval.is_zero() {
                                if burst >= FLOOD_BURST {
                                    break;
                                }
                            } else if f.next_due > now || burst >= MAX_BURST {
                                break;
                            }
                            if !f.send_next(self.plan.epoch, self.plan.length, self.base)? {
                                break;
                            }
                            f.sent += 1;
                            f.next_due += interval;
                            burst += 1;
                            self.stats.sent += 1;
                            self.stats.sent_bytes += self.plan.length as u64;
                        }
                        if f.sent < self.plan.messages {
                            all_done = false;
                        }
                    }
                    self.stats.last_send = self.start.elapsed();
                }
                if stop || all_done {
                    linger_until = Some(now + self.plan.linger);
                }
            } else {
                for f in self.flows.iter_mut() {
                    f.flush()?;
                }
            }
            let timeout_ms = match linger_until {
                Some(t) => {
                    if self.stats.received >= self.stats.sent || now >= t {
                        break;
                    }
                    (t - now).as_millis().clamp(1, 10) as i32
                }
                None if interval.is_zero() => 0,
                None => {
                    let next = self
                        .flows
                        .iter()
                        .filter(|f| f.sent < self.plan.messages)
                        .map(|f| f.next_due)
                        .min()
                        .unwrap_or(now);
                    let wait = next.saturating_duration_since(now);
                    // epoll counts whole milliseconds: round up, never sleep past 10 ms.
                    (wait.as_micros().div_ceil(1000)).min(10) as i32
                }
            };
            ep.wait(&mut events, timeout_ms)?;
            for i in events.tokens() {
                self.drain(i as usize, &mut buf)?;
            }
            self.publish();
        }
        self.publish();
        Ok(())
    }
}

/// Run one data phase over `flows` and return what was measured. `base` is the clock the
/// timestamps in payloads count from.
pub fn run(flows: &mut [Flow], plan: &Plan, base: Instant, live: &Live) -> io::Result<Stats> {
    let threads = plan.threads.clamp(1, flows.len().max(1));
    let unit = if plan.pairs { 2 } else { 1 };
    let units = flows.len().div_ceil(unit);
    let per = units.div_ceil(threads) * unit;
    let start = Instant::now();
    let results: Vec<io::Result<Stats>> = std::thread::scope(|sc| {
        let handles: Vec<_> = flows
            .chunks_mut(per.max(1))
            .map(|chunk| {
                sc.spawn(move || {
                    let mut w = Worker {
                        flows: chunk,
                        plan,
                        base,
                        start,
                        stats: Stats::default(),
                        live,
                        published: (0, 0, 0, 0),
                    };
                    w.run().map(|()| w.stats)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(io::Error::other("worker panicked")))
            })
            .collect()
    });
    let mut total = Stats::default();
    for r in results {
        total.merge(&r?);
    }
    Ok(total)
}
