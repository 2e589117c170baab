//! `spin-test-host`: serve a Spin app without Spin.
//!
//! `spin-test-host --listen 127.0.0.1:3000 [--manifest spin.toml] [--state-dir .spin] [--variable name=value]...`

use spin_test_host::{HostOptions, serve};

const USAGE: &str = "usage: spin-test-host [--listen ADDR] [--manifest spin.toml] [--state-dir .spin] [--variable name=value]...";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut opts = HostOptions::new("spin.toml", ".spin");
    opts.listen = "127.0.0.1:3000".parse()?;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--listen" => opts.listen = value()?.parse()?,
            "--manifest" => opts.manifest = value()?.into(),
            "--state-dir" => opts.state_dir = value()?.into(),
            "--variable" => {
                let v = value()?;
                let (name, val) = v
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("--variable wants name=value"))?;
                opts.variables.insert(name.to_string(), val.to_string());
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let host = serve(opts).await?;
    println!("Serving {}", host.url());
    tokio::signal::ctrl_c().await?;
    host.shutdown().await;
    Ok(())
}
