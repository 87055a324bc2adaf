//! Untrusted bytes as the agent reads them from the tool: frames, then NAR blocks through the
//! block decoder, then messages through the JSON decoder.
//!
//! Invariants: nothing panics or allocates past the frame limit; a block decodes to at most
//! `BLOCK` bytes; a decoded request encodes back to a frame that decodes to the same request.

#![no_main]

use libfuzzer_sys::fuzz_target;
use nixos_anywhere_rs::proto::frame::{self, Frame};
use nixos_anywhere_rs::proto::{BLOCK, BlockDecoder, Request};

fuzz_target!(|data: &[u8]| {
    let mut input = data;
    let mut blocks = BlockDecoder::new();
    while let Ok(Some(next)) = frame::read_frame(&mut input, "fuzz") {
        match next {
            Frame::Block { kind, payload } => {
                if let Ok(bytes) = blocks.decode(kind, payload, "fuzz") {
                    assert!(bytes.len() <= BLOCK);
                }
            }
            Frame::Message(payload) => {
                if let Ok(request) = frame::decode::<Request>(&payload, "fuzz") {
                    let again = frame::message_frame(&request);
                    let Ok(Some(Frame::Message(back))) = frame::read_frame(&mut &again[..], "fuzz")
                    else {
                        panic!("a frame we wrote does not read back");
                    };
                    assert_eq!(frame::decode::<Request>(&back, "fuzz").ok(), Some(request));
                }
            }
        }
    }
});
