//! vigi-turn: a TURN/STUN server (RFC 8656, RFC 8489) that drops in for coturn.
//!
//! Bytes come in on a socket owned by a **worker** ([`io`]), are classified and parsed by **wire**
//! code ([`proto`]), and are decided on by the **engine** ([`engine`]): a sans-IO state machine that
//! owns allocations, permissions, channels, nonces, auth and accounting, and that never touches a
//! socket or a clock. The engine answers with routing decisions (data plane) or messages to send
//! (control plane); the worker does the I/O. Everything a user configures enters through [`config`],
//! everything a user can watch leaves through [`metrics`] and [`http`]. The signaling companion
//! ([`signal`]) and the load harness ([`bench`], binary `vigi-bench`) sit beside the relay and share
//! only [`proto`] and the credential code. The [`fleet`] module shares users, secrets and load
//! with other nodes through Redis, off the data path. Everything beside the workers (HTTP,
//! signaling, the fleet's Redis tasks, the signal loop) runs on one runtime, [`control`]'s; the
//! few raw system calls live in [`sys`].

// Raw system calls live in `sys` (and the XDP loader in `io/fastpath`) only; see `sys`'s doc.
#![deny(unsafe_code)]

pub mod bench;
pub mod config;
pub mod control;
pub mod engine;
pub mod fleet;
pub mod http;
pub mod io;
pub mod metrics;
pub mod proto;
pub mod signal;
#[allow(unsafe_code)]
pub mod sys;
