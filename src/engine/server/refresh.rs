//! Refresh (RFC 8656 §7.3).

use super::*;

impl Server {
    /// Refresh (RFC 8656 §7.3): a new lifetime, or the end of the allocation with lifetime 0.
    pub(super) fn handle_refresh(&mut self, now: Instant, five: FiveTuple, m: &Message) -> Handled {
        let (id, auth) = self.allocation_for_request(now, five, m)?;
        let sign = self.signed(m, &auth);
        let Some(a) = self.get(id) else {
            return Err(Stop::Nothing);
        };
        // RFC 8656 §7.3: a REQUESTED-ADDRESS-FAMILY other than the allocation's is 443.
        if let Some(fam) = m
            .get(attr::REQUESTED_ADDRESS_FAMILY)
            .and_then(attr::read_address_family)
        {
            let family = |r: RelayAddr| {
                if r.is_ipv6() {
                    attr::FAMILY_IPV6
                } else {
                    attr::FAMILY_IPV4
                }
            };
            if fam != family(a.relay()) && a.second_relay().map(family) != Some(fam) {
                return Err(Reply::error(five, m, 443, &sign).into());
            }
        }
        let requested = m.get(attr::LIFETIME).and_then(attr::read_u32);
        if requested == Some(0) {
            self.counters.allocations_deleted += 1;
            self.free(id, "deleted by client (Refresh lifetime 0)");
            return Ok(Reply::success(five, m, &sign).with(|b| {
                b.attr_u32(attr::LIFETIME, 0);
            }));
        }
        let lifetime = self.lifetime(m);
        let expires = now + Duration::from_secs(u64::from(lifetime));
        if let Some(a) = self.get_mut(id) {
            a.refresh(expires);
        }
        self.schedule(id);
        self.fastpath_sync(id);
        Ok(Reply::success(five, m, &sign).with(|b| {
            b.attr_u32(attr::LIFETIME, lifetime);
        }))
    }

    /// RFC 8656 §7.2 lifetime rule: min(requested, max), but never below the default.
    pub(super) fn lifetime(&self, m: &Message) -> u32 {
        let c = &self.config;
        match m.get(attr::LIFETIME).and_then(attr::read_u32) {
            Some(req) => req
                .min(c.max_lifetime)
                .max(c.default_lifetime.min(c.max_lifetime)),
            None => c.default_lifetime.min(c.max_lifetime),
        }
    }
}
