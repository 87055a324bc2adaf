//! Moving NARs: the sender ([`send`]) with its adaptive zstd level ([`auto`]), and the one
//! receiving loop ([`receive`]) that the local copy and the agent share.

mod auto;
pub mod receive;
pub mod send;

pub use receive::{Received, receive_all};
pub use send::{Compression, FrameSink, SendError, SendStats, send_nars};
