//! `blufioctl device add|list|revoke`: the devices whose keys may sign requests to the HTTPS
//! gateway. The key files of `device add` are [`crate::device`]'s.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use blufio_proto::control::v1::{Device, GatewayStatus, ListDevicesResponse};
use blufio_proto::httpsig::unix_now;
use serde::Serialize;

use super::Context;
use crate::cli::{DeviceCommand, JsonArgs};
use crate::device::{self, KeyFile};
use crate::output::{Cell, Human, Paint, Render, Style, humanize_age, non_empty, render_pairs, render_table};
use crate::{EXIT_FAILED, Failure, Outcome, device_failure};

/// Runs one `device` subcommand.
pub async fn run(context: &Context<'_>, command: DeviceCommand) -> Result<Outcome, Failure> {
    match command {
        DeviceCommand::Add {
            name,
            key_out,
            public_key,
            output: args,
        } => add(context, name, key_out, public_key, args).await,
        DeviceCommand::List(args) => list(context, args).await,
        DeviceCommand::Revoke { name, output: args } => revoke(context, name, args).await,
        DeviceCommand::Rename {
            name,
            new_name,
            output: args,
        } => {
            let device = context
                .connect()
                .await?
                .rename_device(name, new_name)
                .await
                .map_err(device_failure)?;
            context.printer.emit(&DeviceRename(&device), args.json)?;
            Ok(Outcome::Success)
        }
        DeviceCommand::Remove { name, output: args } => {
            let removed = context
                .connect()
                .await?
                .remove_device(name.clone())
                .await
                .map_err(device_failure)?;
            context
                .printer
                .emit(&DeviceRemove { name: &name, removed }, args.json)?;
            Ok(Outcome::Success)
        }
    }
}

/// A device just registered by `device add`. `key_file` is the private key written for
/// `--key-out`; `gateway` is the daemon's gateway when known, whose address and pin human output
/// puts into the `blufioctl remote` command to run next.
pub struct DeviceAdd<'a> {
    pub device: &'a Device,
    pub key_file: Option<&'a str>,
    pub gateway: Option<&'a GatewayStatus>,
}

impl Render for DeviceAdd<'_> {
    /// `device add --json`.
    fn json(&self) -> impl Serialize {
        let DeviceAdd { device, key_file, .. } = *self;
        DeviceAddJson {
            device: DeviceJson::from(device),
            key_file,
        }
    }

    /// `device add`: the device, where its private key is, and the command that uses it.
    fn human(&self, style: Style) -> Human {
        let DeviceAdd {
            device,
            key_file,
            gateway,
        } = *self;
        let remote_command = remote_command_hint(gateway, key_file);
        let mut stdout = format!("added device {}\n", style.paint(Paint::Bold, &device.name));
        let mut rows = vec![
            ("keyid".to_owned(), Cell::plain(&device.keyid)),
            ("fingerprint".to_owned(), Cell::plain(&device.fingerprint)),
        ];
        if let Some(key_file) = key_file {
            let mut cell = Cell::plain(key_file);
            cell.push(style, Paint::Dim, " (private key, mode 0600: keep it secret)");
            rows.push(("key file".to_owned(), cell));
        }
        stdout.push_str(&render_pairs(style, &rows));
        let _ = writeln!(stdout, "\nnext, on the device that holds the private key:");
        let _ = writeln!(stdout, "  {remote_command}");
        Human {
            stdout,
            ..Human::default()
        }
    }
}

/// The registered devices, for `device list`; `now` is the current Unix time, for the ages.
pub struct DeviceList<'a> {
    pub list: &'a ListDevicesResponse,
    pub now: i64,
}

