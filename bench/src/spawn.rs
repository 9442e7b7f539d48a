//! Whole-process cost of `tokenctl token NAME`, beside the cost of spawning
//! `/bin/true` measured the same way in the same run: the difference is what
//! tokenctl itself adds (loading, argument parsing, connect, hello, request).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Medians of both, in milliseconds.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct SpawnCost {
    pub tokenctl_ms: f64,
    pub true_ms: f64,
    pub runs: usize,
}

/// Runs `cmd` to completion with stdout captured; returns the wall time.
fn time_one(cmd: &mut Command) -> Result<(Duration, Vec<u8>), String> {
    let start = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    let took = start.elapsed();
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok((took, out.stdout))
}

fn median_ms(mut v: Vec<Duration>) -> f64 {
    v.sort_unstable();
    v[v.len() / 2].as_secs_f64() * 1e3
}

/// `runs` of each, alternating, after a few unrecorded warm-up runs (page
/// cache, dynamic loader).
pub fn measure(
    tokenctl: &Path,
    socket: &Path,
    name: &str,
    runs: usize,
) -> Result<SpawnCost, String> {
    let mut ctl = Command::new(tokenctl);
    ctl.arg("--socket").arg(socket).arg("token").arg(name);
    ctl.env_remove("TOKEND_SOCKET");
    let mut truth = Command::new("/bin/true");
    let (mut a, mut b) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for i in 0..runs.max(1) + 5 {
        let (took, out) = time_one(&mut ctl)?;
        if out.len() < 2 || out.last() != Some(&b'\n') {
            return Err("tokenctl token printed no token".into());
        }
        let (base, _) = time_one(&mut truth)?;
        if i >= 5 {
            a.push(took);
            b.push(base);
        }
    }
    Ok(SpawnCost {
        tokenctl_ms: median_ms(a),
        true_ms: median_ms(b),
        runs: runs.max(1),
    })
}
