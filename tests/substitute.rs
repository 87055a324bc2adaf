//! Substitution on the destination against binary caches made by Nix itself (`nix copy --to
//! file://...`, signed with keys from `nix-store --generate-binary-cache-key`), served by a real
//! HTTP(S) server on 127.0.0.1: whatever the caches do, nothing wrong is registered, Nix
//! verifies the store, what could not be substituted is reported, and streaming that rest
//! completes the store.

mod nix_oracle;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix_oracle::cache::{
    Tls, closure_of, copy_cache, edit_narinfo, make_tls, nar_file, narinfo_file,
};
use nix_oracle::{NixInfo, closure, nix, nix_store, output, path_infos, run, tempdir};
use nixos_anywhere_rs::nar;
use nixos_anywhere_rs::store::{PathInfo, StorePath, StoreRoot, query_closure};
use nixos_anywhere_rs::substitute::{
    CaCertificates, FetchOptions, FetchReport, HttpOptions, Settings, Substituter, SubstitutionPlan,
};

/// The small fixture closure, keys, and three caches Nix made of it.
struct Fixture {
    top: String,
    closure: Vec<PathInfo>,
    /// A path in the middle: its closure is about half of the whole.
    part: StorePath,
    part_closure: BTreeSet<StorePath>,
    /// Trusted in the tests; signs `full_zstd` and `part_xz`.
    key_a: String,
    /// Signs `full_none_b`; never trusted.
    key_b: String,
    full_zstd: PathBuf,
    part_xz: PathBuf,
    /// The same part, as Nix's oldest caches compress: bzip2.
    part_bzip2: PathBuf,
    full_none_b: PathBuf,
    /// A cache with only its `nix-cache-info`.
    empty: PathBuf,
    work: PathBuf,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("substitute");
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).unwrap();
        let top = closure("small");
        let closure = query_closure(&[StorePath::parse(&top).unwrap()]).unwrap();
        let part = middle(&closure);
        let part_closure = closure_of(&closure, &part);
        let mut keys = Vec::new();
        for name in ["test-a-1", "test-b-1"] {
            let (secret, public) = (
                work.join(format!("{name}.sec")),
                work.join(format!("{name}.pub")),
            );
            run(nix_store()
                .args(["--generate-binary-cache-key", name])
                .args([&secret, &public]));
            keys.push((
                secret,
                std::fs::read_to_string(&public).unwrap().trim().to_owned(),
            ));
        }
        let make = |name: &str, paths: &[String], compression: &str, secret: &Path| {
            let dir = work.join(name);
            let to = format!(
                "file://{}?compression={compression}&secret-key={}",
                dir.display(),
                secret.display()
            );
            run(nix()
                .args(["copy", "--to", &to])
                .args(["--option", "build-users-group", ""])
                .args(paths));
            dir
        };
        let all = [top.clone()];
        let full_zstd = make("full-zstd", &all, "zstd", &keys[0].0);
        let part_xz = make("part-xz", &[part.to_absolute()], "xz", &keys[0].0);
        let part_bzip2 = make("part-bzip2", &[part.to_absolute()], "bzip2", &keys[0].0);
        let full_none_b = make("full-none-b", &all, "none", &keys[1].0);
        let empty = work.join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        std::fs::write(
            empty.join("nix-cache-info"),
            "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n",
        )
        .unwrap();
        Fixture {
            top,
            closure,
            part,
            part_closure,
            key_a: keys[0].1.clone(),
            key_b: keys[1].1.clone(),
            full_zstd,
            part_xz,
            part_bzip2,
            full_none_b,
            empty,
            work,
        }
    })
}

/// The path whose closure (within `closure`) is nearest half of it.
fn middle(closure: &[PathInfo]) -> StorePath {
    let half = closure.len() / 2;
    closure
        .iter()
        .map(|i| {
            (
                closure_of(closure, &i.path).len().abs_diff(half),
                i.path.clone(),
            )
        })
        .min()
        .unwrap()
        .1
}

/// The test's cache server (tests/substitute_server.py), killed when dropped.
struct Server {
    child: Child,
    url: String,
}

