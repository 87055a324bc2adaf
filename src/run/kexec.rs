//! The kexec phase: another Linux becomes a NixOS installer running from RAM, without boot
//! media, as nixos-anywhere does it and with the same nixos-images tarballs. The tarball is
//! unpacked in the login user's `~/kexec`, and its own `kexec/run` is started under
//! `setsid --wait`: it carries the authorized keys, the host keys and the network over.
//! Success is its marker line.
//!
//! Unlike nixos-anywhere, it first asks the kernel whether it would load another kernel at all
//! (`kexec_load_disabled`, Secure Boot lockdown), and whether the image fits in memory; a
//! refusal changes nothing. Afterwards the run waits for the old system to go away and comes
//! back as root within a deadline. The host key must be the one pinned before, and the boot
//! must be a new one.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncReadExt;

use super::wait;
use crate::cli::install::{Kexec, KexecImage, Reconnect, TarFormat};
use crate::facts::Facts;
use crate::plan::{Outcome, StepRecord};
use crate::ssh::{HostKeyPin, Session, SshError, SshOptions, Target, shell_quote};

/// nixos-anywhere's default image: this release of nixos-images, for the target's CPU.
pub const DEFAULT_RELEASE: &str = "nixos-25.11";
/// The line nixos-images' `kexec/run` prints once the installer's kernel is loaded.
const MARKER: &str = "machine will boot into nixos";
const MIB: u64 = 1 << 20;
/// Memory the installer needs besides its kernel and unpacked initrd: its own processes, the
/// agent, the page cache of an install.
const RUN_HEADROOM: u64 = 128 * MIB;
/// Each try to reach the installer gives up after this long (a machine mid-kexec drops SYNs).
const ATTEMPT: Duration = Duration::from_secs(15);
/// How often the progress line says the run is still waiting.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);
/// What is kept of `kexec/run`'s output for messages.
const LOG_KEEP: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum KexecError {
    #[error(
        "{host}: kexec is switched off until the next boot (/proc/sys/kernel/kexec_load_disabled \
         is 1); nothing was changed: reboot the machine without that setting, or boot it into \
         a NixOS installer"
    )]
    LoadDisabled { host: String },
    #[error(
        "{host}: the kernel is locked down ({mode}, as with Secure Boot) and loads only kernels \
         signed with a key it trusts; nothing was changed: turn Secure Boot off in the \
         firmware, or boot the machine into a NixOS installer"
    )]
    Lockdown { host: String, mode: String },
    #[error(
        "{host} lacks {missing}, which the kexec needs; nothing was changed: install them \
         (util-linux's setsid has --wait), or boot the machine into a NixOS installer"
    )]
    MissingTools { host: String, missing: String },
    #[error(
        "nixos-images has no kexec installer for {arch} (only x86_64 and aarch64); give one \
         with --kexec"
    )]
    NoImageFor { arch: String },
    #[error("reading the kexec image {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "downloading {url}: the target could not ({on_target}), nor could this machine ({here})"
    )]
    Download {
        url: String,
        on_target: String,
        here: String,
    },
    #[error(
        "{host}: unpacking the kexec image failed ({status}); the unpacked files were removed:\n{output}"
    )]
    Unpack {
        host: String,
        status: String,
        output: String,
    },
    #[error(
        "{host}: the kexec image has no kexec/run (it holds: {listing}); nothing was booted and \
         the unpacked files were removed: an image for nixos-anywhere has one top-level \
         directory kexec/ with run, bzImage and initrd, as nixos-images builds it"
    )]
    NotKexecImage { host: String, listing: String },
    #[error(
        "{host} has {total} MiB of memory, {available} MiB of it available; the installer image \
         needs about {needed} MiB (kernel {kernel} MiB, initrd {initrd} MiB twice while it \
         unpacks, {headroom} MiB to run) and {needed_now} MiB available to be loaded. Nothing \
         was booted and the unpacked files were removed: use a smaller image, or a machine \
         with more memory",
        headroom = RUN_HEADROOM / MIB
    )]
    Memory {
        host: String,
        total: u64,
        available: u64,
        needed: u64,
        needed_now: u64,
        kernel: u64,
        initrd: u64,
    },
    #[error(
        "{host}: kexec/run did not load the installer ({status}); the machine was not rebooted. Its log:\n{log}"
    )]
    RunFailed {
        host: String,
        status: String,
        log: String,
    },
    #[error(
        "{host} did not go down within {secs} s of kexec/run's success (its boot id is still \
         the old one); the kexec did not take: look at the machine's console. The kexec log:\n{log}"
    )]
    StillUp {
        host: String,
        secs: u64,
        log: String,
    },
    #[error(
        "{target}: after kexec the machine presents the host key {seen}, not {pinned}, which it \
         had before; the run stopped before any disk was touched. An installer that carries \
         the host keys over (nixos-images' does) keeps the key; if yours does not and you \
         trust the network to this machine, pass --accept-new-host-key-after-kexec"
    )]
    HostKeyChanged {
        target: String,
        pinned: String,
        seen: String,
    },
    #[error(
        "{target} did not answer as the installer within {secs} s of the kexec (last: {last}). \
         If the installer comes up at another address or port, give it with \
         --post-kexec-ssh-host and --post-kexec-ssh-port (--kexec-deadline waits longer); \
         else look at the machine's console. The kexec log:\n{log}"
    )]
    NotBack {
        target: String,
        secs: u64,
        last: String,
        log: String,
    },
    #[error(
        "{target}: the installer refused root's login after kexec ({source}); its kexec/run \
         should have carried the authorized keys over. The kexec log:\n{log}"
    )]
    Refused {
        target: String,
        source: Box<SshError>,
        log: String,
    },
    #[error(
        "{target}: after kexec the machine runs {os}, not a NixOS installer: the kexec did not \
         take. The kexec log:\n{log}"
    )]
    NotInstaller {
        target: String,
        os: String,
        log: String,
    },
    #[error(transparent)]
    Ssh(#[from] SshError),
}

