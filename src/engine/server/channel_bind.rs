//! ChannelBind (RFC 8656 §11.2).

use super::*;

impl Server {
    /// ChannelBind (RFC 8656 §11.2): binds a channel number to a peer and installs or refreshes
    /// the peer's permission with it.
    pub(super) fn handle_channel_bind(
        &mut self,
        now: Instant,
        five: FiveTuple,
        m: &Message,
    ) -> Handled {
        let (id, auth) = self.allocation_for_request(now, five, m)?;
        let sign = self.signed(m, &auth);
        let refuse = |code| Err(Stop::Error(Reply::error(five, m, code, &sign)));
        let number = m
            .get(attr::CHANNEL_NUMBER)
            .and_then(attr::read_channel_number);
        let peer = m.get_xor_address(attr::XOR_PEER_ADDRESS);
        // A number outside the range a client may bind is a 400 too.
        let (Some(number), Some(peer)) = (number.and_then(ChannelNumber::new), peer) else {
            return refuse(400);
        };
        let peer = PeerAddr::new(peer);
        if let Some(code) = self.peer_error(id, &peer.addr()) {
            return refuse(code);
        }
        let (max_ch, max_perm) = (self.config.max_channels, self.config.max_permissions);
        let ch_expires = now + Duration::from_secs(u64::from(self.config.channel_lifetime));
        let perm_expires = now + Duration::from_secs(u64::from(self.config.permission_lifetime));
        let Some(a) = self.get_mut(id) else {
            return Err(Stop::Nothing);
        };
        // A TCP allocation has no channels (RFC 6062 §5).
        let Some((channels, permissions)) = a.channels_and_permissions_mut() else {
            return refuse(400);
        };
        match channels.check(number, peer, now, max_ch) {
            Ok(()) => {}
            Err(BindConflict::TooMany) => return refuse(508),
            Err(_) => return refuse(400),
        }
        if !permissions.room_for(&[peer.ip()], now, max_perm) {
            return refuse(508);
        }
        channels.bind(number, peer, ch_expires);
        permissions.install(peer.ip(), perm_expires);
        self.fastpath_sync(id);
        Ok(Reply::success(five, m, &sign))
    }
}
