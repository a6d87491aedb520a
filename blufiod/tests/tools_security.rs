//! Security regressions of the built-in tools, attacked as a model would: the fake provider asks
//! the real daemon for tool calls, and each test checks what the tool handed back to the model.

use blufio_testkit as support;

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::net::if_::InterfaceFlags;
use serde_json::{Value, json};
use support::Daemon;
use support::fake_provider::{FakeProvider, Script};

/// What one tool call returned to the model.
#[derive(Debug)]
struct ToolResult {
    content: String,
    is_error: bool,
}

/// Runs one chat turn in which the model calls `calls` (tool name, input) one after the other,
/// and returns each call's result plus everything blufioctl printed for the turn.
fn run_tools(fake: &FakeProvider, daemon: &Daemon, calls: &[(&str, Value)]) -> (Vec<ToolResult>, String) {
    let first_request = fake.request_count();
    for (index, (name, input)) in calls.iter().enumerate() {
        fake.push(Script::tool_use(&format!("toolu_{index}"), name, input.clone()));
    }
    fake.push(Script::text("done", 1));
    let chat = daemon.ctl_json(&["chat", "use the tools"]);
    assert_eq!(chat["text"], "done", "{chat}");

    let requests = fake.requests();
    let results = requests[first_request + 1..]
        .iter()
        .map(|request| {
            let last = request.body["messages"].as_array().unwrap().last().unwrap().clone();
            let block = &last["content"][0];
            assert_eq!(block["type"], "tool_result", "{last}");
            ToolResult {
                content: block["content"].as_str().unwrap().to_owned(),
                is_error: block["is_error"].as_bool().unwrap(),
            }
        })
        .collect::<Vec<_>>();
    assert_eq!(results.len(), calls.len(), "{chat}");
    (results, chat.to_string())
}