impl Render for DeviceList<'_> {
    /// `device list --json`.
    fn json(&self) -> impl Serialize {
        let list = self.list;
        DeviceListJson {
            devices: list.devices.iter().map(DeviceJson::from).collect(),
        }
    }

    /// `device list` as a table: NAME, KEYID, ADDED, LAST USED, STATE.
    fn human(&self, style: Style) -> Human {
        let DeviceList { list, now } = *self;
        if list.devices.is_empty() {
            return Human {
                stdout: "no devices registered; add one with 'blufioctl device add NAME --key-out FILE'\n".to_owned(),
                ..Human::default()
            };
        }
        let mut rows = vec![
            ["NAME", "KEYID", "ADDED", "LAST USED", "STATE"]
                .iter()
                .map(|title| Cell::painted(style, Paint::Bold, title))
                .collect::<Vec<_>>(),
        ];
        for device in &list.devices {
            let last_used = if device.last_used_at == 0 {
                Cell::painted(style, Paint::Dim, "never")
            } else {
                Cell::plain(&humanize_age(now, device.last_used_at))
            };
            let state = if device.revoked_at == 0 {
                Cell::plain("active")
            } else {
                Cell::painted(style, Paint::Yellow, "revoked")
            };
            rows.push(vec![
                Cell::plain(&device.name),
                Cell::plain(&device.keyid),
                Cell::plain(&humanize_age(now, device.added_at)),
                last_used,
                state,
            ]);
        }
        Human {
            stdout: render_table(style, &rows),
            ..Human::default()
        }
    }
}

/// A device just revoked by `device revoke`.
pub struct DeviceRevoke<'a>(pub &'a Device);

impl Render for DeviceRevoke<'_> {
    /// `device revoke --json`.
    fn json(&self) -> impl Serialize {
        let device = self.0;
        DeviceRevokeJson {
            device: DeviceJson::from(device),
        }
    }

    /// `device revoke`.
    fn human(&self, _style: Style) -> Human {
        let device = self.0;
        Human {
            stdout: format!(
                "revoked device {} (keyid {}); the gateway refuses its requests from now on\n",
                device.name, device.keyid
            ),
            ..Human::default()
        }
    }
}

/// `device add NAME`, with a new key pair for `--key-out` or the key in `--public-key`.
async fn add(
    context: &Context<'_>,
    name: String,
    key_out: Option<PathBuf>,
    public_key: Option<PathBuf>,
    args: JsonArgs,
) -> Result<Outcome, Failure> {
    // Settle the key locally first: a file that exists or a bad public key is the user's
    // to fix before anything is registered.
    let (new_key, public_key_pem) = match (key_out, public_key) {
        (Some(path), _) => {
            let file = KeyFile::create(&path)?;
            let key = device::generate_key()?;
            let pem = blufio_proto::httpsig::verifying_key_to_pem(&key.verifying_key())
                .context("cannot encode the public key")?;
            (Some((file, key)), pem)
        }
        (None, Some(path)) => (None, device::read_public_key(&path)?),
        (None, None) => return Err(anyhow::anyhow!("--key-out FILE or --public-key FILE is required").into()),
    };
    // Dropping the key file on any failure from here on removes it.
    let mut client = context.connect().await?;
    let device = client.add_device(name, public_key_pem).await.map_err(device_failure)?;
    let key_file = match new_key {
        Some((file, key)) => Some(file.write(&key).map_err(|error| Failure {
            code: EXIT_FAILED,
            error,
            hint: Some(format!(
                "the device is registered but its key is lost: 'blufioctl device revoke {}', then add it \
                 again",
                device.name
            )),
        })?),
        None => None,
    };
    let key_file = key_file.as_ref().map(|path| path.display().to_string());
    // Best effort, and for human output only: the gateway's address and pin make the next step
    // copyable.
    let gateway = if args.json {
        None
    } else {
        client.get_status().await.ok().and_then(|status| status.gateway)
    };
    let view = DeviceAdd {
        device: &device,
        key_file: key_file.as_deref(),
        gateway: gateway.as_ref(),
    };
    context.printer.emit(&view, args.json)?;
    Ok(Outcome::Success)
}

async fn list(context: &Context<'_>, args: JsonArgs) -> Result<Outcome, Failure> {
    let list = context.connect().await?.list_devices().await?;
    let view = DeviceList {
        list: &list,
        now: unix_now(),
    };
    context.printer.emit(&view, args.json)?;
    Ok(Outcome::Success)
}

async fn revoke(context: &Context<'_>, name: String, args: JsonArgs) -> Result<Outcome, Failure> {
    let device = context
        .connect()
        .await?
        .revoke_device(name)
        .await
        .map_err(device_failure)?;
    context.printer.emit(&DeviceRevoke(&device), args.json)?;
    Ok(Outcome::Success)
}