/// nixos-anywhere's default tarball for a CPU, as `uname -m` names it.
pub fn default_image_url(arch: &str) -> Option<String> {
    matches!(arch, "x86_64" | "aarch64").then(|| {
        format!(
            "https://github.com/nix-community/nixos-images/releases/download/{DEFAULT_RELEASE}/\
             nixos-kexec-installer-noninteractive-{arch}-linux.tar.gz"
        )
    })
}

/// The machine after the kexec: a session to the installer, as root.
pub struct Installer {
    pub session: Session,
    pub target: Target,
    pub opts: SshOptions,
    pub pin: HostKeyPin,
    /// `kexec/run`'s output, for the message if the machine is not an installer after all.
    pub log: String,
}

/// Times a step and hands its record to `step` once it ends.
struct Steps<'a> {
    step: &'a mut dyn FnMut(StepRecord),
}

impl Steps<'_> {
    fn done(&mut self, description: String, started: Instant) {
        (self.step)(StepRecord {
            description,
            outcome: Outcome::Ran,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
}

/// Boots the installer with `kexec` on the machine `session` is logged into (whose `facts`
/// were just gathered, and whose agent has finished), and logs into it as root.
pub async fn boot_installer(
    session: Session,
    (target, opts, pin): (&Target, &SshOptions, &HostKeyPin),
    facts: &Facts,
    kexec: &Kexec,
    after: &Reconnect,
    step: &mut dyn FnMut(StepRecord),
) -> Result<Installer, KexecError> {
    let mut steps = Steps { step };
    let host = target.to_string();
    let started = Instant::now();
    refuse_early(facts, &host)?;
    let image = match &kexec.image {
        KexecImage::Default => {
            let url = default_image_url(&facts.arch).ok_or_else(|| KexecError::NoImageFor {
                arch: facts.arch.clone(),
            })?;
            Image::Url {
                format: TarFormat::from_name(&url),
                url,
            }
        }
        KexecImage::File { path, format } => Image::File {
            path: path.clone(),
            format: *format,
        },
        KexecImage::Url { url, format } => Image::Url {
            url: url.clone(),
            format: *format,
        },
    };
    check_tools(&session, &host, &image).await?;
    let dir = kexec_dir(&session, &target.user).await?;
    steps.done(
        format!(
            "{host}: kexec is not switched off nor locked down (kernel {}, {} MiB of memory); \
             the image goes to {dir}",
            facts.kernel,
            facts.memory.total_bytes / MIB
        ),
        started,
    );

    let started = Instant::now();
    let unpacked = fetch_and_unpack(&session, &host, &dir, &image).await?;
    check_memory(&session, &host, &dir, facts, &unpacked).await?;
    steps.done(
        format!(
            "unpacked the installer {} (kernel {} MiB, initrd {} MiB; {} MiB of memory \
             available after it)",
            image.name(),
            unpacked.kernel / MIB,
            unpacked.initrd / MIB,
            unpacked.available / MIB
        ),
        started,
    );

    let started = Instant::now();
    let log = run_kexec(&session, &host, &dir, &kexec.extra_flags).await?;
    steps.done("kexec/run loaded the installer".into(), started);

    let started = Instant::now();
    let deadline = started + Duration::from_secs(kexec.deadline_secs);
    wait_gone(&session, &host, &facts.boot_id, deadline, &log).await?;
    drop(session);
    steps.done(format!("{host} went down into the kexec"), started);

    let started = Instant::now();
    let target = Target {
        user: after.user.clone(),
        host: after.host.clone(),
        port: after.port.unwrap_or(target.port),
    };
    // A new pin only when the user said the key may change: the jump hosts' pins go with it.
    let pin = if kexec.new_host_key {
        HostKeyPin::new()
    } else {
        pin.clone()
    };
    let session = reconnect(
        &target,
        opts,
        &pin,
        &facts.boot_id,
        (deadline, kexec.deadline_secs),
        &log,
    )
    .await?;
    steps.done(
        format!(
            "{target} answers as root, host key {}",
            pin.fingerprint().unwrap_or_default()
        ),
        started,
    );
    Ok(Installer {
        session,
        target,
        opts: opts.clone(),
        pin,
        log,
    })
}

/// Where the image comes from, its default chosen.
enum Image {
    File { path: PathBuf, format: TarFormat },
    Url { url: String, format: TarFormat },
}

impl Image {
    fn name(&self) -> String {
        match self {
            Image::File { path, .. } => path.display().to_string(),
            Image::Url { url, .. } => url.clone(),
        }
    }
}

/// What the kernel says before anything is written.
fn refuse_early(facts: &Facts, host: &str) -> Result<(), KexecError> {
    if facts.kexec.load_disabled {
        return Err(KexecError::LoadDisabled { host: host.into() });
    }
    if let Some(mode) = &facts.kexec.lockdown {
        return Err(KexecError::Lockdown {
            host: host.into(),
            mode: mode.clone(),
        });
    }
    Ok(())
}

/// The decompressor `tar` calls for `format` (none for a plain tar, or one sniffed later).
fn decompressor(format: TarFormat) -> Option<&'static str> {
    match format {
        TarFormat::Gzip => Some("gzip"),
        TarFormat::Xz => Some("xz"),
        TarFormat::Zstd => Some("zstd"),
        TarFormat::Tar | TarFormat::Sniff => None,
    }
}

/// `tar`'s flag for `format`; a sniffed one is left to tar, which reads a file's first bytes.
fn tar_flag(format: TarFormat) -> &'static str {
    match format {
        TarFormat::Gzip => "--gzip",
        TarFormat::Xz => "--xz",
        TarFormat::Zstd => "--zstd",
        TarFormat::Tar | TarFormat::Sniff => "",
    }
}