fn serve(dir: &Path, tls: Option<&Tls>, stall: bool) -> Server {
    let script = nix_oracle::repo().join("tests/substitute_server.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script).arg(dir);
    if let Some(tls) = tls {
        cmd.arg("--tls").arg(&tls.cert).arg(&tls.key);
    }
    if stall {
        cmd.arg("--stall");
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line.trim().parse().expect("the server prints its port");
    let scheme = if tls.is_some() { "https" } else { "http" };
    Server {
        child,
        url: format!("{scheme}://127.0.0.1:{port}"),
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test CA, made once for this binary.
fn tls() -> &'static Tls {
    static TLS: OnceLock<Tls> = OnceLock::new();
    TLS.get_or_init(|| {
        let dir = fixture().work.join("tls");
        std::fs::create_dir_all(&dir).unwrap();
        make_tls(&dir, "substitute test CA")
    })
}

fn settings(urls: &[&str], keys: &[&str]) -> Settings {
    Settings {
        substituters: urls.iter().map(|u| (*u).to_owned()).collect(),
        trusted_public_keys: keys.iter().map(|k| (*k).to_owned()).collect(),
        ssl_cert_file: None,
        ssl_certificates: None,
    }
}

fn quick() -> HttpOptions {
    HttpOptions {
        open_deadline: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(3),
    }
}

/// Plans and fetches the fixture closure into the store root `root`.
fn substitute(
    root: &Path,
    settings: &Settings,
    opts: &HttpOptions,
) -> (SubstitutionPlan, FetchReport) {
    let fx = fixture();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sub = Substituter::open(settings, opts).await.unwrap();
        let store = StoreRoot::open(root).unwrap();
        let valid = store
            .valid_paths(fx.closure.iter().map(|i| &i.path))
            .unwrap();
        let wanted: Vec<PathInfo> = fx
            .closure
            .iter()
            .filter(|i| !valid.contains(&i.path))
            .cloned()
            .collect();
        let plan = sub.plan(&wanted).await;
        serde_json::to_string(&plan).expect("the plan serialises for --dry-run --json");
        let (_store, report) = sub.fetch(&plan, store, &FetchOptions::default()).await;
        (plan, report)
    })
}

/// `nix-store --verify --check-contents` on the store root succeeds without complaint.
fn assert_verifies(root: &Path) {
    let out = output(
        nix_store()
            .args(["--verify", "--check-contents", "--store"])
            .arg(root)
            .args(["--option", "build-users-group", ""]),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "nix-store --verify failed:\n{stderr}");
    for line in stderr.lines() {
        assert!(
            line.starts_with("reading the Nix store") || line.starts_with("checking "),
            "nix-store --verify complains: {line}"
        );
    }
}

/// Every path registered in `root`, with what Nix reads of it there.
fn registered(root: &Path) -> BTreeMap<String, NixInfo> {
    let fx = fixture();
    let all = path_infos(&fx.top, None);
    let out = run(nix().args(["path-info", "--all", "--store"]).arg(root));
    let mut got = BTreeMap::new();
    for path in String::from_utf8(out).unwrap().lines() {
        let info = path_infos(path, Some(root)).remove(path).unwrap();
        assert_eq!(
            all.get(path),
            Some(&info),
            "{path} registered with a wrong path info"
        );
        got.insert(path.to_owned(), info);
    }
    got
}

/// What the operator would do: stream every path still missing, dependencies first. Returns
/// how many it sent.
fn stream_rest(root: &Path) -> usize {
    let mut store = StoreRoot::open(root).unwrap();
    let valid = store
        .valid_paths(fixture().closure.iter().map(|i| &i.path))
        .unwrap();
    let mut sent = 0;
    for info in fixture()
        .closure
        .iter()
        .filter(|i| !valid.contains(&i.path))
    {
        let mut bytes = Vec::new();
        nar::dump(Path::new(&info.path.to_absolute()), &mut bytes).unwrap();
        store.receive(info, bytes.as_slice()).unwrap();
        sent += 1;
    }
    store.flush().unwrap();
    sent
}

/// The common ending: the store as substitution left it verifies and holds nothing wrong;
/// `expected` paths came from the caches and the report says so; streaming the rest completes
/// it; a rerun has nothing left to do.
fn finish(
    root: &Path,
    plan: &SubstitutionPlan,
    report: &FetchReport,
    expected: &BTreeSet<StorePath>,
) {
    let fx = fixture();
    assert_eq!(&report.substituted, expected, "{report:#?}");
    assert_eq!(report.paths_substituted as usize, expected.len());
    let planned_or_failed = plan.paths.len() + plan.not_substituted.len();
    assert_eq!(
        planned_or_failed,
        fx.closure.len(),
        "every wanted path is accounted for"
    );
    assert_eq!(plan.paths.len(), expected.len() + report.failed.len());
    assert_verifies(root);
    assert_eq!(registered(root).len(), expected.len());
    assert_eq!(stream_rest(root), fx.closure.len() - expected.len());
    assert_verifies(root);
    assert_eq!(path_infos(&fx.top, Some(root)), path_infos(&fx.top, None));
    assert_eq!(stream_rest(root), 0, "a rerun sends nothing");
}

fn all_paths() -> BTreeSet<StorePath> {
    fixture().closure.iter().map(|i| i.path.clone()).collect()
}

/// Paths of the closure that do not depend on `path` (and are not it).
fn not_depending_on(path: &StorePath) -> BTreeSet<StorePath> {
    let fx = fixture();
    all_paths()
        .into_iter()
        .filter(|p| !closure_of(&fx.closure, p).contains(path))
        .collect()
}

#[test]
fn whole_closure_from_a_zstd_cache_and_part_from_an_xz_or_bzip2_one() {
    let fx = fixture();
    let server = serve(&fx.full_zstd, None, false);
    let tmp = tempdir();
    let (plan, report) = substitute(
        tmp.path(),
        &settings(&[&server.url], &[&fx.key_a]),
        &quick(),
    );
    assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    assert!(report.failed.is_empty(), "{report:#?}");
    assert!(report.sources[0].file_bytes > 0);
    finish(tmp.path(), &plan, &report, &all_paths());

    for cache in [&fx.part_xz, &fx.part_bzip2] {
        let part = serve(cache, None, false);
        let tmp = tempdir();
        let (plan, report) =
            substitute(tmp.path(), &settings(&[&part.url], &[&fx.key_a]), &quick());
        finish(tmp.path(), &plan, &report, &fx.part_closure);
    }
    let narinfo = std::fs::read_to_string(narinfo_file(&fx.part_bzip2, &fx.part)).unwrap();
    assert!(narinfo.contains("Compression: bzip2"), "{narinfo}");
}

#[test]
fn an_empty_cache_and_an_untrusted_key_give_nothing() {
    let fx = fixture();
    let empty = serve(&fx.empty, None, false);
    let signed_b = serve(&fx.full_none_b, None, false);
    let tmp = tempdir();
    let (plan, report) = substitute(
        tmp.path(),
        &settings(&[&empty.url, &signed_b.url], &[&fx.key_a]),
        &quick(),
    );
    assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    let top = plan.not_substituted.last().unwrap();
    assert!(
        top.reasons
            .iter()
            .any(|r| r.contains("no signature by a trusted key")),
        "{top:?}"
    );
    finish(tmp.path(), &plan, &report, &BTreeSet::new());

    // Trusting key B as well makes the uncompressed cache usable.
    let tmp = tempdir();
    let (plan, report) = substitute(
        tmp.path(),
        &settings(&[&signed_b.url], &[&fx.key_a, &fx.key_b]),
        &quick(),
    );
    finish(tmp.path(), &plan, &report, &all_paths());
}

#[test]
fn a_wrong_signature_or_a_lying_nar_hash_is_not_used() {
    let fx = fixture();
    let cache = copy_cache(&fx.work, &fx.full_zstd, "bad-sig");
    edit_narinfo(&cache, &fx.part, |l| match l.strip_prefix("Sig: ") {
        // Flip one character of the signature.
        Some(sig) => format!("Sig: {}", sig.replacen('A', "B", 1).replacen('a', "b", 1)),
        None => l.to_owned(),
    });
    let server = serve(&cache, None, false);
    let tmp = tempdir();
    let (plan, report) = substitute(
        tmp.path(),
        &settings(&[&server.url], &[&fx.key_a]),
        &quick(),
    );
    let rejected = plan
        .not_substituted
        .iter()
        .find(|n| n.path == fx.part)
        .unwrap();
    assert!(
        rejected.reasons[0].contains("no signature by a trusted key"),
        "{rejected:?}"
    );
    finish(tmp.path(), &plan, &report, &not_depending_on(&fx.part));

    let cache = copy_cache(&fx.work, &fx.full_zstd, "lying-hash");
    let other = fx.closure.iter().find(|i| i.path != fx.part).unwrap();
    edit_narinfo(&cache, &fx.part, |l| {
        if l.starts_with("NarHash: ") {
            format!("NarHash: sha256:{}", other.nar_hash.to_nix32())
        } else {
            l.to_owned()
        }
    });
    let server = serve(&cache, None, false);
    let tmp = tempdir();
    let (plan, report) = substitute(
        tmp.path(),
        &settings(&[&server.url], &[&fx.key_a]),
        &quick(),
    );
    let rejected = plan
        .not_substituted
        .iter()
        .find(|n| n.path == fx.part)
        .unwrap();
    assert!(
        rejected.reasons[0].contains("differs from the tool's"),
        "{rejected:?}"
    );
    finish(tmp.path(), &plan, &report, &not_depending_on(&fx.part));
}

#[test]
fn a_truncated_nar_and_a_missing_one_are_rejected_and_streamed() {
    let fx = fixture();
    let cache = copy_cache(&fx.work, &fx.full_none_b, "truncated");
    let truncated = nar_file(&cache, &fx.part);
    let len = std::fs::metadata(&truncated).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&truncated)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    // The NAR of a path that does not need `part` is gone: 404.
    let top = not_depending_on(&fx.part)
        .into_iter()
        .find(|p| !fx.part_closure.contains(p))
        .unwrap();
    std::fs::remove_file(nar_file(&cache, &top)).unwrap();
    let server = serve(&cache, None, false);
    let tmp = tempdir();
    let (plan, report) = substitute(
        tmp.path(),
        &settings(&[&server.url], &[&fx.key_b]),
        &quick(),
    );
    let failed: BTreeMap<&StorePath, &str> = report
        .failed
        .iter()
        .map(|f| (&f.path, f.reason.as_str()))
        .collect();
    assert!(
        failed[&fx.part].contains(&fx.part.to_string()),
        "{failed:#?}"
    );
    assert!(failed[&top].contains("404"), "{failed:#?}");
    let expected: BTreeSet<StorePath> = not_depending_on(&fx.part)
        .intersection(&not_depending_on(&top))
        .cloned()
        .collect();
    finish(tmp.path(), &plan, &report, &expected);
    assert_eq!(
        std::fs::read_dir(tmp.path().join("nix/store"))
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".nixos"))
            .count(),
        0,
        "no spool or temporary file is left"
    );
}

