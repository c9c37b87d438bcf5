// SPDX-License-Identifier: MIT OR Apache-2.0
//
// vigi-turn's kernel fast path (issue 18): an XDP program that relays UDP ChannelData
// (RFC 8656 §12) and Send/Data indications (RFC 8656 §10, §11) for allocations whose state user
// space mirrored into the maps below.
//
//   client -> server:  ChannelData on a bound channel  -> UDP from the relay address to the peer
//   client -> server:  Send indication, permission     -> DATA's value from the relay address
//   peer   -> relay:   UDP from a peer with a channel  -> ChannelData to the client
//   peer   -> relay:   UDP from a permitted peer IP    -> Data indication to the client
//                      (no channel mirrored for that peer transport address)
//
// Each within one address family, or across for a dual allocation (out_v4/out_v6 write an IP
// header of the other size).
//
// Headers are rewritten in place (the ChannelData header is cut or written in the 4 bytes of
// headroom that bpf_xdp_adjust_head moves), the UDP checksum is updated incrementally
// (RFC 1624) and the 20-byte IPv4 header checksum is recomputed. Anything this program does not
// fully understand -- a map miss, an IP fragment, IPv4 options, IPv6 extension headers, a frame
// whose lengths do not agree exactly, an IPv4 datagram without a UDP checksum bound for IPv6, a
// route the FIB cannot give -- returns XDP_PASS, so the user-space path stays the reference and the fallback.
// Nothing here ever returns XDP_DROP.
//
// Per allocation (a slot user space assigns), per-CPU counters of relayed packets and payload
// bytes are kept for user space to fold into its per-allocation stats.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10
#define LOOPBACK_IFINDEX 1
#define RELAY_TTL 64

// One transport address as the maps hold it: `addr` in network order (IPv4 in its first four
// bytes, the rest zero), `port` in network order, `family` 4 or 6. 20 bytes, no hidden padding.
struct endpoint {
	__u8 addr[16];
	__be16 port;
	__u8 family;
	__u8 pad;
};

// client -> peer: a ChannelData message from `client` to the server's listening address
// `local` on channel `channel` (host order).
struct chan_key {
	struct endpoint client;
	struct endpoint local;
	__u16 channel;
	__u16 pad;
};

// `expires_ns`: CLOCK_MONOTONIC past which the entry is not used: user space sets it to the
// earliest of the channel's, its permission's and the allocation's deadlines, and the program
// stops using it EXPIRY_MARGIN_NS before (see `expired`), so an entry lapses no later than the
// engine would refuse it, with no timer.
struct chan_val {
	struct endpoint relay;
	struct endpoint peer;
	__u32 slot;
	__u32 pad;
	__u64 expires_ns;
};

// peer -> client (PEER_IPS): a UDP datagram from the IP of `peer` (`peer.port` 0: the entry
// covers every port of that IP) to the relayed address `relay`.
struct peer_key {
	struct endpoint peer;
	struct endpoint relay;
};

// client -> peer Send indications: from `client` to `local`, for a peer IP (`peer.port` 0).
struct send_key {
	struct endpoint client;
	struct endpoint local;
	struct endpoint peer;
};

// `expires_ns`: the earlier of the permission's and the allocation's deadlines.
struct send_val {
	struct endpoint relay;
	__u32 slot;
	__u64 expires_ns;
};

// peer -> client: where a datagram from a permitted peer IP goes (a Data indication, or ChannelData
// from a port with a channel: the same client and allocation) and, in `expires_ns`, the earlier of
// the permission's and the allocation's deadlines.
struct data_val {
	struct endpoint client;
	struct endpoint local;
	__u32 slot;
	__u32 pad;
	__u64 expires_ns;
};

// peer -> client, both kinds in one lookup: per peer IP and relayed address (`peer.port` 0 in
// the key), the permission (`perm`; its `expires_ns` 0 when only channels are mirrored for that
// IP, so its other ports' datagrams go up) and up to PEER_CHANNELS channels bound to that IP's
// ports (`port` in network order, 0 for a free place), each with its own expiry. A datagram from
// a port with a channel becomes ChannelData, from any other port a Data indication.
#define PEER_CHANNELS 4

struct peer_chan {
	__be16 port;
	__u16 channel;
	__u32 pad;
	__u64 expires_ns;
};

struct peer_ip_val {
	struct data_val perm;
	struct peer_chan chans[PEER_CHANNELS];
};

// IPv4 keys: the same entries for an IPv4 client (CHANNELS4, SEND_PERMS4 when the peer is IPv4
// too) or an IPv4 peer (PEER_IPS4), in 12-16 bytes instead of 40-60 (a hash lookup costs
// by its key's length: hashing and comparing it). Addresses and ports in network order.
struct chan_key4 {
	__be32 client_addr;
	__be32 local_addr;
	__be16 client_port;
	__be16 local_port;
	__u16 channel;
	__u16 pad;
};

// PEER_IPS4 (`peer_port` 0: an entry covers every port of the peer IP).
struct peer_key4 {
	__be32 peer_addr;
	__be32 relay_addr;
	__be16 peer_port;
	__be16 relay_port;
};

struct send_key4 {
	__be32 client_addr;
	__be32 local_addr;
	__be32 peer_addr;
	__be16 client_port;
	__be16 local_port;
};

// Per allocation slot: packets and payload bytes relayed each way, and how many of those
// packets were Send (c2p) or Data (p2c) indications.
struct alloc_counters {
	__u64 c2p_packets;
	__u64 c2p_bytes;
	__u64 p2c_packets;
	__u64 p2c_bytes;
	__u64 c2p_indications;
	__u64 p2c_indications;
};

// Global counters, one per index below.
enum {
	STAT_C2P = 0,
	STAT_P2C = 1,
	// A packet that matched a map entry but went to user space (route, MTU, lengths, family).
	STAT_PASS_MATCHED = 2,
	STAT_COUNT = 3,
};

// A hash map the loader sizes (max_entries is set from the limits), not preallocated: with two
// maps per kind sized to the limit each, preallocation would take twice the memory of the entries
// that can ever be in them; lookups cost the same.
#define HASH_MAP(name, key_type, value_type)                     \
	struct {                                                   \
		__uint(type, BPF_MAP_TYPE_HASH);                   \
		__uint(map_flags, BPF_F_NO_PREALLOC);              \
		__uint(max_entries, 65536);                        \
		__type(key, key_type);                             \
		__type(value, value_type);                         \
	} name SEC(".maps")

HASH_MAP(CHANNELS, struct chan_key, struct chan_val);
HASH_MAP(PEER_IPS, struct peer_key, struct peer_ip_val);
HASH_MAP(SEND_PERMS, struct send_key, struct send_val);

// The IPv4 maps (keys above); the ones above hold the IPv6 and cross-family entries. User space
// puts each entry in one of the two by family and keeps their sum within the configured limit.
HASH_MAP(CHANNELS4, struct chan_key4, struct chan_val);
HASH_MAP(PEER_IPS4, struct peer_key4, struct peer_ip_val);
HASH_MAP(SEND_PERMS4, struct send_key4, struct send_val);

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct alloc_counters);
} ALLOC_COUNTERS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} STATS SEC(".maps");

// Set by user space when the program is attached to `lo`: a local sender leaves only a partial
// UDP checksum on loopback (checksum offload that `lo` cannot turn off), so no incremental update
// can be right there. Then IPv4 is relayed without a UDP checksum (RFC 768 allows 0) and IPv6,
// where the checksum is mandatory, is passed up.
#define CONFIG_LOOPBACK_PARTIAL_CSUM 1

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} CONFIG SEC(".maps");

static __always_inline int loopback_partial_csum(struct xdp_md *ctx)
{
	__u32 zero = 0;
	__u32 *flags;
	if (ctx->ingress_ifindex != LOOPBACK_IFINDEX)
		return 0;
	flags = bpf_map_lookup_elem(&CONFIG, &zero);
	return flags && (*flags & CONFIG_LOOPBACK_PARTIAL_CSUM);
}

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&STATS, &idx);
	if (v)
		*v += 1;
}

static __always_inline void count_kind(__u32 slot, int c2p, __u64 bytes, int indication)
{
	struct alloc_counters *c = bpf_map_lookup_elem(&ALLOC_COUNTERS, &slot);
	if (c) {
		if (c2p) {
			c->c2p_packets += 1;
			c->c2p_bytes += bytes;
			c->c2p_indications += indication;
		} else {
			c->p2c_packets += 1;
			c->p2c_bytes += bytes;
			c->p2c_indications += indication;
		}
	}
	stat_inc(c2p ? STAT_C2P : STAT_P2C);
}

static __always_inline void count(__u32 slot, int c2p, __u64 bytes)
{
	count_kind(slot, c2p, bytes, 0);
}

// One's-complement arithmetic on raw words as they lie in memory (network order): the sum is
// the same whichever byte order both sides use, so no word is ever byte-swapped. Sums are kept
// in 64 bits and take 32-bit words where the data has them (a 32-bit word adds its two 16-bit
// halves, since 2^16 = 1 modulo 0xffff; its complement takes them out); csum_fold brings a sum
// back to 16 bits.
static __always_inline __u64 csum_add(__u64 sum, __u16 word)
{
	return sum + word;
}

static __always_inline __u64 csum_sub(__u64 sum, __u16 word)
{
	return sum + (__u16)~word;
}

static __always_inline __u64 csum_add32(__u64 sum, __u32 word)
{
	return sum + word;
}

static __always_inline __u64 csum_sub32(__u64 sum, __u32 word)
{
	return sum + (__u32)~word;
}

