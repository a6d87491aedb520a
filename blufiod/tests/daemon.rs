//! The daemon as its users meet it: the real `blufiod` binary on a temp dir and socket, driven by
//! the real `blufioctl`, observed through a temporary `NOTIFY_SOCKET`, stopped with SIGTERM.

use blufio_testkit as support;

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::{Daemon, DaemonOptions, describe, new_dir};

#[test]
fn starts_ready_reports_status_and_stops_cleanly() {
    let mut daemon = Daemon::start();
    let notify = daemon.notify.clone().unwrap();
    let ready = notify.wait_for("READY=1", |message| message.lines().any(|line| line == "READY=1"));
    assert!(
        ready.contains("STATUS=ready: serving on"),
        "READY=1 comes with a status line: {ready:?}"
    );
    let lines = notify.lines();
    let ready_at = lines.iter().position(|line| line == "READY=1").unwrap();
    let statuses: Vec<&String> = lines[..ready_at]
        .iter()
        .filter(|line| line.starts_with("STATUS="))
        .collect();
    assert!(
        statuses.iter().any(|line| line.contains("database")) && statuses.iter().any(|line| line.contains("socket")),
        "each startup phase reports a STATUS line before READY=1: {lines:?}"
    );

    let status = daemon.ctl_json(&["status"]);
    assert_eq!(status["state"], "ready");
    assert_eq!(status["pid"], daemon.pid().as_raw());
    assert_eq!(status["socket_path"], daemon.socket.display().to_string());
    assert_eq!(status["config_path"], daemon.config_path.display().to_string());
    assert_eq!(status["config_file_present"], true);
    assert_eq!(status["caller_access"], "owner");
    assert_eq!(status["previous_run_unclean"], false);
    assert!(status["database_size_bytes"].as_u64().unwrap() > 0);
    assert_eq!(status["sessions"]["total_sessions"], 0, "{status}");
    assert_eq!(
        status["cost"]["daily_cap_usd"], 1.0,
        "the default daily cap is on: {status}"
    );
    assert!(
        status["memory"]["rss_bytes"].as_u64().unwrap() > 0 && status["memory"]["limit_bytes"] == 256 * 1024 * 1024,
        "the memory monitor reports use against the default limit: {status}"
    );
    assert!(
        status["gateway"]["problem"]
            .as_str()
            .unwrap()
            .contains("no device is registered"),
        "status says that no device is registered: {status}"
    );
    let subsystems: Vec<&str> = status["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|subsystem| subsystem["name"].as_str().unwrap())
        .collect();
    assert!(
        subsystems.contains(&"control") && subsystems.contains(&"watchdog"),
        "{subsystems:?}"
    );

    let human = daemon.ctl(&["status"]);
    assert!(human.status.success(), "{}", describe(&human));
    assert!(
        String::from_utf8_lossy(&human.stdout).contains("ready"),
        "{}",
        describe(&human)
    );

    let mode = std::fs::metadata(&daemon.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "the socket is owner+group only");

    let exit = daemon.stop();
    assert!(exit.success(), "SIGTERM ends with exit 0: {exit}\n{}", daemon.stderr());
    assert!(
        notify.lines().iter().any(|line| line == "STOPPING=1"),
        "{:?}",
        notify.lines()
    );
    assert!(!daemon.socket.exists(), "a clean exit removes the socket");
}

#[test]
fn config_get_set_validate_and_reload() {
    let daemon = Daemon::start_with(
        new_dir(),
        DaemonOptions {
            config: "# operator's note, kept across edits\n[log]\nlevel = \"info\"\n".to_owned(),
            ..DaemonOptions::default()
        },
    );
    let notify = daemon.notify.clone().unwrap();

    let level = daemon.ctl_json(&["config", "get", "log.level"]);
    assert_eq!(level["entries"][0]["value"], "info");
    assert_eq!(level["entries"][0]["source"], "file");
    let all = daemon.ctl_json(&["config", "get"]);
    assert!(all["entries"].as_array().unwrap().len() >= 10, "{all}");

    // A live key: written atomically, in effect at once.
    let set = daemon.ctl_json(&["config", "set", "daemon.shutdown_timeout_secs", "7"]);
    assert_eq!(set["applied_live"], true, "{set}");
    assert_eq!(set["entry"]["value"], 7);
    let text = std::fs::read_to_string(&daemon.config_path).unwrap();
    assert!(text.contains("shutdown_timeout_secs = 7"), "{text}");
    assert!(
        text.contains("# operator's note, kept across edits"),
        "comments survive: {text}"
    );
    assert_eq!(
        daemon.ctl_json(&["config", "get", "daemon.shutdown_timeout_secs"])["entries"][0]["value"],
        7
    );

    // A restart-only key: written, reported as needing a restart.
    let set = daemon.ctl_json(&["config", "set", "storage.read_connections", "2"]);
    assert_eq!(set["applied_live"], false, "{set}");
    assert_eq!(set["restart_required"], serde_json::json!(["storage.read_connections"]));

    // Bad values and unknown keys are refused with a message, and the file is untouched.
    let before = std::fs::read_to_string(&daemon.config_path).unwrap();
    let bad = daemon.ctl(&["config", "set", "log.level", "loud"]);
    assert_eq!(bad.status.code(), Some(1), "{}", describe(&bad));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("log.level"),
        "{}",
        describe(&bad)
    );
    let unknown = daemon.ctl(&["config", "set", "log.colour", "red"]);
    assert_eq!(unknown.status.code(), Some(1), "{}", describe(&unknown));
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("log.colour"),
        "{}",
        describe(&unknown)
    );
    assert_eq!(std::fs::read_to_string(&daemon.config_path).unwrap(), before);

    // Validate a client-side file, naming the key and line of the problem.
    let candidate = daemon.dir.path().join("candidate.toml");
    std::fs::write(&candidate, "[log]\nlevel = \"debug\"\n[control]\nsokcet = \"/x\"\n").unwrap();
    let validate = daemon.ctl(&["config", "validate", candidate.to_str().unwrap()]);
    assert_eq!(validate.status.code(), Some(1), "{}", describe(&validate));
    let stdout_and_err = format!(
        "{}{}",
        String::from_utf8_lossy(&validate.stdout),
        String::from_utf8_lossy(&validate.stderr)
    );
    assert!(stdout_and_err.contains("control.sokcet"), "{stdout_and_err}");
    assert!(stdout_and_err.contains("candidate.toml:4"), "{stdout_and_err}");
    let own = daemon.ctl_json(&["config", "validate"]);
    assert_eq!(own["valid"], true, "{own}");

    // SIGHUP reloads: RELOADING=1 with MONOTONIC_USEC, then READY=1 again.
    let edited = std::fs::read_to_string(&daemon.config_path)
        .unwrap()
        .replace("level = \"info\"", "level = \"debug\"");
    std::fs::write(&daemon.config_path, edited).unwrap();
    daemon.signal(Signal::SIGHUP);
    let reloading = notify.wait_for("RELOADING=1", |message| message.contains("RELOADING=1"));
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading:?}");
    let deadline = Instant::now() + support::PATIENCE;
    loop {
        let lines = notify.lines();
        let reloading_at = lines.iter().rposition(|line| line == "RELOADING=1").unwrap();
        if lines[reloading_at..].iter().any(|line| line == "READY=1") {
            break;
        }
        assert!(Instant::now() < deadline, "no READY=1 after RELOADING=1: {lines:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        daemon.ctl_json(&["config", "get", "log.level"])["entries"][0]["value"],
        "debug"
    );

    // An invalid file is refused on reload and the previous configuration stays.
    std::fs::write(&daemon.config_path, "[log]\nlevel = 5\n").unwrap();
    let reload = daemon.ctl(&["config", "reload"]);
    assert_eq!(reload.status.code(), Some(1), "{}", describe(&reload));
    assert!(
        String::from_utf8_lossy(&reload.stderr).contains("log.level"),
        "{}",
        describe(&reload)
    );
    assert_eq!(
        daemon.ctl_json(&["config", "get", "log.level"])["entries"][0]["value"],
        "debug"
    );
    // Put back a valid file so the harness can stop the daemon with its own settings.
    std::fs::write(&daemon.config_path, before).unwrap();
    let reload = daemon.ctl_json(&["config", "reload"]);
    assert!(
        reload["applied"]
            .as_array()
            .unwrap()
            .iter()
            .any(|key| key == "log.level"),
        "{reload}"
    );
}

