//! The Python client (`client/python`, stdlib only) per call: one `python3`
//! process, one `tokend.Client(socket=...)`, `token(name)` in a loop, each
//! call timed in Python with `time.perf_counter_ns`; the samples are printed
//! and parsed here. The same script against the bare HTTP server (which
//! answers the same bytes) is the baseline: what is left is the server.

use crate::measure::Latency;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Warm-up calls, then `iters` timed ones; prints the samples in ns, one
/// line, space separated. argv: socket, credentials, iterations, token length.
const SCRIPT: &str = r#"
import sys, time, tokend
socket, n, iters, token_len = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
names = ["bench-%06d" % i for i in range(n)]
client = tokend.Client(socket=socket)
for i in range(min(iters // 10 + 1, 1000)):
    client.token(names[i % n])
samples = [0] * iters
clock = time.perf_counter_ns
for i in range(iters):
    name = names[i % n]
    start = clock()
    token = client.token(name)
    samples[i] = clock() - start
    if len(token) != token_len:
        sys.exit("%s: got a token of %d characters" % (name, len(token)))
client.close()
print(" ".join(map(str, samples)))
"#;

/// `client/python/src` of this workspace.
pub fn package_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("client")
        .join("python")
        .join("src")
}

/// Whether `python3` can import the client at all (else the row is skipped
/// with a note rather than failing the run).
pub fn available() -> Result<(), String> {
    let out = Command::new("python3")
        .arg("-c")
        .arg("import tokend")
        .env("PYTHONPATH", package_dir())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "python3 cannot import tokend from {}: {}",
            package_dir().display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `iters` timed `token()` calls against `socket`, cycling over `n`
/// credentials (`bench-000000`…).
pub fn latency(socket: &Path, n: usize, iters: usize, token_len: usize) -> Result<Latency, String> {
    let out = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(socket)
        .arg(n.max(1).to_string())
        .arg(iters.max(1).to_string())
        .arg(token_len.to_string())
        .env("PYTHONPATH", package_dir())
        .env_remove("TOKEND_HTTP_SOCKET")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "the Python client failed against {} ({}): {}",
            socket.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let samples = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|s| s.parse::<u64>().map(Duration::from_nanos))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the Python client printed something else: {e}"))?;
    if samples.is_empty() {
        return Err("the Python client printed no samples".into());
    }
    Ok(Latency::of(samples))
}