// A sum of fewer than 2^32 words to 16 bits: the first two folds leave at most 0xffffffff.
static __always_inline __u16 csum_fold(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

// `n` 16-bit words (4 or 8: an address) at `w`, taken out or added as 32-bit words.
static __always_inline __u64 csum_sub_words(__u64 sum, const __u16 *w, int n)
{
#pragma unroll
	for (int i = 0; i < 4; i++)
		if (2 * i < n)
			sum = csum_sub32(sum, ((const __u32 *)w)[i]);
	return sum;
}

static __always_inline __u64 csum_add_words(__u64 sum, const __u16 *w, int n)
{
#pragma unroll
	for (int i = 0; i < 4; i++)
		if (2 * i < n)
			sum = csum_add32(sum, ((const __u32 *)w)[i]);
	return sum;
}

// The UDP checksum after an update `sum` (RFC 1624 eqn. 3: ~(~HC + ~m + m')); 0 is sent as 0xffff.
static __always_inline __u16 udp_csum_finish(__u64 sum)
{
	__u16 c = ~csum_fold(sum);
	return c ? c : 0xffff;
}

static __always_inline void ipv4_csum(struct iphdr *ip)
{
	const __u32 *w = (const __u32 *)ip;
	__u64 sum = 0;
	ip->check = 0;
#pragma unroll
	for (int i = 0; i < 5; i++)
		sum += w[i];
	ip->check = ~csum_fold(sum);
}

// Copies the headers between a frame and scratch space eight bytes at a time. Neither side is
// 8-byte aligned (the IP header sits 14 bytes into the frame), which the verifier allows for
// packet and map value pointers on hosts with efficient unaligned access (x86-64, arm64);
// __builtin_memcpy would move them a byte at a time, since clang cannot know the alignment.
#define LD64(p, o) (*(__u64 *)((__u8 *)(p) + (o)))
#define LD32(p, o) (*(__u32 *)((__u8 *)(p) + (o)))
#define LD16(p, o) (*(__u16 *)((__u8 *)(p) + (o)))

// Every byte of an endpoint written (padding included, as hash keys need), a word at a time:
// the last word is port, family and pad as they lie in memory on the little-endian hosts XDP
// runs on here (x86-64, arm64). Endpoints sit at 4-byte offsets in scratch.
#define EP_TAIL(port, family) ((__u32)(__u16)(port) | ((__u32)(family) << 16))

static __always_inline void endpoint_v4(struct endpoint *e, __be32 addr, __be16 port)
{
	__u32 *w = (__u32 *)e;
	w[0] = addr;
	w[1] = 0;
	w[2] = 0;
	w[3] = 0;
	w[4] = EP_TAIL(port, 4);
}

static __always_inline void endpoint_v6(struct endpoint *e, const struct in6_addr *addr, __be16 port)
{
	__u32 *w = (__u32 *)e;
	const __u32 *a = (const __u32 *)addr;
	w[0] = a[0];
	w[1] = a[1];
	w[2] = a[2];
	w[3] = a[3];
	w[4] = EP_TAIL(port, 6);
}

// A peer address from a Send indication (16 bytes, 8-byte aligned; IPv4 in the first 4, the
// rest zero), port 0.
static __always_inline void endpoint_peer(struct endpoint *e, const __u8 *peer, __u8 family)
{
	__u32 *w = (__u32 *)e;
	w[0] = LD32(peer, 0);
	w[1] = LD32(peer, 4);
	w[2] = LD32(peer, 8);
	w[3] = LD32(peer, 12);
	w[4] = EP_TAIL(0, family);
}

// The headers of a frame, copied out of it. `pad` puts the IP header on a 4-byte boundary
// (the verifier wants aligned stack access); the wire bytes start at `eth`.
struct v4_headers {
	__u16 pad;
	struct ethhdr eth;
	struct iphdr ip;
	struct udphdr udp;
};

struct v6_headers {
	__u16 pad;
	struct ethhdr eth;
	struct ipv6hdr ip;
	struct udphdr udp;
};

#define V4_HDRS (sizeof(struct ethhdr) + sizeof(struct iphdr) + sizeof(struct udphdr))
#define V6_HDRS (sizeof(struct ethhdr) + sizeof(struct ipv6hdr) + sizeof(struct udphdr))


static __always_inline void put_v4(void *dst, const void *src)
{
	LD64(dst, 0) = LD64(src, 0);
	LD64(dst, 8) = LD64(src, 8);
	LD64(dst, 16) = LD64(src, 16);
	LD64(dst, 24) = LD64(src, 24);
	LD64(dst, 32) = LD64(src, 32);
	LD16(dst, 40) = LD16(src, 40);
}

static __always_inline void put_v6(void *dst, const void *src)
{
	LD64(dst, 0) = LD64(src, 0);
	LD64(dst, 8) = LD64(src, 8);
	LD64(dst, 16) = LD64(src, 16);
	LD64(dst, 24) = LD64(src, 24);
	LD64(dst, 32) = LD64(src, 32);
	LD64(dst, 40) = LD64(src, 40);
	LD64(dst, 48) = LD64(src, 48);
	LD32(dst, 56) = LD32(src, 56);
	LD16(dst, 60) = LD16(src, 60);
}

// A relay across address families (a dual allocation: client and peer in different families),
// planned by the path that matched and carried out by out_v4/out_v6, which write a new IP header
// of the other size. `sum`: the UDP checksum's one's-complement sum with everything that goes
// away already taken out (old addresses, ports, lengths, the bytes cut).
struct xplan {
	struct endpoint src;
	struct endpoint dst;
	__u64 sum;
	__u32 slot;
	// Payload bytes kept; `added` bytes from scratch `hdr` go in front of them, `pad` zero
	// bytes behind; `cut` bytes after the old UDP header and `tail` at the end go away.
	__u16 data_len;
	__u16 added;
	__u16 pad;
	__u16 cut;
	__u16 tail;
	__u16 in_hdrs;
	__u8 c2p;
	__u8 indication;
	__u16 unused;
};

// Per-CPU scratch space for what does not fit the 512-byte BPF stack of a call chain: the copied
// headers, map keys, the FIB query and a Data indication's header under construction. A program
// run is never re-entered on its CPU (XDP runs with preemption off; what it transmits is
// processed later), so one entry per CPU is enough.
struct scratch {
	union {
		struct v4_headers h4;
		struct v6_headers h6;
	};
	struct chan_key ck __attribute__((aligned(8)));
	struct peer_key pk __attribute__((aligned(8)));
	struct send_key sk __attribute__((aligned(8)));
	struct bpf_fib_lookup fib;
	__u8 hdr[48] __attribute__((aligned(8)));
	// The transaction id generator's state (see txn_word); 0 until first used on this CPU.
	__u64 rng;
	// The clock as `expired` last read it, and the jiffies it was read in.
	__u64 clock_jiffies;
	__u64 clock_ns;
	__u8 peer[16];
	struct xplan x;
	struct v4_headers o4;
	struct v6_headers o6;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} SCRATCH SEC(".maps");

// How much earlier than its `expires_ns` an entry stops being used. The time compared is the
// coarse clock (CLOCK_MONOTONIC as of the last tick), read once a tick per CPU and kept in
// scratch with the jiffies it was read in: bpf_jiffies64 is inlined by the verifier to one load,
// while any clock helper call measured about 30 ns a packet here. The time used therefore lags the
// real time by up to about two ticks (20 ms at HZ=100), so entries lapse early, never late: a
// packet this program does not take goes to user space, which decides as the authority.
#define EXPIRY_MARGIN_NS 50000000ULL

static __always_inline int expired(struct scratch *sc, __u64 expires_ns)
{
	__u64 j = bpf_jiffies64();
	if (j != sc->clock_jiffies || !sc->clock_ns) {
		sc->clock_ns = bpf_ktime_get_coarse_ns();
		sc->clock_jiffies = j;
	}
	return sc->clock_ns + EXPIRY_MARGIN_NS >= expires_ns;
}

// Where a rewritten packet goes: XDP_TX on loopback (a namespace's `lo` in generic mode: every
// address on it is local) or when the route leaves by the interface it came in on, a redirect
// when it leaves by another, and -1 (pass to user space) when the FIB cannot say.
static __always_inline int route(struct xdp_md *ctx, struct ethhdr *eth, int family,
				 const __u8 *src, const __u8 *dst, __u16 tot_len)
{
	if (ctx->ingress_ifindex == LOOPBACK_IFINDEX)
		return XDP_TX;
	__u32 zero = 0;
	struct scratch *sc = bpf_map_lookup_elem(&SCRATCH, &zero);
	if (!sc)
		return -1;
	struct bpf_fib_lookup *fib = &sc->fib;
	__builtin_memset(fib, 0, sizeof(*fib));
	fib->family = family;
	fib->l4_protocol = IPPROTO_UDP;
	fib->tot_len = tot_len;
	fib->ifindex = ctx->ingress_ifindex;
	if (family == AF_INET) {
		__builtin_memcpy(&fib->ipv4_src, src, 4);
		__builtin_memcpy(&fib->ipv4_dst, dst, 4);
	} else {
		__builtin_memcpy(fib->ipv6_src, src, 16);
		__builtin_memcpy(fib->ipv6_dst, dst, 16);
	}
	if (bpf_fib_lookup(ctx, fib, sizeof(*fib), 0) != BPF_FIB_LKUP_RET_SUCCESS)
		return -1;
	__builtin_memcpy(eth->h_dest, fib->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib->smac, ETH_ALEN);
	if (fib->ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect(fib->ifindex, 0);
}


// ---------------------------------------------------------------------------------------------
// Send and Data indications (RFC 8656 §10, §11), both families.

#define STUN_COOKIE 0x2112A442
#define STUN_SEND_INDICATION 0x0016
#define STUN_DATA_INDICATION 0x0017
#define ATTR_XOR_PEER_ADDRESS 0x0012
#define ATTR_DATA 0x0013
#define ATTR_FINGERPRINT 0x8028
// The attributes of a Send this program reads: at most SEND_MAX_ATTRS, with at most
// SEND_MAX_PREFIX bytes of message in front of DATA's value and SEND_MAX_SUFFIX behind it (its
// padding and the attributes after it), and FINGERPRINT checked over at most SEND_MAX_CRC bytes.
#define SEND_MAX_ATTRS 6
#define SEND_MAX_PREFIX 64
#define SEND_MAX_SUFFIX 64
#define SEND_MAX_CRC 2048
#define FINGERPRINT_XOR 0x5354554e
// The largest variable offset into a frame this program reads or writes at: the verifier grants
// access only while offset plus frame position stays below 64 KiB. Larger frames go up.
#define MAX_VAR_OFF 0x3fff

// A Data indication's header, XOR-PEER-ADDRESS and DATA's type and length.
#define DATA_HDR_V4 36
#define DATA_HDR_V6 48

// What a Send indication says, as far as this program understands it.
// 8-byte aligned, so that the address moves as words (the stack is strictly aligned).
struct send_info {
	__u8 peer[16] __attribute__((aligned(8)));
	__be16 peer_port;
	__u8 family;
	__u8 pad;
	// DATA's value: offset from the start of the message and length.
	__u16 data_off;
	__u16 data_len;
	// What follows DATA's value: its padding, then `suffix_len` bytes of attributes.
	__u16 pad_len;
	__u16 suffix_len;
};

// CRC-32 (ISO-HDLC, as FINGERPRINT uses it: RFC 8489 §14.7) tables for slicing by eight,
// T[k * 256 + n]; user space fills them at load (mod.rs, crc_tables), so no table is written out here.
volatile const __u32 CRC_TABLES[8 * 256];

// Non-zero: a Send indication's FINGERPRINT is checked here and a wrong one passed up
// (`--xdp-verify-fingerprint`); zero, the default: FINGERPRINT is trimmed unchecked (see
// docs/fast-path.md, "FINGERPRINT"). Set by the loader: the program sees a constant and the
// verifier drops the branch not taken, so neither setting costs a lookup per packet.
volatile const __u32 VERIFY_FINGERPRINT;

#define CRC_T(k, n) T[(k) * 256 + ((n) & 0xff)]

// Whether the FINGERPRINT value `want` is the CRC-32 of the `len` bytes at `off` in the frame
// XOR 0x5354554e. `len` is a multiple of 4 (STUN attributes are), at most SEND_MAX_CRC. A global
// function: the verifier checks it once, not once for every path that reaches it.
__noinline int fingerprint_ok(struct xdp_md *ctx, __u32 off, __u32 len, __u32 want)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	barrier_var(off);
	if (off > V6_HDRS || len > SEND_MAX_CRC)
		return 0;
	__u8 *p = data + off;
	__u32 crc = 0xffffffff;
	__u32 at = 0;
	// The tables through one pointer kept in a register (each volatile access to CRC_TABLES would
	// load its address again); barrier_var keeps clang from reading the tables' zero initial value.
	const __u32 *T = (const __u32 *)CRC_TABLES;
	barrier_var(T);
	// Eight bytes a step. Little-endian hosts (x86-64, arm64): the first byte is the low one,
	// as the reflected CRC consumes them.
	__u32 steps = len >> 3;
	for (__u32 i = 0; i < SEND_MAX_CRC / 8; i++) {
		if (i >= steps)
			break;
		__u64 *w = (__u64 *)(p + i * 8);
		if ((void *)(w + 1) > end)
			return 0;
		__u64 v = *w;
		__u32 one = (__u32)v ^ crc;
		__u32 two = v >> 32;
		crc = CRC_T(7, one) ^ CRC_T(6, one >> 8) ^ CRC_T(5, one >> 16) ^ CRC_T(4, one >> 24) ^
		      CRC_T(3, two) ^ CRC_T(2, two >> 8) ^ CRC_T(1, two >> 16) ^ CRC_T(0, two >> 24);
	}
	at = steps * 8;
	// A last four bytes.
	if (at + 4 == len) {
		barrier_var(at);
		if (at > SEND_MAX_CRC)
			return 0;
		__u32 *w = (__u32 *)(p + at);
		if ((void *)(w + 1) > end)
			return 0;
		crc ^= *w;
		crc = CRC_T(3, crc) ^ CRC_T(2, crc >> 8) ^ CRC_T(1, crc >> 16) ^ CRC_T(0, crc >> 24);
	} else if (at != len) {
		return 0;
	}
	return (crc ^ 0xffffffff ^ FINGERPRINT_XOR) == want;
}

// A Send indication the engine would relay (src/engine/server/data.rs, handle_send, after
// Message::decode): STUN header with the magic cookie, type Send/indication, a length that is a
// multiple of 4 and fills the datagram, attributes that tile it exactly, nothing after
// FINGERPRINT and FINGERPRINT right; the first XOR-PEER-ADDRESS (family 1 with 8 bytes or 2 with
// 20) and the first DATA. This program accepts the subset it can relay without guessing:
// XOR-PEER-ADDRESS and DATA once each, in either order, comprehension-optional attributes
// anywhere, FINGERPRINT last (its CRC checked only with VERIFY_FINGERPRINT), zero padding after
// DATA, within the bounds above.
// Anything else -- DONT-FRAGMENT, MESSAGE-INTEGRITY, an unknown comprehension-required
// attribute, a second XOR-PEER-ADDRESS or DATA, non-zero padding, peer port 0, anything after
// FINGERPRINT, a wrong FINGERPRINT when it is checked -- returns -1
// (user space decides). The message is the UDP payload at `hdrs`, `plen` bytes. A global
// function, like fingerprint_ok: verified once.
// XOR-PEER-ADDRESS's value at `a` (its header; `alen` from it) into `si`: family 1 with 8 bytes
// or 2 with 20, port not 0. `p`: the message (the transaction id unmasks an IPv6 address).
static __always_inline int read_peer(__u8 *a, __u8 *p, void *end, __u32 alen, struct send_info *si)
{
	if (alen == 8) {
		if (a + 12 > (__u8 *)end || a[5] != 1)
			return -1;
		si->family = 4;
		LD32(si->peer, 0) = LD32(a, 8) ^ bpf_htonl(STUN_COOKIE);
		LD32(si->peer, 4) = 0;
		LD64(si->peer, 8) = 0;
	} else if (alen == 20) {
		if (a + 24 > (__u8 *)end || a[5] != 2)
			return -1;
		si->family = 6;
		// XOR with the cookie, then the transaction id (p + 8), word by word.
		LD32(si->peer, 0) = LD32(a, 8) ^ bpf_htonl(STUN_COOKIE);
		LD32(si->peer, 4) = LD32(a, 12) ^ LD32(p, 8);
		LD32(si->peer, 8) = LD32(a, 16) ^ LD32(p, 12);
		LD32(si->peer, 12) = LD32(a, 20) ^ LD32(p, 16);
	} else {
		return -1;
	}
	__u16 port = (((__u16)a[6] << 8) | a[7]) ^ 0x2112;
	if (port == 0)
		return -1;
	si->peer_port = bpf_htons(port);
	return 0;
}

// DATA's value at `off` in the message `p`, `alen` bytes: records it in `si` and checks that its
// padding is zero.
static __always_inline int read_data(__u8 *p, void *end, __u32 off, __u32 alen,
				     struct send_info *si)
{
	__u32 padded = (alen + 3) & ~3u;
	si->data_off = off;
	si->data_len = alen;
	si->pad_len = padded - alen;
	__u32 at = off + alen;
	barrier_var(at);
	if (at > MAX_VAR_OFF)
		return -1;
	__u8 *q = p + at;
#pragma unroll
	for (int k = 0; k < 3; k++) {
		if (k < si->pad_len) {
			if (q + k + 1 > (__u8 *)end)
				return -1;
			if (q[k])
				return -1;
		}
	}
	return 0;
}

// Whether the message `p` of `plen` bytes ends at `pos` or with a FINGERPRINT there; returns
// FINGERPRINT's offset, 0 without one, -1 for anything else.
static __always_inline int tail_at(__u8 *p, void *end, __u32 pos, __u32 plen)
{
	if (pos == plen)
		return 0;
	if (pos + 8 != plen)
		return -1;
	__u32 at = pos;
	barrier_var(at);
	if (at > MAX_VAR_OFF)
		return -1;
	__u8 *f = p + at;
	if (f + 4 > (__u8 *)end)
		return -1;
	if (f[0] != 0x80 || f[1] != 0x28 || f[2] != 0 || f[3] != 4)
		return -1;
	return pos;
}

__noinline int parse_send(struct xdp_md *ctx, __u32 hdrs, __u32 plen, struct send_info *si)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	if (!si)
		return -1;
	barrier_var(hdrs);
	if (hdrs > V6_HDRS)
		return -1;
	__u8 *p = data + hdrs;
	if (p + 24 > (__u8 *)end)
		return -1;
	if (p[0] != 0 || p[1] != STUN_SEND_INDICATION)
		return -1;
	__u32 mlen = ((__u32)p[2] << 8) | p[3];
	if ((mlen & 3) || mlen + 20 != plen)
		return -1;
	if (p[4] != 0x21 || p[5] != 0x12 || p[6] != 0xa4 || p[7] != 0x42)
		return -1;
	int fp_off = -1;

	// The two layouts clients send, checked at the offsets they imply before the general scan
	// below: XOR-PEER-ADDRESS then DATA (browsers), DATA then XOR-PEER-ADDRESS (turnutils_uclient
	// -s), either followed by FINGERPRINT or nothing. What does not fit goes to the scan, which
	// accepts the same messages and more.
	{
		__u16 ty = ((__u16)p[20] << 8) | p[21];
		__u32 alen = ((__u32)p[22] << 8) | p[23];
		if (ty == ATTR_XOR_PEER_ADDRESS && (alen == 8 || alen == 20)) {
			// DATA's header right behind, at 32 or 44.
			__u32 d = 24 + alen;
			barrier_var(d);
			if (d <= 44 && p + 48 <= (__u8 *)end &&
			    !read_peer(p + 20, p, end, alen, si)) {
				__u8 *a = p + d;
				if (a + 4 > (__u8 *)end)
					goto scan;
				__u32 dlen = ((__u32)a[2] << 8) | a[3];
				if (a[0] == 0 && a[1] == ATTR_DATA && d + 4 + dlen <= plen &&
				    !read_data(p, end, d + 4, dlen, si)) {
					fp_off = tail_at(p, end, d + 4 + ((dlen + 3) & ~3u), plen);
				}
			}
		} else if (ty == ATTR_DATA && 24 + alen <= plen) {
			__u32 x = 24 + ((alen + 3) & ~3u);
			if (!read_data(p, end, 24, alen, si)) {
				barrier_var(x);
				if (x <= MAX_VAR_OFF) {
					__u8 *a = p + x;
					if (a + 4 <= (__u8 *)end && a[0] == 0 &&
					    a[1] == ATTR_XOR_PEER_ADDRESS) {
						__u32 xlen = ((__u32)a[2] << 8) | a[3];
						if ((xlen == 8 || xlen == 20) &&
						    !read_peer(a, p, end, xlen, si))
							fp_off = tail_at(p, end, x + 4 + xlen, plen);
					}
				}
			}
		}
		if (fp_off >= 0) {
			si->suffix_len = plen - si->data_off - si->data_len - si->pad_len;
			goto fingerprint;
		}
	}

scan:;
	__u32 pos = 20;
	int have_peer = 0, have_data = 0;
	fp_off = 0;
	for (int i = 0; i < SEND_MAX_ATTRS; i++) {
		if (pos >= plen)
			break;
		if (fp_off)
			return -1;
		// barrier_var (bpf_helpers.h) hides the value from the optimizer, so that the bound
		// is checked on the register the packet access then uses.
		__u32 at = pos;
		barrier_var(at);
		if (at > MAX_VAR_OFF)
			return -1;
		__u8 *a = p + at;
		if (a + 4 > (__u8 *)end)
			return -1;
		__u16 ty = ((__u16)a[0] << 8) | a[1];
		__u32 alen = ((__u32)a[2] << 8) | a[3];
		__u32 padded = (alen + 3) & ~3u;
		if (pos + 4 + padded > plen)
			return -1;
		if (ty == ATTR_DATA) {
			if (have_data)
				return -1;
			have_data = 1;
			if (read_data(p, end, pos + 4, alen, si))
				return -1;
		} else if (ty == ATTR_XOR_PEER_ADDRESS) {
			if (have_peer)
				return -1;
			if (read_peer(a, p, end, alen, si))
				return -1;
			have_peer = 1;
		} else if (ty == ATTR_FINGERPRINT) {
			if (alen != 4 || a + 8 > (__u8 *)end)
				return -1;
			fp_off = pos;
		} else if (ty < 0x8000) {
			return -1;
		}
		pos += 4 + padded;
	}
	if (pos != plen || !have_peer || !have_data || si->data_off > SEND_MAX_PREFIX)
		return -1;
	__u32 suffix = plen - si->data_off - si->data_len - si->pad_len;
	if (suffix > SEND_MAX_SUFFIX)
		return -1;
	si->suffix_len = suffix;

fingerprint:
	if (fp_off && VERIFY_FINGERPRINT) {
		if (fp_off > SEND_MAX_CRC)
			return -1;
		__u32 at = fp_off;
		barrier_var(at);
		if (at > MAX_VAR_OFF)
			return -1;
		__u8 *f = p + at;
		if (f + 8 > (__u8 *)end)
			return -1;
		__u32 want = ((__u32)f[4] << 24) | ((__u32)f[5] << 16) | ((__u32)f[6] << 8) | f[7];
		if (!fingerprint_ok(ctx, hdrs, fp_off, want))
			return -1;
	}
	return 0;
}

