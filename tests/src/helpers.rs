//! Small pieces every end-to-end test file needs: a replayable random
//! generator, a fleet's key file, and the ends of logs for failure messages.

use std::path::Path;
use std::time::Duration;

/// A small deterministic generator (xorshift), seeded and printed by the
/// tests that use it, so that a run can be replayed.
pub struct Rng(pub u64);

impl Rng {
    /// A number below `n` (which must not be 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    /// A duration between `lo` and `hi` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

/// A new 256-bit key, as 64 hex digits, mode 0600: one fleet's sealing key.
pub fn write_key(path: &Path) {
    let mut bytes = [0u8; 32];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").expect("/dev/urandom"),
        &mut bytes,
    )
    .expect("random key");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(path, hex).expect("write key file");
    crate::set_mode(path, 0o600);
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The end of every member's log (numbered from 1) and, if given, of the
/// database's, for failure messages.
pub fn fleet_logs(
    members: &[crate::Daemon],
    pg: Option<&crate::postgres::PgCluster>,
    lines: usize,
) -> String {
    let mut text = String::new();
    for (i, m) in members.iter().enumerate() {
        text.push_str(&format!(
            "\n--- member {} log (last lines) ---\n{}",
            i + 1,
            tail(&m.log_text(), lines)
        ));
    }
    if let Some(pg) = pg {
        text.push_str(&format!(
            "\n--- PostgreSQL log (last lines) ---\n{}",
            tail(&pg.log_text(), 20)
        ));
    }
    text
}