#[test]
fn a_second_daemon_on_the_same_socket_is_refused() {
    let first = Daemon::start();
    let started = Instant::now();
    let mut second = Daemon::spawn(
        first.dir.clone(),
        first.config_path.clone(),
        first.socket.clone(),
        DaemonOptions {
            wait_ready: false,
            ..DaemonOptions::default()
        },
    );
    let exit = second.wait();
    assert_eq!(exit.code(), Some(1), "{}", second.stderr());
    let stderr = second.stderr();
    assert!(stderr.contains("another blufiod is running on"), "{stderr}");
    assert!(stderr.contains(&first.socket.display().to_string()), "{stderr}");
    assert!(started.elapsed() < support::PATIENCE);
    // The first daemon is untouched.
    assert_eq!(first.ctl_json(&["status"])["pid"], first.pid().as_raw());
}

#[test]
fn a_stale_socket_after_a_crash_is_replaced() {
    let dir = new_dir();
    let mut crashed = Daemon::start_with(dir.clone(), DaemonOptions::default());
    crashed.kill();
    assert!(crashed.socket.exists(), "SIGKILL leaves the socket file behind");
    let daemon = Daemon::start_with(dir, DaemonOptions::default());
    let status = daemon.ctl_json(&["status"]);
    assert_eq!(status["state"], "ready");
    assert_eq!(status["previous_run_unclean"], true, "the crash is reported");
}

