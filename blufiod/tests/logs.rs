//! The daemon's log: `log.file` rotated under load without losing or doubling a line (rename,
//! then SIGUSR1, as logrotate's postrotate does; and on SIGHUP), and `blufioctl logs` reading
//! the in-memory ring, following it, and ending with the daemon.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _};
use std::path::Path;
use std::time::{Duration, Instant};

use blufio_proto::control::v1 as pb;
use blufio_proto::httpsig;
use blufio_testkit::{Daemon, DaemonOptions, PATIENCE, control_client, describe, new_dir};
use ed25519_dalek::SigningKey;
use nix::sys::signal::Signal;

/// Tasks logging at once, and lines each logs (one device rename each).
const WRITERS: usize = 4;
const RENAMES: usize = 120;
const ROTATIONS: usize = 50;

fn start_logging_to_file(level: &str) -> (Daemon, std::path::PathBuf) {
    let dir = new_dir();
    let log_dir = dir.path().join("log");
    std::fs::create_dir(&log_dir).unwrap();
    let file = log_dir.join("blufiod.log");
    let daemon = Daemon::start_with(
        dir,
        DaemonOptions {
            config: format!("[log]\nlevel = \"{level}\"\nfile = \"{}\"\n", file.display()),
            ..DaemonOptions::default()
        },
    );
    (daemon, file)
}

/// Every rotated file and the current one, concatenated.
fn all_lines(log_dir: &Path) -> Vec<String> {
    let mut text = String::new();
    for entry in std::fs::read_dir(log_dir).unwrap() {
        text.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap());
    }
    text.lines().map(str::to_owned).collect()
}

