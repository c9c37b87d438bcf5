//! The pieces of the Prometheus text exposition format (version 0.0.4) the rendering writes:
//! a family's HELP and TYPE lines, one sample, label values escaped.

use std::fmt::{Display, Write as _};

use crate::engine::stats::{AllocationStats, Flow};

/// `# HELP` and `# TYPE` of a family.
pub fn header(o: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// One sample: `name value` or `name{labels} value` (`labels` already escaped).
pub fn sample(o: &mut String, name: &str, labels: &str, v: impl Display) {
    if labels.is_empty() {
        let _ = writeln!(o, "{name} {v}");
    } else {
        let _ = writeln!(o, "{name}{{{labels}}} {v}");
    }
}

/// A family whose series differ by one label: `name{key="value"} v` for each `(value, v)`.
pub fn family<K: Display, V: Display>(
    o: &mut String,
    (name, help, kind): (&str, &str, &str),
    key: &str,
    rows: impl IntoIterator<Item = (K, V)>,
) {
    header(o, name, help, kind);
    for (k, v) in rows {
        let _ = writeln!(o, "{name}{{{key}=\"{k}\"}} {v}");
    }
}

/// A family of one unlabelled counter.
pub fn counter(o: &mut String, name: &str, help: &str, v: u64) {
    header(o, name, help, "counter");
    sample(o, name, "", v);
}

/// A family of one unlabelled gauge.
pub fn gauge(o: &mut String, name: &str, help: &str, v: f64) {
    header(o, name, help, "gauge");
    sample(o, name, "", v);
}

/// A histogram's series for one label set: cumulative `_bucket`s over `bounds` then `+Inf`,
/// `_sum`, `_count`. `counts` are per bucket (not cumulative), one more than `bounds`.
pub fn histogram<B: Display>(
    o: &mut String,
    name: &str,
    labels: &str,
    bounds: impl IntoIterator<Item = B>,
    counts: &[u64],
    sum: impl Display,
) {
    let sep = if labels.is_empty() { "" } else { "," };
    let mut acc = 0;
    let mut counts = counts.iter();
    for (le, n) in bounds.into_iter().zip(counts.by_ref()) {
        acc += n;
        let _ = writeln!(o, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {acc}");
    }
    acc += counts.sum::<u64>();
    let _ = writeln!(o, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {acc}");
    sample(o, &format!("{name}_sum"), labels, sum);
    sample(o, &format!("{name}_count"), labels, acc);
}

/// `{prefix}_{rcvp,rcvb,sentp,sentb}` and `{prefix}_peer_*`, one sample per label set.
pub fn traffic_family(
    o: &mut String,
    prefix: &str,
    what: &str,
    rows: &[(String, AllocationStats)],
) {
    type Pick = fn(&AllocationStats) -> Flow;
    let sides: [(&str, &str, Pick, Pick); 2] = [
        ("", "", |s| s.client_rcv, |s| s.client_sent),
        ("_peer", "peer ", |s| s.peer_rcv, |s| s.peer_sent),
    ];
    for (side, side_help, rcv, sent) in sides {
        for (suffix, help, pick) in [
            ("rcvp", "received packets", rcv as Pick),
            ("rcvb", "received bytes", rcv),
            ("sentp", "sent packets", sent),
            ("sentb", "sent bytes", sent),
        ] {
            let name = format!("{prefix}{side}_{suffix}");
            header(
                o,
                &name,
                &format!("Represents {what}sessions {side_help}{help} (live)"),
                "counter",
            );
            for (labels, s) in rows {
                let f = pick(s);
                let v = if suffix.ends_with('p') {
                    f.packets
                } else {
                    f.bytes
                };
                sample(o, &name, labels, v);
            }
        }
    }
}

/// A label value with `\`, `"` and newlines escaped, as the text format requires.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn histograms_are_cumulative() {
        let mut o = String::new();
        histogram(&mut o, "h", "w=\"0\"", [1, 2], &[1, 0, 2], 7);
        assert_eq!(
            o,
            "h_bucket{w=\"0\",le=\"1\"} 1\nh_bucket{w=\"0\",le=\"2\"} 1\n\
             h_bucket{w=\"0\",le=\"+Inf\"} 3\nh_sum{w=\"0\"} 7\nh_count{w=\"0\"} 3\n"
        );
    }
}
