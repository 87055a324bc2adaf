//! Probing and executing disk steps on the machine: each probe is disko's own "already done?"
//! check (§8), each command runs through the one runner on the kernel's own device node, waited
//! for with a deadline rather than a fixed sleep.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use super::release;
use super::step::{DiskStep, Key};
use crate::disk::layout::Dev;
use crate::disk::names;
use crate::disk::table::error::TableError;
use crate::disk::table::spec::{LegacyPartType, TableSpec};
use crate::disk::table::write::WriteTable;
use crate::exec::{Cmd, CmdError};
use crate::plan::{Probe, Step};

/// What executing disk steps needs from its caller.
pub struct DiskEnv {
    /// LUKS passphrases by mapper name, for `askPassword` devices (relayed from the operator's
    /// terminal). Fed to cryptsetup on standard input, never in argv.
    pub passphrases: BTreeMap<String, Vec<u8>>,
    /// How long a device node may take to appear after the step that makes it.
    pub node_deadline: Duration,
}

impl Default for DiskEnv {
    fn default() -> Self {
        Self {
            passphrases: BTreeMap::new(),
            node_deadline: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Cmd(#[from] CmdError),
    #[error(transparent)]
    Table(#[from] TableError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path} did not appear within {waited:?}; is the device there and did the kernel see the new table?"
    )]
    NodeMissing { path: String, waited: Duration },
    #[error("LUKS device `{name}` asks for a passphrase and none was given")]
    NoPassphrase { name: String },
    #[error(
        "refusing to touch {disk}: {device} is mounted on {target}, outside the target root {root} \
         (is this the installer's own disk? name another with --disk)"
    )]
    MountedOutsideRoot {
        disk: String,
        device: String,
        target: String,
        root: String,
    },
    #[error("could not release {what} on {device}, so nothing was wiped: {message}")]
    Release {
        device: String,
        what: String,
        message: String,
    },
}

fn io(path: &str) -> impl FnOnce(std::io::Error) -> ExecError + '_ {
    move |source| ExecError::Io {
        path: path.to_owned(),
        source,
    }
}

impl DiskEnv {
    /// The kernel's node for `dev`: a partition is found by its disk's node and number (so
    /// nothing waits on udev's by-partlabel links), and waited for.
    pub fn node(&self, dev: &Dev) -> Result<String, ExecError> {
        let path = match &dev.partition_of {
            Some((parent, n)) => {
                let disk = std::fs::canonicalize(parent).map_err(io(parent))?;
                names::kernel_partition(&disk.to_string_lossy(), *n)
            }
            None => dev.path.clone(),
        };
        if path.starts_with("/dev/") {
            self.wait_for(&path)?;
        }
        Ok(path)
    }

    fn wait_for(&self, path: &str) -> Result<(), ExecError> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(5);
        while !Path::new(path).exists() {
            if started.elapsed() >= self.node_deadline {
                return Err(ExecError::NodeMissing {
                    path: path.to_owned(),
                    waited: self.node_deadline,
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(100));
        }
        Ok(())
    }

    fn argv(&self, step: &DiskStep) -> Result<Cmd, ExecError> {
        let err = std::cell::RefCell::new(None);
        let argv = step
            .argv(&|d| match self.node(d) {
                Ok(n) => n,
                Err(e) => {
                    err.borrow_mut().get_or_insert(e);
                    String::new()
                }
            })
            .expect("a command step");
        if let Some(e) = err.into_inner() {
            return Err(e);
        }
        Ok(Cmd::new(&argv[0]).args(&argv[1..]))
    }

    fn with_key(&self, cmd: Cmd, key: &Key, name: &str) -> Result<Cmd, ExecError> {
        match key {
            Key::File { .. } => Ok(cmd),
            Key::PasswordFile { path } => {
                let mut secret = std::fs::read(path).map_err(io(path))?;
                while secret.last() == Some(&b'\n') {
                    secret.pop();
                }
                Ok(cmd.stdin(secret))
            }
            Key::Ask => match self.passphrases.get(name) {
                Some(p) => Ok(cmd.stdin(p.clone())),
                None => Err(ExecError::NoPassphrase {
                    name: name.to_owned(),
                }),
            },
        }
    }
}

/// `blkid -p` finds a `TYPE=` (disko's "already formatted" probe).
fn has_type(node: &str) -> bool {
    Cmd::new("blkid")
        .args(["-p", "-o", "export", node])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o)
                .lines()
                .any(|l| l.starts_with("TYPE="))
        })
        .unwrap_or(false)
}

