//! What a load run measured, and the three ways it is printed: the summary lines
//! `turnutils_uclient` prints (so scripts that parse them keep working), a table for people, and
//! one JSON object for machines.
//!
//! RTT is the time from a message's send timestamp (carried in its payload) to the arrival of its
//! echo, in microseconds. Jitter is, per client, the absolute difference between consecutive RTTs.

use std::fmt::Write as _;
use std::time::Duration;

/// The version of [`Report::json`]'s object: raised when a key is renamed, removed or changes
/// meaning (adding keys keeps it), so scripts reading `--json` can check what they parse.
pub const JSON_SCHEMA_VERSION: u32 = 1;

use hdrhistogram::Histogram;

/// Counters and histograms of one worker thread, merged into one at the end.
#[derive(Debug, Clone)]
pub struct Stats {
    pub sent: u64,
    pub received: u64,
    pub sent_bytes: u64,
    pub received_bytes: u64,
    /// Sends the kernel refused (kept for the uclient line; the harness retries instead).
    pub send_dropped: u64,
    /// Echoes of a partner's messages sent back (`-y`).
    pub echoes_sent: u64,
    /// Packets that were not one of our messages of this run.
    pub stray: u64,
    pub rtt_us: Histogram<u64>,
    pub jitter_us: Histogram<u64>,
    rtt_sum_us: u64,
    jitter_sum_us: u64,
    /// Time from the start of the data phase to the last send and to the last receive.
    pub last_send: Duration,
    pub last_recv: Duration,
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            sent: 0,
            received: 0,
            sent_bytes: 0,
            received_bytes: 0,
            send_dropped: 0,
            echoes_sent: 0,
            stray: 0,
            rtt_us: hist(),
            jitter_us: hist(),
            rtt_sum_us: 0,
            jitter_sum_us: 0,
            last_send: Duration::ZERO,
            last_recv: Duration::ZERO,
        }
    }
}

impl Stats {
    /// One echo came back after `rtt_us`; `prev_rtt_us` is the client's previous RTT.
    pub fn record_rtt(&mut self, rtt_us: u64, prev_rtt_us: Option<u64>) {
        let rtt_us = rtt_us.max(1);
        self.rtt_us.saturating_record(rtt_us);
        self.rtt_sum_us += rtt_us;
        if let Some(p) = prev_rtt_us {
            let j = p.abs_diff(rtt_us);
            self.jitter_us.saturating_record(j.max(1));
            self.jitter_sum_us += j;
        }
    }

    pub fn merge(&mut self, o: &Stats) {
        self.sent += o.sent;
        self.received += o.received;
        self.sent_bytes += o.sent_bytes;
        self.received_bytes += o.received_bytes;
        self.send_dropped += o.send_dropped;
        self.echoes_sent += o.echoes_sent;
        self.stray += o.stray;
        // Same bounds on both sides: add cannot fail.
        let _ = self.rtt_us.add(&o.rtt_us);
        let _ = self.jitter_us.add(&o.jitter_us);
        self.rtt_sum_us += o.rtt_sum_us;
        self.jitter_sum_us += o.jitter_sum_us;
        self.last_send = self.last_send.max(o.last_send);
        self.last_recv = self.last_recv.max(o.last_recv);
    }

    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.received)
    }

    /// Lost messages in percent of those sent.
    pub fn loss_pct(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            self.lost() as f64 * 100.0 / self.sent as f64
        }
    }

    pub fn rtt_mean_us(&self) -> f64 {
        if self.rtt_us.is_empty() {
            0.0
        } else {
            self.rtt_sum_us as f64 / self.rtt_us.len() as f64
        }
    }

    pub fn jitter_mean_us(&self) -> f64 {
        if self.jitter_us.is_empty() {
            0.0
        } else {
            self.jitter_sum_us as f64 / self.jitter_us.len() as f64
        }
    }

    /// Messages sent per second over the sending window.
    pub fn send_rate(&self) -> f64 {
        per_sec(self.sent, self.last_send)
    }

    /// Echoes received per second over the window until the last one.
    pub fn recv_rate(&self) -> f64 {
        per_sec(self.received, self.last_recv)
    }
}

fn per_sec(n: u64, d: Duration) -> f64 {
    let s = d.as_secs_f64();
    if s <= 0.0 {
        0.0
    } else {
        n as f64 / s
    }
}