async fn add_device(control: &mut pb::control_client::ControlClient<tonic::transport::Channel>, name: &str, seed: u8) {
    let key = SigningKey::from_bytes(&[seed; 32]);
    control
        .add_device(pb::AddDeviceRequest {
            name: name.to_owned(),
            public_key_pem: httpsig::verifying_key_to_pem(&key.verifying_key()).unwrap(),
        })
        .await
        .expect("add a device");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_rotations_under_load_lose_and_double_no_line() {
    let (daemon, file) = start_logging_to_file("info");
    let log_dir = file.parent().unwrap().to_owned();
    assert!(
        daemon.stderr().is_empty(),
        "log.file replaces stderr: {}",
        daemon.stderr()
    );
    let pid = daemon.pid();

    // Each writer renames its own device over and over; each rename is one "device renamed" line
    // with a name that appears nowhere else.
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let socket = daemon.socket.clone();
        writers.push(tokio::spawn(async move {
            let mut control = control_client(&socket).await;
            add_device(&mut control, &format!("w{writer}-0"), writer as u8 + 1).await;
            for n in 0..RENAMES {
                control
                    .rename_device(pb::RenameDeviceRequest {
                        name: format!("w{writer}-{n}"),
                        new_name: format!("w{writer}-{}", n + 1),
                    })
                    .await
                    .expect("rename");
            }
        }));
    }
    let rotator = tokio::spawn({
        let file = file.clone();
        async move {
            for rotation in 1..=ROTATIONS {
                std::fs::rename(&file, file.with_extension(format!("log.{rotation}"))).unwrap();
                // The next line must not be lost while the daemon still has the old file open.
                nix::sys::signal::kill(
                    pid,
                    if rotation % 10 == 0 {
                        Signal::SIGHUP
                    } else {
                        Signal::SIGUSR1
                    },
                )
                .unwrap();
                let deadline = Instant::now() + PATIENCE;
                while !file.exists() {
                    assert!(Instant::now() < deadline, "rotation {rotation}: no new file");
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    for writer in writers {
        writer.await.unwrap();
    }
    rotator.await.unwrap();

    let lines = all_lines(&log_dir);
    let mut renamed: BTreeMap<String, usize> = BTreeMap::new();
    for line in &lines {
        if line.contains("device renamed") {
            let to = line
                .split(" to=")
                .nth(1)
                .expect("a to= field")
                .split_whitespace()
                .next()
                .unwrap();
            *renamed.entry(to.to_owned()).or_default() += 1;
        }
    }
    for writer in 0..WRITERS {
        for n in 1..=RENAMES {
            let name = format!("w{writer}-{n}");
            assert_eq!(renamed.get(&name), Some(&1), "the rename to {name} logged once");
        }
    }
    assert_eq!(renamed.len(), WRITERS * RENAMES, "no other rename lines");
    let reopened = lines.iter().filter(|line| line.contains("log file reopened")).count();
    assert_eq!(reopened, ROTATIONS - ROTATIONS / 10, "a line per SIGUSR1");
    let reloads = lines.iter().filter(|line| line.contains("SIGHUP received")).count();
    assert_eq!(reloads, ROTATIONS / 10, "a line per SIGHUP");
    // Each line is whole: a timestamp first, then a level.
    for line in &lines {
        let level = line.split_whitespace().nth(1).unwrap_or_default();
        assert!(
            line.starts_with("20") && ["ERROR", "WARN", "INFO"].contains(&level),
            "a torn line: {line:?}"
        );
    }
    // Every file was written to by this daemon: each holds at least its reopen line, except the
    // files renamed away before their first line.
    let files = std::fs::read_dir(&log_dir).unwrap().count();
    assert_eq!(files, ROTATIONS + 1);
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the log is the daemon's own");
}

#[test]
fn a_log_file_that_cannot_be_opened_stops_the_start_with_the_reason() {
    let dir = new_dir();
    let missing = dir.path().join("no-such-dir/blufiod.log");
    let mut daemon = Daemon::start_with(
        dir,
        DaemonOptions {
            config: format!("[log]\nfile = \"{}\"\n", missing.display()),
            wait_ready: false,
            ..DaemonOptions::default()
        },
    );
    let status = daemon.wait();
    assert_eq!(status.code(), Some(2), "a configuration error: {}", daemon.stderr());
    let stderr = daemon.stderr();
    assert!(
        stderr.contains(&format!("cannot open the log file {}", missing.display()))
            && stderr.contains("check that its directory exists"),
        "{stderr}"
    );
}

#[test]
fn logs_shows_recent_lines_filters_by_level_and_follows_until_the_daemon_stops() {
    let mut daemon = Daemon::start();
    let output = daemon.ctl(&["logs", "--json"]);
    assert!(output.status.success(), "{}", describe(&output));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert!(
        lines
            .iter()
            .any(|line| line["text"].as_str().unwrap().contains("control plane serving")),
        "{lines:?}"
    );
    assert!(
        lines
            .windows(2)
            .all(|pair| pair[0]["seq"].as_u64() < pair[1]["seq"].as_u64())
    );
    assert!(
        lines
            .iter()
            .all(|line| line["level"] == "info" || line["level"] == "warn")
    );

    // The vault's generated key is warned about: a warn line, and only such lines at --level warn.
    let output = daemon.ctl(&["logs", "--level", "warn", "--json"]);
    let warnings: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert!(!warnings.is_empty(), "{}", describe(&output));
    assert!(
        warnings
            .iter()
            .all(|line| line["level"] == "warn" || line["level"] == "error")
    );

    let output = daemon.ctl(&["logs", "-n", "1"]);
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).lines().count(),
        1,
        "{}",
        describe(&output)
    );

    // Follow: a new line arrives as it is logged, and the stream ends when the daemon stops.
    let mut follower = daemon.ctl_in_background(&["logs", "-f", "-n", "0", "--plain"]);
    let mut stdout = BufReader::new(follower.stdout.take().unwrap());
    // A reload logs a line; repeat until the follower (which may still be connecting) has it.
    let (sender, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        while stdout.read_line(&mut line).unwrap_or(0) > 0 {
            let _ = sender.send(std::mem::take(&mut line));
        }
    });
    // The follower may join between a reload's two lines, so its first line can be the second
    // one ("configuration reloaded"); wait for the line that starts a reload.
    let deadline = Instant::now() + PATIENCE;
    let seen = 'follow: loop {
        assert!(Instant::now() < deadline, "the follower printed no reload line");
        daemon.signal(Signal::SIGHUP);
        while let Ok(line) = received.recv_timeout(Duration::from_millis(500)) {
            if line.contains("SIGHUP received") {
                break 'follow line;
            }
        }
    };
    assert!(seen.contains(" INFO "), "{seen:?}");
    let status = daemon.stop();
    assert!(status.success());
    let deadline = Instant::now() + PATIENCE;
    let exited = loop {
        if let Some(status) = follower.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "logs -f did not end with the daemon");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exited.success(), "{exited:?}");
}

