//! SCTP: pods may declare SCTP ports, but the lab can neither serve nor probe
//! them, and says so instead of reporting a silent pass.

use std::sync::OnceLock;

use nix::sys::socket::{socket, AddressFamily, SockFlag, SockProtocol, SockType};

/// Why SCTP ports are not servable/probeable here (checked once per process).
pub fn unsupported_reason() -> &'static str {
    static REASON: OnceLock<String> = OnceLock::new();
    REASON.get_or_init(|| {
        let probe = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::Sctp,
        );
        match probe {
            Err(e) => format!("SCTP is not servable: this kernel has no SCTP sockets ({e})"),
            Ok(_socket) => {
                "SCTP is not servable: the lab has no SCTP listener or prober yet".to_string()
            }
        }
    })
}