#[test]
fn a_server_that_stops_mid_download_or_never_answers_does_not_hang() {
    let fx = fixture();
    let stalling = serve(&fx.full_zstd, None, true);
    // Accepts connections (the kernel does) but never reads them.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    // Nothing listens there.
    let refused_url = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let tmp = tempdir();
    let start = Instant::now();
    let (plan, report) = substitute(
        tmp.path(),
        &settings(
            &[&silent_url, &refused_url, &stalling.url, "s3://bucket"],
            &[&fx.key_a],
        ),
        &quick(),
    );
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(plan.sources.len(), 1, "{:?}", plan.warnings);
    assert_eq!(plan.warnings.len(), 3, "{:?}", plan.warnings);
    assert!(
        plan.warnings
            .iter()
            .any(|w| w.contains(&silent_url) && w.contains("no answer"))
    );
    assert_eq!(plan.paths.len(), fx.closure.len());
    // Every NAR stalls halfway: nothing is substituted, all is streamed, and once the first
    // downloads timed out the rest are not tried (one timeout, not one per path).
    assert_eq!(report.failed.len(), fx.closure.len(), "{report:#?}");
    assert!(
        report.failed.iter().any(|f| f.reason.contains("not tried")),
        "{report:#?}"
    );
    assert!(report.seconds < 15.0, "{report:#?}");
    finish(tmp.path(), &plan, &report, &BTreeSet::new());
}

