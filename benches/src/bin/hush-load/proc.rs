//! What Linux reports about a process under `/proc`, and percentiles.

use std::time::Duration;

use anyhow::Context;

/// Memory and CPU time of a process at one moment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    /// Resident set size, KiB (`VmRSS`).
    pub(crate) rss_kib: u64,
    /// Peak resident set size, KiB (`VmHWM`).
    pub(crate) peak_kib: u64,
    /// User plus system CPU time, seconds.
    pub(crate) cpu_secs: f64,
}

impl Sample {
    /// CPU time spent between `earlier` and this sample, as a share of one
    /// core over `wall`.
    pub(crate) fn cpu_share_since(&self, earlier: &Self, wall: Duration) -> f64 {
        (self.cpu_secs - earlier.cpu_secs) / wall.as_secs_f64().max(1e-9)
    }
}

/// `pid` or `"self"`.
pub(crate) fn sample(pid: &str) -> anyhow::Result<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        line[name.len()..]
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("unreadable {name}"))
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The fields after the command name, which is in parentheses: state is
    // field 3 of the whole line, utime field 14 and stime field 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("unreadable /proc/<pid>/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .context("unreadable CPU time in /proc/<pid>/stat")
    };
    let cpu_ticks = ticks(14 - 3)? + ticks(15 - 3)?;
    Ok(Sample {
        rss_kib: field("VmRSS:")?,
        peak_kib: field("VmHWM:")?,
        cpu_secs: cpu_ticks as f64 / clock_ticks_per_sec(),
    })
}

/// CPU time all processes of the machine spent busy, seconds (the first
/// line of `/proc/stat`: everything but idle and I/O wait).
pub(crate) fn machine_busy_secs() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal …
    let busy: u64 = ticks
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4 && *i < 8)
        .map(|(_, t)| t)
        .sum();
    Ok(busy as f64 / clock_ticks_per_sec())
}

/// Kernel memory, KiB: slab caches (`Slab` in `/proc/meminfo`, where
/// socket structures live) and TCP buffers (`mem` pages of the `TCP` line of
/// `/proc/net/sockstat`). Machine-wide.
pub(crate) fn kernel_kib() -> anyhow::Result<(u64, u64)> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    let slab = meminfo
        .lines()
        .find(|l| l.starts_with("Slab:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .context("no Slab in /proc/meminfo")?;
    let sockstat =
        std::fs::read_to_string("/proc/net/sockstat").context("reading /proc/net/sockstat")?;
    let pages: u64 = sockstat
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .and_then(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "mem")?;
            words.get(at + 1)?.parse().ok()
        })
        .context("no TCP mem in /proc/net/sockstat")?;
    Ok((slab, pages * 4))
}

/// The process id of a running program (`pidof`), if there is one.
pub(crate) fn pid_of(names: &[&str]) -> Option<String> {
    let out = std::process::Command::new("pidof")
        .args(names)
        .output()
        .ok()?;
    String::from_utf8(out.stdout)
        .ok()?
        .split_whitespace()
        .next()
        .map(str::to_owned)
}

/// `getconf CLK_TCK`, the unit of the CPU times in `/proc/<pid>/stat`.
fn clock_ticks_per_sec() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The soft limit on open files of this process (inherited by the server).
pub(crate) fn open_files_limit() -> anyhow::Result<u64> {
    let limits =
        std::fs::read_to_string("/proc/self/limits").context("reading /proc/self/limits")?;
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l["Max open files".len()..].split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no open-files limit in /proc/self/limits")
}

/// The machine, for the report: CPUs, their model, memory.
pub(crate) fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / (1024.0 * 1024.0));
    format!("{cpus} CPUs ({model}), {memory_gib:.1} GiB")
}

/// The load average over 1, 5 and 15 minutes, as `/proc/loadavg` gives it.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Percentiles of a set of durations.
#[derive(Debug, Default)]
pub(crate) struct Percentiles {
    sorted: Vec<Duration>,
}

impl Percentiles {
    pub(crate) fn new(mut values: Vec<Duration>) -> Self {
        values.sort_unstable();
        Self { sorted: values }
    }

    /// The `p`-th percentile (nearest rank), zero when empty.
    pub(crate) fn at(&self, p: f64) -> Duration {
        if self.sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.sorted.len() as f64).ceil() as usize;
        self.sorted[rank.clamp(1, self.sorted.len()) - 1]
    }

    pub(crate) fn len(&self) -> usize {
        self.sorted.len()
    }

    /// `p50 … p90 … p99 … max …` in milliseconds.
    pub(crate) fn summary(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        format!(
            "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples)",
            ms(self.at(50.0)),
            ms(self.at(90.0)),
            ms(self.at(99.0)),
            ms(self.at(100.0)),
            self.len()
        )
    }
}