// Takes `words` 32-bit words at `q` out of a checksum (the caller has checked them in bounds).
static __always_inline __u64 csum_sub_at(__u64 sum, const __u8 *q, int words)
{
#pragma unroll
	for (int i = 0; i < words; i++)
		sum = csum_sub32(sum, LD32(q, 4 * i));
	return sum;
}

// Takes the `len` bytes at `p + off` (`off` and `len` multiples of 4, as STUN attributes are;
// `len` at most 64) out of a checksum: the bytes of a Send cut in front of and behind DATA's value.
static __always_inline __u64 csum_sub_region(__u64 sum, __u8 *p, void *end, __u32 off, __u32 len)
{
	if (!len)
		return sum;
	// The suffixes clients send, each with one bound check: XOR-PEER-ADDRESS (IPv6 24, IPv4 12
	// bytes) with or without FINGERPRINT (8), or FINGERPRINT alone.
	__u32 at = off;
	barrier_var(at);
	if (at <= MAX_VAR_OFF) {
		__u8 *q = p + at;
		if (len == 32 && q + 32 <= (__u8 *)end)
			return csum_sub_at(sum, q, 8);
		if (len == 24 && q + 24 <= (__u8 *)end)
			return csum_sub_at(sum, q, 6);
		if (len == 20 && q + 20 <= (__u8 *)end)
			return csum_sub_at(sum, q, 5);
		if (len == 12 && q + 12 <= (__u8 *)end)
			return csum_sub_at(sum, q, 3);
		if (len == 8 && q + 8 <= (__u8 *)end)
			return csum_sub_at(sum, q, 2);
	}
	for (int i = 0; i < 16; i++) {
		if ((__u32)(4 * i) >= len)
			break;
		__u32 o = off + 4 * i;
		barrier_var(o);
		if (o > MAX_VAR_OFF)
			break;
		__u32 *w = (__u32 *)(p + o);
		if ((void *)(w + 1) > end)
			break;
		sum = csum_sub32(sum, *w);
	}
	return sum;
}

