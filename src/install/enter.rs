//! nixos-enter, natively: runs a command inside an installed NixOS root the way `nixos-enter`
//! (plus `nixos-install`'s own additions) sets it up for the bootloader step.
//!
//! The environment: new mount, UTS and PID namespaces; `/` made private, so nothing mounted
//! here shows up on the installer (and everything goes away when the last process ends); `/dev`
//! and `/sys` bound in (efivarfs comes with `/sys`), a fresh `/proc` of the new PID namespace,
//! the installer's `resolv.conf`; then in the chroot the system's own `activate` (its failure is
//! reported, not fatal, as nixos-enter does), `systemd-tmpfiles --create --remove -E` when the
//! system has it, the root bound again at `/mnt` (as nixos-install does, so that paths under
//! `/mnt` in the configuration still resolve), and the command.
//!
//! Namespaces belong to a thread, and a PID namespace only to the children created after it, so
//! this runs as its own process (`nixos-anywhere-rs enter`, started by the agent), single-
//! threaded: it unshares, then forks the namespace's first process, which does the rest.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use rustix::fs::Mode;
use rustix::mount::{MountFlags, MountPropagationFlags};
use rustix::thread::UnshareFlags;

/// What to enter and run.
#[derive(Debug, Clone)]
pub struct Enter {
    /// The installed root, for example `/mnt`.
    pub root: PathBuf,
    /// The system whose `activate` runs first (a toplevel store path).
    pub system: PathBuf,
    /// Where the root is bound again inside the chroot; `None`: not at all.
    pub root_again_at: Option<PathBuf>,
    /// Variables set for the command (not for `activate`).
    pub env: Vec<(OsString, OsString)>,
    pub command: Vec<OsString>,
}

#[derive(Debug, thiserror::Error)]
pub enum EnterError {
    #[error("{0}/etc/NIXOS is missing: it is not an installed NixOS root")]
    NotNixos(String),
    #[error(
        "entering {root} needs a single-threaded process (it has {threads} threads): \
         run it as `nixos-anywhere-rs enter`"
    )]
    Threaded { root: String, threads: usize },
    #[error("entering {root}: {what}: {source}")]
    Setup {
        root: String,
        what: String,
        source: std::io::Error,
    },
    #[error("no command to run")]
    NoCommand,
}

impl Enter {
    /// Sets up the environment and runs the command in it; returns the command's exit status
    /// (128 + the signal that ended it, as a shell says).
    pub fn run(&self) -> Result<i32, EnterError> {
        let root = self.root.display().to_string();
        if self.command.is_empty() {
            return Err(EnterError::NoCommand);
        }
        if !self.root.join("etc/NIXOS").exists() {
            return Err(EnterError::NotNixos(root));
        }
        let threads = std::fs::read_dir("/proc/self/task").map_or(1, |d| d.count());
        if threads != 1 {
            return Err(EnterError::Threaded { root, threads });
        }
        let setup = |what: &str| {
            let root = root.clone();
            let what = what.to_owned();
            move |e: rustix::io::Errno| EnterError::Setup {
                root,
                what,
                source: e.into(),
            }
        };
        // SAFETY: this process has one thread (checked above), so no other thread can observe
        // the unshared namespaces; FILES is not among the flags.
        unsafe {
            rustix::thread::unshare_unsafe(
                UnshareFlags::NEWNS | UnshareFlags::NEWUTS | UnshareFlags::NEWPID,
            )
        }
        .map_err(setup("unshare"))?;
        rustix::mount::mount_change(
            "/",
            MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
        )
        .map_err(setup("making / private"))?;
        for dir in ["dev", "sys"] {
            let at = self.root.join(dir);
            make_dir(&at).map_err(setup(&format!("creating {}", at.display())))?;
            rustix::mount::mount_bind_recursive(format!("/{dir}"), &at)
                .map_err(setup(&format!("binding /{dir} at {}", at.display())))?;
        }
        make_dir(&self.root.join("proc")).map_err(setup("creating /proc"))?;
        self.bind_resolv_conf()
            .map_err(setup("binding resolv.conf"))?;

        // SAFETY: single-threaded (checked above): the child may allocate and run anything.
        match unsafe { libc::fork() } {
            -1 => Err(EnterError::Setup {
                root,
                what: "fork".into(),
                source: std::io::Error::last_os_error(),
            }),
            0 => {
                // The namespace's first process: its exit ends the namespace.
                let status = match self.in_namespace() {
                    Ok(status) => status,
                    Err(e) => {
                        eprintln!("nixos-anywhere-rs enter: {e}");
                        127
                    }
                };
                std::process::exit(status)
            }
            child => Ok(wait(child)),
        }
    }

