//! Headless Chromium (Debian's `chromium`) for the dashboard tests: the DOM
//! after the page's scripts ran, a PNG screenshot, and pixel counts of it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn chromium(profile: &Path) -> Command {
    let bin = std::env::var_os("TEAL_CHROMIUM").unwrap_or_else(|| "chromium".into());
    let mut cmd = Command::new(bin);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        "--window-size=1280,900",
        // Lets the page's polling run a few rounds before the capture.
        "--virtual-time-budget=4000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    cmd
}

fn run(mut cmd: Command, what: &str) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("starting chromium for {what}: {e} (scripts/setup-deps installs it)")
    });
    assert!(
        out.status.success(),
        "chromium {what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The DOM of `url` once its scripts have run.
pub fn dump_dom(url: &str, scratch: &Path) -> String {
    let mut cmd = chromium(&scratch.join("profile-dom"));
    cmd.args(["--dump-dom", url]);
    String::from_utf8_lossy(&run(cmd, "--dump-dom").stdout).to_string()
}

/// Takes a screenshot of `url` into `scratch/name` and returns its path.
pub fn screenshot(url: &str, scratch: &Path, name: &str) -> PathBuf {
    let path = scratch.join(name);
    let mut cmd = chromium(&scratch.join("profile-shot"));
    cmd.arg(format!("--screenshot={}", path.display())).arg(url);
    run(cmd, "--screenshot");
    assert!(
        path.exists(),
        "chromium wrote no screenshot at {}",
        path.display()
    );
    path
}

/// A decoded RGB(A) screenshot.
pub struct Picture {
    pub width: u32,
    pub height: u32,
    rgb: Vec<[u8; 3]>,
}

impl Picture {
    pub fn open(path: &Path) -> Picture {
        let decoder =
            png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        let channels = info.color_type.samples();
        assert!(
            channels >= 3,
            "unexpected PNG colour type {:?}",
            info.color_type
        );
        let rgb = buf[..info.buffer_size()]
            .chunks(channels)
            .map(|p| [p[0], p[1], p[2]])
            .collect();
        Picture {
            width: info.width,
            height: info.height,
            rgb,
        }
    }

    /// Pixels within `tolerance` (per channel) of `color` in the rows `rows`.
    pub fn count_near(&self, color: [u8; 3], tolerance: u8, rows: std::ops::Range<u32>) -> usize {
        let w = self.width as usize;
        self.rgb[rows.start as usize * w..(rows.end.min(self.height) as usize) * w]
            .iter()
            .filter(|p| (0..3).all(|i| p[i].abs_diff(color[i]) <= tolerance))
            .count()
    }

    /// How many distinct colours the picture has.
    pub fn distinct_colors(&self) -> usize {
        let mut all = self.rgb.clone();
        all.sort_unstable();
        all.dedup();
        all.len()
    }
}

/// One plain HTTP/1.1 GET: status and body.
pub fn http_get(addr: SocketAddr, path: &str, host: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let status = buf.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
