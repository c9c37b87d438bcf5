//! The session log lines. One line when an allocation starts and coturn's three when it ends, with
//! its totals, in coturn's wording (`session ...: usage: realm=<..>, username=<..>, rp=.., rb=.., sp=.., sb=..`,
//! `peer usage: ...`, `closed (2nd stage), user <..> realm <..> ..., reason: ..`) so existing log
//! parsers keep working. The session id is the relay address (unique across workers while the
//! allocation lives). Usernames and client addresses are personal data: written only when the
//! debug level is on (`-v`), `-` otherwise. No password, key, secret or token is ever logged.

use super::allocation::Allocation;

/// `name` when the debug level is on, else `-`.
fn personal(name: &str) -> &str {
    if tracing::enabled!(tracing::Level::DEBUG) {
        name
    } else {
        "-"
    }
}

/// The line logged when an allocation becomes active (coturn: `session ...: new, realm=<..>,
/// username=<..>, lifetime=..`).
pub fn log_allocation_started(realm: &str, a: &Allocation, lifetime: u32) {
    let client = a.five_tuple().client.to_string();
    tracing::info!(
        "session {}: new, realm=<{realm}>, username=<{}>, lifetime={lifetime}, transport={}, remote {}",
        a.relay(),
        personal(a.username()),
        a.five_tuple().transport.as_str(),
        personal(&client),
    );
}

/// The lines logged when an active allocation ends, with its totals (payload bytes).
pub fn log_allocation_ended(realm: &str, a: &Allocation, reason: &str) {
    let user = personal(a.username());
    let s = a.stats();
    tracing::info!(
        "session {}: usage: realm=<{realm}>, username=<{user}>, rp={}, rb={}, sp={}, sb={}",
        a.relay(),
        s.client_rcv.packets,
        s.client_rcv.bytes,
        s.client_sent.packets,
        s.client_sent.bytes,
    );
    tracing::info!(
        "session {}: peer usage: realm=<{realm}>, username=<{user}>, rp={}, rb={}, sp={}, sb={}",
        a.relay(),
        s.peer_rcv.packets,
        s.peer_rcv.bytes,
        s.peer_sent.packets,
        s.peer_sent.bytes,
    );
    tracing::info!(
        "session {}: closed (2nd stage), user <{user}> realm <{realm}> origin <>, local {}, remote {}, reason: {reason}, dropped {} packets",
        a.relay(),
        a.five_tuple().server,
        personal(&a.five_tuple().client.to_string()),
        s.dropped.packets,
    );
}