fn pct(h: &Histogram<u64>, q: f64) -> u64 {
    if h.is_empty() {
        0
    } else {
        h.value_at_quantile(q)
    }
}

/// A finished run, with what is needed to print it.
#[derive(Debug, Clone)]
pub struct Report {
    pub clients: usize,
    pub length: usize,
    /// "udp channel", "tcp send", ...
    pub mode: String,
    /// Offered rate in messages/s over all clients, when paced.
    pub offered_rate: Option<f64>,
    pub connect_time: Duration,
    /// Allocations made per second during setup.
    pub allocations_per_s: f64,
    pub setup_failures: usize,
    pub transmit_time: Duration,
    pub stats: Stats,
}

impl Report {
    /// The closing lines of `turnutils_uclient`, formats copied from coturn 4.6 (each prefixed
    /// with `SECONDS: : ` as uclient's logger does).
    pub fn uclient_lines(&self, secs: u64) -> String {
        let s = &self.stats;
        let mut o = String::new();
        let p = format!("{secs}: : ");
        let _ = writeln!(
            o,
            "{p}start_mclient: tot_send_msgs={}, tot_recv_msgs={}",
            s.sent, s.received
        );
        let _ = writeln!(
            o,
            "{p}start_mclient: tot_send_bytes ~ {}, tot_recv_bytes ~ {}",
            s.sent_bytes, s.received_bytes
        );
        let _ = writeln!(
            o,
            "{p}Total transmit time is {}",
            self.transmit_time.as_secs()
        );
        let dropped_pct = if s.sent == 0 {
            0.0
        } else {
            s.send_dropped as f64 * 100.0 / s.sent as f64
        };
        let _ = writeln!(
            o,
            "{p}Total lost packets {} ({:.6}%), total send dropped {} ({:.6}%)",
            s.lost(),
            s.loss_pct(),
            s.send_dropped,
            dropped_pct
        );
        let (rmin, rmax) = if s.rtt_us.is_empty() {
            (0, 0)
        } else {
            (s.rtt_us.min() / 1000, s.rtt_us.max() / 1000)
        };
        let _ = writeln!(
            o,
            "{p}Average round trip delay {:.6} ms; min = {rmin} ms, max = {rmax} ms",
            s.rtt_mean_us() / 1000.0
        );
        let (jmin, jmax) = if s.jitter_us.is_empty() {
            (0, 0)
        } else {
            (s.jitter_us.min() / 1000, s.jitter_us.max() / 1000)
        };
        let _ = writeln!(
            o,
            "{p}Average jitter {:.6} ms; min = {jmin} ms, max = {jmax} ms",
            s.jitter_mean_us() / 1000.0
        );
        o
    }

    /// A table for people.
    pub fn table(&self) -> String {
        let s = &self.stats;
        let mut o = String::new();
        let _ = writeln!(o, "vigi-bench summary");
        let _ = writeln!(
            o,
            "  clients           {} ({}, {} B payload)",
            self.clients, self.mode, self.length
        );
        let _ = writeln!(
            o,
            "  setup             {:.3} s, {:.0} allocations/s, {} failed",
            self.connect_time.as_secs_f64(),
            self.allocations_per_s,
            self.setup_failures
        );
        if let Some(r) = self.offered_rate {
            let _ = writeln!(o, "  offered           {r:.0} msg/s");
        }
        let _ = writeln!(
            o,
            "  sent / echoed     {} / {}  ({:.0} / {:.0} msg/s)",
            s.sent,
            s.received,
            s.send_rate(),
            s.recv_rate()
        );
        let _ = writeln!(
            o,
            "  relayed           {:.0} packets/s (client->peer and peer->client)",
            2.0 * s.recv_rate()
        );
        let _ = writeln!(
            o,
            "  loss              {} ({:.3} %)",
            s.lost(),
            s.loss_pct()
        );
        let _ = writeln!(
            o,
            "  RTT us            min {} p50 {} p90 {} p99 {} p99.9 {} max {} mean {:.0}",
            if s.rtt_us.is_empty() {
                0
            } else {
                s.rtt_us.min()
            },
            pct(&s.rtt_us, 0.5),
            pct(&s.rtt_us, 0.9),
            pct(&s.rtt_us, 0.99),
            pct(&s.rtt_us, 0.999),
            s.rtt_us.max(),
            s.rtt_mean_us()
        );
        let _ = writeln!(
            o,
            "  jitter us         p50 {} p90 {} p99 {} max {} mean {:.0}",
            pct(&s.jitter_us, 0.5),
            pct(&s.jitter_us, 0.9),
            pct(&s.jitter_us, 0.99),
            s.jitter_us.max(),
            s.jitter_mean_us()
        );
        if s.stray > 0 || s.echoes_sent > 0 {
            let _ = writeln!(
                o,
                "  other             {} stray packets, {} echoes sent for partners",
                s.stray, s.echoes_sent
            );
        }
        o
    }