#[test]
fn log_streams_are_bounded_and_end_with_the_daemon() {
    let mut daemon = Daemon::start();
    // Sixteen followers that never read are all the daemon keeps; the next one is refused.
    let mut followers: Vec<_> = (0..16)
        .map(|_| daemon.ctl_in_background(&["logs", "-f", "-n", "2000"]))
        .collect();
    // A follower's first line proves its stream is open (the tail holds the start's lines).
    // Probing before that could take a slot a follower was still connecting for.
    for follower in &mut followers {
        let mut first = String::new();
        let read = BufReader::new(follower.stdout.as_mut().unwrap())
            .read_line(&mut first)
            .unwrap();
        if read == 0 {
            let mut stderr = String::new();
            follower.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
            panic!("a follower ended before its first line: {stderr}");
        }
    }
    let refused = daemon.ctl(&["logs", "-n", "0"]);
    assert_eq!(
        refused.status.code(),
        Some(1),
        "a 17th stream was not refused: {}",
        describe(&refused)
    );
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("16 log streams are open already"),
        "{}",
        describe(&refused)
    );
    assert!(daemon.stop().success());
    for follower in &mut followers {
        let _ = follower.kill();
        let _ = follower.wait();
    }
}

#[test]
fn a_caller_refused_in_a_loop_does_not_flood_the_log() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to act as another user");
        return;
    }
    let dir = new_dir();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let daemon = Daemon::start_with(
        dir,
        DaemonOptions {
            config: "[control]\ngroup = \"nogroup\"\ngroup_access = \"read-only\"\n".to_owned(),
            ..DaemonOptions::default()
        },
    );
    // A read-only member asks for the logs (full access) over and over.
    let started = Instant::now();
    for _ in 0..150 {
        let output = daemon.ctl_as(65534, 65534, &["logs", "-n", "0"]);
        assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    }
    let seconds = started.elapsed().as_secs() + 1;
    let output = daemon.ctl(&["logs", "-n", "2000", "--level", "warn"]);
    let text = String::from_utf8_lossy(&output.stdout);
    let lines = text.lines().filter(|line| line.contains("control call denied")).count();
    assert!(
        (1..=seconds as usize + 1).contains(&lines),
        "{lines} denial lines for 150 refusals in {seconds} s:\n{text}"
    );
}

#[test]
fn a_client_that_stops_reading_does_not_hold_the_daemons_stop() {
    let mut daemon = Daemon::start_with(
        new_dir(),
        DaemonOptions {
            env: vec![("BLUFIO_DAEMON__SHUTDOWN_TIMEOUT_SECS".to_owned(), "20".to_owned())],
            ..DaemonOptions::default()
        },
    );
    // A raw HTTP/2 client with a zero window: it asks for the whole ring and never reads.
    let socket = daemon.socket.clone();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _stalled = runtime.block_on(async move {
        let stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
        let (mut client, connection) = h2::client::Builder::new()
            .initial_window_size(0)
            .handshake::<_, bytes::Bytes>(stream)
            .await
            .unwrap();
        tokio::spawn(connection);
        let request = http::Request::builder()
            .method("POST")
            .uri("http://localhost/blufio.control.v1.Control/ReadLogs")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let (response, mut body) = client.send_request(request, false).unwrap();
        // lines = 2000, follow = true
        body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 5, 8, 0xd0, 0x0f, 24, 1]), true)
            .unwrap();
        (client, response)
    });
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    assert!(daemon.stop().success());
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(12),
        "the stop waited {took:?} for a client that does not read (shutdown_timeout_secs is 20)"
    );
    assert!(!daemon.stderr().contains("drain timed out"), "{}", daemon.stderr());
}

/// An attack on issue 13: at `log.level = "trace"`, a `logs -f` stream logged trace lines of its
/// own frames (h2, hyper, tonic) into the ring it streams, a loop of about 100 MB in 10 s.
#[test]
fn at_trace_level_the_stream_does_not_feed_on_its_own_transport_lines() {
    let daemon = Daemon::start();
    let output = daemon.ctl(&["config", "set", "log.level", "trace"]);
    assert!(output.status.success(), "{}", describe(&output));
    // Each call's frames are logged at trace level by the transport crates.
    for _ in 0..3 {
        let output = daemon.ctl(&["logs", "-n", "50", "--plain"]);
        assert!(output.status.success(), "{}", describe(&output));
    }
    let output = daemon.ctl(&["logs", "-n", "2000", "--plain", "--level", "trace"]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.lines().count() > 0, "{}", describe(&output));
    let transport: Vec<&str> = text
        .lines()
        .filter(|line| {
            [" h2::", " hyper::", " hyper_util::", " tonic::", " tower::"]
                .iter()
                .any(|target| line.contains(target))
        })
        .collect();
    assert!(
        transport.is_empty(),
        "{} transport lines, first: {:?}",
        transport.len(),
        transport.first()
    );
    // They still reach the daemon's stderr.
    assert!(
        daemon.stderr().contains(" h2::"),
        "the transport's trace lines are not dropped from stderr"
    );
}