#[test]
fn the_watchdog_is_fed_while_the_daemon_makes_progress() {
    let daemon = Daemon::start_with(
        new_dir(),
        DaemonOptions {
            env: vec![("WATCHDOG_USEC".into(), "400000".into())],
            ..DaemonOptions::default()
        },
    );
    let notify = daemon.notify.clone().unwrap();
    let deadline = Instant::now() + support::PATIENCE;
    while notify.count(|message| message.lines().any(|line| line == "WATCHDOG=1")) < 3 {
        assert!(
            Instant::now() < deadline,
            "fewer than 3 WATCHDOG=1 pings: {:?}",
            notify.lines()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = daemon.ctl_json(&["status"]);
    let watchdog = status["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|subsystem| subsystem["name"] == "watchdog")
        .unwrap()["status"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(watchdog.contains("probing every 200ms"), "{watchdog}");
    let doctor = daemon.ctl_json(&["doctor", "--only", "watchdog"]);
    assert_eq!(doctor["checks"][0]["level"], "ok", "{doctor}");
    assert!(
        doctor["checks"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("fed every 200ms"),
        "{doctor}"
    );
}

#[test]
fn the_watchdog_starves_while_the_database_writer_is_blocked() {
    let daemon = Daemon::start_with(
        new_dir(),
        DaemonOptions {
            config: "[storage]\nbusy_timeout_ms = 4000\n".into(),
            env: vec![("WATCHDOG_USEC".into(), "400000".into())],
            ..DaemonOptions::default()
        },
    );
    let notify = daemon.notify.clone().unwrap();
    let pings = || notify.count(|message| message.lines().any(|line| line == "WATCHDOG=1"));
    let deadline = Instant::now() + support::PATIENCE;
    while pings() < 2 {
        assert!(Instant::now() < deadline, "no pings: {:?}", notify.lines());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Another process takes the database's write lock; the daemon's one writer then waits in
    // its busy timeout on the next write (registering a device), and cannot answer the probe.
    let database = daemon.dir.path().join("state/blufio.db");
    let mut locker = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1], isolation_level=None)\nc.execute('BEGIN EXCLUSIVE')\nprint('locked', flush=True)\nsys.stdin.read()\n",
        ])
        .arg(&database)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(locker.stdout.as_mut().unwrap()), &mut line).unwrap();
    assert_eq!(line.trim(), "locked");
    let socket = daemon.socket.clone();
    let key = daemon.dir.path().join("blocked.pem");
    let writer = std::thread::spawn(move || {
        support::ctl(
            &socket,
            &["device", "add", "blocked", "--key-out", key.to_str().unwrap()],
        )
    });
    // Give the write a moment to take the writer, then count pings over 2 s: none may come.
    std::thread::sleep(Duration::from_millis(600));
    let before = pings();
    std::thread::sleep(Duration::from_secs(2));
    let during = pings() - before;
    // The withheld pings are counted, and the metrics still answer over the socket.
    let missed = daemon.metrics().value("blufio_watchdog_missed_total");
    // doctor says so, with the probe that failed.
    let doctor = daemon.ctl(&["doctor", "--only", "watchdog", "--json"]);
    drop(locker.stdin.take());
    locker.wait().unwrap();
    let _ = writer.join();
    assert_eq!(
        during,
        0,
        "the watchdog was fed while the writer was stuck: {:?}",
        notify.lines()
    );
    assert!(missed >= 1.0, "no missed watchdog cycle was counted");
    assert_eq!(doctor.status.code(), Some(1), "{}", describe(&doctor));
    let report: serde_json::Value = serde_json::from_slice(&doctor.stdout).unwrap();
    assert_eq!(report["checks"][0]["level"], "fail", "{report}");
    assert!(
        report["checks"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("no watchdog ping for"),
        "{report}"
    );
    // Once the writer is free again, the pings come back.
    let resumed = pings();
    let deadline = Instant::now() + support::PATIENCE;
    while pings() < resumed + 2 {
        assert!(Instant::now() < deadline, "pings did not resume: {:?}", notify.lines());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn peer_credentials_decide_what_a_caller_may_do() {
    if !running_as_root() {
        return;
    }
    let Ok(Some(group)) = nix::unistd::Group::from_name("nogroup") else {
        panic!("this test needs the standard `nogroup` group (gid 65534)");
    };
    let gid = group.gid.as_raw();
    let nobody = 65534;
    let dir = new_dir();
    // Let other users traverse the test directory; the daemon makes the runtime dir 0750 and
    // group-owned itself.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let daemon = Daemon::start_with(
        dir,
        DaemonOptions {
            config: "[control]\ngroup = \"nogroup\"\ngroup_access = \"read-only\"\n".to_owned(),
            ..DaemonOptions::default()
        },
    );

    let status = daemon.ctl_as(nobody, gid, &["status", "--json"]);
    assert!(
        status.status.success(),
        "a read-only member may read: {}",
        describe(&status)
    );
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["caller_access"], "read-only");

    let set = daemon.ctl_as(nobody, gid, &["config", "set", "log.level", "debug"]);
    assert_eq!(set.status.code(), Some(1), "{}", describe(&set));
    let stderr = String::from_utf8_lossy(&set.stderr);
    assert!(stderr.contains("read-only") && stderr.contains("SetConfig"), "{stderr}");
    // Read-only watches the daemon; conversations, spend and devices need full access.
    for (args, method) in [
        (&["sessions", "list"][..], "ListSessions"),
        (&["usage"], "GetUsage"),
        (&["device", "list"], "ListDevices"),
    ] {
        let refused = daemon.ctl_as(nobody, gid, args);
        assert_eq!(refused.status.code(), Some(1), "{args:?}: {}", describe(&refused));
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains(method),
            "{args:?}: {}",
            describe(&refused)
        );
    }
    let config = daemon.ctl_as(nobody, gid, &["config", "get"]);
    assert!(config.status.success(), "{}", describe(&config));

    // Now take read access away too: the member is refused outright.
    daemon.ctl_json(&["config", "set", "control.group_access", "none"]);
    let denied = daemon.ctl_as(nobody, gid, &["status"]);
    assert_eq!(denied.status.code(), Some(1), "{}", describe(&denied));
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("GetStatus"),
        "{}",
        describe(&denied)
    );

    // Nor do health and reflection answer a member without access. The stock Python client
    // starts as root (its interpreter may live where nobody cannot read) and becomes the member
    // before it connects, so the socket sees the member's credentials.
    let python = std::env::var("BLUFIOTEST_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let health = std::process::Command::new(&python)
        .args([
            "-c",
            "import os, sys, grpc\nfrom grpc_health.v1 import health_pb2, health_pb2_grpc\n\
os.setgroups([]); os.setgid(int(sys.argv[3])); os.setuid(int(sys.argv[2]))\n\
channel = grpc.insecure_channel('unix:' + sys.argv[1], options=[('grpc.default_authority', 'localhost')])\n\
try:\n    health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)\n    print('SERVED')\n\
except grpc.RpcError as error:\n    print(error.code())\n",
        ])
        .arg(&daemon.socket)
        .arg(nobody.to_string())
        .arg(gid.to_string())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&health.stdout);
    assert!(said.contains("PERMISSION_DENIED"), "{}", describe(&health));

    // A member without access is refused before the daemon reads the request's body: the head
    // of a ValidateConfig call alone, its message never sent, is answered at once.
    let early = std::process::Command::new("python3")
        .args([
            "-c",
            concat!(
                "import os, socket, struct, sys, time\n",
                "os.setgroups([]); os.setgid(int(sys.argv[3])); os.setuid(int(sys.argv[2]))\n",
                "def frame(kind, flags, stream, payload):\n",
                "    return struct.pack('>I', len(payload))[1:] + bytes([kind, flags]) + struct.pack('>I', stream) + payload\n",
                "def literal(name, value):\n",
                "    return b'\\x00' + bytes([len(name)]) + name + bytes([len(value)]) + value\n",
                "block = b''.join(literal(n, v) for n, v in [(b':method', b'POST'), (b':scheme', b'http'),\n",
                "    (b':path', b'/blufio.control.v1.Control/ValidateConfig'), (b':authority', b'localhost'),\n",
                "    (b'content-type', b'application/grpc'), (b'te', b'trailers')])\n",
                "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.settimeout(5)\n",
                "s.sendall(b'PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n' + frame(4, 0, 0, b'') + frame(1, 4, 1, block))\n",
                "data = b''\n",
                "try:\n",
                "    while True:\n",
                "        chunk = s.recv(65536)\n",
                "        if not chunk: break\n",
                "        data += chunk\n",
                "        i = 0; answered = False\n",
                "        while i + 9 <= len(data):\n",
                "            length = int.from_bytes(data[i:i+3], 'big'); kind = data[i+3]; stream = int.from_bytes(data[i+5:i+9], 'big') & 0x7fffffff\n",
                "            if kind == 1 and stream == 1: answered = True\n",
                "            i += 9 + length\n",
                "        if answered: print('ANSWERED'); break\n",
                "except socket.timeout:\n",
                "    print('WAITING')\n",
            ),
        ])
        .arg(&daemon.socket)
        .arg(nobody.to_string())
        .arg(gid.to_string())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&early.stdout).contains("ANSWERED"),
        "{}",
        describe(&early)
    );

    // A member cannot exhaust the daemon's descriptors: it keeps at most its share of
    // connections open, and the owner is still served while it holds them.
    let mut hog = std::process::Command::new("python3")
        .args([
            "-c",
            "import os, socket, sys, time\n\
os.setgroups([]); os.setgid(int(sys.argv[3])); os.setuid(int(sys.argv[2]))\n\
held = []\n\
for _ in range(400):\n    s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); held.append(s)\n\
time.sleep(1)\n\
open_ = 0\n\
for s in held:\n    s.setblocking(False)\n    try:\n        open_ += s.recv(1, socket.MSG_PEEK) != b''\n    except BlockingIOError:\n        open_ += 1\n    except OSError:\n        pass\n\
print(open_, flush=True)\n\
sys.stdin.read()\n",
        ])
        .arg(&daemon.socket)
        .arg(nobody.to_string())
        .arg(gid.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(hog.stdout.as_mut().unwrap()), &mut line).unwrap();
    let still_open: usize = line.trim().parse().unwrap_or_else(|_| panic!("hog said {line:?}"));
    assert!(
        (1..=16).contains(&still_open),
        "a uid keeps at most 16 control connections: {still_open}"
    );
    let owner = daemon.ctl(&["status"]);
    assert!(owner.status.success(), "{}", describe(&owner));
    drop(hog.stdin.take());
    hog.wait().unwrap();

    // A user outside the group cannot even open the socket.
    let stranger = daemon.ctl_as(4242, 4242, &["status"]);
    assert_eq!(stranger.status.code(), Some(3), "{}", describe(&stranger));
}

