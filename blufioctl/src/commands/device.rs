//! `blufioctl device add|list|revoke`: the devices whose keys may sign requests to the HTTPS
//! gateway. The key files of `device add` are [`crate::device`]'s.

use std::path::PathBuf;

use anyhow::Context as _;
use blufio_proto::httpsig::unix_now;

use super::Context;
use crate::cli::{DeviceCommand, JsonArgs};
use crate::device::{self, KeyFile};
use crate::output;
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
    let printer = context.printer;
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
    if args.json {
        printer.json(&output::device_add_json(&device, key_file.as_deref()))?;
    } else {
        // Best effort: the gateway's address and pin make the next step copyable.
        let gateway = client.get_status().await.ok().and_then(|status| status.gateway);
        let remote = output::remote_command_hint(gateway.as_ref(), key_file.as_deref());
        printer.human(&output::device_add_human(
            &device,
            key_file.as_deref(),
            &remote,
            printer.stdout_style,
        ))?;
    }
    Ok(Outcome::Success)
}

async fn list(context: &Context<'_>, args: JsonArgs) -> Result<Outcome, Failure> {
    let printer = context.printer;
    let list = context.connect().await?.list_devices().await?;
    if args.json {
        printer.json(&output::device_list_json(&list))?;
    } else {
        printer.human(&output::device_list_human(&list, unix_now(), printer.stdout_style))?;
    }
    Ok(Outcome::Success)
}

async fn revoke(context: &Context<'_>, name: String, args: JsonArgs) -> Result<Outcome, Failure> {
    let printer = context.printer;
    let device = context
        .connect()
        .await?
        .revoke_device(name)
        .await
        .map_err(device_failure)?;
    if args.json {
        printer.json(&output::device_revoke_json(&device))?;
    } else {
        printer.human(&output::device_revoke_human(&device))?;
    }
    Ok(Outcome::Success)
}
