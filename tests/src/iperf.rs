//! iperf3 through the mesh: a server bound to one node's mesh address and bounded client runs
//! from another node's namespace, with the JSON figures the lab tests assert on.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use crate::cmd::wait_for;
use crate::lab::{which, Lab};
use crate::warren::Node;

/// How long a client keeps retrying while the server starts listening.
const SERVER_START: Duration = Duration::from_secs(10);
/// Grace for a background stream to finish after its nominal length.
const STREAM_GRACE: Duration = Duration::from_secs(20);

/// An iperf3 server the lab started.
#[derive(Clone, Debug)]
pub struct IperfServer {
    /// The mesh address it is bound to.
    pub ip: Ipv4Addr,
    /// Its TCP port.
    pub port: u16,
    /// The iperf3 binary.
    bin: PathBuf,
}

/// A client running in the background (see [`Lab::iperf_stream`]).
#[derive(Debug)]
pub struct IperfStream {
    /// The lab's process id of the client.
    proc: usize,
    /// Its nominal length.
    secs: u32,
}

/// One client run's outcome.
#[derive(Debug)]
pub struct IperfRun {
    /// The full `-J` report.
    pub json: Value,
}

impl IperfRun {
    /// Bytes the receiving side got.
    pub fn received_bytes(&self) -> Result<f64> {
        self.json["end"]["sum_received"]["bytes"]
            .as_f64()
            .context("iperf3 JSON has no end.sum_received.bytes")
    }

    /// Receive rate in bits per second.
    pub fn bits_per_second(&self) -> Result<f64> {
        self.json["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .context("iperf3 JSON has no end.sum_received.bits_per_second")
    }

    /// Bytes received in each of the report's intervals (one second each by default).
    pub fn interval_bytes(&self) -> Result<Vec<f64>> {
        Ok(self.json["intervals"]
            .as_array()
            .context("iperf3 JSON has no intervals")?
            .iter()
            .map(|i| i["sum"]["bytes"].as_f64().unwrap_or(0.0))
            .collect())
    }

    /// The longest run of intervals in which no data arrived (0: the stream never stopped).
    pub fn longest_stall(&self) -> Result<usize> {
        Ok(self
            .interval_bytes()?
            .split(|b| *b > 0.0)
            .map(<[f64]>::len)
            .max()
            .unwrap_or(0))
    }

    /// TCP retransmissions by the sender.
    pub fn retransmits(&self) -> u64 {
        self.json["end"]["sum_sent"]["retransmits"]
            .as_u64()
            .unwrap_or(0)
    }
}

/// Parses a client's `-J` output, refusing reports that carry an error.
pub fn parse_report(stdout: &str) -> Result<IperfRun> {
    let json: Value = serde_json::from_str(stdout).context("iperf3 printed non-JSON")?;
    ensure!(
        json.get("error").is_none(),
        "iperf3 reported {}",
        json["error"]
    );
    Ok(IperfRun { json })
}

impl Lab {
    /// Starts an iperf3 server in `node`'s namespace, bound to `ip` (its mesh address).
    pub fn iperf_server(&mut self, node: &Node, ip: Ipv4Addr, port: u16) -> Result<IperfServer> {
        let bin = which("iperf3").context("iperf3 is not installed (apt-get install iperf3)")?;
        let args: Vec<String> = ["-s", "-B", &ip.to_string(), "-p", &port.to_string()]
            .iter()
            .map(ToString::to_string)
            .collect();
        self.spawn(&format!("iperf3-{port}"), &node.host.ns, &bin, &args)?;
        Ok(IperfServer { ip, port, bin })
    }

    /// The client arguments for a run against `server`.
    pub fn iperf_args(server: &IperfServer, secs: u32, reverse: bool) -> Vec<String> {
        let mut args: Vec<String> = [
            "-c",
            &server.ip.to_string(),
            "-p",
            &server.port.to_string(),
            "-t",
            &secs.to_string(),
            "-J",
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        if reverse {
            args.push("-R".into());
        }
        args
    }

    /// A `secs`-second TCP run from `from` to `server` (`reverse`: data flows towards `from`),
    /// retried while the server is still starting.
    pub fn iperf(
        &self,
        from: &Node,
        server: &IperfServer,
        secs: u32,
        reverse: bool,
    ) -> Result<IperfRun> {
        let bin = server.bin.display().to_string();
        let args = Self::iperf_args(server, secs, reverse);
        let mut cmd = vec![bin.as_str()];
        cmd.extend(args.iter().map(String::as_str));
        let timeout = Duration::from_secs(u64::from(secs) + 20);
        wait_for(
            "an iperf3 run over the mesh",
            SERVER_START + timeout,
            Duration::from_millis(300),
            || {
                let out = self.exec(&from.host.ns, &cmd, timeout)?;
                ensure!(
                    out.success(),
                    "iperf3 failed: {} {}",
                    out.stdout,
                    out.stderr
                );
                Ok(Some(parse_report(&out.stdout)?))
            },
        )
    }

    /// Starts a `secs`-second TCP stream from `from` to `server` in the background, capped at
    /// `rate` (iperf3 `-b`, e.g. "40M") so that a loaded 2-core lab keeps time. The server must
    /// already listen: this waits half a second for it.
    pub fn iperf_stream(
        &mut self,
        from: &Node,
        server: &IperfServer,
        secs: u32,
        rate: &str,
    ) -> Result<IperfStream> {
        let mut args = Self::iperf_args(server, secs, false);
        args.extend(["-b".to_string(), rate.to_string()]);
        std::thread::sleep(Duration::from_millis(500));
        let bin = server.bin.clone();
        let proc = self.spawn("iperf3-client", &from.host.ns, &bin, &args)?;
        Ok(IperfStream { proc, secs })
    }

    /// Waits for a background stream to end and returns its report; an error if the client
    /// failed (e.g. the TCP connection broke) or did not end in time.
    pub fn iperf_finish(&mut self, stream: IperfStream) -> Result<IperfRun> {
        let status = wait_for(
            "the iperf3 stream to end",
            Duration::from_secs(u64::from(stream.secs)) + STREAM_GRACE,
            Duration::from_millis(200),
            || Ok(self.proc_mut(stream.proc).try_exit()),
        )?;
        let json = self.proc(stream.proc).stdout();
        ensure!(status.success(), "iperf3 client failed: {json}");
        parse_report(&json)
    }
}
