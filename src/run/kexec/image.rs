//! The kexec image on its way to the target: streamed up, or downloaded by the target (else
//! here and streamed up), unpacked in `~USER/kexec`, checked to be an image for nixos-anywhere
//! that fits in the machine's memory. Every refusal removes what was unpacked.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncReadExt;

use super::{KexecError, MIB, RUN_HEADROOM};
use crate::cli::install::TarFormat;
use crate::facts::Facts;
use crate::ssh::{Session, shell_quote};

/// Where the image comes from, its default chosen.
pub(super) enum Image {
    File { path: PathBuf, format: TarFormat },
    Url { url: String, format: TarFormat },
}

impl Image {
    pub(super) fn name(&self) -> String {
        match self {
            Image::File { path, .. } => path.display().to_string(),
            Image::Url { url, .. } => url.clone(),
        }
    }
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
pub(super) async fn check_tools(
    session: &Session,
    host: &str,
    image: &Image,
) -> Result<(), KexecError> {
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
pub(super) async fn kexec_dir(session: &Session, user: &str) -> Result<String, KexecError> {
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
pub(super) struct Unpacked {
    pub(super) kernel: u64,
    pub(super) initrd: u64,
    /// `MemAvailable` right after the unpacking (the files may sit in RAM).
    pub(super) available: u64,
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
pub(super) async fn fetch_and_unpack(
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
pub(super) async fn check_memory(
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

#[cfg(test)]
mod tests {
    use super::*;

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
