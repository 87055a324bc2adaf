//! delay-relay: a TCP relay that adds a fixed one-way delay in each direction, and small
//! probes to check a benchmark link (round-trip time and plain TCP rate).
//!
//! The kernel the benchmark runs on has `tbf` but no `netem`, so rate comes from `tbf` on a veth
//! pair and round-trip time from this relay. Every chunk read from one side is stamped with
//! `now + delay` and handed to a writer thread that releases it to the other side when that time
//! comes: a delay line, not a sleep per chunk, so throughput is not cut by the delay, only
//! latency is added (RTT = 2 × delay). Each direction holds at most `--queue-mib` MiB; when the
//! line is full the reader stops reading, so back-pressure reaches the sender as it would
//! through a full path.
//!
//! Subcommands (every address is `IP:PORT`):
//!   forward --listen A --connect B --delay-ms D [--queue-mib Q]
//!       accept connections on A, relay each to B, delaying each direction by D ms.
//!       Prints `ready` on stdout once listening; one line per closed connection on stderr.
//!   echo --listen A                        echo server (for `ping`).
//!   ping --connect A [--count N] [--size B]
//!       N round trips of B bytes; prints JSON {min_ms, median_ms, mean_ms, max_ms}.
//!   sink --listen A                        accept one connection, read to EOF; prints JSON
//!       {bytes, seconds, mbit_per_s} timed from the first byte to EOF.
//!   blast --connect A --bytes N            send N bytes, close, wait for the peer to close.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const READ_BUF: usize = 256 * 1024;
const MAX_WRITE: usize = 1024 * 1024;

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(cmd) = args.next() else { usage() };
    let opts = parse_opts(args);
    let result = match cmd.as_str() {
        "forward" => forward(&opts),
        "echo" => echo(&opts),
        "ping" => ping(&opts),
        "sink" => sink(&opts),
        "blast" => blast(&opts),
        _ => usage(),
    };
    if let Err(e) = result {
        eprintln!("delay-relay {cmd}: {e}");
        std::process::exit(1);
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: delay-relay forward --listen A --connect B --delay-ms D [--queue-mib Q]\n\
         \x20      delay-relay echo --listen A\n\
         \x20      delay-relay ping --connect A [--count N] [--size B]\n\
         \x20      delay-relay sink --listen A\n\
         \x20      delay-relay blast --connect A --bytes N"
    );
    std::process::exit(2)
}

fn parse_opts(mut args: impl Iterator<Item = String>) -> HashMap<String, String> {
    let mut opts = HashMap::new();
    while let Some(key) = args.next() {
        let Some(name) = key.strip_prefix("--") else { usage() };
        let Some(value) = args.next() else { usage() };
        opts.insert(name.to_string(), value);
    }
    opts
}

fn opt<'a>(opts: &'a HashMap<String, String>, name: &str) -> io::Result<&'a str> {
    opts.get(name)
        .map(String::as_str)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("--{name} is required")))
}

fn num<T: std::str::FromStr>(opts: &HashMap<String, String>, name: &str, default: Option<T>) -> io::Result<T> {
    match opts.get(name) {
        Some(v) => v
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("--{name}: not a number: {v}"))),
        None => default
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("--{name} is required"))),
    }
}

fn ready() {
    println!("ready");
    let _ = io::stdout().flush();
}

// ---------------------------------------------------------------------------------------------
// forward: the delay line

struct LineState {
    queue: VecDeque<(Instant, Vec<u8>)>,
    bytes: usize,
    eof: bool,
    dead: bool,
}

/// One direction of one connection: chunks waiting for their release time.
struct Line {
    state: Mutex<LineState>,
    changed: Condvar,
    cap: usize,
}

impl Line {
    fn new(cap: usize) -> Self {
        Line {
            state: Mutex::new(LineState { queue: VecDeque::new(), bytes: 0, eof: false, dead: false }),
            changed: Condvar::new(),
            cap,
        }
    }

    fn kill(&self) {
        self.state.lock().unwrap().dead = true;
        self.changed.notify_all();
    }
}

/// Reads `from` and queues each chunk, stamped with its release time. Returns the bytes read.
fn line_reader(mut from: TcpStream, line: &Line, delay: Duration) -> u64 {
    let mut buf = vec![0u8; READ_BUF];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => 0,
        };
        let release = Instant::now() + delay;
        let mut st = line.state.lock().unwrap();
        if n == 0 {
            st.eof = true;
            line.changed.notify_all();
            return total;
        }
        while st.bytes > 0 && st.bytes + n > line.cap && !st.dead {
            st = line.changed.wait(st).unwrap();
        }
        if st.dead {
            return total;
        }
        st.queue.push_back((release, buf[..n].to_vec()));
        st.bytes += n;
        total += n as u64;
        line.changed.notify_all();
    }
}

/// Releases queued chunks to `to` when their time comes; closes `to` for writing at EOF.
fn line_writer(mut to: TcpStream, line: &Line) -> io::Result<()> {
    let mut out = Vec::with_capacity(MAX_WRITE);
    loop {
        let mut st = line.state.lock().unwrap();
        loop {
            if st.dead {
                return Ok(());
            }
            if let Some((release, _)) = st.queue.front() {
                let now = Instant::now();
                if *release <= now {
                    break;
                }
                let wait = *release - now;
                st = line.changed.wait_timeout(st, wait).unwrap().0;
                continue;
            }
            if st.eof {
                drop(st);
                let _ = to.shutdown(Shutdown::Write);
                return Ok(());
            }
            st = line.changed.wait(st).unwrap();
        }
        // Everything that is due, up to MAX_WRITE bytes, in one write.
        let now = Instant::now();
        out.clear();
        while let Some((release, chunk)) = st.queue.front() {
            if *release > now || (!out.is_empty() && out.len() + chunk.len() > MAX_WRITE) {
                break;
            }
            out.extend_from_slice(chunk);
            st.queue.pop_front();
        }
        st.bytes -= out.len();
        line.changed.notify_all();
        drop(st);
        to.write_all(&out)?;
    }
}