// Takes the first `len` bytes at `p` (a multiple of 4, at most SEND_MAX_PREFIX) out of a checksum:
// a Send's header and the attributes in front of DATA's value. Constant offsets, so unrolled with
// one bound check a word.
static __always_inline __u64 csum_sub_prefix(__u64 sum, __u8 *p, void *end, __u32 len)
{
#pragma unroll
	for (int i = 0; i < SEND_MAX_PREFIX / 4; i++) {
		if ((__u32)(4 * i) >= len)
			break;
		if ((void *)(p + 4 * i + 4) > end)
			break;
		sum = csum_sub32(sum, *(__u32 *)(p + 4 * i));
	}
	return sum;
}

// The Data indication header (RFC 8656 §11.3) for `len` bytes from `peer` (16 bytes, IPv4 in the
// first 4), written as the engine's message::write_data_indication_header writes it: header with
// a fresh transaction id, XOR-PEER-ADDRESS, then DATA's type and length. Returns its length.
// 64 bits for a Data indication's transaction id: splitmix64 over a per-CPU state (in scratch)
// seeded from bpf_get_prandom_u32 on first use. The ids only need to differ (RFC 8489 §6: an
// indication gets no answer to match); bpf_get_prandom_u32 is no cryptographic generator either,
// and calling it three times a packet measured about 50 ns.
static __always_inline __u64 txn_word(__u64 *state)
{
	__u64 z = *state;
	if (!z)
		z = ((__u64)bpf_get_prandom_u32() << 32) | bpf_get_prandom_u32() | 1;
	z += 0x9e3779b97f4a7c15ULL;
	*state = z;
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static __always_inline int data_header(__u8 *hdr, __u64 *rng, const __u8 *peer, __be16 port,
				       int v6, __u32 len)
{
	__u32 alen = v6 ? 20 : 8;
	__u32 pad = (4 - (len & 3)) & 3;
	__u32 body = 4 + alen + 4 + len + pad;
	// 32-bit words as they lie in memory (little-endian hosts: the first byte is the low one);
	// `hdr` is 8-byte aligned in scratch.
	__u32 *w = (__u32 *)hdr;
	const __u32 cookie = bpf_htonl(STUN_COOKIE);
	w[0] = (STUN_DATA_INDICATION << 8) | ((__u32)bpf_htons(body) << 16);
	w[1] = cookie;
	__u64 r0 = txn_word(rng), r1 = txn_word(rng);
	w[2] = r0;
	w[3] = r0 >> 32;
	w[4] = r1;
	// XOR-PEER-ADDRESS: type, length; reserved, family, port; address.
	w[5] = (ATTR_XOR_PEER_ADDRESS << 8) | (alen << 24);
	__u16 xport = bpf_ntohs(port) ^ 0x2112;
	w[6] = ((v6 ? 2 : 1) << 8) | ((__u32)bpf_htons(xport) << 16);
	w[7] = LD32(peer, 0) ^ cookie;
	if (v6) {
		w[8] = LD32(peer, 4) ^ w[2];
		w[9] = LD32(peer, 8) ^ w[3];
		w[10] = LD32(peer, 12) ^ w[4];
		w[11] = (ATTR_DATA << 8) | ((__u32)bpf_htons(len) << 16);
		return DATA_HDR_V6;
	}
	w[8] = (ATTR_DATA << 8) | ((__u32)bpf_htons(len) << 16);
	return DATA_HDR_V4;
}

// Writes a Data indication's header from scratch into the frame, eight bytes at a time.
static __always_inline void put_data_hdr_v4(void *dst, const __u8 *hdr)
{
	LD64(dst, 0) = LD64(hdr, 0);
	LD64(dst, 8) = LD64(hdr, 8);
	LD64(dst, 16) = LD64(hdr, 16);
	LD64(dst, 24) = LD64(hdr, 24);
	LD32(dst, 32) = LD32(hdr, 32);
}

static __always_inline void put_data_hdr_v6(void *dst, const __u8 *hdr)
{
	LD64(dst, 0) = LD64(hdr, 0);
	LD64(dst, 8) = LD64(hdr, 8);
	LD64(dst, 16) = LD64(hdr, 16);
	LD64(dst, 24) = LD64(hdr, 24);
	LD64(dst, 32) = LD64(hdr, 32);
	LD64(dst, 40) = LD64(hdr, 40);
}

// Grows the frame by `hlen` in front of the payload and `pad` zero bytes after it; on failure
// the frame is as it was and -1 is returned.
static __always_inline int grow_for_data(struct xdp_md *ctx, __u32 hdrs, __u32 len, __u32 pad,
					 int hlen)
{
	if (pad) {
		if (bpf_xdp_adjust_tail(ctx, pad))
			return -1;
		void *data = (void *)(long)ctx->data;
		void *end = (void *)(long)ctx->data_end;
		__u32 off = hdrs + len;
		barrier_var(off);
		if (off > MAX_VAR_OFF) {
			bpf_xdp_adjust_tail(ctx, -(int)pad);
			return -1;
		}
		__u8 *q = data + off;
#pragma unroll
		for (int k = 0; k < 3; k++) {
			if (k < pad) {
				if (q + k + 1 > (__u8 *)end) {
					bpf_xdp_adjust_tail(ctx, -(int)pad);
					return -1;
				}
				q[k] = 0;
			}
		}
	}
	if (bpf_xdp_adjust_head(ctx, -hlen)) {
		if (pad)
			bpf_xdp_adjust_tail(ctx, -(int)pad);
		return -1;
	}
	return 0;
}

// ---------------------------------------------------------------------------------------------
// Across address families (dual allocations): the IP header changes size by 20 bytes.

// Adds the `added` bytes of the plan's header (scratch `hdr`, at most 48, a multiple of 4) to a
// checksum.
static __always_inline __u64 csum_add_hdr(__u64 sum, const __u8 *hdr, __u32 added)
{
	const __u32 *w = (const __u32 *)hdr;
#pragma unroll
	for (int i = 0; i < 12; i++)
		if ((__u32)(4 * i) < added)
			sum = csum_add32(sum, w[i]);
	return sum;
}

// Moves the frame's edges for a plan: `delta` at the head (positive cuts), then the tail by
// `pad - tail` (zero bytes when it grows). On failure the frame is as it was.
static __always_inline int reshape(struct xdp_md *ctx, int delta, __u32 pad, __u32 tail,
				   __u32 new_hdrs, __u32 kept)
{
	if (bpf_xdp_adjust_head(ctx, delta))
		return -1;
	int grow = (int)pad - (int)tail;
	if (grow && bpf_xdp_adjust_tail(ctx, grow)) {
		bpf_xdp_adjust_head(ctx, -delta);
		return -1;
	}
	if (grow > 0) {
		void *data = (void *)(long)ctx->data;
		void *end = (void *)(long)ctx->data_end;
		__u32 off = new_hdrs + kept;
		barrier_var(off);
		if (off > MAX_VAR_OFF)
			return -2;
		__u8 *q = data + off;
#pragma unroll
		for (int k = 0; k < 3; k++) {
			if (k < grow) {
				if (q + k + 1 > (__u8 *)end)
					return -2;
				q[k] = 0;
			}
		}
	}
	return 0;
}

// Writes the plan's `added` bytes after the headers at `at`.
static __always_inline int put_added(struct xdp_md *ctx, __u32 at, const __u8 *hdr, __u32 added)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	if (added == 4) {
		if (data + at + 4 > end)
			return -1;
		LD32(data, at) = LD32(hdr, 0);
	} else if (added == DATA_HDR_V4) {
		if (data + at + DATA_HDR_V4 > end)
			return -1;
		put_data_hdr_v4(data + at, hdr);
	} else if (added == DATA_HDR_V6) {
		if (data + at + DATA_HDR_V6 > end)
			return -1;
		put_data_hdr_v6(data + at, hdr);
	}
	return 0;
}

// The plan as an IPv6 frame (from an IPv4 one).
static __always_inline int out_v6(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct scratch *sc = bpf_map_lookup_elem(&SCRATCH, &zero);
	if (!sc)
		return XDP_PASS;
	struct xplan *x = &sc->x;
	struct v6_headers *o = &sc->o6;
	__u32 udp_len = sizeof(struct udphdr) + x->added + x->data_len + x->pad;
	if (udp_len > 0xffff - 64 || x->added > 48 || x->pad > 3)
		return XDP_PASS;
	__u16 new_len = bpf_htons(udp_len);
	__builtin_memcpy(&o->eth, &sc->h4.eth, sizeof(struct ethhdr));
	o->eth.h_proto = bpf_htons(ETH_P_IPV6);
	__builtin_memset(&o->ip, 0, sizeof(o->ip));
	o->ip.version = 6;
	o->ip.payload_len = new_len;
	o->ip.nexthdr = IPPROTO_UDP;
	o->ip.hop_limit = RELAY_TTL;
	__builtin_memcpy(&o->ip.saddr, x->src.addr, 16);
	__builtin_memcpy(&o->ip.daddr, x->dst.addr, 16);
	o->udp.source = x->src.port;
	o->udp.dest = x->dst.port;
	o->udp.len = new_len;
	__u64 sum = x->sum;
	sum = csum_add_words(sum, (__u16 *)&o->ip.saddr, 8);
	sum = csum_add_words(sum, (__u16 *)&o->ip.daddr, 8);
	sum = csum_add(sum, o->udp.source);
	sum = csum_add(sum, o->udp.dest);
	sum = csum_add(sum, new_len);
	sum = csum_add(sum, new_len);
	sum = csum_add_hdr(sum, sc->hdr, x->added);
	o->udp.check = udp_csum_finish(sum);

	int action = route(ctx, &o->eth, AF_INET6, x->src.addr, x->dst.addr,
			   sizeof(struct ipv6hdr) + udp_len);
	if (action < 0) {
		stat_inc(STAT_PASS_MATCHED);
		return XDP_PASS;
	}
	int delta = (int)x->in_hdrs + (int)x->cut - (int)V6_HDRS - (int)x->added;
	int r = reshape(ctx, delta, x->pad, x->tail, V6_HDRS + x->added, x->data_len);
	if (r == -1) {
		stat_inc(STAT_PASS_MATCHED);
		return XDP_PASS;
	}
	if (r < 0)
		return XDP_ABORTED;
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	if (data + V6_HDRS > end)
		return XDP_ABORTED;
	put_v6(data, &o->eth);
	if (put_added(ctx, V6_HDRS, sc->hdr, x->added))
		return XDP_ABORTED;
	count_kind(x->slot, x->c2p, x->data_len, x->indication);
	return action;
}