/// The compression of a tarball from its first bytes.
fn sniff(head: &[u8]) -> TarFormat {
    if head.starts_with(&[0x1f, 0x8b]) {
        TarFormat::Gzip
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        TarFormat::Xz
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        TarFormat::Zstd
    } else {
        TarFormat::Tar
    }
}

/// The programs `kexec/run` and the unpacking need, as nixos-anywhere checks them (tar, cpio,
/// a `setsid` with `--wait`), plus the decompressor.
async fn check_tools(session: &Session, host: &str, image: &Image) -> Result<(), KexecError> {
    let format = match image {
        Image::File { format, .. } | Image::Url { format, .. } => *format,
    };
    let tools = ["tar", "cpio", "setsid"]
        .into_iter()
        .chain(decompressor(format))
        .collect::<Vec<_>>()
        .join(" ");
    let script = format!(
        "for t in {tools}; do command -v \"$t\" >/dev/null 2>&1 || printf '%s, ' \"$t\"; done; \
         if command -v setsid >/dev/null 2>&1 && ! setsid --help 2>&1 | grep -q -- --wait; then \
           printf 'a setsid with --wait, '; fi"
    );
    let out = session.run_checked(&script, b"").await?;
    let missing = String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_end_matches(',')
        .to_owned();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(KexecError::MissingTools {
            host: host.into(),
            missing,
        })
    }
}