#[test]
fn check_config_names_the_bad_key_and_line() {
    let dir = new_dir();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[log]\nlevel = \"info\"\nformat = \"xml\"\n").unwrap();
    let output = std::process::Command::new(support::blufiod_bin())
        .args(["--check-config", "--config"])
        .arg(&path)
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("log.format"), "{stderr}");
    assert!(stderr.contains("bad.toml:3"), "{stderr}");

    std::fs::write(&path, "[log]\nlevel = \"warn\"\n").unwrap();
    let output = std::process::Command::new(support::blufiod_bin())
        .args(["--check-config", "--config"])
        .arg(&path)
        .env_clear()
        .env("BLUFIO_DAEMON__SHUTDOWN_TIMEOUT_SECS", "3")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout
            .lines()
            .any(|line| line.starts_with("log.level") && line.contains("\"warn\"") && line.contains("[file]")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|line| line.starts_with("daemon.shutdown_timeout_secs")
                && line.contains('3')
                && line.contains("[env]")),
        "{stdout}"
    );
}

#[test]
fn logs_follow_the_journald_and_json_conventions() {
    let journald = Daemon::start_with(
        new_dir(),
        DaemonOptions {
            env: vec![("JOURNAL_STREAM".into(), "8:12345".into())],
            ..DaemonOptions::default()
        },
    );
    let text = journald.stderr();
    let ready = text
        .lines()
        .find(|line| line.contains("ready"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        ready.starts_with(" INFO") || ready.starts_with("INFO"),
        "no timestamp under journald: {ready:?}"
    );
    assert!(!text.contains('\u{1b}'), "no ANSI escapes under journald: {text:?}");
    drop(journald);

    let json = Daemon::start_with(
        new_dir(),
        DaemonOptions {
            config: "[log]\nformat = \"json\"\n".to_owned(),
            ..DaemonOptions::default()
        },
    );
    let text = json.stderr();
    assert!(!text.is_empty());
    for line in text.lines() {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|error| panic!("not JSON ({error}): {line}"));
        assert!(event["level"].is_string() && event["timestamp"].is_string(), "{line}");
    }
}