// The plan as an IPv4 frame (from an IPv6 one).
static __always_inline int out_v4(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct scratch *sc = bpf_map_lookup_elem(&SCRATCH, &zero);
	if (!sc)
		return XDP_PASS;
	struct xplan *x = &sc->x;
	struct v4_headers *o = &sc->o4;
	__u32 udp_len = sizeof(struct udphdr) + x->added + x->data_len + x->pad;
	if (udp_len > 0xffff - 64 || x->added > 48 || x->pad > 3)
		return XDP_PASS;
	__u16 new_len = bpf_htons(udp_len);
	__builtin_memcpy(&o->eth, &sc->h6.eth, sizeof(struct ethhdr));
	o->eth.h_proto = bpf_htons(ETH_P_IP);
	__builtin_memset(&o->ip, 0, sizeof(o->ip));
	o->ip.version = 4;
	o->ip.ihl = 5;
	o->ip.tot_len = bpf_htons(sizeof(struct iphdr) + udp_len);
	o->ip.frag_off = bpf_htons(0x4000); // DF, as the server's own UDP sockets send
	o->ip.ttl = RELAY_TTL;
	o->ip.protocol = IPPROTO_UDP;
	__builtin_memcpy(&o->ip.saddr, x->src.addr, 4);
	__builtin_memcpy(&o->ip.daddr, x->dst.addr, 4);
	ipv4_csum(&o->ip);
	o->udp.source = x->src.port;
	o->udp.dest = x->dst.port;
	o->udp.len = new_len;
	__u64 sum = x->sum;
	sum = csum_add_words(sum, (__u16 *)&o->ip.saddr, 4);
	sum = csum_add(sum, o->udp.source);
	sum = csum_add(sum, o->udp.dest);
	sum = csum_add(sum, new_len);
	sum = csum_add(sum, new_len);
	sum = csum_add_hdr(sum, sc->hdr, x->added);
	o->udp.check = udp_csum_finish(sum);

	int action = route(ctx, &o->eth, AF_INET, x->src.addr, x->dst.addr,
			   sizeof(struct iphdr) + udp_len);
	if (action < 0) {
		stat_inc(STAT_PASS_MATCHED);
		return XDP_PASS;
	}
	int delta = (int)x->in_hdrs + (int)x->cut - (int)V4_HDRS - (int)x->added;
	int r = reshape(ctx, delta, x->pad, x->tail, V4_HDRS + x->added, x->data_len);
	if (r == -1) {
		stat_inc(STAT_PASS_MATCHED);
		return XDP_PASS;
	}
	if (r < 0)
		return XDP_ABORTED;
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	if (data + V4_HDRS > end)
		return XDP_ABORTED;
	put_v4(data, &o->eth);
	if (put_added(ctx, V4_HDRS, sc->hdr, x->added))
		return XDP_ABORTED;
	count_kind(x->slot, x->c2p, x->data_len, x->indication);
	return action;
}

// Plans common to every crossing: the old pseudo-header's addresses, ports and lengths out.
static __always_inline __u64 sum_out_v4(const struct v4_headers *h)
{
	__u64 sum = (__u16)~h->udp.check;
	sum = csum_sub_words(sum, (__u16 *)&h->ip.saddr, 4);
	sum = csum_sub(sum, h->udp.source);
	sum = csum_sub(sum, h->udp.dest);
	sum = csum_sub(sum, h->udp.len);
	sum = csum_sub(sum, h->udp.len);
	return sum;
}

static __always_inline __u64 sum_out_v6(const struct v6_headers *h)
{
	__u64 sum = (__u16)~h->udp.check;
	sum = csum_sub_words(sum, (__u16 *)&h->ip.saddr, 8);
	sum = csum_sub_words(sum, (__u16 *)&h->ip.daddr, 8);
	sum = csum_sub(sum, h->udp.source);
	sum = csum_sub(sum, h->udp.dest);
	sum = csum_sub(sum, h->udp.len);
	sum = csum_sub(sum, h->udp.len);
	return sum;
}

static __always_inline void plan(struct xplan *x, const struct endpoint *src,
				 const struct endpoint *dst, __u32 slot, __u16 data_len)
{
	__builtin_memcpy(&x->src, src, sizeof(*src));
	__builtin_memcpy(&x->dst, dst, sizeof(*dst));
	x->slot = slot;
	x->data_len = data_len;
	x->added = 0;
	x->pad = 0;
	x->cut = 0;
	x->tail = 0;
	x->c2p = 0;
	x->indication = 0;
}

// ---------------------------------------------------------------------------------------------
// IPv4

static __always_inline int v4_client_to_peer(struct xdp_md *ctx, struct v4_headers *h,
					     const struct chan_val *v, __u16 data_len)
{
	__u16 old_len = h->udp.len;
	__u16 new_len = bpf_htons(data_len + sizeof(struct udphdr));
	__u16 old_check = h->udp.check;
	__u64 sum = 0;
	if (loopback_partial_csum(ctx))
		h->udp.check = old_check = 0;
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	if (data + V4_HDRS + 4 > end)
		return XDP_PASS;
	__u16 *cd = data + V4_HDRS;

	if (old_check) {
		sum = (__u16)~old_check;
		sum = csum_sub_words(sum, (__u16 *)&h->ip.saddr, 4);
		sum = csum_sub(sum, h->udp.source);
		sum = csum_sub(sum, h->udp.dest);
		sum = csum_sub(sum, old_len);
		sum = csum_sub(sum, old_len);
		sum = csum_sub(sum, cd[0]);
		sum = csum_sub(sum, cd[1]);
	}
	__builtin_memcpy(&h->ip.saddr, v->relay.addr, 4);
	__builtin_memcpy(&h->ip.daddr, v->peer.addr, 4);
	h->udp.source = v->relay.port;
	h->udp.dest = v->peer.port;
	h->udp.len = new_len;
	if (old_check) {
		sum = csum_add_words(sum, (__u16 *)&h->ip.saddr, 4);
		sum = csum_add(sum, h->udp.source);
		sum = csum_add(sum, h->udp.dest);
		sum = csum_add(sum, new_len);
		sum = csum_add(sum, new_len);
		h->udp.check = udp_csum_finish(sum);
	}
	__u16 tot = data_len + sizeof(struct udphdr) + sizeof(struct iphdr);
	h->ip.tot_len = bpf_htons(tot);
	h->ip.ttl = RELAY_TTL;
	ipv4_csum(&h->ip);

	int action = route(ctx, &h->eth, AF_INET, v->relay.addr, v->peer.addr, tot);
	if (action < 0) {
		stat_inc(STAT_PASS_MATCHED);
		return XDP_PASS;
	}
	// Cut the 4-byte ChannelData header: the headers move forward over it.
	if (bpf_xdp_adjust_head(ctx, 4))
		return XDP_PASS;
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	if (data + V4_HDRS > end)
		return XDP_ABORTED;
	put_v4(data, &h->eth);
	count(v->slot, 1, data_len);
	return action;
}

static __always_inline int v4_peer_to_client(struct xdp_md *ctx, struct v4_headers *h,
					     const struct data_val *v, __u16 channel, __u16 data_len)
{
	__u16 old_len = h->udp.len;
	__u16 new_len = bpf_htons(data_len + 4 + sizeof(struct udphdr));
	__u16 old_check = h->udp.check;
	__u16 cd[2] __attribute__((aligned(4))) = {bpf_htons(channel), bpf_htons(data_len)};
	__u64 sum = 0;
	if (loopback_partial_csum(ctx))
		h->udp.check = old_check = 0;

	if (old_check) {
		sum = (__u16)~old_check;
		sum = csum_sub_words(sum, (__u16 *)&h->ip.saddr, 4);
		sum = csum_sub(sum, h->udp.source);
		sum = csum_sub(sum, h->udp.dest);
		sum = csum_sub(sum, old_len);
		sum = csum_sub(sum, old_len);
	}
	__builtin_memcpy(&h->ip.saddr, v->local.addr, 4);
	__builtin_memcpy(&h->ip.daddr, v->client.addr, 4);
	h->udp.source = v->local.port;
	h->udp.dest = v->client.port;
	h->udp.len = new_len;
	if (old_check) {
		sum = csum_add_words(sum, (__u16 *)&h->ip.saddr, 4);
		sum = csum_add(sum, h->udp.source);
		sum = csum_add(sum, h->udp.dest);
		sum = csum_add(sum, new_len);
		sum = csum_add(sum, new_len);
		sum = csum_add(sum, cd[0]);
		sum = csum_add(sum, cd[1]);
		h->udp.check = udp_csum_finish(sum);
	}
	__u16 tot = data_len + 4 + sizeof(struct udphdr) + sizeof(struct iphdr);
	h->ip.tot_len = bpf_htons(tot);
	h->ip.ttl = RELAY_TTL;
	ipv4_csum(&h->ip);

	int action = route(ctx, &h->eth, AF_INET, v->local.addr, v->client.addr, tot);
	if (action < 0) {
		stat_inc(STAT_PASS_MATCHED);
		return XDP_PASS;
	}
	if (bpf_xdp_adjust_head(ctx, -4))
		return XDP_PASS;
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	if (data + V4_HDRS + 4 > end)
		return XDP_ABORTED;
	put_v4(data, &h->eth);
	LD32(data, V4_HDRS) = LD32(cd, 0);
	count(v->slot, 0, data_len);
	return action;
}