/// `~USER/kexec`, where nixos-anywhere unpacks the image: the login user's home, although the
/// commands run as root.
async fn kexec_dir(session: &Session, user: &str) -> Result<String, KexecError> {
    let plain = !user.is_empty()
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    let home = if plain {
        format!("eval \"printf %s ~{user}\"")
    } else {
        "printf %s \"$HOME\"".into()
    };
    let out = session.run_checked(&home, b"").await?;
    let home = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let home = if home.starts_with('/') {
        home
    } else {
        "/root".into()
    };
    Ok(format!("{}/kexec", home.trim_end_matches('/')))
}

/// Sizes the unpacking reported.
#[derive(Debug)]
struct Unpacked {
    kernel: u64,
    initrd: u64,
    /// `MemAvailable` right after the unpacking (the files may sit in RAM).
    available: u64,
}

/// Prefixes the unpacking's report on its standard output.
const SIZES: &str = "nixos-anywhere-rs kexec image:";
/// The unpacking's exit status when the image has no `kexec/run`.
const NO_RUN: u32 = 3;

/// The shell lines that unpack into `dir` from `source` (`-` for standard input), check the
/// image's layout and report its sizes. On any failure the unpacked files are removed.
fn unpack_script(dir: &str, source: &str, format: TarFormat) -> String {
    let dir = shell_quote(dir);
    format!(
        r#"d={dir}
umask 022
mkdir -p "$d" && cd "$d" || exit 1
rm -rf kexec nixos-anywhere.log
if ! tar -x {flag} -f {source}; then rm -rf kexec kexec-tarball; exit 2; fi
rm -f kexec-tarball
if [ ! -f kexec/run ]; then ls -A | tr '\n' ' '; cd / && rm -rf "$d"; exit {NO_RUN}; fi
printf '{SIZES} %s %s %s\n' "$(wc -c < kexec/bzImage 2>/dev/null || echo 0)" \
  "$(wc -c < kexec/initrd 2>/dev/null || echo 0)" \
  "$(awk '/^MemAvailable:/ {{ print $2 }}' /proc/meminfo)""#,
        flag = tar_flag(format),
    )
}