#[test]
fn the_daemon_cannot_be_read_or_dumped_by_its_own_user() {
    if !running_as_root() {
        return;
    }
    let nobody = nix::unistd::Uid::from_raw(65534);
    let nogroup = nix::unistd::Gid::from_raw(65534);
    let dir = new_dir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    nix::unistd::chown(&home, Some(nobody), Some(nogroup)).unwrap();
    let config = home.join("blufiod.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nstate_dir = \"{0}/state\"\nruntime_dir = \"{0}/run\"\n[gateway]\nenabled = false\n",
            home.display()
        ),
    )
    .unwrap();
    nix::unistd::chown(&config, Some(nobody), Some(nogroup)).unwrap();
    let mut daemon = std::process::Command::new(support::blufiod_bin())
        .arg("--config")
        .arg(&config)
        .env_clear()
        .env("HOME", &home)
        .env("ANTHROPIC_API_KEY", "sk-ant-in-the-environment")
        .uid(65534)
        .gid(65534)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let socket = home.join("run/blufiod.sock");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !socket.exists() {
        assert!(std::time::Instant::now() < deadline, "blufiod did not start as nobody");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Another process of the same user tries to read the daemon's environment (where a
    // container passes the API key) and its memory.
    let probe = std::process::Command::new("python3")
        .args([
            "-c",
            concat!(
                "import os, sys\n",
                "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n",
                "for name in ('environ', 'mem'):\n",
                "    try:\n",
                "        open('/proc/%s/%s' % (sys.argv[1], name), 'rb').read(1)\n",
                "        print(name, 'READ')\n",
                "    except OSError as error:\n",
                "        print(name, 'DENIED', error.errno)\n",
            ),
        ])
        .arg(daemon.id().to_string())
        .output()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(daemon.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = daemon.wait().unwrap();
    let said = String::from_utf8_lossy(&probe.stdout);
    assert!(
        said.contains("environ DENIED") && said.contains("mem DENIED"),
        "{}",
        describe(&probe)
    );
    assert!(status.success(), "{status:?}");
}

/// Every RPC of the control plane, with the access it needs (the table in ARCHITECTURE.md), and
/// whether it streams its answer.
const ACCESS_TABLE: &[(&str, &str, bool)] = &[
    ("GetStatus", "read-only", false),
    ("GetConfig", "read-only", false),
    ("ValidateConfig", "read-only", false),
    ("GetMetrics", "read-only", false),
    ("RunChecks", "read-only", false),
    ("SetConfig", "full", false),
    ("UnsetConfig", "full", false),
    ("ReloadConfig", "full", false),
    ("CreateSession", "full", false),
    ("ListSessions", "full", false),
    ("GetSession", "full", false),
    ("DeleteSession", "full", false),
    ("RenameSession", "full", false),
    ("PruneSessions", "full", false),
    ("SendMessage", "full", true),
    ("GetUsage", "full", false),
    ("AddDevice", "full", false),
    ("ListDevices", "full", false),
    ("RevokeDevice", "full", false),
    ("RenameDevice", "full", false),
    ("RemoveDevice", "full", false),
    ("SetSecret", "full", false),
    ("ListSecrets", "full", false),
    ("DeleteSecret", "full", false),
    ("GetVaultStatus", "full", false),
    ("RekeyVault", "owner", false),
    // An empty request includes the config file, which is the owner's; --without-config is full.
    ("Backup", "owner", true),
    ("Restore", "full", true),
    ("ReadLogs", "full", true),
    ("ListHooks", "full", false),
    ("TestHook", "owner", false),
];

#[test]
fn doctor_runs_the_daemons_own_checks() {
    // Without a provider key the provider check fails: doctor says so, with the fix, and exits 1.
    let daemon = Daemon::start();
    let output = daemon.ctl(&["doctor", "--json"]);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let check = |report: &serde_json::Value, name: &str| {
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|check| check["name"] == name)
            .cloned()
    };
    let provider = check(&report, "provider").expect("a provider check");
    assert_eq!(provider["level"], "fail", "{report}");
    assert!(!provider["hint"].as_str().unwrap_or_default().is_empty(), "{report}");
    assert_eq!(check(&report, "storage").unwrap()["level"], "ok", "{report}");
    assert!(
        check(&report, "integrity").is_none(),
        "deep checks run only on request: {report}"
    );
    // The test daemon has a notify socket but no WATCHDOG_USEC: systemd without WatchdogSec=.
    assert_eq!(check(&report, "watchdog").unwrap()["level"], "warn", "{report}");
    // The gateway listens, but without a registered device nobody can use it.
    let gateway = check(&report, "gateway").unwrap();
    assert_eq!(gateway["level"], "warn", "{report}");
    assert!(gateway["hint"].as_str().unwrap().contains("device add"), "{report}");
    // The control socket as bound; opened to every local user, it fails.
    assert_eq!(check(&report, "socket").unwrap()["level"], "ok", "{report}");
    std::fs::set_permissions(&daemon.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let opened = daemon.doctor_check("socket");
    assert_eq!(opened["level"], "fail", "{opened}");
    assert!(
        opened["detail"]
            .as_str()
            .unwrap()
            .contains("every local user may connect"),
        "{opened}"
    );
    std::fs::set_permissions(&daemon.socket, std::fs::Permissions::from_mode(0o660)).unwrap();
    // The config: applied; then a change that waits for a restart; then a file that no longer
    // loads (the daemon keeps its last good configuration).
    assert_eq!(check(&report, "config").unwrap()["level"], "ok", "{report}");
    daemon.ctl_json(&["config", "set", "storage.busy_timeout_ms", "4000"]);
    let pending = daemon.doctor_check("config");
    assert_eq!(pending["level"], "warn", "{pending}");
    assert!(
        pending["detail"].as_str().unwrap().contains("storage.busy_timeout_ms"),
        "{pending}"
    );
    let text = std::fs::read_to_string(&daemon.config_path).unwrap();
    std::fs::write(
        &daemon.config_path,
        format!("{text}\n[storage]\nbusy_timeout_ms = \"soon\"\n"),
    )
    .unwrap();
    let broken = daemon.doctor_check("config");
    assert_eq!(broken["level"], "fail", "{broken}");
    assert!(
        broken["detail"].as_str().unwrap().contains("no longer loads"),
        "{broken}"
    );
    // The schema: this build's; then a migration marked failed behind the daemon's back.
    assert_eq!(check(&report, "schema").unwrap()["level"], "ok", "{report}");
    let database = daemon.dir.path().join("state/blufio.db");
    let marked = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1])\nc.execute('UPDATE _sqlx_migrations SET success = 0 WHERE version = (SELECT max(version) FROM _sqlx_migrations)')\nc.commit()\n",
        ])
        .arg(&database)
        .status()
        .unwrap();
    assert!(marked.success());
    let schema = daemon.doctor_check("schema");
    assert_eq!(schema["level"], "fail", "{schema}");
    assert!(
        schema["detail"]
            .as_str()
            .unwrap()
            .contains("a migration is recorded as failed"),
        "{schema}"
    );
    assert_eq!(report["fail"], 1, "{report}");
    drop(daemon);

    // With a provider that answers (the fake, with its key) nothing fails (warnings do not
    // count); --deep adds the whole-database check.
    let fake = support::fake_provider::FakeProvider::start();
    let daemon = Daemon::start_with(
        new_dir(),
        DaemonOptions {
            config: support::fake_provider_config(&fake, ""),
            ..DaemonOptions::default()
        },
    );
    let output = daemon.ctl(&["doctor", "--deep", "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(check(&report, "disk").unwrap()["level"], "ok", "{report}");
    let growth = check(&report, "growth").expect("the deep growth check");
    assert_eq!(growth["level"], "ok", "{report}");
    assert!(
        growth["detail"]
            .as_str()
            .unwrap()
            .contains("measured after an hour of running"),
        "a fresh daemon has no rate yet: {report}"
    );
    let integrity = check(&report, "integrity").expect("the deep integrity check");
    assert_eq!(integrity["level"], "ok", "{report}");
    assert_eq!(integrity["deep"], true);
    assert_eq!(check(&report, "provider").unwrap()["level"], "ok", "{report}");
    let key = daemon.dir.path().join("phone.pem");
    daemon.ctl_json(&["device", "add", "phone", "--key-out", key.to_str().unwrap()]);
    let gateway = daemon.ctl_json(&["doctor", "--only", "gateway"]);
    assert_eq!(gateway["checks"][0]["level"], "ok", "{gateway}");
    assert!(
        gateway["checks"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("for 1 registered device"),
        "{gateway}"
    );

    // A check that does not exist is refused, and the answer lists the ones that do.
    let output = daemon.ctl(&["doctor", "--only", "nope"]);
    assert_eq!(output.status.code(), Some(1));
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(
        error.contains("no check named \"nope\"") && error.contains("storage"),
        "{error}"
    );
}

#[test]
fn doctor_deep_fails_when_the_state_directory_has_no_room_for_a_backup() {
    if !running_as_root() {
        return;
    }
    // The state directory on a 16 MiB tmpfs: room for the database, not for its headroom.
    let dir = new_dir();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let Some(mounted) = blufio_testkit::Tmpfs::mount(&state, "16m") else {
        eprintln!("skipped: this machine cannot mount a tmpfs");
        return;
    };
    let daemon = Daemon::start_with(dir.clone(), DaemonOptions::default());
    let output = daemon.ctl(&["doctor", "--deep", "--only", "disk", "--json"]);
    drop(daemon);
    drop(mounted);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let disk = &report["checks"][0];
    assert_eq!(disk["level"], "fail", "{report}");
    assert!(disk["detail"].as_str().unwrap().contains("MiB free in"), "{report}");
    assert!(disk["hint"].as_str().unwrap().contains("backup.dir"), "{report}");
}

#[test]
fn doctor_warns_before_the_gateway_certificate_expires_and_fails_after() {
    for (days, level, words) in [(5_i64, "warn", "expires in 4 day"), (-2, "fail", "expired 2 day")] {
        let dir = new_dir();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(30);
        params.not_after = now + time::Duration::days(days) - time::Duration::hours(1);
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let daemon = Daemon::start_with(
            dir,
            DaemonOptions {
                config: format!(
                    "[gateway]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
                    cert_path.display(),
                    key_path.display()
                ),
                ..DaemonOptions::default()
            },
        );
        let check = daemon.doctor_check("gateway");
        assert_eq!(check["level"], level, "{days} days: {check}");
        assert!(
            check["detail"].as_str().unwrap().contains(words),
            "{days} days: {check}"
        );
        assert!(check["hint"].as_str().unwrap().contains("gateway.cert_file"), "{check}");
    }
}

#[test]
fn the_access_table_names_every_rpc_of_the_contract() {
    let proto = include_str!("../../proto/proto/blufio/control/v1/control.proto");
    let mut rpcs: Vec<&str> = proto
        .lines()
        .filter_map(|line| line.trim().strip_prefix("rpc "))
        .map(|rest| rest.split('(').next().unwrap().trim())
        .collect();
    let mut tabled: Vec<&str> = ACCESS_TABLE.iter().map(|(method, ..)| *method).collect();
    rpcs.sort_unstable();
    tabled.sort_unstable();
    assert_eq!(
        rpcs, tabled,
        "a new RPC needs its line in ACCESS_TABLE (and in auth::ACCESS)"
    );
}

#[test]
fn every_rpc_obeys_the_access_table_at_every_level() {
    if !running_as_root() {
        return;
    }
    let gid = 65534;
    let dir = new_dir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let daemon = Daemon::start_with(
        dir,
        DaemonOptions {
            config: "[control]\ngroup = \"nogroup\"\ngroup_access = \"none\"\n".to_owned(),
            ..DaemonOptions::default()
        },
    );
    let python = std::env::var("BLUFIOTEST_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    // Each method is called with an empty request (raw bytes, no stubs): what matters is whether
    // the answer is PERMISSION_DENIED.
    let script = concat!(
        "import os, sys, grpc\n",
        // The channel connects lazily, at the first call: after the switch to the member's uid.
        "channel = grpc.insecure_channel('unix:' + sys.argv[1], options=[('grpc.default_authority', 'localhost')])\n",
        "os.setgroups([]); os.setgid(int(sys.argv[3])); os.setuid(int(sys.argv[2]))\n",
        "for spec in sys.argv[4:]:\n",
        "    method, streaming = spec.split(':')\n",
        "    path = '/blufio.control.v1.Control/' + method\n",
        "    try:\n",
        "        if streaming == '1':\n",
        "            list(channel.unary_stream(path)(b'', timeout=10))\n",
        "        else:\n",
        "            channel.unary_unary(path)(b'', timeout=10)\n",
        "        print(method, 'OK')\n",
        "    except grpc.RpcError as error:\n",
        "        print(method, error.code().name)\n",
    );
    let rank = |level: &str| {
        // A group never has "owner": those calls are refused even at "full".
        ["none", "read-only", "full", "owner"]
            .iter()
            .position(|known| *known == level)
            .unwrap()
    };
    for level in ["none", "read-only", "full"] {
        daemon.ctl_json(&["config", "set", "control.group_access", level]);
        let output = std::process::Command::new(&python)
            .args(["-c", script])
            .arg(&daemon.socket)
            .arg("65534")
            .arg(gid.to_string())
            .args(
                ACCESS_TABLE
                    .iter()
                    .map(|(method, _, streaming)| format!("{method}:{}", u8::from(*streaming))),
            )
            .output()
            .unwrap();
        let answers = String::from_utf8_lossy(&output.stdout).into_owned();
        assert_eq!(answers.lines().count(), ACCESS_TABLE.len(), "{}", describe(&output));
        for (line, (method, needed, _)) in answers.lines().zip(ACCESS_TABLE) {
            let (called, code) = line.split_once(' ').unwrap();
            assert_eq!(called, *method);
            let denied = code == "PERMISSION_DENIED";
            assert_eq!(
                denied,
                rank(level) < rank(needed),
                "{method} at {level} (needs {needed}) answered {code}"
            );
        }
    }
}

#[test]
fn a_database_made_by_the_first_release_opens_with_its_data() {
    // Made by blufiod 0.1.0 (migrations 1 to 3) with one device registered, then vacuumed.
    let dir = new_dir();
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/blufio-0.1.0.db"),
        dir.path().join("state/blufio.db"),
    )
    .unwrap();
    let daemon = Daemon::start_with(dir, DaemonOptions::default());
    let devices = daemon.ctl_json(&["device", "list"]);
    assert!(devices.to_string().contains("fixture-phone"), "{devices}");
    assert_eq!(daemon.ctl_json(&["status"])["state"], "ready");
}

#[test]
fn too_few_descriptors_for_the_connections_stop_startup_with_the_fix() {
    let dir = new_dir();
    let config = dir.path().join("blufiod.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nstate_dir = \"{0}/state\"\nruntime_dir = \"{0}/run\"\n[gateway]\nlisten = \"127.0.0.1:0\"\nmax_connections = 2000\n[memory]\nlimit_mib = 1024\n",
            dir.path().display()
        ),
    )
    .unwrap();
    // A hard limit of 1024 open files, which the daemon cannot raise.
    let output = std::process::Command::new("sh")
        .args([
            "-c",
            "ulimit -Sn 1024 && ulimit -Hn 1024 && exec \"$0\" --config \"$1\"",
        ])
        .arg(support::blufiod_bin())
        .arg(&config)
        .env_clear()
        .env("HOME", dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("LimitNOFILE") && stderr.contains("gateway.max_connections"),
        "{stderr}"
    );
}

/// Whether the test runs as root, which switching to another uid needs. Outside CI a non-root
/// run skips with a message; under CI (which runs as root) it fails rather than pass silently.
fn running_as_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "this test needs root under CI, to act as another user"
    );
    eprintln!("skipping: needs root to act as another user");
    false
}

