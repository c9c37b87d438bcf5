//! The fast-path outbox (issue 18): what the engine tells the worker to mirror, and when.

use super::*;
use crate::engine::server::fastpath::{FastPathCommand, PermissionView};

fn drain_fastpath(h: &mut H) -> Vec<FastPathCommand> {
    std::iter::from_fn(|| h.s.poll_fastpath()).collect()
}

#[test]
fn nothing_is_queued_until_the_fast_path_is_enabled() {
    let (mut h, mut c) = allocated(config());
    c.channel_bind(&mut h, 0x4000, peer()).assert_ok();
    assert_eq!(drain_fastpath(&mut h), vec![]);
}

#[test]
fn bind_refresh_and_delete_are_queued_and_the_view_follows_the_deadlines() {
    let (mut h, mut c) = allocated(config());
    h.s.enable_fastpath();
    let id = h.alloc_id(c.five);
    c.channel_bind(&mut h, 0x4000, peer()).assert_ok();
    assert_eq!(drain_fastpath(&mut h), vec![FastPathCommand::Sync(id)]);
    let view =
        h.s.fastpath_view(id, h.now)
            .expect("an uncapped UDP allocation");
    assert_eq!((view.client, view.local), (c.five.client, c.five.server));
    assert_eq!(view.channels.len(), 1);
    let ch = view.channels[0];
    assert_eq!(
        (ch.number.get(), ch.peer.addr(), ch.relay.addr()),
        (0x4000, peer(), h.relay_of(c.five))
    );
    // The permission (300 s) ends before the channel (600 s): the entry ends with it.
    assert_eq!(ch.expires, h.now + Duration::from_secs(300));
    c.refresh(&mut h, Some(1200)).assert_ok();
    assert_eq!(drain_fastpath(&mut h), vec![FastPathCommand::Sync(id)]);
    c.refresh(&mut h, Some(0)).assert_ok();
    assert_eq!(drain_fastpath(&mut h), vec![FastPathCommand::Remove(id)]);
    assert_eq!(h.s.fastpath_view(id, h.now), None);
}

#[test]
fn expiry_and_an_operator_kill_remove() {
    let (mut h, mut c) = allocated(config());
    h.s.enable_fastpath();
    let id = h.alloc_id(c.five);
    c.channel_bind(&mut h, 0x4000, peer()).assert_ok();
    let _ = drain_fastpath(&mut h);
    assert!(h.s.kill(id));
    assert_eq!(drain_fastpath(&mut h), vec![FastPathCommand::Remove(id)]);
    let (mut h, c) = allocated(config());
    h.s.enable_fastpath();
    let id = h.alloc_id(c.five);
    h.at(600);
    assert_eq!(drain_fastpath(&mut h), vec![FastPathCommand::Remove(id)]);
}

#[test]
fn a_bandwidth_capped_allocation_is_never_offered_to_the_fast_path() {
    let mut cfg = config();
    cfg.max_bps = 1000;
    let (mut h, mut c) = allocated(cfg);
    h.s.enable_fastpath();
    let id = h.alloc_id(c.five);
    c.channel_bind(&mut h, 0x4000, peer()).assert_ok();
    assert_eq!(drain_fastpath(&mut h), vec![FastPathCommand::Sync(id)]);
    assert_eq!(h.s.fastpath_view(id, h.now), None, "stays on the user path");
}

#[test]
fn permissions_are_queued_and_in_the_view_with_their_relay_and_deadline_until_they_expire() {
    let (mut h, mut c) = allocated(config());
    h.s.enable_fastpath();
    let id = h.alloc_id(c.five);
    c.permit(&mut h, peer()).assert_ok();
    assert_eq!(drain_fastpath(&mut h), vec![FastPathCommand::Sync(id)]);
    let view = h.s.fastpath_view(id, h.now).unwrap();
    assert_eq!(view.channels, vec![]);
    assert_eq!(
        view.permissions,
        vec![PermissionView {
            peer: peer().ip(),
            relay: RelayAddr::new(h.relay_of(c.five)),
            expires: h.now + Duration::from_secs(300),
        }]
    );
    // Refreshed 200 s later: queued again, and the view carries the new deadline.
    h.at(200);
    c.permit(&mut h, peer()).assert_ok();
    assert_eq!(drain_fastpath(&mut h), vec![FastPathCommand::Sync(id)]);
    let view = h.s.fastpath_view(id, h.now).unwrap();
    assert_eq!(
        view.permissions[0].expires,
        h.now + Duration::from_secs(300)
    );
    // The allocation (600 s) ends before a permission refreshed late: the entry ends with it.
    h.at(500);
    c.permit(&mut h, peer()).assert_ok();
    let view = h.s.fastpath_view(id, h.now).unwrap();
    assert_eq!(view.permissions[0].expires, h.t0 + Duration::from_secs(600));
    // Expired: no longer in the view (the kernel stops at the entry's deadline by itself).
    h.at(590);
    c.refresh(&mut h, Some(600)).assert_ok();
    h.at(801);
    let view = h.s.fastpath_view(id, h.now).unwrap();
    assert_eq!(view.permissions, vec![]);
}