/// The first of `candidates` that exists.
fn first_existing(candidates: &[&'static str]) -> Option<&'static str> {
    candidates.iter().copied().find(|path| Path::new(path).exists())
}

/// Skips a test whose prerequisite is missing, except under CI, where it must be present.
fn skip_unless_ci(why: &str) {
    assert!(std::env::var_os("CI").is_none(), "{why}; CI must provide it (.ci/run)");
    eprintln!("skipped: {why}");
}

/// Finding: `run_command` compared resolved paths, so allowing one name of a multi-call binary
/// (busybox, uutils, toybox) allowed every other name of it, `sh` included.
#[test]
fn run_command_does_not_let_one_busybox_name_stand_for_another() {
    let Some(busybox) = first_existing(&["/bin/busybox", "/usr/bin/busybox"]) else {
        skip_unless_ci("busybox is not installed");
        return;
    };
    let links = tempfile::tempdir().unwrap();
    let uptime = links.path().join("uptime");
    let shell = links.path().join("sh");
    std::os::unix::fs::symlink(busybox, &uptime).unwrap();
    std::os::unix::fs::symlink(busybox, &shell).unwrap();
    let (uptime, shell) = (uptime.to_str().unwrap(), shell.to_str().unwrap());

    let fake = FakeProvider::start();
    let daemon = support::start_with_fake(
        &fake,
        &format!("[tools.run_command]\nenabled = true\nallow = [\"{uptime}\"]\n"),
    );
    let (results, transcript) = run_tools(
        &fake,
        &daemon,
        &[
            ("run_command", json!({"program": shell, "args": ["-c", "echo pwned"]})),
            ("run_command", json!({"program": uptime})),
        ],
    );

    let refused = &results[0];
    assert!(refused.is_error, "{refused:?}");
    assert!(
        refused.content.contains("not in tools.run_command.allow"),
        "{refused:?}"
    );
    // The words only ever appear in the model's request, never in anything that came back.
    assert!(
        results.iter().all(|result| !result.content.contains("pwned")),
        "{results:?}"
    );
    assert!(!transcript.contains("pwned"), "{transcript}");

    let allowed = &results[1];
    assert!(!allowed.is_error, "{allowed:?}");
    assert!(allowed.content.contains("load average"), "{allowed:?}");
}

/// Finding: programs that `run_command` starts inherited every descriptor the daemon itself had
/// inherited without close-on-exec (from a service manager, a shell, a careless parent).
#[test]
fn run_command_programs_get_no_descriptor_the_daemon_inherited() {
    let ls = first_existing(&["/bin/ls", "/usr/bin/ls"]).expect("ls exists");
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("inherited-descriptor-marker");
    let file = std::fs::File::create(&marker).unwrap();
    let inherited = file.as_raw_fd();
    // std opens files close-on-exec; clearing the flag makes the daemon spawned below inherit it,
    // as it would from a parent that leaks descriptors. (Daemons other tests of this binary
    // start meanwhile inherit it too, which does them no harm.)
    fcntl(&file, FcntlArg::F_SETFD(FdFlag::empty())).unwrap();

    let fake = FakeProvider::start();
    let daemon = support::start_with_fake(
        &fake,
        &format!("[tools.run_command]\nenabled = true\nallow = [\"{ls}\"]\n"),
    );
    // The setup worked: the daemon holds the descriptor.
    let held = std::fs::read_link(format!("/proc/{}/fd/{inherited}", daemon.pid()));
    assert_eq!(
        held.ok().as_deref(),
        Some(marker.as_path()),
        "the daemon did not inherit it"
    );

    let (results, _) = run_tools(
        &fake,
        &daemon,
        &[("run_command", json!({"program": ls, "args": ["-l", "/proc/self/fd"]}))],
    );
    let listing = &results[0];
    assert!(!listing.is_error, "{listing:?}");
    // `ls -l` shows one line per descriptor: `... <fd> -> <target>`.
    let descriptors: Vec<(u32, &str)> = listing
        .content
        .lines()
        .filter_map(|line| {
            let (left, target) = line.split_once(" -> ")?;
            let fd = left.split_whitespace().last()?.parse().ok()?;
            Some((fd, target))
        })
        .collect();
    // ls sorts the names as text (10 before 2), so look them up rather than expect an order.
    let numbers: Vec<u32> = descriptors.iter().map(|(fd, _)| *fd).collect();
    assert!([0, 1, 2].iter().all(|fd| numbers.contains(fd)), "{listing:?}");
    for (fd, target) in &descriptors {
        // Beyond stdio, only the directory ls itself opened to list /proc/self/fd.
        assert!(
            *fd <= 2 || target.starts_with("/proc/"),
            "descriptor {fd} -> {target} leaked into the program: {listing:?}"
        );
    }
    assert!(!listing.content.contains("inherited-descriptor-marker"), "{listing:?}");
    drop(file);
}

/// Finding: `run_command` ran programs as the daemon's own user for whoever could chat: a member
/// of `control.group` with full access could run an allowed program (`find -exec /bin/sh`, say)
/// as the daemon, and so reach what only its owner may. A member's turns are not offered it, and
/// a call the model makes anyway is refused; the owner's turns still run it.
#[test]
fn a_group_members_turns_are_not_offered_run_command() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to chat as another user");
        return;
    }
    let echo = first_existing(&["/bin/echo", "/usr/bin/echo"]).expect("echo exists");
    let fake = FakeProvider::start();
    let dir = support::new_dir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let daemon = Daemon::start_with(
        dir,
        support::DaemonOptions {
            config: support::fake_provider_config(
                &fake,
                &format!(
                    "[control]\ngroup = \"nogroup\"\ngroup_access = \"full\"\n[tools.run_command]\nenabled = true\nallow = [\"{echo}\"]\n"
                ),
            ),
            ..support::DaemonOptions::default()
        },
    );

    let first = fake.request_count();
    fake.push(Script::tool_use(
        "toolu_member",
        "run_command",
        json!({"program": echo, "args": ["ran as the daemon"]}),
    ));
    fake.push(Script::text("done", 1));
    let output = daemon.ctl_as(65534, 65534, &["chat", "use the tools", "--json"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let requests = fake.requests();
    assert_eq!(requests.len(), first + 2, "a tool round and the answer");
    assert!(
        !requests[first].tool_names().contains(&"run_command".to_owned()),
        "{}",
        requests[first].body
    );
    let last = requests[first + 1].body["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    let refused = &last["content"][0];
    assert_eq!(refused["is_error"], true, "{last}");
    let content = refused["content"].as_str().unwrap();
    assert!(content.contains("tools.run_command.callers"), "{content}");
    assert!(!content.contains("ran as the daemon"), "{content}");

    let first = fake.request_count();
    let (results, _) = run_tools(
        &fake,
        &daemon,
        &[("run_command", json!({"program": echo, "args": ["ran for the owner"]}))],
    );
    assert!(fake.requests()[first].tool_names().contains(&"run_command".to_owned()));
    assert!(
        !results[0].is_error && results[0].content.contains("ran for the owner"),
        "{:?}",
        results[0]
    );
}

/// Finding: `read_file` followed a hard link made inside the workspace to a file outside it.
#[test]
fn read_file_refuses_a_hard_link_to_a_file_outside_the_workspace() {
    let fake = FakeProvider::start();
    let daemon = support::start_with_fake(&fake, "[tools.files]\nenabled = true\n");
    // Both under the test's temp dir, so on one file system, as a hard link needs.
    let outside = daemon.dir.path().join("outside-secret.txt");
    std::fs::write(&outside, "hard-link-secret-7f3a").unwrap();
    let workspace = daemon.dir.path().join("state/workspace");
    std::fs::create_dir_all(&workspace).unwrap();
    std::fs::hard_link(&outside, workspace.join("notes.txt")).unwrap();

    let (results, transcript) = run_tools(
        &fake,
        &daemon,
        &[
            ("read_file", json!({"path": "notes.txt"})),
            ("write_file", json!({"path": "notes.txt", "content": "replaced"})),
        ],
    );
    let read = &results[0];
    assert!(read.is_error, "{read:?}");
    assert!(read.content.contains("hard links"), "{read:?}");
    assert!(!transcript.contains("hard-link-secret"), "{transcript}");
    assert!(
        results
            .iter()
            .all(|result| !result.content.contains("hard-link-secret")),
        "{results:?}"
    );
    let write = &results[1];
    assert!(write.is_error, "{write:?}");
    assert!(write.content.contains("hard links"), "{write:?}");
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "hard-link-secret-7f3a");
}

/// A non-loopback, non-link-local address of one of this machine's interfaces (IPv4 first).
fn interface_address() -> Option<IpAddr> {
    let mut candidates: Vec<IpAddr> = nix::ifaddrs::getifaddrs()
        .expect("list interface addresses")
        .filter(|interface| interface.flags.contains(InterfaceFlags::IFF_UP))
        .filter_map(|interface| {
            let address = interface.address?;
            if let Some(v4) = address.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                address.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .filter(|ip| match ip {
            IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local() && !v4.is_unspecified(),
            IpAddr::V6(v6) => !v6.is_loopback() && !v6.is_unicast_link_local() && !v6.is_unspecified(),
        })
        .collect();
    candidates.sort_by_key(IpAddr::is_ipv6);
    candidates.into_iter().next()
}

/// Serves `body` over plain HTTP on every address of this machine (the wildcard address) and
/// counts connections; returns the port. The thread ends with the test process.
fn serve_everywhere(ipv6: bool, body: &'static str) -> (u16, Arc<AtomicUsize>) {
    let wildcard = if ipv6 { "[::]:0" } else { "0.0.0.0:0" };
    let listener = TcpListener::bind(wildcard).expect("bind the wildcard address");
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&connections);
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut request = [0_u8; 4096];
            let _ = stream.read(&mut request);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, connections)
}

/// A port on which nothing listens (bound for a moment, then released).
fn closed_port(ipv6: bool) -> u16 {
    let wildcard = if ipv6 { "[::]:0" } else { "0.0.0.0:0" };
    TcpListener::bind(wildcard).unwrap().local_addr().unwrap().port()
}

/// Finding: `http_get` refused private and loopback addresses but not the machine's own public
/// address, so a service bound to 0.0.0.0 answered through it; and its messages told a blocked
/// address, a closed port and a silent one apart.
#[test]
fn http_get_refuses_this_machines_own_addresses() {
    let Some(own) = interface_address() else {
        skip_unless_ci("this machine has no non-loopback interface address");
        return;
    };
    const SECRET: &str = "own-address-secret-5b1e";
    let (port, connections) = serve_everywhere(own.is_ipv6(), SECRET);
    let url = |port: u16| format!("http://{}/", SocketAddr::new(own, port));
    let fetch = |port: u16| ("http_get", json!({"url": url(port)}));
    let fetch_with = |allow_private: &str, calls: &[(&str, Value)]| {
        let fake = FakeProvider::start();
        let daemon = support::start_with_fake(
            &fake,
            &format!("[tools.http_get]\nenabled = true\nallow_http = true\nallow_private = {allow_private}\n"),
        );
        run_tools(&fake, &daemon, calls)
    };

    // Refused by default: whether the address is public or not, it is this machine's.
    let (results, transcript) = fetch_with("[]", &[fetch(port)]);
    let by_default = &results[0];
    assert!(by_default.is_error, "{by_default:?}");
    assert!(by_default.content.contains("could not fetch"), "{by_default:?}");
    assert!(!transcript.contains(SECRET), "{transcript}");
    // Refused even when allowed networks cover every address: they never open this machine.
    let (results, transcript) = fetch_with("[\"0.0.0.0/0\", \"::/0\"]", &[fetch(port)]);
    assert!(results[0].is_error, "{:?}", results[0]);
    assert!(!transcript.contains(SECRET), "{transcript}");
    assert!(
        results.iter().all(|result| !result.content.contains(SECRET)),
        "{results:?}"
    );
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "a refused fetch must not connect"
    );

    // Control: the owner can open the address by naming it, so the server was reachable; and a
    // closed port there reads exactly like the refusal above.
    let closed = closed_port(own.is_ipv6());
    let (results, _) = fetch_with(&format!("[\"{own}\"]"), &[fetch(port), fetch(closed)]);
    assert!(!results[0].is_error, "{:?}", results[0]);
    assert!(results[0].content.contains(SECRET), "{:?}", results[0]);
    assert!(results[1].is_error, "{:?}", results[1]);
    assert_eq!(
        results[1].content.replace(&url(closed), "URL"),
        by_default.content.replace(&url(port), "URL")
    );
}