#[test]
fn an_open_stream_is_a_call_in_flight_for_its_whole_life() {
    if !running_as_root() {
        return;
    }
    let dir = new_dir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let daemon = Daemon::start_with(
        dir,
        DaemonOptions {
            config: "[control]\ngroup = \"nogroup\"\ngroup_access = \"read-only\"\n".to_owned(),
            ..DaemonOptions::default()
        },
    );
    let python = std::env::var("BLUFIOTEST_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    // A read-only member opens 8 reflection streams (its in-flight share) and keeps them open,
    // then asks for the status: the 9th call must wait its turn, not slip past the bound.
    let script = concat!(
        "import os, sys, threading, grpc\n",
        "channel = grpc.insecure_channel('unix:' + sys.argv[1], options=[('grpc.default_authority', 'localhost')])\n",
        "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n",
        "hold = threading.Event()\n",
        "def requests():\n",
        "    yield bytes([0x3a, 0x00])  # ServerReflectionRequest { list_services: \"\" }\n",
        "    hold.wait()\n",
        "streams = []\n",
        "for _ in range(8):\n",
        "    call = channel.stream_stream('/grpc.reflection.v1.ServerReflection/ServerReflectionInfo')(requests(), timeout=30)\n",
        "    next(call)\n",
        "    streams.append(call)\n",
        "try:\n",
        "    channel.unary_unary('/blufio.control.v1.Control/GetStatus')(b'', timeout=10)\n",
        "    print('OK')\n",
        "except grpc.RpcError as error:\n",
        "    print(error.code().name)\n",
        "hold.set()\n",
        "for call in streams: call.cancel()\n",
        // grpcio can hang at interpreter exit after cancelled streams (seen in CI: the answer
        // printed, the process never ended); leave at once.
        "sys.stdout.flush(); os._exit(0)\n",
    );
    let output = std::process::Command::new(&python)
        .args(["-c", script])
        .arg(&daemon.socket)
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    assert_eq!(answer, "RESOURCE_EXHAUSTED", "{}", describe(&output));
    // Once they close, the member is served again.
    let output = std::process::Command::new(&python)
        .args([
            "-c",
            "import os, sys, grpc\nchannel = grpc.insecure_channel('unix:' + sys.argv[1], options=[('grpc.default_authority', 'localhost')])\nos.setgroups([]); os.setgid(65534); os.setuid(65534)\nchannel.unary_unary('/blufio.control.v1.Control/GetStatus')(b'', timeout=10)\nprint('OK')\n",
        ])
        .arg(&daemon.socket)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "OK",
        "{}",
        describe(&output)
    );
}