    /// One JSON object (no trailing newline).
    /// One JSON object; its first key is `schema_version` ([`JSON_SCHEMA_VERSION`]).
    pub fn json(&self) -> String {
        let s = &self.stats;
        let h = |h: &Histogram<u64>, mean: f64| {
            format!(
                "{{\"min\":{},\"p50\":{},\"p90\":{},\"p99\":{},\"p999\":{},\"max\":{},\"mean\":{:.1}}}",
                if h.is_empty() { 0 } else { h.min() },
                pct(h, 0.5),
                pct(h, 0.9),
                pct(h, 0.99),
                pct(h, 0.999),
                h.max(),
                mean
            )
        };
        format!(
            "{{\"schema_version\":{JSON_SCHEMA_VERSION},\"clients\":{},\"mode\":\"{}\",\"length\":{},\"offered_rate\":{},\"connect_s\":{:.6},\
             \"allocations_per_s\":{:.1},\"setup_failures\":{},\"transmit_s\":{:.6},\"sent\":{},\
             \"received\":{},\"lost\":{},\"loss_pct\":{:.6},\"send_dropped\":{},\"stray\":{},\
             \"send_rate\":{:.1},\"recv_rate\":{:.1},\"relay_pps\":{:.1},\"rtt_p50_us\":{},\"rtt_p99_us\":{},\
             \"rtt_us\":{},\"jitter_us\":{}}}",
            self.clients,
            self.mode,
            self.length,
            self.offered_rate
                .map_or("null".to_owned(), |r| format!("{r:.1}")),
            self.connect_time.as_secs_f64(),
            self.allocations_per_s,
            self.setup_failures,
            self.transmit_time.as_secs_f64(),
            s.sent,
            s.received,
            s.lost(),
            s.loss_pct(),
            s.send_dropped,
            s.stray,
            s.send_rate(),
            s.recv_rate(),
            2.0 * s.recv_rate(),
            pct(&s.rtt_us, 0.5),
            pct(&s.rtt_us, 0.99),
            h(&s.rtt_us, s.rtt_mean_us()),
            h(&s.jitter_us, s.jitter_mean_us())
        )
    }
}

/// The once-a-second progress line of `turnutils_uclient` (compare-coturn.sh derives rates from
/// these).
pub fn uclient_progress_line(
    secs: u64,
    clients: usize,
    s: (u64, u64),
    bytes: (u64, u64),
) -> String {
    format!(
        "{secs}: : start_mclient: msz={clients}, tot_send_msgs={}, tot_recv_msgs={}, tot_send_bytes ~ {}, tot_recv_bytes ~ {}",
        s.0, s.1, bytes.0, bytes.1
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_and_lines() {
        let mut s = Stats {
            sent: 200,
            received: 199,
            sent_bytes: 20000,
            received_bytes: 19900,
            ..Default::default()
        };
        s.record_rtt(1500, None);
        s.record_rtt(2500, Some(1500));
        let r = Report {
            clients: 2,
            length: 100,
            mode: "udp channel".into(),
            offered_rate: None,
            connect_time: Duration::from_millis(10),
            allocations_per_s: 200.0,
            setup_failures: 0,
            transmit_time: Duration::from_secs(3),
            stats: s,
        };
        let l = r.uclient_lines(4);
        assert!(l.contains("4: : start_mclient: tot_send_msgs=200, tot_recv_msgs=199\n"));
        assert!(l.contains("Total lost packets 1 (0.500000%), total send dropped 0 (0.000000%)"));
        assert!(l.contains("Average round trip delay 2.000000 ms; min = 1 ms, max = 2 ms"));
        assert!(l.contains("Average jitter 1.000000 ms; min = 1 ms, max = 1 ms"));
        assert!(r.json().starts_with("{\"schema_version\":1,\"clients\":2,"));
        assert!(r.table().contains("loss              1 (0.500 %)"));
    }
}