/// Brings the image to `dir` on the target and unpacks it: a local file streamed up; a URL
/// downloaded by the target, else by this machine and streamed up.
async fn fetch_and_unpack(
    session: &Session,
    host: &str,
    dir: &str,
    image: &Image,
) -> Result<Unpacked, KexecError> {
    match image {
        Image::File { path, format } => {
            let read = |source| KexecError::Read {
                path: path.clone(),
                source,
            };
            let file = tokio::fs::File::open(path).await.map_err(read)?;
            eprintln!("    streaming {} to {host}", path.display());
            let mut body = Body::File(file);
            let (first, format) = body
                .first(*format)
                .await
                .map_err(|e| read(std::io::Error::other(e)))?;
            unpack_streamed(session, host, dir, format, first, body)
                .await
                .map_err(|e| e.or_read(path))
        }
        Image::Url { url, format } => {
            eprintln!("    {host} downloads {url}");
            let on_target = match download_on_target(session, dir, url).await? {
                Ok(()) => {
                    let script = unpack_script(dir, "kexec-tarball", *format);
                    let out = session.run(&script, b"").await?;
                    return unpacked(host, out.status, &out.stdout, &out.stderr);
                }
                Err(reason) => reason,
            };
            eprintln!("    {host} could not download it ({on_target}); downloading it here");
            let here = |here: String| KexecError::Download {
                url: url.clone(),
                on_target: on_target.clone(),
                here,
            };
            let client = crate::substitute::cache::client(
                None,
                None,
                &crate::substitute::HttpOptions {
                    open_deadline: Duration::from_secs(20),
                    idle_timeout: Duration::from_secs(60),
                },
            )
            .map_err(|e| here(e.to_string()))?;
            let response = client
                .get(url.as_str())
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map_err(|e| here(crate::substitute::cache::chain(&e)))?;
            let mut body = Body::Http(response);
            let (first, format) = body.first(*format).await.map_err(here)?;
            unpack_streamed(session, host, dir, format, first, body)
                .await
                .map_err(|e| e.or_download(here))
        }
    }
}

/// Where the streamed bytes come from.
enum Body {
    File(tokio::fs::File),
    Http(reqwest::Response),
}

impl Body {
    async fn next(&mut self) -> Result<Option<Bytes>, String> {
        match self {
            Body::File(file) => {
                let mut buf = vec![0; 1 << 20];
                let n = file.read(&mut buf).await.map_err(|e| e.to_string())?;
                buf.truncate(n);
                Ok((n > 0).then(|| Bytes::from(buf)))
            }
            Body::Http(response) => response
                .chunk()
                .await
                .map_err(|e| crate::substitute::cache::chain(&e)),
        }
    }

    /// The first chunk, and the format: the name's, or sniffed from those bytes.
    async fn first(&mut self, format: TarFormat) -> Result<(Bytes, TarFormat), String> {
        let first = self.next().await?.unwrap_or_default();
        let format = match format {
            TarFormat::Sniff => sniff(&first),
            given => given,
        };
        Ok((first, format))
    }
}

/// A streamed unpacking's failure: the source's, or the target's.
enum StreamError {
    Source(String),
    Kexec(KexecError),
}

impl StreamError {
    fn or_read(self, path: &std::path::Path) -> KexecError {
        match self {
            StreamError::Source(reason) => KexecError::Read {
                path: path.to_owned(),
                source: std::io::Error::other(reason),
            },
            StreamError::Kexec(e) => e,
        }
    }

    fn or_download(self, here: impl Fn(String) -> KexecError) -> KexecError {
        match self {
            StreamError::Source(reason) => here(reason),
            StreamError::Kexec(e) => e,
        }
    }
}

