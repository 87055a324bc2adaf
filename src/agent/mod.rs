//! The agent: this same executable, run on the target as `nixos-anywhere-rs agent` over one SSH
//! exec channel. It speaks [`crate::proto`] on stdin and stdout and needs nothing from the
//! target but a kernel.
//!
//! [`serve`] is the dispatcher: `Hello`, then each request to its handler, until `Bye`. Every
//! failure goes back to the tool as a [`Reply::Error`] with its kind and step, as well as
//! ending the agent with a non-zero status.

mod phases;
mod receive;
mod silence;
mod substitute;

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::fd::AsFd;
use std::time::{Duration, SystemTime};

pub use phases::PhaseError;
pub use silence::GiveUp;

use crate::facts::{Facts, FactsError};
use crate::proto::{
    AgentFailure, ErrorKind, Frame, PROTOCOL_VERSION, Reply, Request, WireError, frame,
};
use crate::store::{StoreError, StoreRoot};
use crate::substitute::SubstituteError;

const PEER: &str = "tool";

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("reading the machine's facts: {0}")]
    Facts(#[from] FactsError),
    #[error("{0} before a store root was opened")]
    NoStore(&'static str),
    #[error(transparent)]
    Phase(#[from] PhaseError),
    #[error("substitution: {0}")]
    Substitute(#[from] SubstituteError),
    #[error("a transfer that substitutes, with no substitution planned before it")]
    NoPlan,
}

impl AgentError {
    /// What the tool is told.
    fn failure(&self) -> AgentFailure {
        let (kind, step) = match self {
            Self::Wire(_) => (ErrorKind::Protocol, None),
            Self::Store(
                e @ (StoreError::HashMismatch { .. }
                | StoreError::Nar { .. }
                | StoreError::BadDerivation { .. }
                | StoreError::MissingReference { .. }),
            ) => (ErrorKind::Integrity, Some(receiving(e))),
            Self::Store(_) => (ErrorKind::Store, None),
            Self::Facts(_) => (ErrorKind::Facts, None),
            Self::NoStore(_) | Self::NoPlan => (ErrorKind::Refused, None),
            Self::Substitute(_) => (ErrorKind::Substitute, None),
            // A failed step: named once, as the plan numbers it, with its own error.
            Self::Phase(PhaseError::Disk(crate::disk::run::DiskError::Step(e))) => {
                return AgentFailure {
                    kind: ErrorKind::Disk,
                    step: Some(format!("disk step {} ({})", e.number, e.description)),
                    message: e.source.to_string(),
                };
            }
            Self::Phase(PhaseError::Install(e)) => {
                return AgentFailure {
                    kind: ErrorKind::Install,
                    step: Some(format!("install step {} ({})", e.number, e.description)),
                    message: e.source.to_string(),
                };
            }
            Self::Phase(PhaseError::Disk(_)) => (ErrorKind::Disk, None),
            Self::Phase(_) => (ErrorKind::Install, None),
        };
        AgentFailure {
            kind,
            step,
            message: self.to_string(),
        }
    }
}

/// The step a store error on one path happened in.
fn receiving(e: &StoreError) -> String {
    match e {
        StoreError::HashMismatch { path, .. }
        | StoreError::Nar { path, .. }
        | StoreError::BadDerivation { path }
        | StoreError::MissingReference { path, .. } => format!("receive {path}"),
        _ => "receive".to_owned(),
    }
}

/// `nixos-anywhere-rs agent`: serves the tool on this process's stdin and stdout, giving up
/// after `give_up_after` of silence.
pub fn run_on_stdio(give_up_after: Option<Duration>) -> Result<(), AgentError> {
    // Marks this build's file as in use, so that another build's upload leaves it be.
    if let Ok(exe) = std::env::current_exe() {
        let _ = File::open(exe).and_then(|f| f.set_modified(SystemTime::now()));
    }
    phases::watch_memory();
    let io_err = |e: std::io::Error| WireError::Io {
        peer: PEER,
        source: e,
    };
    // The raw descriptors: the agent buffers by itself, and reads on its own thread.
    let stdin = File::from(
        std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map_err(io_err)?,
    );
    // sshd writes the channel into this pipe 32 KiB at a time; a deeper pipe means fewer
    // wake-ups on both sides (best effort: it may be a socket, or the limit lower).
    let _ = rustix::pipe::fcntl_setpipe_size(&stdin, 1 << 20);
    let stdout = File::from(
        std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map_err(io_err)?,
    );
    let stdout = BufWriter::new(stdout);
    match give_up_after {
        Some(after) => serve(GiveUp::after(stdin, after), stdout),
        None => serve(stdin, stdout),
    }
}

/// Serves one tool over `input`/`output` until it says goodbye or the stream ends. An error is
/// reported to the tool as [`Reply::Error`] as well as returned.
pub fn serve(input: impl Read + Send, mut output: impl Write + Send) -> Result<(), AgentError> {
    let result = session(input, &mut output);
    if let Err(e) = &result {
        tracing::error!("{e}");
        // The tool may be gone already; the error is returned either way.
        let _ = frame::write_message(&mut output, &Reply::Error(e.failure()), PEER);
    }
    result
}

fn session(input: impl Read + Send, output: &mut (impl Write + Send)) -> Result<(), AgentError> {
    let mut input = BufReader::with_capacity(1 << 20, input);
    let mut store: Option<StoreRoot> = None;
    let mut substitution: Option<substitute::Pending> = None;
    while let Some(next) = frame::read_frame(&mut input, PEER)? {
        let Frame::Message(payload) = next else {
            let problem = "a NAR block outside a transfer".to_owned();
            return Err(WireError::Protocol {
                peer: PEER,
                problem,
            }
            .into());
        };
        let request = frame::decode::<Request>(&payload, PEER)?;
        let span = tracing::info_span!("request", kind = request_kind(&request));
        let _entered = span.enter();
        let reply = match request {
            Request::Hello { protocol, version } => {
                if protocol != PROTOCOL_VERSION {
                    tracing::error!(%version, "tool speaks another protocol");
                    return Err(WireError::VersionMismatch {
                        tool: protocol,
                        agent: PROTOCOL_VERSION,
                    }
                    .into());
                }
                Reply::Hello {
                    protocol: PROTOCOL_VERSION,
                    version: env!("CARGO_PKG_VERSION").into(),
                }
            }
            Request::Facts => Reply::Facts(Box::new(Facts::gather()?)),
            Request::QueryValid { root, paths } => {
                // The open store's own view counts paths received but not yet registered.
                let valid = match &store {
                    Some(open) if open.path() == root => open.valid_paths(&paths)?,
                    _ => StoreRoot::valid_paths_at(&root, &paths)?,
                };
                Reply::Valid {
                    paths: valid.into_iter().collect(),
                }
            }
            Request::OpenStore { root } => {
                store = Some(StoreRoot::open(&root)?);
                Reply::StoreOpened
            }
            Request::PlanSubstitution {
                overrides,
                root,
                paths,
            } => {
                let (pending, overview) = substitute::plan(&overrides, &root, &paths)?;
                substitution = Some(pending);
                Reply::SubstitutionPlanned(Box::new(overview))
            }
            Request::Receive {
                paths,
                substitute: false,
            } => {
                let store = store.as_mut().ok_or(AgentError::NoStore("a transfer"))?;
                receive::receive(store, &paths, &mut input, output)?
            }
            Request::Receive {
                paths,
                substitute: true,
            } => {
                let open = store.take().ok_or(AgentError::NoStore("a transfer"))?;
                let pending = substitution.take().ok_or(AgentError::NoPlan)?;
                let (back, reply) = substitute::receive(open, pending, &paths, &mut input, output);
                store = back;
                reply?
            }
            Request::WriteKeys { keys } => phases::write_keys(&keys)?,
            Request::Disko {
                layout,
                mode,
                root_mountpoint,
            } => phases::disko(&layout, mode, &root_mountpoint, output)?,
            Request::PutFiles { root, entries } => phases::put_files(&root, &entries)?,
            Request::Install(spec) => {
                // Everything received is registered and synced; the install reads the store
                // from the disk, and nothing is written to it any more.
                store = None;
                phases::install(*spec, output)?
            }
            Request::Reboot { root } => {
                store = None;
                Reply::Rebooting(crate::install::reboot::reboot(&root).map_err(PhaseError::from)?)
            }
            Request::Bye => return Ok(()),
        };
        frame::write_message(output, &reply, PEER)?;
    }
    Ok(())
}

fn request_kind(request: &Request) -> &'static str {
    match request {
        Request::Hello { .. } => "hello",
        Request::Facts => "facts",
        Request::QueryValid { .. } => "query_valid",
        Request::OpenStore { .. } => "open_store",
        Request::PlanSubstitution { .. } => "plan_substitution",
        Request::Receive { .. } => "receive",
        Request::WriteKeys { .. } => "write_keys",
        Request::Disko { .. } => "disko",
        Request::PutFiles { .. } => "put_files",
        Request::Install(_) => "install",
        Request::Reboot { .. } => "reboot",
        Request::Bye => "bye",
    }
}
