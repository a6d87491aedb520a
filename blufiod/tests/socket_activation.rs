//! Socket activation of the control socket, with systemd's own `systemd-socket-activate`: it
//! holds the socket, starts blufiod at the first connection with `LISTEN_FDS`, and blufiod
//! answers that very connection; a socket at another path is refused.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use blufio_testkit::{PATIENCE, blufiod_bin, ctl, describe, new_dir};

/// `systemd-socket-activate -l SOCKET... blufiod --config CONFIG`, its output in `log`.
fn activate(sockets: &[&Path], config: &Path, log: &Path) -> Child {
    let mut command = Command::new("systemd-socket-activate");
    for socket in sockets {
        command.arg("--listen").arg(socket);
    }
    command
        .args(["--setenv=PATH", "--setenv=HOME"])
        .arg(blufiod_bin())
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("systemd-socket-activate (Debian package `systemd`)")
}

/// A config in `dir`: state in `dir/state`, the socket in `dir/run`, no gateway.
fn write_config(dir: &Path) -> std::path::PathBuf {
    let config = dir.join("blufiod.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nstate_dir = \"{}\"\nruntime_dir = \"{}\"\n[gateway]\nenabled = false\n",
            dir.join("state").display(),
            dir.join("run").display()
        ),
    )
    .unwrap();
    config
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn blufiod_answers_the_connection_that_activated_it_and_keeps_systemds_socket() {
    let dir = new_dir();
    let socket = dir.path().join("run/blufiod.sock");
    let config = write_config(dir.path());
    std::fs::create_dir(dir.path().join("run")).unwrap();
    let log = dir.path().join("activated.log");
    let mut activator = activate(&[&socket], &config, &log);
    wait_for("the activator's socket", || socket.exists());

    // Nothing runs yet; this first call starts blufiod, and is answered by it.
    let status = ctl(&socket, &["status", "--json"]);
    let stderr = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.status.success(), "{}\n{}", describe(&status), stderr());
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["state"], "ready", "{status}");
    assert!(
        stderr().contains("control socket passed by systemd (socket activation)"),
        "{}",
        stderr()
    );

    // The lock is taken as for a socket it binds: a second daemon on the same config refuses.
    let second = Command::new(blufiod_bin())
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1), "{}", describe(&second));
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("another blufiod is running"),
        "{}",
        describe(&second)
    );

    // A clean stop leaves systemd's socket file in place for the next activation.
    let pid = status["pid"].as_i64().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    wait_for("blufiod to stop", || {
        !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| stat.contains(") Z "))
    });
    assert!(
        socket.exists(),
        "the activated socket is systemd's; blufiod does not remove it"
    );
    let _ = activator.kill();
    let _ = activator.wait();
}

#[test]
fn a_passed_socket_at_another_path_is_refused_with_the_fix() {
    let dir = new_dir();
    let other = dir.path().join("elsewhere.sock");
    let config = write_config(dir.path());
    let log = dir.path().join("activated.log");
    let mut activator = activate(&[&other], &config, &log);
    wait_for("the activator's socket", || other.exists());
    // The connection starts blufiod, which refuses the socket and exits.
    let _ = std::os::unix::net::UnixStream::connect(&other);
    let stderr = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for("blufiod's refusal", || stderr().contains("is not control.socket"));
    let text = stderr();
    assert!(
        text.contains(&format!("systemd passed a control socket {}", other.display()))
            && text.contains("make ListenStream= in blufiod.socket the control.socket path"),
        "{text}"
    );
    assert!(!dir.path().join("run/blufiod.sock").exists(), "nothing else was bound");
    let _ = activator.kill();
    let _ = activator.wait();
}

/// The inode of the listening Unix socket bound at `path`, from `/proc/net/unix`.
fn socket_inode(path: &Path) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/unix").unwrap();
    let path = path.to_str().unwrap();
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.len() == 8 && fields[7] == path).then(|| fields[6].parse().unwrap())
    })
}

#[test]
fn sockets_passed_beyond_the_first_are_closed() {
    let dir = new_dir();
    let socket = dir.path().join("run/blufiod.sock");
    let extra = dir.path().join("extra.sock");
    let config = write_config(dir.path());
    std::fs::create_dir(dir.path().join("run")).unwrap();
    let log = dir.path().join("activated.log");
    let mut activator = activate(&[&socket, &extra], &config, &log);
    wait_for("the activator's sockets", || socket.exists() && extra.exists());
    let extra_inode = socket_inode(&extra).expect("the extra socket is listed");

    let status = ctl(&socket, &["status", "--json"]);
    let stderr = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.status.success(), "{}\n{}", describe(&status), stderr());
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let pid = status["pid"].as_i64().unwrap();
    assert!(stderr().contains("systemd passed more than one socket"), "{}", stderr());
    // No descriptor of the daemon is the extra listener: nothing would ever accept on it.
    let held: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .map(|target| target.display().to_string())
        .collect();
    assert!(
        !held.contains(&format!("socket:[{extra_inode}]")),
        "blufiod still holds the extra socket: {held:?}"
    );
    let _ = activator.kill();
    let _ = activator.wait();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .ok();
}
