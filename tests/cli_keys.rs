//! Disk-encryption key sources given as pipes (`--disk-encryption-keys /tmp/k <(...)`) are
//! read exactly once: the command line is checked without reading them, then each source is
//! read once however many remote paths name it, into wiped buffers that never print.

mod cli_support;

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use cli_support::request_with;
use nixos_anywhere_rs::cli::install::{Environment, KeyError, KeySources, MAX_KEY_BYTES};

fn install_with_keys(pairs: &[(&str, &str)]) -> Vec<String> {
    let mut args: Vec<String> = ["--flake", ".#a", "root@h"].map(String::from).to_vec();
    for (remote, local) in pairs {
        args.extend([
            "--disk-encryption-keys".into(),
            remote.to_string(),
            local.to_string(),
        ]);
    }
    args
}

/// `<(...)` hands the tool a `/dev/fd/N` name of a pipe: a second reading of it finds nothing.
#[test]
fn a_dev_fd_pipe_named_twice_is_read_once() {
    let (read, write) = rustix::pipe::pipe().unwrap();
    let key = b"correct horse battery staple\n";
    std::fs::File::from(write).write_all(key).unwrap(); // and closed: the writer is gone
    let local = format!("/dev/fd/{}", read.as_raw_fd());

    let r = request_with(
        &install_with_keys(&[("/tmp/a.key", &local), ("/run/b.key", &local)]),
        Environment::default(),
    )
    .unwrap();
    let json = serde_json::to_string(&r).unwrap();
    assert!(json.contains(&local) && !json.contains("horse"), "{json}");

    // Checking the command line read nothing: all of the key is still there, for both paths.
    let keys = KeySources::new().read_all(&r.disk_encryption_keys).unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0].remote, PathBuf::from("/tmp/a.key"));
    assert_eq!(keys[1].remote, PathBuf::from("/run/b.key"));
    for k in &keys {
        assert_eq!(k.key.expose(), key);
    }
    assert!(!format!("{keys:?}").contains("horse"));
    drop(read);
}

/// A named FIFO has one writer, who writes once: a second open would wait for a writer forever.
/// Named twice, once through a link to it, it is read once.
#[test]
fn a_fifo_is_read_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("key.fifo");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    let link = dir.path().join("same-key");
    std::os::unix::fs::symlink(&fifo, &link).unwrap();

    let key: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let writer = {
        let (fifo, key) = (fifo.clone(), key.clone());
        std::thread::spawn(move || {
            let mut w = OpenOptions::new().write(true).open(fifo).unwrap();
            w.write_all(&key).unwrap();
        })
    };

    let r = request_with(
        &install_with_keys(&[
            ("/tmp/a", fifo.to_str().unwrap()),
            ("/tmp/b", link.to_str().unwrap()),
        ]),
        Environment::default(),
    )
    .unwrap();
    let (done, result) = mpsc::channel();
    let wanted = r.disk_encryption_keys.clone();
    std::thread::spawn(move || {
        let _ = done.send(KeySources::new().read_all(&wanted));
    });
    let keys = match result.recv_timeout(Duration::from_secs(30)) {
        Ok(keys) => keys.unwrap(),
        Err(_) => {
            // Release the reader stuck in a second open, then fail.
            let _ = OpenOptions::new().write(true).open(&fifo);
            panic!("the FIFO was opened a second time");
        }
    };
    writer.join().unwrap();
    assert_eq!(keys.len(), 2);
    assert!(keys.iter().all(|k| k.key.expose() == key.as_slice()));
}

#[test]
fn an_endless_source_is_refused_and_errors_name_paths_only() {
    let (read, write) = rustix::pipe::pipe().unwrap();
    let writer = std::thread::spawn(move || {
        let mut w = std::fs::File::from(write);
        let chunk = vec![b'k'; 1 << 16];
        // Ends when the reader gives up and closes its end (EPIPE).
        while w.write_all(&chunk).is_ok() {}
    });
    let local = PathBuf::from(format!("/dev/fd/{}", read.as_raw_fd()));
    let err = KeySources::new()
        .read("/tmp/k".as_ref(), &local)
        .unwrap_err();
    assert!(matches!(err, KeyError::TooLarge { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("/tmp/k") && text.contains(&format!("more than {} MiB", MAX_KEY_BYTES >> 20)),
        "{text}"
    );
    assert!(!text.contains("kkkk"));
    drop(read);
    writer.join().unwrap();

    let err = KeySources::new()
        .read("/tmp/k".as_ref(), "/nonexistent/key".as_ref())
        .unwrap_err();
    assert!(
        err.to_string().contains("for /tmp/k from /nonexistent/key"),
        "{err}"
    );
}