/// Feeds `first` and the rest of `body` to `tar` on the target.
async fn unpack_streamed(
    session: &Session,
    host: &str,
    dir: &str,
    format: TarFormat,
    first: Bytes,
    mut body: Body,
) -> Result<Unpacked, StreamError> {
    let script = unpack_script(dir, "-", format);
    let crate::ssh::Exec {
        mut stdin,
        mut stdout,
        exit,
    } = session
        .exec(&script)
        .await
        .map_err(|e| StreamError::Kexec(e.into()))?;
    let reader = tokio::spawn(async move {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out).await;
        out
    });
    let mut sent = first.len() as u64;
    let mut chunk = first;
    let mut fed = Ok(());
    loop {
        if !chunk.is_empty() && stdin.send(chunk).await.is_err() {
            // tar stopped reading: its status says why.
            break;
        }
        match body.next().await {
            Ok(Some(next)) => {
                sent += next.len() as u64;
                chunk = next;
            }
            Ok(None) => break,
            Err(reason) => {
                fed = Err(reason);
                break;
            }
        }
    }
    let _ = stdin.close().await;
    let info = exit
        .wait()
        .await
        .map_err(|e| StreamError::Kexec(e.into()))?;
    let out = reader.await.unwrap_or_default();
    if let Err(reason) = fed {
        // tar may have taken the cut archive for a whole one.
        let remove = format!("rm -rf {}", shell_quote(dir));
        session
            .run(&remove, b"")
            .await
            .map_err(|e| StreamError::Kexec(e.into()))?;
        return Err(StreamError::Source(reason));
    }
    tracing::debug!(sent, "kexec image streamed");
    unpacked(host, info.status, &out, &info.stderr).map_err(StreamError::Kexec)
}

/// Reads the unpacking's report.
fn unpacked(
    host: &str,
    status: Option<u32>,
    stdout: &[u8],
    stderr: &[u8],
) -> Result<Unpacked, KexecError> {
    let stdout = String::from_utf8_lossy(stdout);
    if status == Some(NO_RUN) {
        return Err(KexecError::NotKexecImage {
            host: host.into(),
            listing: stdout.trim().to_owned(),
        });
    }
    let sizes = stdout.lines().find_map(|l| l.strip_prefix(SIZES)).map(|l| {
        l.split_whitespace()
            .map(|n| n.parse::<u64>().unwrap_or(0))
            .collect::<Vec<_>>()
    });
    match (status, sizes.as_deref()) {
        (Some(0), Some(&[kernel, initrd, available_kib])) => Ok(Unpacked {
            kernel,
            initrd,
            available: available_kib * 1024,
        }),
        _ => Err(KexecError::Unpack {
            host: host.into(),
            status: crate::ssh::exec::describe_status(status, None),
            output: format!("{stdout}{}", String::from_utf8_lossy(stderr))
                .trim()
                .to_owned(),
        }),
    }
}