/// The daemon's answer to `device rename`.
pub struct DeviceRename<'a>(pub &'a Device);

impl Render for DeviceRename<'_> {
    /// `device rename --json`: `{"device": ...}`, as `device revoke --json`.
    fn json(&self) -> impl Serialize {
        DeviceRevokeJson {
            device: DeviceJson::from(self.0),
        }
    }

    fn human(&self, style: Style) -> Human {
        Human {
            stdout: format!(
                "device {} is now named {}\n",
                self.0.keyid,
                style.paint(Paint::Bold, &self.0.name)
            ),
            ..Human::default()
        }
    }
}

/// What `device remove` did.
pub struct DeviceRemove<'a> {
    pub name: &'a str,
    pub removed: u64,
}

impl Render for DeviceRemove<'_> {
    /// `device remove --json`: `{"name": NAME, "removed": N}`.
    fn json(&self) -> impl Serialize {
        serde_json::json!({"name": self.name, "removed": self.removed})
    }

    fn human(&self, _style: Style) -> Human {
        let entries = if self.removed == 1 { "entry" } else { "entries" };
        Human {
            stdout: format!("removed {} revoked {entries} named {}\n", self.removed, self.name),
            ..Human::default()
        }
    }
}

/// The `blufioctl remote` command that uses a new device key: the gateway's address and pin
/// when the daemon reported them, placeholders otherwise. `key_file` is the private key's path,
/// when known.
fn remote_command_hint(gateway: Option<&GatewayStatus>, key_file: Option<&str>) -> String {
    let key = key_file.map_or_else(|| "PRIVATE_KEY_FILE".to_owned(), shell_word);
    let (url, pin) = match gateway {
        Some(gateway) => {
            // A wildcard listen address says nothing about the name clients reach it by.
            let port = gateway.listen.rsplit_once(':').map_or("PORT", |(_, port)| port);
            let host = match gateway.listen.rsplit_once(':') {
                Some(("0.0.0.0" | "[::]", _)) | None => "HOST",
                Some((host, _)) => host,
            };
            let pin = non_empty(&gateway.tls_fingerprint_sha256).map(str::to_owned);
            (format!("{}://{host}:{port}", gateway.scheme), pin)
        }
        None => ("https://HOST:PORT".to_owned(), Some("SHA256".to_owned())),
    };
    let mut command = format!("blufioctl remote --url {url} --key {key}");
    if let Some(pin) = pin {
        let _ = write!(command, " --pin {pin}");
    }
    command.push_str(" sessions list");
    command
}

/// `text` as one shell word: as is when it needs no quoting, single-quoted otherwise.
fn shell_word(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '-' | '_' | '+' | ',' | ':' | '@' | '%'));
    if plain {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

#[derive(Debug, Serialize)]
struct DeviceJson<'a> {
    name: &'a str,
    keyid: &'a str,
    fingerprint: &'a str,
    added_at: i64,
    last_used_at: Option<i64>,
    revoked_at: Option<i64>,
    state: &'static str,
}

impl<'a> From<&'a Device> for DeviceJson<'a> {
    fn from(device: &'a Device) -> Self {
        DeviceJson {
            name: &device.name,
            keyid: &device.keyid,
            fingerprint: &device.fingerprint,
            added_at: device.added_at,
            last_used_at: (device.last_used_at != 0).then_some(device.last_used_at),
            revoked_at: (device.revoked_at != 0).then_some(device.revoked_at),
            state: if device.revoked_at == 0 { "active" } else { "revoked" },
        }
    }
}

#[derive(Debug, Serialize)]
struct DeviceAddJson<'a> {
    device: DeviceJson<'a>,
    key_file: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct DeviceListJson<'a> {
    devices: Vec<DeviceJson<'a>>,
}