fn succeeds(cmd: Cmd) -> bool {
    cmd.run().is_ok()
}

fn done_if(b: bool) -> Probe {
    if b { Probe::Done } else { Probe::Needed }
}

/// Whether something is mounted on `target` (or, with `below`, anywhere under it).
fn mounted(target: &str, below: bool) -> Result<bool, ExecError> {
    let info =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(io("/proc/self/mountinfo"))?;
    let target = target.trim_end_matches('/');
    let target = if target.is_empty() { "/" } else { target };
    Ok(info.lines().any(|l| {
        let mp = l.split(' ').nth(4).unwrap_or("").replace("\\040", " ");
        mp == target || (below && mp.starts_with(&format!("{target}/")))
    }))
}

fn swap_active(node: &str) -> bool {
    let real = std::fs::canonicalize(node)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| node.to_owned());
    std::fs::read_to_string("/proc/swaps")
        .map(|s| {
            s.lines()
                .skip(1)
                .any(|l| l.split_whitespace().next() == Some(&real))
        })
        .unwrap_or(false)
}

impl Step for DiskStep {
    type Env = DiskEnv;
    type Error = ExecError;

    fn describe(&self) -> String {
        self.description()
    }

    fn probe(&self, env: &DiskEnv) -> Result<Probe, ExecError> {
        Ok(match self {
            DiskStep::UnmountRoot { root } => done_if(!mounted(root, true)?),
            DiskStep::Release { device, root } => {
                done_if(release::holders(device, root)?.iter().all(|h| {
                    matches!(
                        h,
                        release::Holder::Pv { .. } | release::Holder::ZfsMember { .. }
                    )
                }))
            }
            DiskStep::Wipe { .. } | DiskStep::LuksAddKey { .. } | DiskStep::Modprobe { .. } => {
                Probe::Needed
            }
            DiskStep::WriteTable { device, spec } => {
                native_table(&env.node(device)?, spec).probe(&())?
            }
            DiskStep::Mkfs { device, .. }
            | DiskStep::Mkswap { device, .. }
            | DiskStep::PvCreate { device } => done_if(has_type(&env.node(device)?)),
            DiskStep::LuksFormat { device, .. } => {
                let node = env.node(device)?;
                done_if(
                    has_type(&node) && succeeds(Cmd::new("cryptsetup").arg("isLuks").arg(&node)),
                )
            }
            DiskStep::LuksOpen { name, .. } => {
                done_if(succeeds(Cmd::new("cryptsetup").arg("status").arg(name)))
            }
            DiskStep::LuksClose { name } => {
                done_if(!succeeds(Cmd::new("cryptsetup").arg("status").arg(name)))
            }
            DiskStep::VgCreate { name, .. } => {
                done_if(succeeds(Cmd::new("lvm").arg("vgdisplay").arg(name)))
            }
            DiskStep::LvCreate { vg, name, .. } => done_if(succeeds(
                Cmd::new("lvm").arg("lvdisplay").arg(format!("{vg}/{name}")),
            )),
            DiskStep::VgActivate { .. } => Probe::Needed,
            DiskStep::VgDeactivate { name } => {
                done_if(!succeeds(Cmd::new("lvm").arg("vgdisplay").arg(name)))
            }
            DiskStep::MdCreate { name, .. } => {
                done_if(Path::new(&format!("/dev/md/{name}")).exists())
            }
            DiskStep::MdStop { name } => done_if(!Path::new(&format!("/dev/md/{name}")).exists()),
            DiskStep::BtrfsSubvolumes { .. } => Probe::Needed,
            DiskStep::ZpoolCreate { name, .. } | DiskStep::ZpoolImport { name, .. } => {
                done_if(succeeds(Cmd::new("zpool").arg("list").arg(name)))
            }
            DiskStep::ZpoolExport { name } => {
                done_if(!succeeds(Cmd::new("zpool").arg("list").arg(name)))
            }
            DiskStep::ZfsCreate { name, .. } => {
                done_if(succeeds(Cmd::new("zfs").args(["get", "type"]).arg(name)))
            }
            DiskStep::ZfsLoadKey { name } => done_if(
                Cmd::new("zfs")
                    .args(["get", "-H", "-o", "value", "keystatus"])
                    .arg(name)
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o).trim() == "available"),
            ),
            DiskStep::BcachefsFormat { uuid, .. } => {
                done_if(succeeds(Cmd::new("blkid").arg("-U").arg(uuid)))
            }
            DiskStep::Mount { target, .. } => done_if(mounted(target, false)?),
            DiskStep::Umount { target } => done_if(!mounted(target, false)?),
            DiskStep::Swapoff { device } => {
                let node = env.node(device).unwrap_or_else(|_| device.path.clone());
                done_if(!swap_active(&node))
            }
            DiskStep::Hook { .. } => Probe::Needed,
        })
    }

    fn execute(&self, env: &mut DiskEnv) -> Result<(), ExecError> {
        match self {
            DiskStep::Release { device, root } => release::release(device, root),
            DiskStep::Wipe { device } => wipe(device),
            DiskStep::WriteTable { device, spec } => {
                let node = env.node(device)?;
                native_table(&node, spec).execute(&mut ())?;
                for n in spec_numbers(spec) {
                    env.node(&Dev {
                        path: String::new(),
                        partition_of: Some((node.clone(), n)),
                    })?;
                }
                // Where udev runs, hooks and the installed system use its by-partlabel links:
                // wait for them too (never needed for our own formatting, which uses the node).
                // md partitions get no such links (hence disko's md-name-any paths), and udev
                // escapes non-ASCII differently from disko, so those are not waited for.
                if let TableSpec::Gpt(g) = spec
                    && Path::new("/run/udev/control").exists()
                    && !device.path.starts_with("/dev/md/")
                {
                    for p in g.partitions.iter().filter(|p| p.label.is_ascii()) {
                        env.wait_for(&format!(
                            "/dev/disk/by-partlabel/{}",
                            names::udev_escape(&p.label)
                        ))?;
                    }
                }
                Ok(())
            }
            DiskStep::LuksFormat { key, name, .. } | DiskStep::LuksOpen { key, name, .. } => {
                let cmd = env.argv(self)?;
                env.with_key(cmd, key, name)?.run()?;
                Ok(())
            }
            DiskStep::LuksAddKey { key, device, .. } => {
                let cmd = env.argv(self)?;
                env.with_key(cmd, key, &device.path)?.run()?;
                Ok(())
            }
            DiskStep::MdCreate { name, .. } => {
                env.argv(self)?.stdin("y\n").run()?;
                let md = format!("/dev/md/{name}");
                env.wait_for(&md)?;
                // New arrays can show a stale table (disko zaps it too).
                Cmd::new("sgdisk").arg("--zap-all").arg(&md).run()?;
                Ok(())
            }
            DiskStep::ZpoolCreate { name, .. } => {
                if Cmd::new("zpool")
                    .args(["import", "-N", "-f"])
                    .arg(name)
                    .run()
                    .is_ok()
                {
                    return Ok(());
                }
                env.argv(self)?.run()?;
                Ok(())
            }
            DiskStep::BcachefsFormat { password_file, .. } => {
                let mut cmd = env.argv(self)?;
                if let Some(f) = password_file {
                    let secret = std::fs::read(f).map_err(io(f))?;
                    cmd = cmd.stdin(secret);
                }
                cmd.run()?;
                Ok(())
            }
            DiskStep::BtrfsSubvolumes {
                device,
                swap_files,
                subvolumes,
            } => btrfs_subvolumes(&env.node(device)?, swap_files, subvolumes),
            DiskStep::Mount {
                device,
                target,
                fstype,
                options,
            } => {
                // disko's `X-mount.mkdir`, natively.
                std::fs::create_dir_all(target).map_err(io(target))?;
                let node = env.node(device)?;
                let mut cmd = Cmd::new("mount").arg("-t").arg(fstype);
                let opts: Vec<&str> = options
                    .iter()
                    .map(String::as_str)
                    .filter(|o| *o != "X-mount.mkdir")
                    .collect();
                if !opts.is_empty() {
                    cmd = cmd.arg("-o").arg(opts.join(","));
                }
                cmd.arg(node).arg(target).run()?;
                Ok(())
            }
            DiskStep::Hook { script, .. } => {
                Cmd::new("bash").arg("-c").arg(script).run()?;
                Ok(())
            }
            DiskStep::UnmountRoot { root } => {
                crate::disk::unmount::unmount_tree(Path::new(root)).map_err(io(root))?;
                Ok(())
            }
            _ => {
                env.argv(self)?.run()?;
                Ok(())
            }
        }
    }
}