// A Send indication from a mirrored client with a live permission for its peer: DATA's value
// leaves from the relay address (the header and the attributes before DATA are cut in front, the
// zero padding and the attributes after it, FINGERPRINT included, behind).
static __always_inline int v4_send(struct xdp_md *ctx, struct v4_headers *h, __u16 payload_len)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct send_info si;
	if (parse_send(ctx, V4_HDRS, payload_len, &si))
		return -1;
	__u32 zero = 0;
	struct scratch *sc = bpf_map_lookup_elem(&SCRATCH, &zero);
	if (!sc)
		return -1;
	struct send_val *v;
	if (si.family == 4) {
		struct send_key4 k4 = {
			.client_addr = h->ip.saddr,
			.local_addr = h->ip.daddr,
			.peer_addr = LD32(si.peer, 0),
			.client_port = h->udp.source,
			.local_port = h->udp.dest,
		};
		v = bpf_map_lookup_elem(&SEND_PERMS4, &k4);
	} else {
		struct send_key *key = &sc->sk;
		endpoint_v4(&key->client, h->ip.saddr, h->udp.source);
		endpoint_v4(&key->local, h->ip.daddr, h->udp.dest);
		endpoint_peer(&key->peer, si.peer, si.family);
		v = bpf_map_lookup_elem(&SEND_PERMS, key);
	}
	if (!v)
		return -1;
	if (v->relay.family != si.family || expired(sc, v->expires_ns)) {
		stat_inc(STAT_PASS_MATCHED);
		return XDP_PASS;
	}
	if (si.family == 6) {
		// A dual allocation's peer in the other family.
		if (!h->udp.check || loopback_partial_csum(ctx)) {
			stat_inc(STAT_PASS_MATCHED);
			return XDP_PASS;
		}
		struct endpoint dst;
		__builtin_memset(&dst, 0, sizeof(dst));
		__builtin_memcpy(dst.addr, si.peer, 16);
		dst.port = si.peer_port;
		dst.family = 6;
		struct xplan *x = &sc->x;
		plan(x, &v->relay, &dst, v->slot, si.data_len);
		__u64 sum = sum_out_v4(h);
		sum = csum_sub_prefix(sum, data + V4_HDRS, end, si.data_off);
		sum = csum_sub_region(sum, data + V4_HDRS, end,
				      si.data_off + si.data_len + si.pad_len, si.suffix_len);
		x->sum = sum;
		x->cut = si.data_off;
		x->tail = si.pad_len + si.suffix_len;
		x->in_hdrs = V4_HDRS;
		x->c2p = 1;
		x->indication = 1;
		return out_v6(ctx);
	}
	__u16 data_len = si.data_len;
	__u16 old_len = h->udp.len;
	__u16 new_len = bpf_htons(data_len + sizeof(struct udphdr));
	__u16 old_check = h->udp.check;
	__u64 sum = 0;
	if (loopback_partial_csum(ctx))
		h->udp.check = old_check = 0;
	if (old_check) {
		sum = (__u16)~old_check;
		sum = csum_sub_words(sum, (__u16 *)&h->ip.saddr, 4);
		sum = csum_sub(sum, h->udp.source);
		sum = csum_sub(sum, h->udp.dest);
		sum = csum_sub(sum, old_len);
		sum = csum_sub(sum, old_len);
		sum = csum_sub_prefix(sum, data + V4_HDRS, end, si.data_off);
		sum = csum_sub_region(sum, data + V4_HDRS, end,
				      si.data_off + si.data_len + si.pad_len, si.suffix_len);
	}
	__builtin_memcpy(&h->ip.saddr, v->relay.addr, 4);
	__builtin_memcpy(&h->ip.daddr, si.peer, 4);
	h->udp.source = v->relay.port;
	h->udp.dest = si.peer_port;
	h->udp.len = new_len;
	if (old_check) {
		sum = csum_add_words(sum, (__u16 *)&h->ip.saddr, 4);
		sum = csum_add(sum, h->udp.source);
		sum = csum_add(sum, h->udp.dest);
		sum = csum_add(sum, new_len);
		sum = csum_add(sum, new_len);
		h->udp.check = udp_csum_finish(sum);
	}
	__u16 tot = data_len + sizeof(struct udphdr) + sizeof(struct iphdr);
	h->ip.tot_len = bpf_htons(tot);
	h->ip.ttl = RELAY_TTL;
	ipv4_csum(&h->ip);

	int action = route(ctx, &h->eth, AF_INET, v->relay.addr, si.peer, tot);
	if (action < 0) {
		stat_inc(STAT_PASS_MATCHED);
		return XDP_PASS;
	}
	__u32 slot = v->slot;
	// The head first: if the tail cannot move, the bytes in front are still there to go back to.
	int tail = si.pad_len + si.suffix_len;
	if (bpf_xdp_adjust_head(ctx, si.data_off))
		return XDP_PASS;
	if (tail && bpf_xdp_adjust_tail(ctx, -tail)) {
		bpf_xdp_adjust_head(ctx, -(int)si.data_off);
		return XDP_PASS;
	}
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	if (data + V4_HDRS > end)
		return XDP_ABORTED;
	put_v4(data, &h->eth);
	count_kind(slot, 1, data_len, 1);
	return action;
}

// A datagram from a permitted peer with no channel mirrored for it: a Data indication to the
// client (RFC 8656 §11.3), byte for byte what the engine writes but for the transaction id.
static __always_inline int v4_data(struct xdp_md *ctx, struct v4_headers *h,
				   const struct data_val *v, __u16 data_len)
{
	__u32 zero = 0;
	struct scratch *sc = bpf_map_lookup_elem(&SCRATCH, &zero);
	if (!sc)
		return XDP_PASS;
	__u8 *hdr = sc->hdr;
	__u8 *peer = sc->peer;
	__builtin_memset(peer, 0, 16);
	__builtin_memcpy(peer, &h->ip.saddr, 4);
	int hlen = data_header(hdr, &sc->rng, peer, h->udp.source, 0, data_len);
	__u32 pad = (4 - (data_len & 3)) & 3;
	__u16 old_len = h->udp.len;
	__u16 new_len = bpf_htons(sizeof(struct udphdr) + DATA_HDR_V4 + data_len + pad);
	__u16 old_check = h->udp.check;
	__u64 sum = 0;
	if (loopback_partial_csum(ctx))
		h->udp.check = old_check = 0;
	if (old_check) {
		sum = (__u16)~old_check;
		sum = csum_sub_words(sum, (__u16 *)&h->ip.saddr, 4);
		sum = csum_sub(sum, h->udp.source);
		sum = csum_sub(sum, h->udp.dest);
		sum = csum_sub(sum, old_len);
		sum = csum_sub(sum, old_len);
	}
	__builtin_memcpy(&h->ip.saddr, v->local.addr, 4);
	__builtin_memcpy(&h->ip.daddr, v->client.addr, 4);
	h->udp.source = v->local.port;
	h->udp.dest = v->client.port;
	h->udp.len = new_len;
	if (old_check) {
		sum = csum_add_words(sum, (__u16 *)&h->ip.saddr, 4);
		sum = csum_add(sum, h->udp.source);
		sum = csum_add(sum, h->udp.dest);
		sum = csum_add(sum, new_len);
		sum = csum_add(sum, new_len);
		const __u32 *w = (const __u32 *)hdr;
#pragma unroll
		for (int i = 0; i < DATA_HDR_V4 / 4; i++)
			sum = csum_add32(sum, w[i]);
		h->udp.check = udp_csum_finish(sum);
	}
	__u16 tot = sizeof(struct iphdr) + sizeof(struct udphdr) + DATA_HDR_V4 + data_len + pad;
	h->ip.tot_len = bpf_htons(tot);
	h->ip.ttl = RELAY_TTL;
	ipv4_csum(&h->ip);

	int action = route(ctx, &h->eth, AF_INET, v->local.addr, v->client.addr, tot);
	if (action < 0) {
		stat_inc(STAT_PASS_MATCHED);
		return XDP_PASS;
	}
	__u32 slot = v->slot;
	if (grow_for_data(ctx, V4_HDRS, data_len, pad, hlen)) {
		stat_inc(STAT_PASS_MATCHED);
		return XDP_PASS;
	}
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	if (data + V4_HDRS + DATA_HDR_V4 > end)
		return XDP_ABORTED;
	put_v4(data, &h->eth);
	put_data_hdr_v4(data + V4_HDRS, hdr);
	count_kind(slot, 0, data_len, 1);
	return action;
}

// The channel bound to the peer's source port `port`, if any.
static __always_inline const struct peer_chan *find_chan(const struct peer_ip_val *v, __be16 port)
{
	if (!port)
		return 0;
#pragma unroll
	for (int i = 0; i < PEER_CHANNELS; i++)
		if (v->chans[i].port == port)
			return &v->chans[i];
	return 0;
}

static __always_inline int handle_v4(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct scratch *sc = bpf_map_lookup_elem(&SCRATCH, &zero);
	if (!sc)
		return XDP_PASS;
	struct v4_headers *h = &sc->h4;
	if (data + V4_HDRS > end)
		return XDP_PASS;
	put_v4(&h->eth, data);
	// No options, no fragments, UDP, and lengths that agree with the frame exactly.
	if (h->ip.ihl != 5 || h->ip.version != 4 || h->ip.protocol != IPPROTO_UDP)
		return XDP_PASS;
	if (h->ip.frag_off & bpf_htons(0x3fff))
		return XDP_PASS;
	__u16 tot_len = bpf_ntohs(h->ip.tot_len);
	if ((long)tot_len != (long)(end - data) - (long)sizeof(struct ethhdr))
		return XDP_PASS;
	__u16 udp_len = bpf_ntohs(h->udp.len);
	if (udp_len != tot_len - sizeof(struct iphdr) || udp_len < sizeof(struct udphdr))
		return XDP_PASS;
	__u16 payload_len = udp_len - sizeof(struct udphdr);
	__u8 *payload = data + V4_HDRS;

	// A Send indication (type 0x0016) from a mirrored client; anything else starting like one
	// may still be a peer's datagram.
	if (payload_len >= 20 && payload + 2 <= (__u8 *)end && payload[0] == 0 &&
	    payload[1] == STUN_SEND_INDICATION) {
		int r = v4_send(ctx, h, payload_len);
		if (r >= 0)
			return r;
		goto from_peer;
	}

	// A ChannelData message starts with a channel number: 0x4000-0x4FFF in RFC 8656 §12,
	// 0x4000-0x7FFF in RFC 5766, which the engine accepts too (coturn's clients use them all).
	if (payload_len >= 4 && payload + 4 <= (__u8 *)end && (payload[0] & 0xc0) == 0x40) {
		__u16 channel = ((__u16)payload[0] << 8) | payload[1];
		__u16 data_len = ((__u16)payload[2] << 8) | payload[3];
		struct chan_key4 key = {
			.client_addr = h->ip.saddr,
			.local_addr = h->ip.daddr,
			.client_port = h->udp.source,
			.local_port = h->udp.dest,
			.channel = channel,
		};
		struct chan_val *v = bpf_map_lookup_elem(&CHANNELS4, &key);
		// A miss may still be a peer's datagram that happens to start like ChannelData.
		if (!v)
			goto from_peer;
		// Over UDP the message fills the datagram (no padding to prove right), and the peer
		// is in the client's family.
		if (data_len != payload_len - 4 || v->peer.family != v->relay.family ||
		    expired(sc, v->expires_ns)) {
			stat_inc(STAT_PASS_MATCHED);
			return XDP_PASS;
		}
		if (v->peer.family == 6) {
			// A dual allocation's peer in the other family. IPv6 needs a UDP checksum: one
			// must come in to be updated.
			if (!h->udp.check || loopback_partial_csum(ctx)) {
				stat_inc(STAT_PASS_MATCHED);
				return XDP_PASS;
			}
			__u16 w[2];
			__builtin_memcpy(w, payload, 4);
			struct xplan *x = &sc->x;
			plan(x, &v->relay, &v->peer, v->slot, data_len);
			x->sum = csum_sub(csum_sub(sum_out_v4(h), w[0]), w[1]);
			x->cut = 4;
			x->in_hdrs = V4_HDRS;
			x->c2p = 1;
			return out_v6(ctx);
		}
		if (v->peer.family != 4) {
			stat_inc(STAT_PASS_MATCHED);
			return XDP_PASS;
		}
		return v4_client_to_peer(ctx, h, v, data_len);
	}

from_peer:;
	struct peer_key4 pk = {
		.peer_addr = h->ip.saddr,
		.relay_addr = h->ip.daddr,
		.relay_port = h->udp.dest,
	};
	struct peer_ip_val *pip = bpf_map_lookup_elem(&PEER_IPS4, &pk);
	if (!pip)
		return XDP_PASS;
	struct data_val *pv = &pip->perm;
	const struct peer_chan *ch = find_chan(pip, h->udp.source);
	if (!ch) {
		// No channel for this peer transport address: a Data indication if its IP has a
		// permission (the engine binds no channel the mirror did not mirror with it).
		struct data_val *dv = pv;
		if (!dv->expires_ns)
			return XDP_PASS;
		if (dv->client.family != dv->local.family || payload_len > 0xffff - 64 ||
		    expired(sc, dv->expires_ns)) {
			stat_inc(STAT_PASS_MATCHED);
			return XDP_PASS;
		}
		if (dv->client.family == 6) {
			if (!h->udp.check || loopback_partial_csum(ctx)) {
				stat_inc(STAT_PASS_MATCHED);
				return XDP_PASS;
			}
			__builtin_memset(sc->peer, 0, 16);
			__builtin_memcpy(sc->peer, &h->ip.saddr, 4);
			struct xplan *x = &sc->x;
			plan(x, &dv->local, &dv->client, dv->slot, payload_len);
			x->sum = sum_out_v4(h);
			x->added = data_header(sc->hdr, &sc->rng, sc->peer, h->udp.source, 0, payload_len);
			x->pad = (4 - (payload_len & 3)) & 3;
			x->in_hdrs = V4_HDRS;
			x->indication = 1;
			return out_v6(ctx);
		}
		if (dv->client.family != 4) {
			stat_inc(STAT_PASS_MATCHED);
			return XDP_PASS;
		}
		return v4_data(ctx, h, dv, payload_len);
	}
	if (pv->client.family != pv->local.family || payload_len > 0xffff - 64 ||
	    expired(sc, ch->expires_ns)) {
		stat_inc(STAT_PASS_MATCHED);
		return XDP_PASS;
	}
	if (pv->client.family == 6) {
		if (!h->udp.check || loopback_partial_csum(ctx)) {
			stat_inc(STAT_PASS_MATCHED);
			return XDP_PASS;
		}
		struct xplan *x = &sc->x;
		plan(x, &pv->local, &pv->client, pv->slot, payload_len);
		x->sum = sum_out_v4(h);
		sc->hdr[0] = ch->channel >> 8;
		sc->hdr[1] = ch->channel;
		sc->hdr[2] = payload_len >> 8;
		sc->hdr[3] = payload_len;
		x->added = 4;
		x->in_hdrs = V4_HDRS;
		return out_v6(ctx);
	}
	if (pv->client.family != 4) {
		stat_inc(STAT_PASS_MATCHED);
		return XDP_PASS;
	}
	return v4_peer_to_client(ctx, h, pv, ch->channel, payload_len);
}