#[test]
fn https_with_a_private_ca() {
    let fx = fixture();
    let server = serve(&fx.full_zstd, Some(tls()), false);
    let tmp = tempdir();
    let mut with_ca = settings(&[&server.url], &[&fx.key_a]);
    with_ca.ssl_cert_file = Some(tls().ca.clone());
    let (plan, report) = substitute(tmp.path(), &with_ca, &quick());
    finish(tmp.path(), &plan, &report, &all_paths());

    // The same CA read elsewhere and given as certificates (the operator's --ssl-cert-file).
    let tmp = tempdir();
    let mut given = settings(&[&server.url], &[&fx.key_a]);
    given.ssl_certificates = Some(CaCertificates::read(&tls().ca).unwrap());
    let (plan, report) = substitute(tmp.path(), &given, &quick());
    finish(tmp.path(), &plan, &report, &all_paths());
    let not_pem = CaCertificates::read(&tls().key).unwrap_err();
    assert!(
        not_pem.to_string().contains("no PEM certificate"),
        "{not_pem}"
    );

    // Without the CA the bundled roots do not know the server: a warning, and all is streamed.
    let tmp = tempdir();
    let (plan, report) = substitute(
        tmp.path(),
        &settings(&[&server.url], &[&fx.key_a]),
        &quick(),
    );
    assert!(plan.sources.is_empty());
    assert!(
        plan.warnings[0].contains("certificate"),
        "{:?}",
        plan.warnings
    );
    finish(tmp.path(), &plan, &report, &BTreeSet::new());
}

#[test]
fn the_local_store_as_a_substituter() {
    let tmp = tempdir();
    let (plan, report) = substitute(tmp.path(), &settings(&["/"], &[]), &quick());
    assert_eq!(report.sources[0].file_bytes, 0, "no network");
    finish(tmp.path(), &plan, &report, &all_paths());
}