fn spec_numbers(spec: &TableSpec) -> Vec<u32> {
    match spec {
        TableSpec::Gpt(g) => g.partitions.iter().map(|p| p.number).collect(),
        TableSpec::Legacy(l) => l
            .partitions
            .iter()
            .filter(|p| p.part_type != LegacyPartType::Extended)
            .map(|p| p.number)
            .collect(),
    }
}

/// disko's "is the table there": for GPT every planned partition exists with its name (sgdisk
/// `--new` would fail on each), for a legacy table the disk is not blank (disko writes it only
/// to a blank disk).
/// The native writer's step for `spec` on the kernel's node: it probes by reading the table
/// back, and writes the whole table in one pass, then BLKPG.
fn native_table(node: &str, spec: &TableSpec) -> WriteTable {
    WriteTable {
        device: node.into(),
        spec: spec.clone(),
    }
}

fn wipe(device: &str) -> Result<(), ExecError> {
    let node = std::fs::canonicalize(device).map_err(io(device))?;
    let node = node.to_string_lossy().into_owned();
    let parts = release::partitions(&node)?;
    for part in &parts {
        Cmd::new("wipefs").args(["--all", "-f"]).arg(part).run()?;
    }
    Cmd::new("wipefs").args(["--all", "-f"]).arg(&node).run()?;
    // Zero the MBR boot code, as disko's disk-deactivate does.
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&node)
            .map_err(io(&node))?;
        f.write_all(&[0u8; 440]).map_err(io(&node))?;
        f.sync_all().map_err(io(&node))?;
    }
    // Tell the kernel the partitions are gone (BLKPG, works where it has no partition parser).
    // A partition the kernel released a moment ago can still be busy: retry for a while, then
    // leave the rest to the table write, which updates the kernel's view (partx -u) anyway.
    if !parts.is_empty() {
        let started = Instant::now();
        while let Err(e) = Cmd::new("partx").arg("-d").arg(&node).run() {
            if started.elapsed() > Duration::from_secs(3) {
                tracing::warn!("{e}; the table write will update the kernel's partitions");
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

fn btrfs_subvolumes(
    node: &str,
    swap_files: &[super::step::BtrfsSwapFile],
    subvolumes: &[super::step::BtrfsSubvolumeSpec],
) -> Result<(), ExecError> {
    let dir = std::env::temp_dir().join(format!("disk-btrfs-{}", std::process::id()));
    let dir_s = dir.to_string_lossy().into_owned();
    std::fs::create_dir_all(&dir).map_err(io(&dir_s))?;
    Cmd::new("mount")
        .args(["-t", "btrfs", "-o", "subvol=/", node])
        .arg(&dir)
        .run()?;
    let result = (|| -> Result<(), ExecError> {
        for sv in subvolumes {
            let abs = dir.join(sv.name.trim_start_matches('/'));
            if let Some(parent) = abs.parent() {
                std::fs::create_dir_all(parent).map_err(io(&dir_s))?;
            }
            if Cmd::new("btrfs")
                .args(["subvolume", "show"])
                .arg(&abs)
                .run()
                .is_err()
            {
                Cmd::new("btrfs")
                    .args(["subvolume", "create"])
                    .arg(&abs)
                    .args(&sv.extra_args)
                    .run()?;
            }
        }
        for f in swap_files {
            let abs = dir.join(f.path.trim_start_matches('/'));
            if !abs.exists() {
                let mut cmd = Cmd::new("btrfs").args(["filesystem", "mkswapfile"]);
                if !f.size.is_empty() {
                    cmd = cmd.arg("--size").arg(&f.size);
                }
                cmd.arg(&abs).run()?;
            }
        }
        Ok(())
    })();
    let unmounted = Cmd::new("umount").arg(&dir).run();
    let _ = std::fs::remove_dir(&dir);
    result?;
    unmounted?;
    Ok(())
}