// ---------------------------------------------------------------------------------------------
// IPv6 (the UDP checksum is mandatory: an incoming 0 is not relayed here)

static __always_inline int v6_client_to_peer(struct xdp_md *ctx, struct v6_headers *h,
					     const struct chan_val *v, __u16 data_len)
{
	__u16 old_len = h->udp.len;
	__u16 new_len = bpf_htons(data_len + sizeof(struct udphdr));
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	if (data + V6_HDRS + 4 > end)
		return XDP_PASS;
	__u16 *cd = data + V6_HDRS;

	__u64 sum = (__u16)~h->udp.check;
	sum = csum_sub_words(sum, (__u16 *)&h->ip.saddr, 8);
	sum = csum_sub_words(sum, (__u16 *)&h->ip.daddr, 8);
	sum = csum_sub(sum, h->udp.source);
	sum = csum_sub(sum, h->udp.dest);
	sum = csum_sub(sum, old_len);
	sum = csum_sub(sum, old_len);
	sum = csum_sub(sum, cd[0]);
	sum = csum_sub(sum, cd[1]);
	__builtin_memcpy(&h->ip.saddr, v->relay.addr, 16);
	__builtin_memcpy(&h->ip.daddr, v->peer.addr, 16);
	h->udp.source = v->relay.port;
	h->udp.dest = v->peer.port;
	h->udp.len = new_len;
	sum = csum_add_words(sum, (__u16 *)&h->ip.saddr, 8);
	sum = csum_add_words(sum, (__u16 *)&h->ip.daddr, 8);
	sum = csum_add(sum, h->udp.source);
	sum = csum_add(sum, h->udp.dest);
	sum = csum_add(sum, new_len);
	sum = csum_add(sum, new_len);
	h->udp.check = udp_csum_finish(sum);
	h->ip.payload_len = new_len;
	h->ip.hop_limit = RELAY_TTL;

	int action = route(ctx, &h->eth, AF_INET6, v->relay.addr, v->peer.addr,
			   data_len + sizeof(struct udphdr) + sizeof(struct ipv6hdr));
	if (action < 0) {
		stat_inc(STAT_PASS_MATCHED);
		return XDP_PASS;
	}
	if (bpf_xdp_adjust_head(ctx, 4))
		return XDP_PASS;
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	if (data + V6_HDRS > end)
		return XDP_ABORTED;
	put_v6(data, &h->eth);
	count(v->slot, 1, data_len);
	return action;
}

static __always_inline int v6_peer_to_client(struct xdp_md *ctx, struct v6_headers *h,
					     const struct data_val *v, __u16 channel, __u16 data_len)
{
	__u16 old_len = h->udp.len;
	__u16 new_len = bpf_htons(data_len + 4 + sizeof(struct udphdr));
	__u16 cd[2] __attribute__((aligned(4))) = {bpf_htons(channel), bpf_htons(data_len)};

	__u64 sum = (__u16)~h->udp.check;
	sum = csum_sub_words(sum, (__u16 *)&h->ip.saddr, 8);
	sum = csum_sub_words(sum, (__u16 *)&h->ip.daddr, 8);
	sum = csum_sub(sum, h->udp.source);
	sum = csum_sub(sum, h->udp.dest);
	sum = csum_sub(sum, old_len);
	sum = csum_sub(sum, old_len);
	__builtin_memcpy(&h->ip.saddr, v->local.addr, 16);
	__builtin_memcpy(&h->ip.daddr, v->client.addr, 16);
	h->udp.source = v->local.port;
	h->udp.dest = v->client.port;
	h->udp.len = new_len;
	sum = csum_add_words(sum, (__u16 *)&h->ip.saddr, 8);
	sum = csum_add_words(sum, (__u16 *)&h->ip.daddr, 8);
	sum = csum_add(sum, h->udp.source);
	sum = csum_add(sum, h->udp.dest);
	sum = csum_add(sum, new_len);
	sum = csum_add(sum, new_len);
	sum = csum_add(sum, cd[0]);
	sum = csum_add(sum, cd[1]);
	h->udp.check = udp_csum_finish(sum);
	h->ip.payload_len = new_len;
	h->ip.hop_limit = RELAY_TTL;

	int action = route(ctx, &h->eth, AF_INET6, v->local.addr, v->client.addr,
			   data_len + 4 + sizeof(struct udphdr) + sizeof(struct ipv6hdr));
	if (action < 0) {
		stat_inc(STAT_PASS_MATCHED);
		return XDP_PASS;
	}
	if (bpf_xdp_adjust_head(ctx, -4))
		return XDP_PASS;
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	if (data + V6_HDRS + 4 > end)
		return XDP_ABORTED;
	put_v6(data, &h->eth);
	LD32(data, V6_HDRS) = LD32(cd, 0);
	count(v->slot, 0, data_len);
	return action;
}

// A Send indication from a mirrored client with a live permission for its peer: DATA's value
// leaves from the relay address (the header and the attributes before DATA are cut in front, the
// zero padding and the attributes after it, FINGERPRINT included, behind).
static __always_inline int v6_send(struct xdp_md *ctx, struct v6_headers *h, __u16 payload_len)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct send_info si;
	if (parse_send(ctx, V6_HDRS, payload_len, &si))
		return -1;
	__u32 zero = 0;
	struct scratch *sc = bpf_map_lookup_elem(&SCRATCH, &zero);
	if (!sc)
		return -1;
	struct send_key *key = &sc->sk;
	endpoint_v6(&key->client, &h->ip.saddr, h->udp.source);
	endpoint_v6(&key->local, &h->ip.daddr, h->udp.dest);
	endpoint_peer(&key->peer, si.peer, si.family);
	struct send_val *v = bpf_map_lookup_elem(&SEND_PERMS, key);
	if (!v)
		return -1;
	if (v->relay.family != si.family || expired(sc, v->expires_ns)) {
		stat_inc(STAT_PASS_MATCHED);
		return XDP_PASS;
	}
	if (si.family == 4) {
		// A dual allocation's peer in the other family.
		struct endpoint dst;
		__builtin_memset(&dst, 0, sizeof(dst));
		__builtin_memcpy(dst.addr, si.peer, 16);
		dst.port = si.peer_port;
		dst.family = 4;
		struct xplan *x = &sc->x;
		plan(x, &v->relay, &dst, v->slot, si.data_len);
		__u64 sum = sum_out_v6(h);
		sum = csum_sub_prefix(sum, data + V6_HDRS, end, si.data_off);
		sum = csum_sub_region(sum, data + V6_HDRS, end,
				      si.data_off + si.data_len + si.pad_len, si.suffix_len);
		x->sum = sum;
		x->cut = si.data_off;
		x->tail = si.pad_len + si.suffix_len;
		x->in_hdrs = V6_HDRS;
		x->c2p = 1;
		x->indication = 1;
		return out_v4(ctx);
	}
	__u16 data_len = si.data_len;
	__u16 old_len = h->udp.len;
	__u16 new_len = bpf_htons(data_len + sizeof(struct udphdr));
	__u64 sum = (__u16)~h->udp.check;
	{
		sum = csum_sub_words(sum, (__u16 *)&h->ip.saddr, 8);
		sum = csum_sub_words(sum, (__u16 *)&h->ip.daddr, 8);
		sum = csum_sub(sum, h->udp.source);
		sum = csum_sub(sum, h->udp.dest);
		sum = csum_sub(sum, old_len);
		sum = csum_sub(sum, old_len);
		sum = csum_sub_prefix(sum, data + V6_HDRS, end, si.data_off);
		sum = csum_sub_region(sum, data + V6_HDRS, end,
				      si.data_off + si.data_len + si.pad_len, si.suffix_len);
	}
	__builtin_memcpy(&h->ip.saddr, v->relay.addr, 16);
	__builtin_memcpy(&h->ip.daddr, si.peer, 16);
	h->udp.source = v->relay.port;
	h->udp.dest = si.peer_port;
	h->udp.len = new_len;
	{
		sum = csum_add_words(sum, (__u16 *)&h->ip.saddr, 8);
		sum = csum_add_words(sum, (__u16 *)&h->ip.daddr, 8);
		sum = csum_add(sum, h->udp.source);
		sum = csum_add(sum, h->udp.dest);
		sum = csum_add(sum, new_len);
		sum = csum_add(sum, new_len);
		h->udp.check = udp_csum_finish(sum);
	}
	h->ip.payload_len = new_len;
	h->ip.hop_limit = RELAY_TTL;

	int action = route(ctx, &h->eth, AF_INET6, v->relay.addr, si.peer,
			   data_len + sizeof(struct udphdr) + sizeof(struct ipv6hdr));
	if (action < 0) {
		stat_inc(STAT_PASS_MATCHED);
		return XDP_PASS;
	}
	__u32 slot = v->slot;
	// The head first: if the tail cannot move, the bytes in front are still there to go back to.
	int tail = si.pad_len + si.suffix_len;
	if (bpf_xdp_adjust_head(ctx, si.data_off))
		return XDP_PASS;
	if (tail && bpf_xdp_adjust_tail(ctx, -tail)) {
		bpf_xdp_adjust_head(ctx, -(int)si.data_off);
		return XDP_PASS;
	}
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	if (data + V6_HDRS > end)
		return XDP_ABORTED;
	put_v6(data, &h->eth);
	count_kind(slot, 1, data_len, 1);
	return action;
}

