//! The agent's patience: input that fails once nothing has arrived for a while.

use std::io::Read;
use std::os::fd::AsFd;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec};

/// Input that fails once nothing has arrived for a while. A connection that dies without a
/// word (a pulled cable, a lost route) never closes the agent's stdin: sshd notices only hours
/// later, and until then the agent would hold the store's lock, so that a rerun waits for it.
/// The tool passes its own patience (`ServerAliveInterval` × `ServerAliveCountMax`): both ends
/// give up on the same silence, and whatever arrived whole is registered.
pub struct GiveUp<R> {
    inner: R,
    after: Duration,
    timeout: Timespec,
}

impl<R: Read + AsFd> GiveUp<R> {
    pub fn after(inner: R, after: Duration) -> Self {
        let timeout = Timespec::try_from(after).unwrap_or(Timespec {
            tv_sec: i64::MAX,
            tv_nsec: 0,
        });
        Self {
            inner,
            after,
            timeout,
        }
    }
}

impl<R: Read + AsFd> Read for GiveUp<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let mut fds = [PollFd::new(&self.inner, PollFlags::IN)];
            match rustix::event::poll(&mut fds, Some(&self.timeout)) {
                Ok(0) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "nothing from the tool for {} s: the connection is gone",
                            self.after.as_secs()
                        ),
                    ));
                }
                Ok(_) => return self.inner.read(buf),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}