/// The target downloads `url` to `dir/kexec-tarball` with wget or curl, as nixos-anywhere
/// does; `Err` with the reason when it cannot (it may have no route out, or neither tool).
async fn download_on_target(
    session: &Session,
    dir: &str,
    url: &str,
) -> Result<Result<(), String>, KexecError> {
    let script = format!(
        r#"d={dir}; u={url}
mkdir -p "$d" && cd "$d" || exit 1
rm -f kexec-tarball kexec-tarball.part
if command -v wget >/dev/null 2>&1; then t=wget; wget -q -T 20 -O kexec-tarball.part "$u"
elif command -v curl >/dev/null 2>&1; then t=curl; curl --fail -sS -L --connect-timeout 20 -o kexec-tarball.part "$u"
else echo "it has neither wget nor curl" >&2; exit 127; fi || {{ s=$?; rm -f kexec-tarball.part; echo "$t ended with exit status $s" >&2; exit $s; }}
mv kexec-tarball.part kexec-tarball"#,
        dir = shell_quote(dir),
        url = shell_quote(url),
    );
    let out = session.run(&script, b"").await?;
    if out.success() {
        return Ok(Ok(()));
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    Ok(Err(if stderr.is_empty() {
        out.describe()
    } else {
        stderr
    }))
}

/// The image must fit: `kexec --load` copies kernel and initrd into the kernel's memory now,
/// and the installer's kernel keeps the initrd while it unpacks it. Refused, the files go.
async fn check_memory(
    session: &Session,
    host: &str,
    dir: &str,
    facts: &Facts,
    image: &Unpacked,
) -> Result<(), KexecError> {
    let needed = image.kernel + 2 * image.initrd + RUN_HEADROOM;
    let needed_now = image.kernel + image.initrd + 32 * MIB;
    let total = facts.memory.total_bytes;
    if total >= needed && image.available >= needed_now {
        return Ok(());
    }
    session
        .run(&format!("rm -rf {}", shell_quote(dir)), b"")
        .await?;
    Err(KexecError::Memory {
        host: host.into(),
        total: total / MIB,
        available: image.available / MIB,
        needed: needed.div_ceil(MIB),
        needed_now: needed_now.div_ceil(MIB),
        kernel: image.kernel.div_ceil(MIB),
        initrd: image.initrd.div_ceil(MIB),
    })
}

/// Runs the tarball's `kexec/run` as nixos-anywhere does, its output shown as it comes and
/// kept in `nixos-anywhere.log` beside it; returns that output once the marker was seen.
async fn run_kexec(
    session: &Session,
    host: &str,
    dir: &str,
    extra_flags: &str,
) -> Result<String, KexecError> {
    let command = format!(
        "cd {d} && TMPDIR={d} setsid --wait {d}/kexec/run --kexec-extra-flags {flags} 2>&1 | \
         tee {d}/nixos-anywhere.log",
        d = shell_quote(dir),
        flags = shell_quote(extra_flags),
    );
    let crate::ssh::Exec {
        stdin,
        mut stdout,
        exit,
    } = session.exec(&command).await?;
    drop(stdin);
    let mut log = String::new();
    let mut line = Vec::new();
    while let Some(chunk) = stdout.next_chunk().await {
        for &byte in chunk.iter() {
            if byte != b'\n' {
                line.push(byte);
                continue;
            }
            let text = String::from_utf8_lossy(&line);
            eprintln!("    | {text}");
            log.push_str(&text);
            log.push('\n');
            line.clear();
        }
        if log.len() > LOG_KEEP {
            let cut = log.len() - LOG_KEEP;
            let cut = (cut..log.len())
                .find(|&i| log.is_char_boundary(i))
                .unwrap_or(cut);
            log.drain(..cut);
        }
    }
    if !line.is_empty() {
        log.push_str(&String::from_utf8_lossy(&line));
    }
    // The connection may go down with the machine: the marker alone tells success.
    let status = match exit.wait().await {
        Ok(info) => info.describe(),
        Err(e) => e.to_string(),
    };
    if log.contains(MARKER) {
        Ok(log)
    } else {
        Err(KexecError::RunFailed {
            host: host.into(),
            status,
            log: log.trim_end().to_owned(),
        })
    }
}

/// The current boot's id, as `session` sees it.
async fn boot_id(session: &Session) -> Option<String> {
    let run = session.run("cat /proc/sys/kernel/random/boot_id", b"");
    match tokio::time::timeout(Duration::from_secs(5), run).await {
        Ok(Ok(out)) if out.success() => {
            Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        }
        _ => None,
    }
}

/// Waits until the old system stops answering on the session that started the kexec.
async fn wait_gone(
    session: &Session,
    host: &str,
    old_boot: &str,
    deadline: Instant,
    log: &str,
) -> Result<(), KexecError> {
    let started = Instant::now();
    while boot_id(session).await.as_deref() == Some(old_boot) {
        if Instant::now() >= deadline {
            return Err(KexecError::StillUp {
                host: host.into(),
                secs: started.elapsed().as_secs(),
                log: log.trim_end().to_owned(),
            });
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}

/// Logs into the installer as root, trying again while it boots, until the deadline. The host
/// key must be `pin`'s, and the boot a new one (an old system that still lets root in is not
/// the installer).
async fn reconnect(
    target: &Target,
    opts: &SshOptions,
    pin: &HostKeyPin,
    old_boot: &str,
    (deadline, deadline_secs): (Instant, u64),
    log: &str,
) -> Result<Session, KexecError> {
    let started = Instant::now();
    let mut said = started;
    let mut last = String::from("no answer yet");
    eprintln!("    waiting up to {deadline_secs} s for the installer at {target}");
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(KexecError::NotBack {
                target: target.to_string(),
                secs: deadline_secs,
                last,
                log: log.trim_end().to_owned(),
            });
        }
        if now.duration_since(said) >= PROGRESS_EVERY {
            eprintln!(
                "    still waiting for {target}: {} s of {deadline_secs} s ({last})",
                started.elapsed().as_secs()
            );
            said = now;
        }
        let attempt = ATTEMPT.min(deadline - now);
        match tokio::time::timeout(attempt, Session::connect(target, opts, pin)).await {
            Err(_) => last = format!("no answer within {} s", attempt.as_secs()),
            Ok(Err(SshError::HostKeyChanged {
                pinned_fingerprint,
                seen_fingerprint,
                ..
            })) => {
                return Err(KexecError::HostKeyChanged {
                    target: target.to_string(),
                    pinned: pinned_fingerprint,
                    seen: seen_fingerprint,
                });
            }
            Ok(Err(e)) if wait::not_up_yet(&e) => last = e.to_string(),
            // known_hosts disagrees: its own message says which file and line.
            Ok(Err(e @ SshError::HostKeyRejected { .. })) => return Err(e.into()),
            Ok(Err(source)) => {
                return Err(KexecError::Refused {
                    target: target.to_string(),
                    source: Box::new(source),
                    log: log.trim_end().to_owned(),
                });
            }
            Ok(Ok(session)) => match boot_id(&session).await {
                Some(id) if id != old_boot => return Ok(session),
                _ => {
                    last = "the old system still answers".into();
                    let _ = session.close().await;
                }
            },
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_image_is_nixos_anywheres() {
        assert_eq!(
            default_image_url("x86_64").as_deref(),
            Some(
                "https://github.com/nix-community/nixos-images/releases/download/nixos-25.11/\
                 nixos-kexec-installer-noninteractive-x86_64-linux.tar.gz"
            )
        );
        assert!(
            default_image_url("aarch64")
                .unwrap()
                .ends_with("-aarch64-linux.tar.gz")
        );
        assert_eq!(default_image_url("riscv64"), None);
    }

    #[test]
    fn sniffs_compression_from_the_first_bytes() {
        assert_eq!(sniff(&[0x1f, 0x8b, 8, 0]), TarFormat::Gzip);
        assert_eq!(sniff(b"\xfd7zXZ\0rest"), TarFormat::Xz);
        assert_eq!(sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]), TarFormat::Zstd);
        assert_eq!(sniff(b"kexec/\0\0\0"), TarFormat::Tar);
        assert_eq!(sniff(b""), TarFormat::Tar);
    }

    #[test]
    fn the_unpacking_report_is_read_or_shown() {
        let ok = unpacked(
            "h",
            Some(0),
            b"nixos-anywhere-rs kexec image: 10485760 52428800 400000\n",
            b"",
        )
        .unwrap();
        assert_eq!(
            (ok.kernel, ok.initrd, ok.available),
            (10 << 20, 50 << 20, 400_000 * 1024)
        );
        let not_image = unpacked("h", Some(NO_RUN), b"boot/ README ", b"").unwrap_err();
        assert!(not_image.to_string().contains("it holds: boot/ README"));
        let broken = unpacked("h", Some(2), b"", b"tar: Unexpected EOF in archive").unwrap_err();
        assert!(broken.to_string().contains("Unexpected EOF"), "{broken}");
    }
}