// A datagram from a permitted peer with no channel mirrored for it: a Data indication to the
// client (RFC 8656 §11.3), byte for byte what the engine writes but for the transaction id.
static __always_inline int v6_data(struct xdp_md *ctx, struct v6_headers *h,
				   const struct data_val *v, __u16 data_len)
{
	__u32 zero = 0;
	struct scratch *sc = bpf_map_lookup_elem(&SCRATCH, &zero);
	if (!sc)
		return XDP_PASS;
	__u8 *hdr = sc->hdr;
	__u8 *peer = sc->peer;
	__builtin_memcpy(peer, &h->ip.saddr, 16);
	int hlen = data_header(hdr, &sc->rng, peer, h->udp.source, 1, data_len);
	__u32 pad = (4 - (data_len & 3)) & 3;
	__u16 old_len = h->udp.len;
	__u16 new_len = bpf_htons(sizeof(struct udphdr) + DATA_HDR_V6 + data_len + pad);
	__u64 sum = (__u16)~h->udp.check;
	{
		sum = csum_sub_words(sum, (__u16 *)&h->ip.saddr, 8);
		sum = csum_sub_words(sum, (__u16 *)&h->ip.daddr, 8);
		sum = csum_sub(sum, h->udp.source);
		sum = csum_sub(sum, h->udp.dest);
		sum = csum_sub(sum, old_len);
		sum = csum_sub(sum, old_len);
	}
	__builtin_memcpy(&h->ip.saddr, v->local.addr, 16);
	__builtin_memcpy(&h->ip.daddr, v->client.addr, 16);
	h->udp.source = v->local.port;
	h->udp.dest = v->client.port;
	h->udp.len = new_len;
	{
		sum = csum_add_words(sum, (__u16 *)&h->ip.saddr, 8);
		sum = csum_add_words(sum, (__u16 *)&h->ip.daddr, 8);
		sum = csum_add(sum, h->udp.source);
		sum = csum_add(sum, h->udp.dest);
		sum = csum_add(sum, new_len);
		sum = csum_add(sum, new_len);
		const __u32 *w = (const __u32 *)hdr;
#pragma unroll
		for (int i = 0; i < DATA_HDR_V6 / 4; i++)
			sum = csum_add32(sum, w[i]);
		h->udp.check = udp_csum_finish(sum);
	}
	h->ip.payload_len = new_len;
	h->ip.hop_limit = RELAY_TTL;

	int action = route(ctx, &h->eth, AF_INET6, v->local.addr, v->client.addr,
			   sizeof(struct ipv6hdr) + sizeof(struct udphdr) + DATA_HDR_V6 + data_len + pad);
	if (action < 0) {
		stat_inc(STAT_PASS_MATCHED);
		return XDP_PASS;
	}
	__u32 slot = v->slot;
	if (grow_for_data(ctx, V6_HDRS, data_len, pad, hlen)) {
		stat_inc(STAT_PASS_MATCHED);
		return XDP_PASS;
	}
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	if (data + V6_HDRS + DATA_HDR_V6 > end)
		return XDP_ABORTED;
	put_v6(data, &h->eth);
	put_data_hdr_v6(data + V6_HDRS, hdr);
	count_kind(slot, 0, data_len, 1);
	return action;
}

static __always_inline int handle_v6(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	if (loopback_partial_csum(ctx))
		return XDP_PASS;
	__u32 zero = 0;
	struct scratch *sc = bpf_map_lookup_elem(&SCRATCH, &zero);
	if (!sc)
		return XDP_PASS;
	struct v6_headers *h = &sc->h6;
	if (data + V6_HDRS > end)
		return XDP_PASS;
	put_v6(&h->eth, data);
	// UDP right after the fixed header (no extension headers), lengths that agree exactly, and
	// a checksum (0 is invalid for UDP over IPv6 and left to the stack).
	if (h->ip.version != 6 || h->ip.nexthdr != IPPROTO_UDP || h->udp.check == 0)
		return XDP_PASS;
	__u16 plen = bpf_ntohs(h->ip.payload_len);
	if ((long)plen != (long)(end - data) - (long)(sizeof(struct ethhdr) + sizeof(struct ipv6hdr)))
		return XDP_PASS;
	__u16 udp_len = bpf_ntohs(h->udp.len);
	if (udp_len != plen || udp_len < sizeof(struct udphdr))
		return XDP_PASS;
	__u16 payload_len = udp_len - sizeof(struct udphdr);
	__u8 *payload = data + V6_HDRS;

	// A Send indication (type 0x0016) from a mirrored client; anything else starting like one
	// may still be a peer's datagram.
	if (payload_len >= 20 && payload + 2 <= (__u8 *)end && payload[0] == 0 &&
	    payload[1] == STUN_SEND_INDICATION) {
		int r = v6_send(ctx, h, payload_len);
		if (r >= 0)
			return r;
		goto from_peer;
	}

	// A ChannelData message starts with a channel number: 0x4000-0x4FFF in RFC 8656 §12,
	// 0x4000-0x7FFF in RFC 5766, which the engine accepts too (coturn's clients use them all).
	if (payload_len >= 4 && payload + 4 <= (__u8 *)end && (payload[0] & 0xc0) == 0x40) {
		__u16 channel = ((__u16)payload[0] << 8) | payload[1];
		__u16 data_len = ((__u16)payload[2] << 8) | payload[3];
		struct chan_key *key = &sc->ck;
		endpoint_v6(&key->client, &h->ip.saddr, h->udp.source);
		endpoint_v6(&key->local, &h->ip.daddr, h->udp.dest);
		LD32(&key->channel, 0) = channel; // and the pad after it, zero
		struct chan_val *v = bpf_map_lookup_elem(&CHANNELS, key);
		// A miss may still be a peer's datagram that happens to start like ChannelData.
		if (!v)
			goto from_peer;
		if (data_len != payload_len - 4 || v->peer.family != v->relay.family ||
		    expired(sc, v->expires_ns)) {
			stat_inc(STAT_PASS_MATCHED);
			return XDP_PASS;
		}
		if (v->peer.family == 4) {
			// A dual allocation's peer in the other family.
			if (0) {
				stat_inc(STAT_PASS_MATCHED);
				return XDP_PASS;
			}
			__u16 w[2];
			__builtin_memcpy(w, payload, 4);
			struct xplan *x = &sc->x;
			plan(x, &v->relay, &v->peer, v->slot, data_len);
			x->sum = csum_sub(csum_sub(sum_out_v6(h), w[0]), w[1]);
			x->cut = 4;
			x->in_hdrs = V6_HDRS;
			x->c2p = 1;
			return out_v4(ctx);
		}
		if (v->peer.family != 6) {
			stat_inc(STAT_PASS_MATCHED);
			return XDP_PASS;
		}
		return v6_client_to_peer(ctx, h, v, data_len);
	}

from_peer:;
	struct peer_key *pk = &sc->pk;
	endpoint_v6(&pk->peer, &h->ip.saddr, 0);
	endpoint_v6(&pk->relay, &h->ip.daddr, h->udp.dest);
	struct peer_ip_val *pip = bpf_map_lookup_elem(&PEER_IPS, pk);
	if (!pip)
		return XDP_PASS;
	struct data_val *pv = &pip->perm;
	const struct peer_chan *ch = find_chan(pip, h->udp.source);
	if (!ch) {
		// No channel for this peer transport address: a Data indication if its IP has a
		// permission (the engine binds no channel the mirror did not mirror with it).
		struct data_val *dv = pv;
		if (!dv->expires_ns)
			return XDP_PASS;
		if (dv->client.family != dv->local.family || payload_len > 0xffff - 64 ||
		    expired(sc, dv->expires_ns)) {
			stat_inc(STAT_PASS_MATCHED);
			return XDP_PASS;
		}
		if (dv->client.family == 4) {
			if (0) {
				stat_inc(STAT_PASS_MATCHED);
				return XDP_PASS;
			}
			__builtin_memcpy(sc->peer, &h->ip.saddr, 16);
			struct xplan *x = &sc->x;
			plan(x, &dv->local, &dv->client, dv->slot, payload_len);
			x->sum = sum_out_v6(h);
			x->added = data_header(sc->hdr, &sc->rng, sc->peer, h->udp.source, 1, payload_len);
			x->pad = (4 - (payload_len & 3)) & 3;
			x->in_hdrs = V6_HDRS;
			x->indication = 1;
			return out_v4(ctx);
		}
		if (dv->client.family != 6) {
			stat_inc(STAT_PASS_MATCHED);
			return XDP_PASS;
		}
		return v6_data(ctx, h, dv, payload_len);
	}
	if (pv->client.family != pv->local.family || payload_len > 0xffff - 64 ||
	    expired(sc, ch->expires_ns)) {
		stat_inc(STAT_PASS_MATCHED);
		return XDP_PASS;
	}
	if (pv->client.family == 4) {
		struct xplan *x = &sc->x;
		plan(x, &pv->local, &pv->client, pv->slot, payload_len);
		x->sum = sum_out_v6(h);
		sc->hdr[0] = ch->channel >> 8;
		sc->hdr[1] = ch->channel;
		sc->hdr[2] = payload_len >> 8;
		sc->hdr[3] = payload_len;
		x->added = 4;
		x->in_hdrs = V6_HDRS;
		return out_v4(ctx);
	}
	if (pv->client.family != 6) {
		stat_inc(STAT_PASS_MATCHED);
		return XDP_PASS;
	}
	return v6_peer_to_client(ctx, h, pv, ch->channel, payload_len);
}

SEC("xdp")
int turn_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return XDP_PASS;
	if (eth->h_proto == bpf_htons(ETH_P_IP))
		return handle_v4(ctx);
	if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		return handle_v6(ctx);
	return XDP_PASS;
}

// Passes everything: attached to the far end of a veth so that frames another program sends
// there with XDP_TX or a redirect are delivered (a veth delivers XDP frames only to a peer whose
// NAPI is on, which an XDP program turns on).
SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