#[test]
fn doctor_names_a_hung_daemon_by_the_pid_that_holds_its_locks() {
    // Here rather than in tests/doctor_offline.rs: doctor waits its 40 s floor for the answer
    // that never comes, and this binary's other tests run meanwhile.
    let daemon = Daemon::start();
    daemon.signal(Signal::SIGSTOP);
    let (code, report) = {
        let config = daemon.config_path.to_str().unwrap();
        let output = daemon.ctl(&["doctor", "--json", "--config", config]);
        let report: serde_json::Value =
            serde_json::from_slice(&output.stdout).unwrap_or_else(|_| panic!("{}", describe(&output)));
        (output.status.code(), report)
    };
    daemon.signal(Signal::SIGCONT);
    assert_eq!(code, Some(1), "a timeout, not an unreachable daemon");
    let lock = pick_check(&report, "lock");
    assert_eq!(lock["level"], "fail", "{lock}");
    let detail = lock["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!(
            "blufiod (pid {}) holds its locks but does not answer",
            daemon.pid()
        )),
        "{detail}"
    );
    assert!(
        pick_check(&report, "daemon")["detail"]
            .as_str()
            .unwrap()
            .contains("no answer within")
    );
}

fn pick_check<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|check| check["name"] == name)
        .unwrap_or_else(|| panic!("no {name} check in {report}"))
}