fn forward(opts: &HashMap<String, String>) -> io::Result<()> {
    let listen = opt(opts, "listen")?;
    let connect = opt(opts, "connect")?.to_string();
    let delay_ms: f64 = num(opts, "delay-ms", None)?;
    let queue_mib: usize = num(opts, "queue-mib", Some(16))?;
    let delay = Duration::from_secs_f64(delay_ms / 1000.0);
    let listener = TcpListener::bind(listen)?;
    ready();
    for client in listener.incoming() {
        let client = match client {
            Ok(c) => c,
            Err(e) => {
                eprintln!("delay-relay: accept: {e}");
                continue;
            }
        };
        let connect = connect.clone();
        thread::spawn(move || {
            let peer = client.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            match relay_one(client, &connect, delay, queue_mib << 20) {
                Ok((up, down, secs)) => eprintln!(
                    "delay-relay: {peer}: closed after {secs:.3} s, {up} bytes to server, {down} bytes to client"
                ),
                Err(e) => eprintln!("delay-relay: {peer}: {e}"),
            }
        });
    }
    Ok(())
}

fn relay_one(client: TcpStream, connect: &str, delay: Duration, cap: usize) -> io::Result<(u64, u64, f64)> {
    let start = Instant::now();
    let server = TcpStream::connect(connect)?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let up = Arc::new(Line::new(cap));
    let down = Arc::new(Line::new(cap));

    let spawn_dir = |from: &TcpStream, to: &TcpStream, line: &Arc<Line>, other: &Arc<Line>| -> io::Result<_> {
        let (from_r, to_w) = (from.try_clone()?, to.try_clone()?);
        let (from_x, to_x) = (from.try_clone()?, to.try_clone()?);
        let (lr, lw, other_w) = (line.clone(), line.clone(), other.clone());
        let reader = thread::spawn(move || line_reader(from_r, &lr, delay));
        let writer = thread::spawn(move || {
            if line_writer(to_w, &lw).is_err() {
                // The receiving side is gone: tear down both directions.
                lw.kill();
                other_w.kill();
                let _ = from_x.shutdown(Shutdown::Both);
                let _ = to_x.shutdown(Shutdown::Both);
            }
        });
        Ok((reader, writer))
    };
    let (up_r, up_w) = spawn_dir(&client, &server, &up, &down)?;
    let (down_r, down_w) = spawn_dir(&server, &client, &down, &up)?;
    let up_bytes = up_r.join().unwrap_or(0);
    let down_bytes = down_r.join().unwrap_or(0);
    let _ = up_w.join();
    let _ = down_w.join();
    Ok((up_bytes, down_bytes, start.elapsed().as_secs_f64()))
}

// ---------------------------------------------------------------------------------------------
// probes

fn echo(opts: &HashMap<String, String>) -> io::Result<()> {
    let listener = TcpListener::bind(opt(opts, "listen")?)?;
    ready();
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        thread::spawn(move || {
            let _ = conn.set_nodelay(true);
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = conn.read(&mut buf) {
                if n == 0 || conn.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
    }
    Ok(())
}

fn ping(opts: &HashMap<String, String>) -> io::Result<()> {
    let count: usize = num(opts, "count", Some(20))?;
    let size: usize = num(opts, "size", Some(64))?;
    let mut conn = TcpStream::connect(opt(opts, "connect")?)?;
    conn.set_nodelay(true)?;
    let msg = vec![0x5au8; size];
    let mut back = vec![0u8; size];
    let mut rtts = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let t = Instant::now();
        conn.write_all(&msg)?;
        conn.read_exact(&mut back)?;
        rtts.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    rtts.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mean = rtts.iter().sum::<f64>() / rtts.len() as f64;
    println!(
        "{{\"count\":{},\"size\":{},\"min_ms\":{:.3},\"median_ms\":{:.3},\"mean_ms\":{:.3},\"max_ms\":{:.3}}}",
        rtts.len(),
        size,
        rtts[0],
        rtts[rtts.len() / 2],
        mean,
        rtts[rtts.len() - 1]
    );
    Ok(())
}

fn sink(opts: &HashMap<String, String>) -> io::Result<()> {
    let listener = TcpListener::bind(opt(opts, "listen")?)?;
    ready();
    let (mut conn, _) = listener.accept()?;
    let mut buf = vec![0u8; READ_BUF];
    let mut total = 0u64;
    let mut first: Option<Instant> = None;
    loop {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        first.get_or_insert_with(Instant::now);
        total += n as u64;
    }
    let secs = first.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0);
    let mbit = if secs > 0.0 { total as f64 * 8.0 / secs / 1e6 } else { 0.0 };
    println!("{{\"bytes\":{total},\"seconds\":{secs:.4},\"mbit_per_s\":{mbit:.2}}}");
    Ok(())
}

fn blast(opts: &HashMap<String, String>) -> io::Result<()> {
    let bytes: u64 = num(opts, "bytes", None)?;
    let mut conn = TcpStream::connect(opt(opts, "connect")?)?;
    let buf = vec![0u8; READ_BUF];
    let start = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        conn.write_all(&buf[..n])?;
        left -= n as u64;
    }
    conn.shutdown(Shutdown::Write)?;
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest)?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"bytes\":{bytes},\"seconds\":{secs:.4},\"mbit_per_s\":{:.2}}}",
        bytes as f64 * 8.0 / secs / 1e6
    );
    Ok(())
}