    /// The host's `resolv.conf` over the root's, when the root has one as a file (a link
    /// would be followed into the store, which is read-only).
    fn bind_resolv_conf(&self) -> rustix::io::Result<()> {
        let target = self.root.join("etc/resolv.conf");
        let is_file = std::fs::symlink_metadata(&target).is_ok_and(|m| m.is_file());
        if is_file && Path::new("/etc/resolv.conf").exists() {
            rustix::mount::mount_bind("/etc/resolv.conf", &target)?;
        }
        Ok(())
    }

    fn in_namespace(&self) -> Result<i32, EnterError> {
        let root = self.root.display().to_string();
        let setup = |what: &'static str| {
            let root = root.clone();
            move |e: rustix::io::Errno| EnterError::Setup {
                root,
                what: what.into(),
                source: e.into(),
            }
        };
        rustix::mount::mount(
            "proc",
            self.root.join("proc"),
            "proc",
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            None,
        )
        .map_err(setup("mounting /proc"))?;
        rustix::process::chroot(&self.root).map_err(setup("chroot"))?;
        rustix::process::chdir("/").map_err(setup("chdir /"))?;
        rustix::process::umask(Mode::from_raw_mode(0o022));

        let system = &self.system;
        // As nixos-enter: activation output goes to stderr, its failure is not fatal.
        let activate = Command::new(system.join("activate"))
            .env(
                "LOCALE_ARCHIVE",
                system.join("sw/lib/locale/locale-archive"),
            )
            .env("IN_NIXOS_ENTER", "1")
            .env_remove("TMPDIR")
            .stdout(std::io::stderr())
            .status();
        match activate {
            Ok(s) if s.success() => {}
            Ok(s) => eprintln!(
                "nixos-anywhere-rs enter: {}/activate: {s}",
                system.display()
            ),
            Err(e) => eprintln!(
                "nixos-anywhere-rs enter: {}/activate: {e}",
                system.display()
            ),
        }
        let tmpfiles = system.join("sw/bin/systemd-tmpfiles");
        if tmpfiles.exists() {
            let _ = Command::new(&tmpfiles)
                .args(["--create", "--remove", "-E"])
                .env_remove("TMPDIR")
                .stdout(std::io::stderr())
                .status();
        }
        if let Some(again) = &self.root_again_at {
            make_dir(again).map_err(setup("creating the root's second mount point"))?;
            rustix::mount::mount_bind_recursive("/", again)
                .map_err(setup("binding the root again"))?;
            rustix::mount::mount_change(
                again,
                MountPropagationFlags::DOWNSTREAM | MountPropagationFlags::REC,
            )
            .map_err(setup("making the root's second mount a slave"))?;
        }
        let status = Command::new(&self.command[0])
            .args(&self.command[1..])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env_remove("TMPDIR")
            .status()
            .map_err(|e| EnterError::Setup {
                root: root.clone(),
                what: format!("starting {}", self.command[0].to_string_lossy()),
                source: e,
            })?;
        Ok(exit_code(status))
    }
}

/// Creates a directory (mode 0755) unless it is there.
fn make_dir(path: &Path) -> rustix::io::Result<()> {
    match rustix::fs::mkdir(path, Mode::from_raw_mode(0o755)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
        Err(e) => Err(e),
    }
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Waits for the namespace's first process and returns its exit status.
fn wait(child: libc::pid_t) -> i32 {
    let mut status = 0;
    loop {
        // SAFETY: waitpid on our own child with a valid pointer.
        let r = unsafe { libc::waitpid(child, &mut status, 0) };
        if r == child {
            break;
        }
        if r == -1 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return 127;
        }
    }
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        127
    }
}