#[derive(Debug, Serialize)]
struct DeviceRevokeJson<'a> {
    device: DeviceJson<'a>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::output::testing::{ALIGNED, NOW, sample_gateway};

    fn sample_device(name: &str, last_used_at: i64, revoked_at: i64) -> Device {
        Device {
            name: name.into(),
            keyid: format!("SHA256:{name}-key"),
            fingerprint: format!("SHA256:{name}-key"),
            added_at: 1_764_316_800,
            last_used_at,
            revoked_at,
        }
    }

    #[test]
    fn device_json_shapes() {
        let device = sample_device("laptop", 0, 0);
        let view = DeviceAdd {
            device: &device,
            key_file: Some("/k.pem"),
            gateway: None,
        };
        let value = serde_json::to_value(view.json()).expect("serializes");
        assert_eq!(
            value,
            json!({"device": {"name": "laptop", "keyid": "SHA256:laptop-key", "fingerprint": "SHA256:laptop-key",
                              "added_at": 1_764_316_800, "last_used_at": null, "revoked_at": null,
                              "state": "active"},
                   "key_file": "/k.pem"})
        );
        let list = ListDevicesResponse {
            devices: vec![
                sample_device("a", 1_764_316_900, 0),
                sample_device("b", 0, 1_764_317_000),
            ],
        };
        let value = serde_json::to_value(DeviceList { list: &list, now: NOW }.json()).expect("serializes");
        assert_eq!(value["devices"][0]["last_used_at"], 1_764_316_900);
        assert_eq!(value["devices"][1]["revoked_at"], 1_764_317_000);
        assert_eq!(value["devices"][1]["state"], "revoked");
        let value = serde_json::to_value(DeviceRevoke(&list.devices[1]).json()).expect("serializes");
        assert_eq!(value["device"]["name"], "b");
        let empty = DeviceList {
            list: &ListDevicesResponse::default(),
            now: NOW,
        };
        let value = serde_json::to_value(empty.json()).expect("serializes");
        assert_eq!(value, json!({"devices": []}));
    }

    #[test]
    fn device_tables_and_hints() {
        let list = ListDevicesResponse {
            devices: vec![
                sample_device("a", 1_764_316_900, 0),
                sample_device("b", 0, 1_764_317_000),
            ],
        };
        let view = DeviceList {
            list: &list,
            now: 1_764_320_000,
        };
        let text = view.human(ALIGNED).stdout;
        let expected = "\
NAME  KEYID         ADDED    LAST USED  STATE
a     SHA256:a-key  53m ago  51m ago    active
b     SHA256:b-key  53m ago  never      revoked
";
        assert_eq!(text, expected);
        let empty = DeviceList {
            list: &ListDevicesResponse::default(),
            now: 0,
        };
        assert!(empty.human(ALIGNED).stdout.contains("blufioctl device add"));

        let device = sample_device("laptop", 0, 0);
        let gateway = sample_gateway();
        let hint = remote_command_hint(Some(&gateway), Some("/home/me/k.pem"));
        assert_eq!(
            hint,
            "blufioctl remote --url https://HOST:8443 --key /home/me/k.pem --pin AB:CD:EF sessions list"
        );
        let view = DeviceAdd {
            device: &device,
            key_file: Some("/home/me/k.pem"),
            gateway: Some(&gateway),
        };
        let text = view.human(Style::PLAIN).stdout;
        assert!(
            text.starts_with("added device laptop\nkeyid: SHA256:laptop-key\n"),
            "{text}"
        );
        assert!(text.contains("\nkey file: /home/me/k.pem (private key"), "{text}");
        assert!(text.ends_with(&format!("\n  {hint}\n")), "{text}");

        let loopback = GatewayStatus {
            listen: "127.0.0.1:8080".into(),
            scheme: "http".into(),
            ..GatewayStatus::default()
        };
        assert_eq!(
            remote_command_hint(Some(&loopback), Some("my key.pem")),
            "blufioctl remote --url http://127.0.0.1:8080 --key 'my key.pem' sessions list"
        );
        assert_eq!(
            remote_command_hint(None, None),
            "blufioctl remote --url https://HOST:PORT --key PRIVATE_KEY_FILE --pin SHA256 sessions list"
        );
        assert!(
            DeviceRevoke(&device)
                .human(ALIGNED)
                .stdout
                .starts_with("revoked device laptop (keyid SHA256:laptop-key)")
        );
    }
}
