//! `fake-llm --listen 127.0.0.1:9999 [--latency-ms N]`: serves the default
//! replies of all three dialects until interrupted, without recording
//! requests (for benchmarks against a real `spin up`).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use fake_llm::FakeLlm;

const USAGE: &str = "usage: fake-llm [--listen ADDR] [--latency-ms N]
  --listen ADDR    address to listen on (default 127.0.0.1:9999)
  --latency-ms N   delay every reply by N milliseconds (default 0)";

fn parse(args: &[String]) -> Result<(SocketAddr, Duration), String> {
    let mut listen = SocketAddr::from(([127, 0, 0, 1], 9999));
    let mut latency = Duration::ZERO;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match arg.as_str() {
            "--listen" => {
                let v = value("--listen")?;
                listen = v.parse().map_err(|e| format!("--listen {v}: {e}"))?;
            }
            "--latency-ms" => {
                let v = value("--latency-ms")?;
                let ms: u64 = v.parse().map_err(|e| format!("--latency-ms {v}: {e}"))?;
                latency = Duration::from_millis(ms);
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok((listen, latency))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (listen, latency) = match parse(&args) {
        Ok(parsed) => parsed,
        Err(message) => {
            if message.is_empty() {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            eprintln!("fake-llm: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let fake = match FakeLlm::start_on(listen).await {
        Ok(fake) => fake,
        Err(e) => {
            eprintln!("fake-llm: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    fake.set_recording(false);
    fake.set_latency(latency);
    println!("fake-llm listening on {}", fake.url());
    let _ = tokio::signal::ctrl_c().await;
    ExitCode::SUCCESS
}
